"""Hostile code in the sandbox: each attack is contained, scored as a failure with a reason,
and the reward service stays healthy. Also graded vs binary code rewards."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from rspo_proto.v1 import reward_pb2
from services.reward.sandbox import Reason, SandboxLimits, detect_isolation, run_tests
from tests.reward.reward_helpers import SERVING, group, health_status, reward_config, running

LIMITS = SandboxLimits(wall_s=2.0, cpu_s=1, memory_mb=256, max_processes=16, max_output_bytes=64 << 10)


def run(code: str, tests: list[str]) -> tuple[int, Reason, str]:
    result = asyncio.run(run_tests(code, tests, LIMITS))
    return result.passed, result.reason, result.detail


def test_passing_and_failing_code() -> None:
    assert run("def f(x): return 2 * x", ["assert f(2) == 4", "assert f(3) == 6"])[:2] == (2, Reason.PASSED)
    assert run("def f(x): return 4", ["assert f(2) == 4", "assert f(3) == 6"])[:2] == (1, Reason.FAILED)
    assert run("def f(x) return", ["assert True"])[1] is Reason.CODE_ERROR
    io = [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "5"}]
    result = asyncio.run(run_tests("a, b = map(int, input().split())\nprint(a + b)", io, LIMITS))
    assert (result.passed, result.reason) == (1, Reason.FAILED)


@pytest.mark.parametrize(
    ("code", "reasons"),
    [
        ("while True:\n    pass", {Reason.CPU_LIMIT, Reason.TIMEOUT}),
        ("import time\ntime.sleep(60)", {Reason.TIMEOUT}),
        (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            {Reason.TIMEOUT, Reason.CPU_LIMIT, Reason.CRASH},
        ),
        ("x = bytearray(4 << 30)", {Reason.MEMORY}),
        ("chunks = []\nwhile True:\n    chunks.append(' ' * (1 << 20))", {Reason.MEMORY}),
        ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", {Reason.OUTPUT_LIMIT}),
        ("import os\nwhile True:\n    os.write(1, b'x' * 65536)", {Reason.OUTPUT_LIMIT}),
    ],
    ids=["infinite_loop", "sleep", "fork_bomb", "memory_hog", "memory_creep", "huge_output", "huge_output_fd"],
)
def test_hostile_code_is_contained(code: str, reasons: set[Reason]) -> None:
    passed, reason, detail = run(code, ["assert True"])
    assert passed == 0
    assert reason in reasons, (reason, detail)
    assert detail


def test_network_is_unreachable() -> None:
    code = "import socket\ndef f():\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    return True"
    passed, reason, detail = run(code, ["assert f()"])
    assert (passed, reason) == (0, Reason.FAILED)
    assert "Network is unreachable" in detail or "network access is disabled" in detail


def test_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    code = f"def f():\n    open({str(target)!r}, 'w').write('x')\n    return True"
    passed, reason, detail = run(code, ["assert f()", "open('inside.txt', 'w').write('ok')"])
    assert (passed, reason) == (1, Reason.FAILED)  # writing inside its own directory is fine
    assert "Permission" in detail
    assert not target.exists()


def test_environment_secrets_are_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSPO_TEST_SECRET", "hunter2")
    code = "import os\nprint(os.environ)\ndef f():\n    return os.environ.get('RSPO_TEST_SECRET')"
    passed, reason, _ = run(code, ["assert f() is None", "assert 'HOME' in __import__('os').environ"])
    assert (passed, reason) == (2, Reason.PASSED)


def test_processes_die_with_the_run() -> None:
    # A daemonised child that would outlive a plain kill: it must be gone after the run.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '31.337'])\n"
        "print('PID', os.getpid())\n"
    )
    result = asyncio.run(run_tests(code, ["assert True"], LIMITS))
    assert result.reason is Reason.PASSED, result.detail
    iso = detect_isolation()
    if iso.name != "none":  # with a PID namespace nothing of the run survives
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _is_sleep_30(p)]
        assert not leftovers


def _is_sleep_30(pid: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmd == b"sleep\x0031.337\x00"


def test_code_scorer_in_the_service_graded_binary_and_hostile() -> None:
    scorers = [
        {"kind": "code", "options": {"name": "graded", "wall_s": 2.0, "cpu_s": 1, "memory_mb": 256}},
        {
            "kind": "code",
            "weight": 0.0,
            "options": {"name": "binary", "mode": "binary", "wall_s": 2.0, "cpu_s": 1, "memory_mb": 256},
        },
    ]
    reference = json.dumps({"tests": ["assert f(1) == 2", "assert f(2) == 4"]})
    responses = [
        "```python\ndef f(x):\n    return 2 * x\n```",
        "def f(x):\n    return 2",
        "while True: pass",
        "import os\nwhile True:\n    os.fork()",
        "x = bytearray(4 << 30)",
    ]

    async def body() -> None:
        async with running(reward_config(scorers)) as (handle, _, stub):
            reply = await stub.ScoreGroup(group(responses, task="code", reference_json=reference), timeout=20)
            values = [r.value for r in reply.rewards]
            assert all(r.status == reward_pb2.REWARD_STATUS_OK for r in reply.rewards)
            assert values == [1.0, 0.5, 0.0, 0.0, 0.0]
            assert [r.components["binary"] for r in reply.rewards] == [1.0, 0.0, 0.0, 0.0, 0.0]
            assert "memory" in reply.rewards[4].message
            assert await health_status(handle.address) == SERVING
            again = await stub.ScoreGroup(group(responses[:1], task="code", reference_json=reference), timeout=20)
            assert again.rewards[0].value == 1.0

    asyncio.run(body())
