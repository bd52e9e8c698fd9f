"""Helpers for the deployment tests: rendered overlays and a stand-in Kubernetes API server.

No Kubernetes API server can run on these machines (no kind, k3s, kwok or envtest; see
/work/shared/reference/PLATFORM.md), so `rspo k8s` is tested against `StandInApi`: a plain
`http.server` on 127.0.0.1 that records every request (method, path, query, headers, JSON body)
and answers the few endpoints the commands use from a small in-memory store, with equality
label selectors and injectable error responses (403, 404, 422, ...).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = {
    "base": REPO / "k8s" / "base",
    "cpu-smoke": REPO / "k8s" / "overlays" / "cpu-smoke",
    "gpu": REPO / "k8s" / "overlays" / "gpu",
    "keda": REPO / "k8s" / "overlays" / "keda",
    "managed-redis": REPO / "k8s" / "overlays" / "managed-redis",
}


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail(
            "kubectl is not on PATH: the deployment tests render every overlay with `kubectl kustomize` "
            "(offline). Install kubectl >= 1.27 (it bundles kustomize)."
        )
    return exe


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(name: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one overlay, parsed (cached per session; callers must not mutate)."""
    if name not in _RENDERED:
        proc = subprocess.run(
            [kubectl(), "kustomize", str(OVERLAYS[name])], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"kubectl kustomize {OVERLAYS[name]} failed:\n{proc.stderr}"
        _RENDERED[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _RENDERED[name]


# ---------------------------------------------------------------------------------------------
# Stand-in Kubernetes API server


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


@dataclass
class StandInApi:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    # collection path (e.g. /apis/apps/v1/namespaces/ml/deployments) -> objects
    store: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # (method, path substring) -> (status, reason, message, causes)
    errors: list[tuple[str, str, int, str, str, list[dict[str, str]]]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)  # pod name -> log text

    def fail(
        self,
        method: str,
        path_part: str,
        status: int,
        reason: str,
        message: str,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        self.errors.append((method, path_part, status, reason, message, causes or []))

    def add(self, collection: str, obj: dict[str, Any]) -> None:
        self.store.setdefault(collection, []).append(obj)

    def of(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]


def make_handler(api: StandInApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            rec = Recorded(
                self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body
            )
            api.requests.append(rec)
            for method, part, status, reason, message, causes in api.errors:
                if method == self.command and part in parts.path:
                    status_obj = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": status,
                        "details": {"causes": causes},
                    }
                    self._reply(status, status_obj)
                    return
            if self.command == "PATCH":
                self._reply(200, body or {})
            elif self.command == "DELETE":
                self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            elif parts.path.endswith("/log"):
                pod = parts.path.split("/")[-2]
                self._reply(200, api.logs.get(pod, "").encode(), "text/plain")
            else:
                selector = (rec.query.get("labelSelector") or [None])[0]
                items = [o for o in api.store.get(parts.path, []) if _selected(o, selector)]
                self._reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})

        do_GET = do_PATCH = do_DELETE = do_POST = _handle

    return Handler
