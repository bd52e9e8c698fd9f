"""Every servicer implements every RPC of its proto, and bad RPCs get the right status code while the
server stays healthy. Real servers on free ports; the clients send raw bytes to bypass client-side checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rspo_proto.v1 import learner_pb2, reward_pb2, rollout_pb2, rollout_pb2_grpc, sample_pb2
from services.common.config import RspoConfig
from services.common.grpc_server import ServerHandle
from services.common.redis_server import EmbeddedRedis
from services.learner.servicer import LearnerServicer
from services.reward.servicer import RewardServicer
from services.rollout.servicer import RolloutServicer
from tests.conftest import small_config


@pytest.mark.parametrize(
    ("servicer", "descriptor"),
    [
        (LearnerServicer, learner_pb2.DESCRIPTOR.services_by_name["LearnerService"]),
        (RolloutServicer, rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"]),
        (RewardServicer, reward_pb2.DESCRIPTOR.services_by_name["RewardService"]),
    ],
)
def test_servicer_implements_every_rpc(servicer: type, descriptor) -> None:  # type: ignore[no-untyped-def]
    for method in descriptor.methods:
        impl = getattr(servicer, method.name, None)
        assert impl is not None, f"{servicer.__name__} lacks {method.name}"
        # The generated base class raises UNIMPLEMENTED; the servicer must override it.
        base = servicer.__mro__[1]
        assert impl is not getattr(base, method.name), f"{servicer.__name__}.{method.name} is not implemented"


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(resp.status)


async def raw_call(address: str, method: str, payload: bytes) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            await call(payload, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


@pytest.fixture
def cfg(tmp_path: Path, redis_server: EmbeddedRedis) -> RspoConfig:
    return small_config(
        tmp_path / "run",
        redis_server.url,
        **{"learner.max_message_bytes": 1 << 16, "rollout.max_message_bytes": 1 << 16},
    )


async def started_learner(cfg: RspoConfig, run_dir: Path) -> AsyncIterator[ServerHandle]:
    from services.learner.main import start

    handle, worker = await start(cfg, run_dir)
    await worker.restore()  # publishes policy version 1
    try:
        yield handle
    finally:
        await handle.server.stop(0)
        await worker.client.aclose()


def test_learner_bad_rpcs(cfg: RspoConfig, tmp_path: Path) -> None:
    async def go() -> None:
        gen = started_learner(cfg, tmp_path / "run")
        handle = await gen.__anext__()
        addr = handle.address
        garbage = b"\xff\xff\xff\xff\x0f"
        assert await raw_call(addr, "/rspo.v1.LearnerService/GetStatus", garbage) == grpc.StatusCode.INVALID_ARGUMENT
        big = learner_pb2.FetchWeightsRequest(version=1).SerializeToString() + b"\x00" * (1 << 17)
        assert await raw_call(addr, "/rspo.v1.LearnerService/GetStatus", big) == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with grpc.aio.insecure_channel(addr) as ch:
            stream = ch.unary_stream(
                "/rspo.v1.LearnerService/FetchWeights",
                request_serializer=learner_pb2.FetchWeightsRequest.SerializeToString,
                response_deserializer=learner_pb2.WeightChunk.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream(learner_pb2.FetchWeightsRequest(version=99), timeout=10):
                    pass
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert await health(addr) == health_pb2.HealthCheckResponse.SERVING
        await gen.aclose()

    asyncio.run(go())


def test_rollout_bad_rpcs(cfg: RspoConfig) -> None:
    from services.rollout.main import start

    async def go() -> None:
        handle, worker = await start(cfg)
        addr = handle.address
        try:
            bad = b"\x0a\x05\xff\xff"
            assert await raw_call(addr, "/rspo.v1.RolloutService/Generate", bad) == grpc.StatusCode.INVALID_ARGUMENT
            huge = b"\x00" * (1 << 17)
            assert await raw_call(addr, "/rspo.v1.RolloutService/Generate", huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = rollout_pb2_grpc.RolloutServiceStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Generate(rollout_pb2.GenerateRequest(tasks=[sample_pb2.PromptTask(n=0)]), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                ids = worker.backend.encode("3 1 2 =")
                ok = await stub.Generate(
                    rollout_pb2.GenerateRequest(tasks=[sample_pb2.PromptTask(group_id="g", prompt_token_ids=ids, n=3)]),
                    timeout=30,
                )
                assert len(ok.groups) == 1 and len(ok.groups[0].samples) == 3
                assert all(len(s.logprobs) == len(s.token_ids) > 0 for s in ok.groups[0].samples)
            assert await health(addr) == health_pb2.HealthCheckResponse.SERVING
        finally:
            await handle.server.stop(0)
            await worker.client.aclose()

    asyncio.run(go())
