"""Run untrusted Python against tests in a separate, locked-down process.

Each run gets:
- a throwaway working directory (removed afterwards) and a clean environment
  (PATH, HOME=workdir, LANG only: no inherited secrets);
- kernel isolation picked once per process by `detect_isolation()`:
  * `root`: `unshare --net --pid --fork --kill-child --setuid U --setgid U`:
    no network (empty net namespace), own PID namespace (every process the code
    starts dies with it), and an unprivileged uid U of its own (from a pool), so it
    cannot write outside world-writable places and RLIMIT_NPROC applies per run
    (root ignores it);
  * `userns` (unprivileged service): `unshare --map-root-user --net --pid --fork --kill-child`;
  * `none` (no usable unshare): sockets are refused by an audit hook in the child.
    That hook is defence in depth only: ctypes can get around it;
- resource limits set with `resource.setrlimit` in `preexec_fn` (inherited through
  exec): CPU seconds, address space, process count, file size, open files;
- a wall-clock timeout that kills the whole process group, and a cap on output.
Where the service cannot drop privileges (not root), the audit hook also refuses writes
outside the working directory (again defence in depth, bypassable with ctypes).

Results come back as lines on stdout tagged with a per-run random nonce, so a
program's own prints cannot pass for results. Code that introspects the harness
frames could still read the nonce: this sandbox contains hostile code, it does not
make reward hacking by harness introspection impossible.

Tests are either assert statements (`["assert f(2) == 4", ...]`, run after the code
in its namespace) or stdin/stdout cases (`[{"input": "1 2", "output": "3"}, ...]`,
the code run once per case as `__main__`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

NOBODY = 65534


class Reason(str, enum.Enum):
    PASSED = "passed"  # every test passed
    FAILED = "failed"  # ran to the end, some tests failed
    CODE_ERROR = "code_error"  # the code itself raised (syntax error, exception at import)
    TIMEOUT = "timeout"  # wall-clock limit
    CPU_LIMIT = "cpu_limit"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    FILE_LIMIT = "file_limit"
    CRASH = "crash"  # died without finishing (signal, os._exit, fork failure...)
    SANDBOX_ERROR = "sandbox_error"  # our side failed: not the code's fault


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512
    max_processes: int = 32
    max_output_bytes: int = 1 << 20
    max_file_bytes: int = 1 << 20
    max_open_files: int = 64
    test_timeout_s: float = 5.0


@dataclass(frozen=True)
class SandboxResult:
    passed: int
    total: int
    reason: Reason
    detail: str
    wall_s: float
    isolation: str

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass(frozen=True)
class Isolation:
    name: str  # "root", "userns" or "none"
    prefix: tuple[str, ...]
    python: str
    # Whether the kernel removes the network (else only the audit hook refuses sockets).
    kernel_network: bool
    # Whether we drop to an unprivileged uid ourselves (root mode); the uid is chosen per run.
    drops_privileges: bool


class _UidPool:
    """Unprivileged uids for root mode, one per concurrent run.

    RLIMIT_NPROC counts processes per uid: with one shared uid (`nobody`) a fork bomb in
    one run would starve every other run of processes. The uids need no passwd entry; the
    range starts at a per-process offset so replicas on one host rarely share one.
    """

    def __init__(self, base: int, size: int) -> None:
        self.free = list(range(base, base + size))

    def acquire(self) -> int:
        if not self.free:
            raise OSError("no free sandbox uid (too many concurrent sandboxes)")
        return self.free.pop()

    def release(self, uid: int) -> None:
        self.free.append(uid)


_UIDS = _UidPool(base=200_000 + (os.getpid() % 4096) * 256, size=256)


def _works(argv: Sequence[str]) -> bool:
    try:
        done = subprocess.run([*argv, "-I", "-S", "-c", "pass"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=4)
def detect_isolation(python: str | None = None) -> Isolation:
    """The strongest isolation this host permits, probed once (cached per interpreter)."""
    unshare = shutil.which("unshare")
    base = (unshare, "--net", "--pid", "--fork", "--kill-child") if unshare else None
    # The service's own interpreter may live under a private home; `nobody` needs one it can run.
    candidates = [python] if python else [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    if base and os.geteuid() == 0:
        ids = ("--setuid", str(NOBODY), "--setgid", str(NOBODY))
        for py in candidates:
            if py and os.path.exists(py) and _works([*base, *ids, py]):
                return Isolation("root", base, py, True, True)
    py = python or sys.executable
    if base and _works([base[0], "--map-root-user", *base[1:], py]):
        return Isolation("userns", (base[0], "--map-root-user", *base[1:]), py, True, False)
    log.warning("sandbox: no usable 'unshare'; network is blocked only by an in-process audit hook")
    return Isolation("none", (), py, False, False)


def _user_task_count() -> int:
    """Processes + threads of our uid: RLIMIT_NPROC counts them all, not just the sandbox's."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
    return count


def _set_limits(limits: SandboxLimits, nproc: int) -> None:
    """preexec_fn: runs in the child between fork and exec; limits survive exec and setuid."""
    mem = limits.memory_mb << 20
    for res, value in (
        (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),  # soft: SIGXCPU, hard: SIGKILL
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)


def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir}


# Runs inside the sandboxed interpreter. Reads the job from stdin, guards, runs tests.
HARNESS = r"""
import io, json, os, signal, sys
job = json.loads(sys.stdin.read())
sys.stdin.close()
sys.stdin = io.StringIO("")
NONCE = job["nonce"]
_out = os.fdopen(os.dup(1), "w", buffering=1)
_root = os.path.realpath(os.getcwd())
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == _root or p.startswith(_root + os.sep) or p == "/dev/null"

def _hook(event, args):
    if job["guard_net"] and event.startswith("socket."):
        raise PermissionError("network access is disabled in the sandbox")
    if not job["guard_files"]:
        return
    if event == "open" and args[0] is not None:
        mode, flags = args[1] or "", args[2] or 0
        if (any(c in str(mode) for c in "wax+") or flags & _WRITE) and not _inside(args[0]):
            raise PermissionError("writing outside the sandbox directory is not allowed")
    if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod"):
        if not _inside(args[0]):
            raise PermissionError("changing files outside the sandbox directory is not allowed")

sys.addaudithook(_hook)

class _Cap(io.StringIO):
    def write(self, s):
        if self.tell() + len(s) > job["max_output"]:
            raise OverflowError("output limit exceeded")
        return super().write(s)

def _alarm(signum, frame):
    raise TimeoutError("test time limit exceeded")

signal.signal(signal.SIGALRM, _alarm)
# As PID 1 of its namespace this process ignores signals it has no handler for, SIGXCPU
# included; exit with the conventional 128+signal code instead.
signal.signal(signal.SIGXCPU, lambda signum, frame: os._exit(128 + signum))

def _report(i, ok, why=""):
    _out.write("%s %s %s %s\n" % (NONCE, i, "pass" if ok else "fail", why.replace("\n", " ")[:300]))

def _why(err):
    return "%s: %s" % (type(err).__name__, err)

def _run(fn):
    signal.setitimer(signal.ITIMER_REAL, job["test_timeout"])
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

try:
    code = compile(job["code"], "solution.py", "exec")
except BaseException as err:
    _out.write("%s code_error %s\n" % (NONCE, _why(err).replace("\n", " ")[:300]))
    sys.exit(0)
if job["io"]:
    for i, case in enumerate(job["tests"]):
        sys.stdin, buf = io.StringIO(case["input"]), _Cap()
        sys.stdout = buf
        try:
            try:
                _run(lambda: exec(code, {"__name__": "__main__"}))
            except SystemExit as e:
                if e.code not in (None, 0):
                    raise
        except BaseException as err:
            sys.stdout = sys.__stdout__
            _report(i, False, _why(err))
            continue
        sys.stdout = sys.__stdout__
        norm = lambda t: "\n".join(l.rstrip() for l in t.strip().splitlines())
        _report(i, norm(buf.getvalue()) == norm(case["output"]), "wrong output")
else:
    ns = {"__name__": "__solution__"}
    try:
        _run(lambda: exec(code, ns))
    except BaseException as err:
        _out.write("%s code_error %s\n" % (NONCE, _why(err).replace("\n", " ")[:300]))
        sys.exit(0)
    for i, test in enumerate(job["tests"]):
        try:
            _run(lambda: exec(test, ns))
        except BaseException as err:
            _report(i, False, _why(err))
        else:
            _report(i, True)
_out.write("%s done\n" % NONCE)
"""


async def _read_capped(stream: asyncio.StreamReader | None, cap: int) -> tuple[bytes, bool]:
    """Read until EOF or `cap` bytes; True when the cap was hit (the caller kills the process)."""
    buf = bytearray()
    if stream is None:
        return b"", False
    while chunk := await stream.read(1 << 16):
        if len(buf) + len(chunk) > cap:
            buf += chunk[: cap - len(buf)]
            return bytes(buf), True
        buf += chunk
    return bytes(buf), False


async def _await_reads(reads: list[asyncio.Task[tuple[bytes, bool]]], wall_s: float) -> tuple[bool, bool]:
    """Wait for both pipes to reach EOF; stop early when one hits the output cap or time runs out.

    Returns (output_over, timed_out)."""
    deadline = time.monotonic() + wall_s
    pending: set[asyncio.Task[tuple[bytes, bool]]] = set(reads)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, True
        done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if any(task.result()[1] for task in done):
            return True, False
    return False, False


def _kill_group(pid: int) -> None:
    # The child leads its own session; killing the group takes every process it started
    # (and with a PID namespace, init's death takes the rest with it).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for exit. asyncio's wait() also waits for the pipes to close, so drain what the dead
    processes left in them; if something still holds a pipe open, close our ends instead."""

    async def discard(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and await stream.read(1 << 16):
            pass

    try:
        await asyncio.wait_for(asyncio.gather(discard(proc.stdout), discard(proc.stderr), proc.wait()), 5.0)
    except (asyncio.TimeoutError, TimeoutError):
        log.warning("sandbox process %d did not release its pipes after SIGKILL", proc.pid)
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()


@dataclass
class _Outcome:
    stdout: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool
    output_over: bool


async def _run_child(argv: Sequence[str], stdin: bytes, workdir: str, limits: SandboxLimits, nproc: int) -> _Outcome:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
        env=_clean_env(workdir),
        preexec_fn=functools.partial(_set_limits, limits, nproc),
        start_new_session=True,
        close_fds=True,
    )
    timed_out = over = False
    out = err = b""
    try:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
        reads = [
            asyncio.create_task(_read_capped(proc.stdout, limits.max_output_bytes)),
            asyncio.create_task(_read_capped(proc.stderr, limits.max_output_bytes)),
        ]
        over, timed_out = await _await_reads(reads, limits.wall_s)
        for task in reads:
            task.cancel()
        if reads[0].done() and not reads[0].cancelled():
            out = reads[0].result()[0]
        if reads[1].done() and not reads[1].cancelled():
            err = reads[1].result()[0]
        if not (over or timed_out):
            await asyncio.wait_for(proc.wait(), limits.wall_s)
    except (asyncio.TimeoutError, TimeoutError):
        timed_out = True
    finally:
        # Always: stray children (daemons, a fork bomb) must not outlive the run. This also
        # runs on cancellation (group timeout), so no sandbox is left behind.
        _kill_group(proc.pid)
        await _reap(proc)
    return _Outcome(out, err, proc.returncode, timed_out, over)


def _signal_reason(rc: int | None) -> tuple[Reason, str] | None:
    if rc is None or rc == 0:
        return None
    if rc == 128 + signal.SIGXCPU:  # the harness's SIGXCPU handler (see HARNESS)
        rc = -signal.SIGXCPU
    if rc > 0:
        return None
    sig = -rc
    if sig == signal.SIGXCPU:
        return Reason.CPU_LIMIT, "CPU time limit exceeded"
    if sig == signal.SIGXFSZ:
        return Reason.FILE_LIMIT, "file size limit exceeded"
    return Reason.CRASH, f"killed by signal {signal.Signals(sig).name}"


def _classify(o: _Outcome, nonce: str, total: int, limits: SandboxLimits) -> tuple[int, Reason, str]:
    results: dict[int, tuple[bool, str]] = {}
    done, code_error = False, ""
    for raw in o.stdout.decode("utf-8", "replace").splitlines():
        head, _, rest = raw.partition(" ")
        if head != nonce:
            continue  # the program's own output
        kind, _, why = rest.partition(" ")
        if kind == "done":
            done = True
        elif kind == "code_error":
            code_error = why
        elif kind.isdigit() and int(kind) < total:
            status, _, msg = why.partition(" ")
            results[int(kind)] = (status == "pass", msg)
    passed = sum(ok for ok, _ in results.values())
    failures = [f"test {i}: {msg}" for i, (ok, msg) in sorted(results.items()) if not ok]
    stderr_tail = o.stderr.decode("utf-8", "replace")[-300:].strip()
    if o.timed_out:
        return passed, Reason.TIMEOUT, f"wall-clock limit {limits.wall_s}s exceeded"
    if o.output_over:
        return passed, Reason.OUTPUT_LIMIT, f"output over {limits.max_output_bytes} bytes"
    by_signal = _signal_reason(o.returncode)
    if by_signal is not None:
        return passed, *by_signal
    if "MemoryError" in stderr_tail + code_error or any("MemoryError" in f for f in failures):
        return passed, Reason.MEMORY, f"memory limit {limits.memory_mb} MiB exceeded"
    if code_error:
        return 0, Reason.CODE_ERROR, code_error
    if not done:
        return passed, Reason.CRASH, f"exited with code {o.returncode} before finishing: {stderr_tail}"
    if passed == total:
        return passed, Reason.PASSED, ""
    return passed, Reason.FAILED, "; ".join(failures)[:500]


async def run_tests(
    code: str,
    tests: Sequence[str] | Sequence[dict[str, Any]],
    limits: SandboxLimits = SandboxLimits(),
    isolation: Isolation | None = None,
) -> SandboxResult:
    """Run `code` against `tests` in a fresh sandbox; never raises for anything the code does."""
    iso: Isolation = isolation if isolation is not None else await asyncio.to_thread(detect_isolation)
    is_io = bool(tests) and isinstance(tests[0], dict)
    nonce = secrets.token_hex(16)
    job = {
        "nonce": nonce,
        "code": code,
        "tests": list(tests),
        "io": is_io,
        "max_output": limits.max_output_bytes,
        "test_timeout": limits.test_timeout_s,
        # In-process guards only where the kernel does not already enforce the same thing.
        "guard_net": not iso.kernel_network,
        "guard_files": not iso.drops_privileges,
    }
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rspo-sandbox-")
    uid = _UIDS.acquire() if iso.drops_privileges else None
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
            ids = ("--setuid", str(uid), "--setgid", str(uid))
            argv = [*iso.prefix, *ids, iso.python, "-I", "-S", "-c", HARNESS]
            # A uid of its own: RLIMIT_NPROC counts only this run's processes.
            nproc = limits.max_processes
        else:
            argv = [*iso.prefix, iso.python, "-I", "-S", "-c", HARNESS]
            # Our uid: the service's own processes and threads count toward the limit too.
            nproc = _user_task_count() + limits.max_processes
        outcome = await _run_child(argv, json.dumps(job).encode(), workdir, limits, nproc)
    except OSError as err:
        return SandboxResult(
            0, len(tests), Reason.SANDBOX_ERROR, f"could not start sandbox: {err}", time.monotonic() - start, iso.name
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)
    passed, reason, detail = _classify(outcome, nonce, len(tests), limits)
    return SandboxResult(passed, len(tests), reason, detail, time.monotonic() - start, iso.name)
