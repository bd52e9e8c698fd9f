#!/usr/bin/env python3
"""A minimal external reward service, built only from `reward.proto` and docs/reward-protocol.md.

It imports nothing from this project: at startup it compiles the .proto with
grpc_tools.protoc into a temporary folder and imports the generated modules from
there, exactly as a team bringing its own grader would.

Scoring: exact match of the whitespace-normalised response with reference["answer"]
-> 1.0 + BONUS, else BONUS (the bonus lets a test tell these rewards were used).

Fault modes for tests (--mode):
  ok       score as above
  slow     sleep --delay seconds first (to hit the caller's deadline)
  flaky    the first --fail-count calls fail with UNAVAILABLE, later calls are ok
  garbage  unusable answers: if the prompt is "count", "nan" or "range" that variant,
           else rotate through them (wrong number of rewards, NaN, 1e12)

Usage: python examples/external_reward_server.py --port 0 [--mode ok] [--bonus 0.5]
Prints "LISTENING <port>" on stdout once serving. Requires: grpcio, grpcio-tools
(grpcio-health-checking optional: adds the standard health service).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_tools import protoc

DEFAULT_PROTO = Path(__file__).resolve().parent.parent / "protos" / "rspo_proto" / "v1" / "reward.proto"


def compile_proto(proto: Path) -> tuple[ModuleType, ModuleType]:
    """protoc the contract into a temp dir and import `reward_pb2`, `reward_pb2_grpc` from it."""
    out = Path(tempfile.mkdtemp(prefix="reward-proto-"))
    shutil.copy(proto, out / "reward.proto")
    include = str(Path(protoc.__file__).parent / "_proto")  # well-known types shipped with grpc_tools
    rc = protoc.main(
        [
            "protoc",
            f"-I{out}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(out / "reward.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed on {proto} (exit {rc})")
    sys.path.insert(0, str(out))
    return importlib.import_module("reward_pb2"), importlib.import_module("reward_pb2_grpc")


def normalise(text: str) -> str:
    return " ".join(text.split())


def build_servicer(pb2: ModuleType, pb2_grpc: ModuleType, args: argparse.Namespace) -> Any:
    calls = itertools.count()
    variants = itertools.cycle(["count", "nan", "range"])

    def exact(reference_json: str, response: str) -> Any:
        try:
            answer = json.loads(reference_json or "{}").get("answer")
        except (ValueError, AttributeError):
            return pb2.Reward(status=pb2.REWARD_STATUS_INVALID, message="reference_json is not a JSON object")
        if answer is None:
            return pb2.Reward(status=pb2.REWARD_STATUS_INVALID, message="reference has no 'answer'")
        hit = normalise(response) == normalise(str(answer))
        return pb2.Reward(
            value=float(hit) + args.bonus,
            status=pb2.REWARD_STATUS_OK,
            components={"exact": float(hit), "bonus": args.bonus},
        )

    def garbage(request: Any) -> list[Any]:
        variant = request.prompt if request.prompt in ("count", "nan", "range") else next(variants)
        n = len(request.responses)
        if variant == "count":
            return [pb2.Reward(value=1.0, status=pb2.REWARD_STATUS_OK)] * (n + 1)
        value = math.nan if variant == "nan" else 1e12
        return [pb2.Reward(value=value, status=pb2.REWARD_STATUS_OK) for _ in range(n)]

    class Servicer(pb2_grpc.RewardServiceServicer):  # type: ignore[misc,name-defined]
        async def _authorise(self, context: Any) -> None:
            if args.require_token_env:
                want = f"Bearer {os.environ.get(args.require_token_env, '')}"
                got = dict(context.invocation_metadata()).get("authorization")
                if got != want:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def _group(self, request: Any, context: Any) -> Any:
            call = next(calls)
            if args.mode == "flaky" and call < args.fail_count:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky mode: failing call {call}")
            if args.mode == "slow":
                await asyncio.sleep(args.delay)
            if args.mode == "garbage":
                rewards = garbage(request)
            else:
                rewards = [exact(request.reference_json, r) for r in request.responses]
            return pb2.ScoreGroupResponse(group_id=request.group_id, rewards=rewards)

        async def ScoreGroup(self, request: Any, context: Any) -> Any:
            await self._authorise(context)
            return await self._group(request, context)

        async def ScoreBatch(self, request: Any, context: Any) -> Any:
            await self._authorise(context)
            return pb2.ScoreBatchResponse(groups=[await self._group(g, context) for g in request.groups])

    return Servicer()


async def add_health(server: grpc.aio.Server) -> Any:
    try:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    except ImportError:  # optional: the protocol does not require it, load balancers like it
        return None
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", "rspo.v1.RewardService"):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


async def main(args: argparse.Namespace) -> None:
    pb2, pb2_grpc = compile_proto(Path(args.proto))
    server = grpc.aio.server()
    pb2_grpc.add_RewardServiceServicer_to_server(build_servicer(pb2, pb2_grpc, args), server)
    await add_health(server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    print(f"LISTENING {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50060, help="0 picks a free port (printed as LISTENING <port>)")
    p.add_argument("--proto", default=str(DEFAULT_PROTO), help="path to reward.proto")
    p.add_argument("--mode", choices=["ok", "slow", "flaky", "garbage"], default="ok")
    p.add_argument("--bonus", type=float, default=0.0, help="added to every OK reward")
    p.add_argument("--delay", type=float, default=5.0, help="slow mode: seconds to sleep per call")
    p.add_argument("--fail-count", type=int, default=2, help="flaky mode: calls that fail before it recovers")
    p.add_argument("--require-token-env", default=None, help="env var with the bearer token callers must send")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
