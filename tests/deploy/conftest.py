"""Fixtures for the deployment tests (helpers and the stand-in API server live in deploy_helpers.py).

No Kubernetes API server can run on these machines, so the `rspo k8s` tests talk to a recording
stand-in HTTP server on 127.0.0.1 instead (see deploy_helpers.StandInApi).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from deploy_helpers import StandInApi, make_handler


@pytest.fixture
def standin() -> Iterator[StandInApi]:
    api = StandInApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(api))
    api.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
