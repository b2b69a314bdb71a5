"""The managed Redis and TLS to Redis: memory limit, maxmemory and eviction, TLS with a CA
from a Secret (managed and external), the Secret checked before pods wait for it, and the
builder's flags run by a real redis-server."""

from __future__ import annotations

import kubernetes_validate
import pytest

from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.builders import BuildContext, Owner, build_children

OWNER = Owner(name="qwen", namespace="serving", uid="0000-1111")


def _children(spec_dict):
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    built = build_children(OWNER, spec, BuildContext(redis_password="pw-fixed"))
    return {(d.manifest["kind"], d.manifest["metadata"]["name"]): d.manifest for d in built}


def _container(children, name):
    return children[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def _flags(args):
    return {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("--")}


def test_managed_redis_has_limits_maxmemory_and_ttl_eviction(minimal_spec):
    minimal_spec["engine"] = {"kvTransfer": {"redis": {"memory": "8Gi"}}}
    c = _container(_children(minimal_spec), "qwen-redis")
    assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"] == "8Gi"
    flags = _flags(c["args"])
    assert int(flags["--maxmemory"]) == 6 * 2**30  # 3/4 of the limit
    assert flags["--maxmemory-policy"] == "volatile-ttl"
    assert flags["--port"] == "6379" and "--tls-port" not in flags


def test_managed_redis_tls_serves_the_secret_and_engines_trust_its_ca(minimal_spec):
    minimal_spec["engine"] = {"kvTransfer": {"redis": {"tls": {"secretName": "kv-tls"}}}}
    built = _children(minimal_spec)
    redis = built[("Deployment", "qwen-redis")]
    flags = _flags(_container(built, "qwen-redis")["args"])
    assert flags["--port"] == "0" and flags["--tls-port"] == "6379"
    assert flags["--tls-cert-file"] == "/etc/redis/tls/tls.crt"
    assert {"name": "tls", "secret": {"secretName": "kv-tls"}} in redis["spec"]["template"]["spec"][
        "volumes"
    ]
    url = built[("ConfigMap", "qwen-engine")]["data"]["LAMINA_KV_REDIS_URL"]
    assert url == "rediss://qwen-redis.serving.svc:6379/0?ssl_ca_certs=/etc/lamina/redis-ca/ca.crt"
    for role in ("prefill", "decode"):
        pod = built[("Deployment", f"qwen-{role}")]["spec"]["template"]["spec"]
        # only the CA key: an engine never holds the Redis server's private key
        assert {
            "name": "redis-ca",
            "secret": {"secretName": "kv-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
        } in pod["volumes"]
        assert {"name": "redis-ca", "mountPath": "/etc/lamina/redis-ca", "readOnly": True} in (
            pod["containers"][0]["volumeMounts"]
        )
    router = built[("Deployment", "qwen-router")]["spec"]["template"]["spec"]
    assert all(v["name"] != "redis-ca" for v in router["volumes"])
    for manifest in built.values():
        kubernetes_validate.validate(manifest, "1.25", strict=True)


def test_external_rediss_takes_a_ca(gpu_spec):
    redis = gpu_spec["engine"]["kvTransfer"]["redis"]
    redis.update(url="rediss://redis.kv.svc:6380/0", tls={"secretName": "kv-ca", "caKey": "ca.pem"})
    built = _children(gpu_spec)
    data = built[("ConfigMap", "qwen-engine")]["data"]
    assert data["LAMINA_KV_REDIS_URL"] == (
        "rediss://redis.kv.svc:6380/0?ssl_ca_certs=/etc/lamina/redis-ca/ca.crt"
    )
    pod = built[("Deployment", "qwen-decode")]["spec"]["template"]["spec"]
    assert {
        "name": "redis-ca",
        "secret": {"secretName": "kv-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]},
    } in pod["volumes"]


def test_redis_tls_secret_is_checked_before_pods_wait_for_it(
    cluster, reconciler, sd_factory, minimal_spec
):
    minimal_spec["engine"] = {"kvTransfer": {"redis": {"tls": {"secretName": "kv-tls"}}}}
    sd_factory("qwen", minimal_spec)

    def problems():
        body = cluster.get("lamina.dev/v1alpha1", "ServingDeployment", "serving", "qwen")
        return reconciler.reconcile(body).problems

    (missing,) = problems()
    assert missing.reason == "MissingSecret" and missing.retryable
    assert "redis.tls.secretName" in missing.message
    assert cluster.get("apps/v1", "Deployment", "serving", "qwen-redis") is None
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-tls",
              "namespace": "serving"}, "stringData": {"ca.crt": "PEM"}}  # fmt: skip
    cluster.create(secret)
    (no_key,) = problems()  # a managed Redis also needs its own certificate and key
    assert no_key.reason == "MissingSecretKey" and "tls.crt" in no_key.message
    cluster.patch(
        "v1", "Secret", "serving", "kv-tls", {"stringData": {"tls.crt": "C", "tls.key": "K"}}
    )
    assert problems() == []
    assert cluster.get("apps/v1", "Deployment", "serving", "qwen-redis") is not None


def _fixture_module():
    import importlib.util
    import sys
    from pathlib import Path

    name = "lamina_tests_redis_fixture"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "engine" / "redis_fixture.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("tls", [False, True])
def test_a_real_redis_server_accepts_the_managed_args(minimal_spec, tmp_path, tls):
    """redis-server runs with exactly the flags the builder writes (port and paths moved)."""
    import shutil
    import socket
    import subprocess
    import time

    import redis

    rf = _fixture_module()
    if not rf.redis_available() or (tls and shutil.which("openssl") is None):
        pytest.fail("needs Debian's redis-server and openssl (make install installs them)")
    if tls:
        minimal_spec["engine"] = {"kvTransfer": {"redis": {"tls": {"secretName": "kv-tls"}}}}
        ca, cert, key = rf.make_tls_files(tmp_path)
        (tmp_path / "tls.crt").write_bytes(cert.read_bytes())
        (tmp_path / "tls.key").write_bytes(key.read_bytes())
    args = _container(_children(minimal_spec), "qwen-redis")["args"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [str(port) if a == "6379" else "pw" if a == "$(REDIS_PASSWORD)" else a for a in args]
    args = [a.replace("/etc/redis/tls", str(tmp_path)) for a in args]
    proc = subprocess.Popen(
        [rf.REDIS_SERVER, *args, "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        kwargs = {"ssl": True, "ssl_ca_certs": str(tmp_path / "ca.crt")} if tls else {}
        client = redis.Redis(port=port, password="pw", socket_timeout=2, **kwargs)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "redis-server did not come up"
                time.sleep(0.05)
        config = client.config_get("maxmemory*")
        assert config["maxmemory-policy"] == "volatile-ttl"
        assert int(config["maxmemory"]) == 3 * 2**30  # 3/4 of the default 4Gi
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        proc.stderr.close()
