"""The Kubernetes API calls of `rspo k8s`, on the official `kubernetes` client's typed APIs.

Objects are applied with server-side apply: a PATCH with content type
`application/apply-patch+yaml` and `fieldManager=rspo` (plus `force=true` only when the caller
asks to take over fields another manager owns). Responses are read as plain JSON
(`_preload_content=False`), so nothing here depends on the client's model classes.

Every API refusal becomes a `KubeError` whose message says what was refused and what to do;
`cli.py` prints it and exits non-zero.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException

from services.k8s.manifests import KINDS, KindInfo, Obj, kind_info

FIELD_MANAGER = "rspo"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeError(Exception):
    """An API call failed; the message is meant for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _status_body(err: ApiException) -> dict[str, Any]:
    body = err.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {"message": str(body)[:500]}
    return parsed if isinstance(parsed, dict) else {}


def explain(err: ApiException, action: str, namespace: str) -> KubeError:
    """Turn an API refusal into a message that names the action, the cause and the fix."""
    status = int(err.status or 0)
    body = _status_body(err)
    message = body.get("message") or err.reason or "no message"
    if status == 401:
        hint = "the API server rejected the credentials of the current kube context; refresh them"
        text = f"unauthorized: {action}: {message}; {hint}"
    elif status == 403:
        text = (
            f"forbidden: {action}: {message}. The current identity lacks RBAC permission in namespace "
            f"'{namespace}'; check with `kubectl auth can-i --list -n {namespace}` or ask a cluster admin"
        )
    elif status == 404:
        text = (
            f"not found: {action}: {message}. Check that namespace '{namespace}' exists "
            f"(`kubectl create namespace {namespace}`) and, for KEDA objects, that KEDA is installed"
        )
    elif status == 409:
        text = (
            f"conflict: {action}: {message}. Another field manager owns these fields; re-run with "
            "--force-conflicts to take them over for fieldManager 'rspo'"
        )
    elif status == 422:
        causes = (body.get("details") or {}).get("causes") or []
        detail = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes)
        text = f"invalid object: {action}: {message}" + (f" ({detail})" if detail else "")
        text += ". Fix the manifest (tests/deploy validates the shipped overlays) or the --config values"
    else:
        text = f"API error {status} {err.reason or ''}: {action}: {message}".replace("  ", " ")
    return KubeError(text, status)


def load_client(kubeconfig: str | None = None, context: str | None = None) -> tuple[client.ApiClient, str]:
    """An ApiClient from a kubeconfig (or in-cluster credentials) and the context's namespace."""
    cfg = client.Configuration()
    default_kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    try:
        if kubeconfig or context or default_kubeconfig.is_file():
            kconfig.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
            contexts, active = kconfig.list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
            namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
        else:
            kconfig.load_incluster_config(client_configuration=cfg)
            namespace = _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.is_file() else "default"
    except (kconfig.ConfigException, OSError, TypeError) as err:
        raise KubeError(
            f"no usable Kubernetes credentials ({err}); pass --kubeconfig/--context or set KUBECONFIG"
        ) from None
    return client.ApiClient(cfg), namespace


class Kube:
    """The handful of calls `rspo k8s` makes, with errors explained."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.host = str(api_client.configuration.host)

    def _api(self, info: KindInfo) -> Any:
        return getattr(client, info.api_class)(self.api_client)

    def _call(self, action: str, namespace: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            raise explain(err, action, namespace) from None
        except Exception as err:  # urllib3 connection errors and the like
            if type(err).__module__.startswith(("urllib3", "socket", "ssl")) or isinstance(err, OSError):
                raise KubeError(f"cannot reach the Kubernetes API server at {self.host}: {err}") from None
            raise

    @staticmethod
    def _json(resp: Any) -> dict[str, Any]:
        data = resp.data if hasattr(resp, "data") else resp
        if not data:
            return {}
        parsed = json.loads(data)
        return parsed if isinstance(parsed, dict) else {}

    # -- objects -------------------------------------------------------------------------------

    def apply(self, obj: Obj, namespace: str, *, force: bool = False) -> None:
        """Server-side apply one namespaced object (fieldManager 'rspo')."""
        info = kind_info(obj)
        name = obj["metadata"]["name"]
        action = f"apply {info.kind} {namespace}/{name}"
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "_content_type": APPLY_CONTENT_TYPE}
        if force:
            kwargs["force"] = True
        api = self._api(info)
        if info.api_class == "CustomObjectsApi":
            group, version = info.group_version
            self._call(
                action,
                namespace,
                api.patch_namespaced_custom_object,
                group,
                version,
                namespace,
                info.plural,
                name,
                obj,
                **kwargs,
            )
        else:
            self._call(
                action, namespace, getattr(api, f"patch_namespaced_{info.snake}"), name, namespace, obj, **kwargs
            )

    def list_objects(self, kind: str, namespace: str, selector: str, *, missing_ok: bool = False) -> list[Obj]:
        """Objects of `kind` matching a label selector; missing_ok: a kind the server lacks lists empty."""
        info = KINDS[kind]
        action = f"list {info.kind} in {namespace} with labels {selector}"
        api = self._api(info)
        try:
            if info.api_class == "CustomObjectsApi":
                group, version = info.group_version
                resp = self._call(
                    action,
                    namespace,
                    api.list_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    info.plural,
                    label_selector=selector,
                )
            else:
                fn = getattr(api, f"list_namespaced_{info.snake}")
                resp = self._call(action, namespace, fn, namespace, label_selector=selector)
        except KubeError as err:
            if missing_ok and err.status == 404:
                return []
            raise
        items = self._json(resp).get("items") or []
        return [i for i in items if isinstance(i, dict)]

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one object (background propagation); False if it was already gone."""
        info = KINDS[kind]
        action = f"delete {info.kind} {namespace}/{name}"
        api = self._api(info)
        try:
            if info.api_class == "CustomObjectsApi":
                group, version = info.group_version
                self._call(
                    action,
                    namespace,
                    api.delete_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    info.plural,
                    name,
                    propagation_policy="Background",
                )
            else:
                fn = getattr(api, f"delete_namespaced_{info.snake}")
                self._call(action, namespace, fn, name, namespace, propagation_policy="Background")
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    # -- pods, logs, scale ---------------------------------------------------------------------

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        core = client.CoreV1Api(self.api_client)
        resp = self._call(
            f"list pods in {namespace} with labels {selector}",
            namespace,
            core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
        items = self._json(resp).get("items") or []
        return [i for i in items if isinstance(i, dict)]

    def log_lines(
        self, namespace: str, pod: str, container: str, *, follow: bool, tail_lines: int | None
    ) -> Iterator[str]:
        core = client.CoreV1Api(self.api_client)
        kwargs: dict[str, Any] = {"container": container, "follow": follow}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        resp = self._call(
            f"read logs of pod {namespace}/{pod}", namespace, core.read_namespaced_pod_log, pod, namespace, **kwargs
        )
        buf = b""
        try:
            for chunk in resp.stream(4096):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if buf:
                yield buf.decode("utf-8", "replace")
        finally:
            resp.release_conn()

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        apps = client.AppsV1Api(self.api_client)
        self._call(
            f"scale Deployment {namespace}/{deployment} to {replicas}",
            namespace,
            apps.patch_namespaced_deployment_scale,
            deployment,
            namespace,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE_PATCH,
        )
