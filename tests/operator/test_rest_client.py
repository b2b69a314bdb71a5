"""RestKubeClient's HTTP: paths, verbs, merge-patch content type, error mapping.

A loopback HTTP server stands in for kube-apiserver; e2e/ runs the same client against a real one.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s

from lamina_operator.kube import AlreadyExists, KubeError
from lamina_operator.kube.rest import RETRIES, RestKubeClient


class _Api(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str, dict | None]] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, self.headers.get("Content-Type"), body))
        if self.path.endswith("/kopfpeerings/secret"):
            self._reply(403, {"kind": "Status", "message": "forbidden", "code": 403})
        elif "missing" in self.path or self.path == "/apis/policy/v1":
            self._reply(404, {"kind": "Status", "message": "not found", "code": 404})
        elif self.command == "POST" and "taken" in json.dumps(body):
            self._reply(409, {"kind": "Status", "message": 'services "taken" already exists'})
        elif self.command == "POST" and "forbidden" in json.dumps(body):
            self._reply(403, {"kind": "Status", "message": "secrets is forbidden: User cannot"})
        elif self.path.startswith("/apis/apps/v1/namespaces/ns/deployments?"):
            self._reply(200, {"items": [{"metadata": {"name": "d1"}}]})
        else:
            self._reply(200, body or {"metadata": {"name": "x"}})

    do_GET = do_POST = do_PATCH = do_DELETE = _handle


@pytest.fixture
def rest():
    _Api.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    yield RestKubeClient(config)
    server.shutdown()
    server.server_close()


def test_paths_verbs_and_bodies(rest):
    assert rest.get("apps/v1", "Deployment", "ns", "missing") is None
    items = rest.list("apps/v1", "Deployment", "ns", {"lamina.dev/role": "decode", "a": "b"})
    assert items == [{"metadata": {"name": "d1"}, "apiVersion": "apps/v1", "kind": "Deployment"}]
    rest.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    )
    rest.patch(
        "lamina.dev/v1alpha1", "ServingDeployment", "ns", "sd", {"status": {"x": 1}}, "status"
    )
    rest.delete("policy/v1beta1", "PodDisruptionBudget", "ns", "p")
    calls = [(m, p.split("?")[0], ct) for m, p, ct, _ in _Api.requests]
    assert calls == [
        ("GET", "/apis/apps/v1/namespaces/ns/deployments/missing", "application/json"),
        ("GET", "/apis/apps/v1/namespaces/ns/deployments", "application/json"),
        ("POST", "/api/v1/namespaces/ns/configmaps", "application/json"),
        ("PATCH", "/apis/lamina.dev/v1alpha1/namespaces/ns/servingdeployments/sd/status",
         "application/merge-patch+json"),
        ("DELETE", "/apis/policy/v1beta1/namespaces/ns/poddisruptionbudgets/p", "application/json"),
    ]  # fmt: skip
    query = parse_qs(urlsplit(_Api.requests[1][1]).query)
    assert query == {"labelSelector": ["a=b,lamina.dev/role=decode"]}
    assert _Api.requests[3][3] == {"status": {"x": 1}}


def test_errors_and_discovery(rest):
    with pytest.raises(AlreadyExists):
        rest.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "taken", "namespace": "ns"},
            }
        )
    with pytest.raises(KubeError) as info:
        rest.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "forbidden", "namespace": "ns"},
            }
        )
    assert info.value.status == 403 and "forbidden" in info.value.message
    assert rest.serves("policy/v1") is False and rest.serves("policy/v1beta1") is True
    rest.serves("policy/v1")  # cached: no second request
    assert sum(1 for _, p, _, _ in _Api.requests if p == "/apis/policy/v1") == 1


def test_a_silent_api_server_times_out_as_a_kube_error():
    """A server that accepts the connection and never answers: the call gives up at its deadline
    (read timeout x (1 + RETRIES) for a GET) and says so, instead of blocking a kopf worker."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections queue in the backlog and are never read
    try:
        config = k8s.Configuration(host=f"http://127.0.0.1:{listener.getsockname()[1]}")
        client = RestKubeClient(config, timeout=(1.0, 0.3))
        started = time.monotonic()
        with pytest.raises(KubeError) as info:
            client.get("v1", "ConfigMap", "ns", "c")
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert info.value.status == 0 and "no answer from the API server" in info.value.message
    assert 0.3 <= elapsed < 0.3 * (1 + RETRIES) + 1.0, elapsed


def test_peering_lookup(rest):
    assert rest.peering_exists(None, "lamina-operator") is True
    assert rest.peering_exists("ns", "missing") is False
    assert rest.peering_exists("ns", "secret") is None  # not allowed to look
    paths = [p for _, p, _, _ in _Api.requests]
    assert paths == [
        "/apis/kopf.dev/v1/clusterkopfpeerings/lamina-operator",
        "/apis/kopf.dev/v1/namespaces/ns/kopfpeerings/missing",
        "/apis/kopf.dev/v1/namespaces/ns/kopfpeerings/secret",
    ]


def test_every_kind_the_operator_touches_has_its_real_plural():
    """The REST client builds URLs from plurals; each must be the resource the RBAC rules name
    (a guessed "networkpolicys" was a 403 on a real API server)."""
    from lamina_operator.kube.client import plural_of
    from lamina_operator.rbac import all_rules
    from lamina_operator.reconcile.children import CHILD_KINDS

    resources = {r for rule in all_rules() for r in rule["resources"]}
    for _, kind in CHILD_KINDS:
        assert plural_of(kind) in resources, kind
    assert plural_of("NetworkPolicy") == "networkpolicies"
    assert plural_of("Pod") == "pods"
    with pytest.raises(ValueError, match="Lease"):
        plural_of("Lease")
