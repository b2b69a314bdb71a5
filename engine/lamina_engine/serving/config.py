"""ServeConfig: every setting of `lamina serve`, from flags and the operator's environment.

The engine's settings are EngineConfig, whole, under `engine`; the rest say which server this
is and how it reaches the others. Each setting is a flag and a LAMINA_* variable of the same
name (flags.py): `kv_backend` is `--kv-backend` / `LAMINA_KV_BACKEND`, the engine's
`max_num_seqs` is `--max-num-seqs` / `LAMINA_MAX_NUM_SEQS`. The operator starts pods with flags
(role, model, port, router pickers) and a ConfigMap of variables; a flag overrides its variable.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from lamina_engine.config import EngineConfig
from lamina_engine.flags import FLATTEN, add_flags, build, env_names, settings

Role = Literal["unified", "prefill", "decode", "router"]
DEMO_MODEL_NAME = "lamina-demo"  # served name of the built-in demo model
# Flag names of earlier releases, still accepted (the setting's own flag is derived).
SERVE_FLAG_ALIASES = {"scheduling_policy": ["--scheduler"]}
# Variables of earlier releases (an older operator may still write them): named in a warning.
RENAMED = {
    "LAMINA_TOKEN_BUDGET": "LAMINA_MAX_NUM_BATCHED_TOKENS",
    "LAMINA_COHORT_TOKEN_BUDGET": "LAMINA_LAYERED_BUDGET",
    "LAMINA_MAX_LAYER_GROUPS": "LAMINA_LAYERED_MAX_GROUPS",
    "LAMINA_SPEED": "LAMINA_SPEED_PREFILL_LAYERS (set: SPEED on)",
    "LAMINA_SPEED_PREFILL_LAYERS_PERCENT": "LAMINA_SPEED_PREFILL_LAYERS (a fraction: 0.75)",
    "LAMINA_SPEED_ANCHOR_TOKENS": "LAMINA_SPEED_ANCHORS",
    "LAMINA_MODEL_SOURCE": "--model / LAMINA_MODEL",
}
log = logging.getLogger(__name__)


class ServeConfig(BaseModel):
    """One server process: its role, the engine's settings and, for the router, its backends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = Field("unified", description="which server: unified, prefill, decode, router")
    served_model_name: str | None = Field(
        None, description="the `model` clients send; default: the checkpoint folder's name"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    internal_port: int | None = Field(
        None, ge=0, le=65535, description="the internal/admin endpoints' port; default: port + 1"
    )
    # Secrets: variables only (LAMINA_API_KEY, LAMINA_INTERNAL_KEY), never flags (`ps` shows argv)
    api_key: SecretStr | None = Field(
        None, description="clients' key for /v1/* on the public port (Authorization: Bearer)"
    )
    internal_key: SecretStr | None = Field(
        None, description="the pods' shared key: internal port and KV handles (serving/auth.py)"
    )
    deployment: str = Field("default", description="namespaces the KV keys of one deployment")
    pod_name: str | None = Field(None, description="this pod's name (informational)")
    engine: EngineConfig = Field(json_schema_extra=FLATTEN)
    # KV transfer
    kv_backend: Literal["redis", "nixl", "local"] = "redis"
    kv_ttl_seconds: float = Field(120.0, gt=0, description="lifetime of a shipped KV blob")
    kv_redis_url: str = "redis://127.0.0.1:6379/0"
    kv_redis_password: SecretStr | None = None
    kv_wait_seconds: float = Field(
        30.0, gt=0, description="decode: longest wait for a prompt's KV before recomputing it"
    )
    nixl_listen: str = Field("0.0.0.0:5601", description="nixl, prefill: HOST:PORT to serve on")
    nixl_peer: str | None = Field(None, description="nixl, decode: the prefill's nixl_listen")
    # router
    prefill_service: str | None = Field(None, description="HOST:PORT[,HOST:PORT] or file:/path")
    decode_service: str | None = Field(None, description="HOST:PORT[,HOST:PORT] or file:/path")
    prefill_picker: Literal["prefix-load", "least-load", "round-robin"] = "prefix-load"
    decode_picker: Literal["least-kv", "round-robin"] = "least-kv"
    disaggregation_min_prompt_tokens: int = Field(0, ge=0)
    load_decay_seconds: float = Field(10.0, gt=0)
    backend_poll_seconds: float = Field(1.0, gt=0)
    # HTTP limits of every server (serving/http_limits.py), checked before any tokenizing
    max_request_bytes: int = Field(8 * 2**20, gt=0, description="larger request bodies: 413")
    max_prompt_chars: int = Field(
        1_000_000, gt=0, description="longer prompts (characters, all messages): 400"
    )
    request_read_timeout_seconds: float = Field(
        30.0, gt=0, description="close a connection whose request has not arrived by then"
    )
    timeout_keep_alive_seconds: float = Field(5.0, gt=0, description="idle keep-alive close")
    h11_max_incomplete_event_size: int = Field(
        65536, gt=0, description="largest request head (bytes)"
    )
    limit_concurrency: int | None = Field(
        None, gt=0, description="most connections and tasks at once; beyond: 503"
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_settings(cls, data: Any) -> Any:
        """Accept engine settings by their flat names too (ServeConfig(max_num_seqs=4)), and
        the demo model when none is named."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        engine = data.pop("engine", None) or {}
        if isinstance(engine, EngineConfig):
            engine = engine.model_dump(exclude_unset=True)
        engine = dict(engine)
        for key in list(data):
            if key in EngineConfig.model_fields:
                engine[key] = data.pop(key)
        for s in settings(EngineConfig):  # nested engine settings: speed_prefill_layers, ...
            if len(s.path) > 1 and s.name in data:
                engine.setdefault(s.path[0], {})[s.path[1]] = data.pop(s.name)
        if engine.get("model") is None:
            from lamina_engine.demo import demo_model_path

            engine["model"] = str(demo_model_path())
            data.setdefault("served_model_name", DEMO_MODEL_NAME)
        data["engine"] = engine
        return data

    @model_validator(mode="after")
    def _ports_differ(self) -> ServeConfig:
        if self.port and self.internal_port_or_default == self.port:
            raise ValueError(
                f"internal_port {self.internal_port} is the public port: the internal endpoints "
                "need their own port (--internal-port / LAMINA_INTERNAL_PORT)"
            )
        for name in ("api_key", "internal_key"):
            key = getattr(self, name)
            if key is not None and len(key.get_secret_value()) < 8:
                raise ValueError(
                    f"{name} (LAMINA_{name.upper()}) is shorter than 8 characters: give a real "
                    "key (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))') or "
                    "leave it unset"
                )
        if self.port == 65535 and self.internal_port is None:
            raise ValueError("port 65535 has no port + 1: set --internal-port")
        return self

    @property
    def internal_port_or_default(self) -> int:
        """The internal port: `internal_port`, else the public port + 1 (0 stays 0: any)."""
        if self.internal_port is not None:
            return self.internal_port
        return self.port + 1 if self.port else 0

    @property
    def model(self) -> str:
        """The checkpoint folder (the router reads its tokenizer and config.json)."""
        return self.engine.model

    @property
    def model_name(self) -> str:
        """The name clients use: --served-model-name, else the checkpoint folder's name."""
        return self.served_model_name or os.path.basename(os.path.normpath(self.engine.model))


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags of `lamina serve`, one per setting; unset flags leave the variable in force."""
    add_flags(p, ServeConfig, aliases=SERVE_FLAG_ALIASES)


def config_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeConfig:
    """Environment first, then every flag that was given. Raises SettingsError (a ValueError)
    naming the flag and variable of a bad value; warns of LAMINA_* variables it does not read."""
    env = os.environ if env is None else env
    known = env_names(ServeConfig)
    for name in sorted(n for n in env if n.startswith("LAMINA_") and n not in known):
        hint = f"; it is now {RENAMED[name]}" if name in RENAMED else ""
        log.warning("%s is not a setting of lamina serve and is ignored%s", name, hint)
    return build(ServeConfig, args, env)
