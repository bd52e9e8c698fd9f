"""The error taxonomy shared by every service, and its one mapping to gRPC status codes.

Every failure a service reports is one of these classes. Each carries the gRPC
status code it maps to and whether retrying the same call can succeed. Clients
retry only `retryable` errors (see `services.common.retry`); servicers raise
these and `services.common.grpc_server` turns them into statuses in one place.
"""

from __future__ import annotations

import grpc

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


class RspoError(Exception):
    """Base class: a failure with a gRPC status code and a retryable flag."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RspoError, ValueError):
    """A configuration value is wrong; the message says how to fix it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidInput(RspoError, ValueError):
    """A request or payload is malformed; retrying it unchanged cannot succeed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PayloadTooLarge(RspoError):
    """A request exceeds a size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(RspoError):
    """The server is at capacity right now; back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(RspoError):
    """A dependency or the server itself is not reachable or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DeadlineExceeded(RspoError):
    """The work did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class NotFound(RspoError):
    """The requested object (e.g. a policy version) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RspoError):
    """The system is not in a state where the call can run (e.g. no weights yet)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    retryable = True


class DataCorruption(RspoError):
    """Bytes arrived damaged or incomplete (checksum or size mismatch)."""

    code = grpc.StatusCode.DATA_LOSS
    retryable = True


class Internal(RspoError):
    """A bug or an unexpected failure inside the service."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[RspoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DATA_LOSS: DataCorruption,
}


def from_rpc_error(err: grpc.RpcError) -> RspoError:
    """Convert a client-side gRPC error into the taxonomy (retryable flag follows the code)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, Internal)
    exc = cls(f"{code.name}: {details}")
    exc.code = code
    exc.retryable = code in RETRYABLE_CODES
    return exc
