"""Building, running and stopping the async gRPC servers of every service.

`start_server` builds a server apart from serving it (tests bind port 0 and get
the real port back), adds the standard health service and, optionally,
reflection, and applies the message-size limits. `rpc_errors` is the one place
that turns the error taxonomy into gRPC status codes. `stop_server` flips health
to NOT_SERVING first so load balancers stop routing, then drains with a grace period.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import RspoError
from services.common.telemetry import get_telemetry

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class ServerHandle:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


async def start_server(
    *,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    max_message_bytes: int,
    reflection_enabled: bool = True,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> ServerHandle:
    """Create, register and start a server; `port=0` picks a free port (returned in the handle).

    `service_names` are full proto service names (e.g. "rspo.v1.RewardService"); each is
    marked SERVING in the health service, as is the overall "" service.
    """
    server = grpc.aio.server(options=server_options(max_message_bytes), interceptors=list(interceptors))
    register(_SafeRegistrar(server))  # type: ignore[arg-type]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    if reflection_enabled:
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {host}:{port}; is the port in use? set the port in the config")
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC server for %s listening on %s:%d", ", ".join(names), host, bound)
    return ServerHandle(server=server, port=bound, health=health_servicer, service_names=names)


async def mark_not_serving(handle: ServerHandle) -> None:
    for name in ("", *handle.service_names):
        await handle.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


async def stop_server(handle: ServerHandle, grace_s: float) -> None:
    """Health to NOT_SERVING, then stop accepting and let in-flight RPCs finish within `grace_s`."""
    await mark_not_serving(handle)
    await handle.server.stop(grace_s)


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse; servicers answer it with INVALID_ARGUMENT.

    By default grpc answers a deserialization failure with INTERNAL, which a client would
    treat as our bug; the caller sent bad bytes, so the right code is INVALID_ARGUMENT.
    """

    error: str


def _safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as err:  # protobuf's DecodeError and friends
            return MalformedRequest(f"{type(err).__name__}: {err}")

    return parse


def _with_safe_deserializer(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_deserializer is None:
        return handler
    return handler._replace(request_deserializer=_safe_deserializer(handler.request_deserializer))  # type: ignore[attr-defined, no-any-return]


class _SafeRegistrar:
    """Passed to generated `add_*Servicer_to_server`: wraps every method's request deserializer."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        pass  # the registered-method table below replaces the generic handler

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        # Telemetry (a SERVER span from the caller's traceparent, per-method metrics) when it is set up.
        tel = get_telemetry()
        safe = {name: tel.wrap_handler(service, name, _with_safe_deserializer(h)) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, safe),))
        self._server.add_registered_method_handlers(service, safe)


async def _abort_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, MalformedRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")


def rpc_errors(fn: F) -> F:
    """Servicer-method decorator: map taxonomy errors to their status code, anything else to INTERNAL.

    The servicer stays thin: it converts, calls the worker, and lets this decorator
    report failures with the right code.
    """

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort_malformed(request, context)
        try:
            return await fn(self, request, context)
        except RspoError as err:
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # a bug: report it as INTERNAL, keep serving
            log.exception("unhandled error in %s", fn.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")

    return wrapper  # type: ignore[return-value]


def rpc_stream_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Like `rpc_errors` for server-streaming methods written as async generators."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort_malformed(request, context)
        try:
            async for item in fn(self, request, context):  # type: ignore[attr-defined]
                yield item
        except RspoError as err:
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            log.exception("unhandled error in %s", fn.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")

    return wrapper  # type: ignore[return-value]
