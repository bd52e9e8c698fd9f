"""Container health check: ask a service's standard gRPC health service whether it is SERVING.

    python -m services.common.healthcheck 127.0.0.1:50052 [--service NAME] [--timeout-s 3]

Exit status: 0 SERVING, 1 reachable but not SERVING (starting, draining), 2 unreachable or
failed. Used by the Dockerfile HEALTHCHECK and docker-compose `healthcheck:`; Kubernetes uses
native `grpc:` probes against the same health service instead.

Without an address it reads `RSPO_HEALTH_ADDRESS`; if that is unset too it tries the default
ports of the three services (50051, 50052, 50053) on 127.0.0.1 and succeeds if any one is
SERVING, so one image-level HEALTHCHECK fits whichever service the container runs.

Imports only grpcio and grpcio-health-checking (no torch): a probe runs in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 2

DEFAULT_ADDRESSES = ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053")
ENV_ADDRESS = "RSPO_HEALTH_ADDRESS"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> tuple[int, str]:
    """Return (exit code, human-readable detail) for one health Check call."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        name = code.name if code is not None else type(err).__name__
        return EXIT_UNREACHABLE, f"{address}: health check failed: {name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING, f"{address}: {status}"
    return EXIT_NOT_SERVING, f"{address}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 if the gRPC health service at ADDRESS reports SERVING.",
    )
    parser.add_argument(
        "address",
        nargs="?",
        help=f"host:port; default ${ENV_ADDRESS}, else any of {', '.join(DEFAULT_ADDRESSES)}",
    )
    parser.add_argument("--service", default="", help="health service name; '' = the whole server")
    parser.add_argument("--timeout-s", type=float, default=3.0)
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)

    explicit = args.address or os.environ.get(ENV_ADDRESS)
    addresses = (explicit,) if explicit else DEFAULT_ADDRESSES
    best = EXIT_UNREACHABLE
    details = []
    for address in addresses:
        code, detail = check(address, args.service, args.timeout_s)
        details.append(detail)
        best = min(best, code)
        if code == EXIT_SERVING:
            details = [detail]
            break
    if not args.quiet:
        print("; ".join(details), file=sys.stdout if best == EXIT_SERVING else sys.stderr)
    return best


if __name__ == "__main__":
    sys.exit(main())
