"""Run services as real OS processes for integration and fault tests (PIDs tracked, never pkill)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rspo_proto.v1 import learner_pb2, learner_pb2_grpc
from services.common.config import RspoConfig

ROOT = Path(__file__).resolve().parents[2]


def write_config(cfg: RspoConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


@dataclass
class ServiceProcess:
    name: str
    config_path: Path
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSPO__")}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-m", "services.cli", "serve", self.name, "--config", str(self.config_path)]
        with self.log_path.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"{self.name} not SERVING after {timeout_s}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: a crash, no drain, no cleanup."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 20.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Every process a test starts; all are stopped at teardown."""

    items: list[ServiceProcess] = field(default_factory=list)

    def start(self, name: str, cfg: RspoConfig, tmp: Path, tag: str = "") -> ServiceProcess:
        label = f"{name}{tag}"
        path = write_config(cfg, tmp / f"{label}.yaml")
        port = int(getattr(cfg, name).port)
        sp = ServiceProcess(name, path, tmp / f"{label}.log", port).start()
        self.items.append(sp)
        return sp

    def stop_all(self) -> None:
        for sp in reversed(self.items):
            sp.terminate(timeout_s=10)


def learner_status(address: str) -> learner_pb2.LearnerStatus:
    with grpc.insecure_channel(address) as ch:
        return learner_pb2_grpc.LearnerServiceStub(ch).GetStatus(learner_pb2.LearnerStatusRequest(), timeout=5)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Blackhole:
    """A TCP listener that accepts connections and never answers: calls to it hang until their deadline."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self._conns:
            c.close()
