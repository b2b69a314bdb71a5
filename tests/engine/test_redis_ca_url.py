"""The Redis CA reaches the engine inside LAMINA_KV_REDIS_URL (`?ssl_ca_certs=PATH`), the way
the operator writes it for `redis.tls`; a real TLS redis-server with a private CA checks it."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from lamina_engine.serving.config import ServeConfig
from lamina_engine.serving.kv_shipping import make_transport
from lamina_engine.transfer import KVTransportError
from lamina_engine.transfer.redis_config import RedisTransportConfig


def load_redis_fixture():
    name = "lamina_tests_redis_fixture"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("redis_fixture.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


rf = load_redis_fixture()
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or not rf.redis_available(),
    reason="needs the openssl CLI and Debian's redis-server (make install installs both)",
)


def test_ca_in_the_url_query_becomes_the_ca_bundle():
    config = RedisTransportConfig(url="rediss://kv:6380/0?ssl_ca_certs=/etc/ca.crt&x=1")
    assert config.ssl_ca_certs == "/etc/ca.crt" and config.url == "rediss://kv:6380/0?x=1"
    explicit = RedisTransportConfig(url="rediss://kv/0?ssl_ca_certs=/a", ssl_ca_certs="/b")
    assert explicit.ssl_ca_certs == "/b"


def test_engine_verifies_tls_redis_with_the_ca_named_in_its_url(tmp_path):
    ca, _, _ = tls = rf.make_tls_files(tmp_path)

    async def ping(url: str) -> None:
        config = ServeConfig(role="decode", kv_redis_url=url, kv_redis_password="pw")
        transport = make_transport(config)
        try:
            await transport.ping()
        finally:
            await transport.close()

    with rf.RedisServer(password="pw", tls=tls) as srv:
        asyncio.run(ping(f"{srv.url}?ssl_ca_certs={ca}"))  # trusted through the URL's CA
        with pytest.raises(KVTransportError, match=f"127.0.0.1:{srv.port}"):
            asyncio.run(ping(srv.url))  # the system CAs do not know this server
