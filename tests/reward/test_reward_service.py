"""The reward service over real gRPC: scoring, request validation, overload, timeouts, health."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import grpc
import pytest

from rspo_proto.v1 import reward_pb2, reward_pb2_grpc
from services.reward.servicer import RewardServicer
from tests.reward.reward_helpers import ROOT, SERVING, group, health_status, reward_config, running

OK = reward_pb2.REWARD_STATUS_OK
CALLABLES = "tests.reward.reward_callables"


def test_servicer_implements_every_rpc_in_the_proto() -> None:
    methods = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].methods_by_name
    for name in methods:
        impl = getattr(RewardServicer, name)
        assert impl is not getattr(reward_pb2_grpc.RewardServiceServicer, name), name


def test_score_group_and_batch() -> None:
    async def body() -> None:
        async with running(reward_config()) as (_handle, _, stub):
            reply = await stub.ScoreGroup(group(["7", "3", " 7"]), timeout=5)
            assert reply.group_id == "g-1"
            assert [(r.status, r.value) for r in reply.rewards] == [(OK, 1.0), (OK, 0.0), (OK, 1.0)]
            assert reply.rewards[0].components["task"] == 1.0
            batch = await stub.ScoreBatch(
                reward_pb2.ScoreBatchRequest(groups=[group(["7"], group_id="a"), group(["1"], group_id="b")]),
                timeout=5,
            )
            assert [g.group_id for g in batch.groups] == ["a", "b"]
            assert [g.rewards[0].value for g in batch.groups] == [1.0, 0.0]

    asyncio.run(body())


@pytest.mark.parametrize(
    ("fields", "code", "needle"),
    [
        ({"group_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "group_id"),
        ({"task": "no_such_task"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown task"),
        ({"reference_json": "{not json"}, grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        ({"reference_json": "[1]"}, grpc.StatusCode.INVALID_ARGUMENT, "JSON object"),
        ({"responses": []}, grpc.StatusCode.INVALID_ARGUMENT, "at least one"),
        ({"responses": ["7"] * 9}, grpc.StatusCode.INVALID_ARGUMENT, "max_responses_per_group"),
        ({"prompt": "x" * 20_000}, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_bad_requests_are_refused_and_the_server_stays_healthy(
    fields: dict[str, object], code: grpc.StatusCode, needle: str
) -> None:
    async def body() -> None:
        cfg = reward_config(max_responses_per_group=8, max_message_bytes=8192)
        async with running(cfg) as (handle, _, stub):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ScoreGroup(group(**{"responses": ["7"], **fields}), timeout=5)
            assert info.value.code() == code
            assert needle in (info.value.details() or "")
            assert await health_status(handle.address) == SERVING
            assert (await stub.ScoreGroup(group(["7"]), timeout=5)).rewards[0].value == 1.0

    asyncio.run(body())


def test_overload_is_refused_with_resource_exhausted() -> None:
    slow = [{"kind": "python", "options": {"function": f"{CALLABLES}:slow_reward"}}]

    async def body() -> None:
        async with running(reward_config(slow, max_concurrent_groups=1)) as (_handle, worker, stub):
            first = asyncio.ensure_future(stub.ScoreGroup(group(["a"]), timeout=5))
            while worker.in_flight == 0:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ScoreGroup(group(["b"]), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await first).rewards[0].status == OK
            assert worker.in_flight == 0

    asyncio.run(body())


def test_group_timeout_gives_timeout_statuses() -> None:
    slow = [{"kind": "python", "options": {"function": f"{CALLABLES}:slow_reward"}}]

    async def body() -> None:
        async with running(reward_config(slow, score_timeout_s=0.1)) as (handle, _worker, stub):
            reply = await stub.ScoreGroup(group(["a", "b"]), timeout=5)
            assert [r.status for r in reply.rewards] == [reward_pb2.REWARD_STATUS_TIMEOUT] * 2
            assert all(r.value == 0.0 and "score_timeout_s" in r.message for r in reply.rewards)
            assert await health_status(handle.address) == SERVING

    asyncio.run(body())


def test_stop_marks_not_serving() -> None:
    from services.reward.main import shutdown, start

    async def body() -> None:
        handle, worker = await start(reward_config(), port=0)
        assert await health_status(handle.address, "") == SERVING
        await shutdown(handle, worker, 0.1)

    asyncio.run(body())


SERVE = """
import asyncio
from services.common.config import parse_config
from services.reward.main import serve
cfg = parse_config({"reward": {"port": 0, "drain_timeout_s": 1.0}}, env={})
asyncio.run(serve(cfg, ready=lambda port: print("LISTENING", port, flush=True)))
print("STOPPED", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_gracefully_on_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING"), line
        address = f"127.0.0.1:{line.split()[1]}"
        assert asyncio.run(health_status(address)) == SERVING
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "STOPPED" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
