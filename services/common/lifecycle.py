"""Process lifecycle shared by every service: signals, the worker task, graceful drain.

On SIGTERM/SIGINT: health goes NOT_SERVING, the worker loop is asked to stop at
its next boundary (unfinished queue entries stay pending for reclaim), in-flight
RPCs get `drain_timeout_s`, then the process exits. A worker that crashes takes
the process down with a non-zero exit (an orchestrator restarts it): a service
never keeps answering health checks with a dead loop behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.grpc_server import ServerHandle, mark_not_serving, stop_server

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-main thread / platform
            loop.add_signal_handler(sig, stop.set)


async def run_service(
    handle: ServerHandle,
    worker: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None,
    stop: asyncio.Event,
    drain_timeout_s: float,
    *,
    worker_done_stops: bool = False,
) -> None:
    """Run `worker(stop)` beside the server until a stop signal (or the worker ends / fails)."""
    task: asyncio.Task[None] | None = asyncio.create_task(worker(stop)) if worker else None
    stopper = asyncio.create_task(stop.wait())
    try:
        waits: set[asyncio.Future[Any]] = {stopper} | ({task} if task else set())
        while True:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # re-raise a crash
                waits.discard(task)
                if worker_done_stops:
                    break
                continue
            break
    finally:
        log.info("stopping: health NOT_SERVING, draining for up to %.1fs", drain_timeout_s)
        await mark_not_serving(handle)
        stop.set()
        if task and not task.done():
            try:
                await asyncio.wait_for(task, timeout=drain_timeout_s)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        stopper.cancel()
        await stop_server(handle, drain_timeout_s)
