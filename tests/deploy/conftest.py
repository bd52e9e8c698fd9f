"""Fixtures for the deployment tests (helpers and the stand-in API server live in deploy_helpers.py).

No Kubernetes API server can run on these machines, so the `rspo k8s` tests talk to a recording
stand-in HTTP server on 127.0.0.1 instead (see deploy_helpers.StandInApi).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

# This folder holds deploy_helpers.py; the repo root holds the packages under test.
for _path in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from deploy_helpers import StandInApi, make_handler  # noqa: E402


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients dropping keep-alive connections at exit are not failures


@pytest.fixture
def standin() -> Iterator[StandInApi]:
    api = StandInApi()
    server = QuietServer(("127.0.0.1", 0), make_handler(api))
    api.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def kubeconfig(tmp_path: Path, standin: StandInApi) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": standin.url}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [
                    {"name": "standin", "context": {"cluster": "standin", "user": "tester", "namespace": "ml"}}
                ],
                "current-context": "standin",
            }
        )
    )
    return path
