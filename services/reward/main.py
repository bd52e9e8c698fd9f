"""Entry point of the reward service (`rspo serve reward --config FILE`).

`start` builds the worker and a started server (tests use it with port 0);
`serve` runs until SIGTERM/SIGINT, then marks health NOT_SERVING and drains
in-flight calls for `reward.drain_timeout_s` before closing the scorers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc

from rspo_proto.v1 import reward_pb2_grpc
from services.common.config import RspoConfig
from services.common.grpc_server import ServerHandle, start_server, stop_server
from services.reward.servicer import SERVICE_NAME, RewardServicer
from services.reward.worker import RewardWorker

log = logging.getLogger(__name__)


async def start(cfg: RspoConfig, *, port: int | None = None) -> tuple[ServerHandle, RewardWorker]:
    """Build the worker and start its server; `port` overrides `cfg.reward.port` (0 = any free port)."""
    rcfg = cfg.reward
    worker = RewardWorker(rcfg)
    servicer = RewardServicer(worker)

    def register(server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server)

    try:
        handle = await start_server(
            host=rcfg.host,
            port=rcfg.port if port is None else port,
            register=register,
            service_names=[SERVICE_NAME],
            max_message_bytes=rcfg.max_message_bytes,
            reflection_enabled=rcfg.reflection,
        )
    except BaseException:
        await worker.close()
        raise
    return handle, worker


async def shutdown(handle: ServerHandle, worker: RewardWorker, drain_s: float) -> None:
    await stop_server(handle, drain_s)
    await worker.close()


async def serve(cfg: RspoConfig, *, port: int | None = None, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; `ready(port)` is called once the server accepts calls."""
    handle, worker = await start(cfg, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not main thread / platform
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(handle.port)
    try:
        await stop.wait()
        log.info("reward service: draining for up to %.1fs", cfg.reward.drain_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await shutdown(handle, worker, cfg.reward.drain_timeout_s)
