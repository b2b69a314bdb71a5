"""RedisTransportConfig: every setting of the Redis KV transport, validated once, passed whole."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MiB = 1 << 20
# Redis refuses a bulk string over proto-max-bulk-len (512 MiB by default) by dropping the
# connection; parts stay well below it.
MAX_OBJECT_LIMIT = 256 * MiB


class RedisTransportConfig(BaseModel):
    """Where the Redis is, how to reach it, and how long KV objects live there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://[[user]:password@]host:port/db, or rediss:// for TLS.",
    )
    deployment: str = Field("default", description="Namespaces the keys of one deployment.")
    key_prefix: str = "lamina"
    ttl_s: float = Field(300.0, gt=0, description="Lifetime of a KV object (seconds).")
    ready_ttl_s: float | None = Field(
        None,
        gt=0,
        description="Lifetime of the readiness stream; default 2 x ttl_s, so a reader can "
        "tell an expired object (KVMissing) from one never sent (KVTimeout).",
    )
    max_object_bytes: int = Field(
        64 * MiB,
        ge=4096,
        le=MAX_OBJECT_LIMIT,
        description="A group's blob above this size is stored as several parts.",
    )
    max_connections: int = Field(
        64, ge=2, description="Connection pool size; a waiting wait_group holds one."
    )
    pool_timeout_s: float = Field(5.0, gt=0, description="Wait for a free pooled connection.")
    connect_timeout_s: float = Field(2.0, gt=0)
    socket_timeout_s: float = Field(
        30.0, gt=0, description="Bound on any single read or write on a connection."
    )
    retries: int = Field(1, ge=0, le=10, description="Retries of a command after a lost link.")
    username: str | None = None
    password: SecretStr | None = Field(None, description="Overrides a password in the URL.")
    ssl: bool = Field(False, description="Use TLS even with a redis:// URL.")
    ssl_ca_certs: str | None = Field(
        None, description="CA bundle to verify the server; also read from ?ssl_ca_certs= in url."
    )
    ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """Move user:password from the URL into `username`/`password` (explicit ones win), so
        the stored URL, its repr and any dump of the config never carry the secret."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        if parts.password is None and parts.username is None:
            return data
        data = dict(data)
        if parts.username and data.get("username") is None:
            data["username"] = unquote(parts.username)
        if parts.password is not None and data.get("password") is None:
            data["password"] = unquote(parts.password)
        netloc = parts.hostname or ""
        if ":" in netloc:  # an IPv6 literal
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        data["url"] = urlunsplit(parts._replace(netloc=netloc))
        return data

    @model_validator(mode="before")
    @classmethod
    def _ca_out_of_url(cls, data: Any) -> Any:
        """Take `?ssl_ca_certs=/path/ca.crt` off the URL into `ssl_ca_certs` (an explicit one
        wins): the operator names the CA it mounted this way, inside LAMINA_KV_REDIS_URL."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        query = parse_qsl(parts.query, keep_blank_values=True)
        ca = [value for key, value in query if key == "ssl_ca_certs"]
        if not ca:
            return data
        data = dict(data)
        if data.get("ssl_ca_certs") is None:
            data["ssl_ca_certs"] = ca[-1]
        rest = urlencode([(key, value) for key, value in query if key != "ssl_ca_certs"])
        data["url"] = urlunsplit(parts._replace(query=rest))
        return data

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"Redis URL scheme {scheme!r} not supported; use redis://, rediss:// or unix://"
            )
        return url

    @model_validator(mode="after")
    def _ready_outlives_objects(self) -> RedisTransportConfig:
        if self.ready_ttl_s is not None and self.ready_ttl_s < self.ttl_s:
            raise ValueError(
                f"ready_ttl_s={self.ready_ttl_s} must be at least ttl_s={self.ttl_s}: the "
                "readiness stream has to outlive the objects it announces"
            )
        return self

    @property
    def effective_ready_ttl_s(self) -> float:
        return self.ready_ttl_s if self.ready_ttl_s is not None else 2 * self.ttl_s

    @property
    def use_tls(self) -> bool:
        return self.ssl or urlsplit(self.url).scheme == "rediss"

    @property
    def address(self) -> str:
        """host:port (or the socket path) for messages; never the credentials."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
