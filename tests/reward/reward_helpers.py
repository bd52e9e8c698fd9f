"""Helpers for reward tests: configs, an in-process server, and the example external server as a process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc
from services.common.config import RspoConfig, ScorerSpec, parse_config
from services.common.grpc_server import ServerHandle
from services.reward.main import shutdown, start
from services.reward.worker import RewardWorker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "external_reward_server.py"


def reward_config(scorers: list[dict[str, Any]] | None = None, **reward: Any) -> RspoConfig:
    section: dict[str, Any] = {"port": 0, "drain_timeout_s": 0.5, **reward}
    if scorers is not None:
        section["scorers"] = [ScorerSpec(**s).model_dump() for s in scorers]
    return parse_config({"reward": section}, env={})


@contextlib.asynccontextmanager
async def running(cfg: RspoConfig) -> AsyncIterator[tuple[ServerHandle, RewardWorker, Any]]:
    """A real reward server on a free port plus a stub talking to it."""
    handle, worker = await start(cfg, port=0)
    channel = grpc.aio.insecure_channel(handle.address)
    try:
        yield handle, worker, reward_pb2_grpc.RewardServiceStub(channel)
    finally:
        await channel.close()
        await shutdown(handle, worker, 0.5)


async def health_status(address: str, service: str = "rspo.v1.RewardService") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return int(reply.status)


SERVING = int(health_pb2.HealthCheckResponse.SERVING)


def group(responses: list[str], answer: str = "7", task: str = "max_digit", **fields: Any) -> Any:
    import json

    base: dict[str, Any] = {
        "group_id": "g-1",
        "task": task,
        "prompt": "3 7 1 =",
        "reference_json": json.dumps({"answer": answer}),
        "responses": responses,
    }
    base.update(fields)
    return reward_pb2.ScoreGroupRequest(**base)


class ExternalServer:
    """`examples/external_reward_server.py` as a real process; stopped by its own PID."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.port = self._wait_listening(timeout_s=30.0)

    def _wait_listening(self, timeout_s: float) -> int:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"external server did not start: {line} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        return int(line[0].split()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def external(*args: str, env: dict[str, str] | None = None) -> Iterator[ExternalServer]:
    server = ExternalServer(*args, env=env)
    try:
        yield server
    finally:
        server.stop()
