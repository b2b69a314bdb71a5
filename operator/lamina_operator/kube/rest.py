"""KubeClient over a real API server, through the `kubernetes` package's HTTP layer.

Plain REST paths with dict bodies rather than the typed API classes: one code path for every
kind (CRDs included), and the JSON we read back is exactly what the server stored.

Every call has a deadline (`REQUEST_TIMEOUT`: connect, read, in seconds): a handler blocked on
an API server that accepted the connection and went quiet would otherwise hold one of kopf's
few worker threads forever. Transport failures (timeouts, refused connections, TLS errors)
become `KubeError` with status 0, so handlers classify them like any other failed call.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .client import AlreadyExists, KubeError, NotFound, plural_of

_MERGE = "application/merge-patch+json"
# (connect, read) seconds. A pass makes single-object calls and label-selected lists of one
# owner's children: even a loaded apiserver answers them in well under a second.
REQUEST_TIMEOUT = (5.0, 30.0)
# urllib3 retries a failed connection or an idempotent read this many times: with the timeouts
# above a call gives up within 2 x 35 s (urllib3's own default, 3, made it 140 s).
RETRIES = 1


def load_config() -> None:
    """In-cluster credentials when running in a pod, else the current kubeconfig context."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException as in_pod:
        try:
            k8s_config.load_kube_config()
        except (k8s_config.ConfigException, OSError) as exc:
            raise KubeError(
                0,
                f"no Kubernetes credentials: not in a pod ({in_pod}) and no usable kubeconfig "
                f"({exc}): set KUBECONFIG or select a context with `kubectl config use-context`",
            ) from exc


def _base(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    path = f"{_base(api_version)}/namespaces/{namespace}/{plural_of(kind)}"
    return f"{path}/{name}" if name else path


class RestKubeClient:
    """The real thing. Create one after `load_config()` (kopf's login is separate), or pass the
    configuration of the cluster to talk to."""

    def __init__(
        self,
        configuration: k8s.Configuration | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ):
        config = copy.deepcopy(configuration or k8s.Configuration.get_default_copy())
        config.retries = RETRIES
        self.api = k8s.ApiClient(config)
        self.timeout = timeout
        self._served: dict[str, bool] = {}
        self.calls = 0  # requests sent, reads included (what the operator costs the server)

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        self.calls += 1
        try:
            method, url, headers, body, post = self.api.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=self.timeout
            )
            raw = response.read()
        except ApiException as exc:  # the HTTP layer raises on some statuses
            raise _error(exc.status or 0, exc.body or exc.reason or "") from exc
        except HTTPError as exc:  # no answer: timeout, refused, reset, TLS
            raise KubeError(0, f"{method} {path}: no answer from the API server ({exc})") from exc
        if response.status >= 400:
            raise _error(response.status, raw.decode(errors="replace") if raw else "")
        return json.loads(raw) if raw else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", _path(api_version, kind, namespace, name))
        except NotFound:
            return None

    def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str]
    ) -> list[dict]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        result = self._call(
            "GET", _path(api_version, kind, namespace), query=[("labelSelector", selector)]
        )
        items = result.get("items", [])
        for item in items:  # list items lack apiVersion/kind; callers expect full objects
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def create(self, obj: dict[str, Any]) -> dict:
        meta = obj["metadata"]
        return self._call("POST", _path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict:
        path = _path(api_version, kind, namespace, name)
        if subresource:
            path += f"/{subresource}"
        return self._call("PATCH", path, patch, content_type=_MERGE)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self._call(
                "DELETE",
                _path(api_version, kind, namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except NotFound:
            pass

    def peering_exists(self, namespace: str | None, name: str) -> bool | None:
        """Whether kopf's peering object exists (ClusterKopfPeering when namespace is None);
        None when the operator may not read it. A missing CRD reads as a missing object."""
        base = "/apis/kopf.dev/v1"
        path = (
            f"{base}/clusterkopfpeerings/{name}"
            if namespace is None
            else f"{base}/namespaces/{namespace}/kopfpeerings/{name}"
        )
        try:
            self._call("GET", path)
            return True
        except NotFound:
            return False
        except KubeError as exc:
            if exc.status in (401, 403):
                return None
            raise

    def serves(self, api_version: str) -> bool:
        if api_version not in self._served:
            try:
                self._call("GET", _base(api_version))
                self._served[api_version] = True
            except NotFound:
                self._served[api_version] = False
        return self._served[api_version]


def _error(status: int, body: str) -> KubeError:
    try:
        message = json.loads(body).get("message", body)
    except (ValueError, AttributeError):
        message = body
    if status == 404:
        return NotFound(message)
    if status == 409 and "already exists" in message:
        return AlreadyExists(message)
    return KubeError(status, message)
