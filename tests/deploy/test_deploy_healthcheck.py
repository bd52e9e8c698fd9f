"""`python -m services.common.healthcheck` (the compose / Dockerfile health check) against a real
gRPC server with the standard health service."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from deploy_helpers import REPO
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import healthcheck


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serving_not_serving_and_unreachable(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address, "--quiet"]) == healthcheck.EXIT_SERVING
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([address, "--quiet"]) == healthcheck.EXIT_NOT_SERVING
    code, detail = healthcheck.check(f"127.0.0.1:{free_port()}", timeout_s=0.5)
    assert code == healthcheck.EXIT_UNREACHABLE and "UNAVAILABLE" in detail


def test_address_from_environment(
    health_server: tuple[str, health.HealthServicer], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    monkeypatch.setenv(healthcheck.ENV_ADDRESS, address)
    assert healthcheck.main(["--quiet"]) == healthcheck.EXIT_SERVING


def test_runs_as_a_module_like_the_container_does(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    proc = subprocess.run(
        [sys.executable, "-m", "services.common.healthcheck", address],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "SERVING" in proc.stdout, proc.stderr
