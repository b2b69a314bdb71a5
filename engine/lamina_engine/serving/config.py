"""ServeConfig: every setting of `lamina serve`, from flags and the operator's environment.

The operator starts pods with flags (`--role`, `--model`, `--port`, router pickers, ...) and a
ConfigMap of `LAMINA_*` variables. A flag given on the command line overrides its variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Role = Literal["unified", "prefill", "decode", "router"]

# LAMINA_* variable -> ServeConfig field (values are parsed by pydantic's validation).
ENV_FIELDS = {
    "LAMINA_DEPLOYMENT": "deployment",
    "LAMINA_SERVED_MODEL_NAME": "served_model_name",
    "LAMINA_DTYPE": "dtype",
    "LAMINA_SCHEDULING_POLICY": "scheduling_policy",
    "LAMINA_TOKEN_BUDGET": "token_budget",
    "LAMINA_COHORT_TOKEN_BUDGET": "cohort_token_budget",
    "LAMINA_MAX_LAYER_GROUPS": "max_layer_groups",
    "LAMINA_MAX_NUM_SEQS": "max_num_seqs",
    "LAMINA_BLOCK_SIZE": "block_size",
    "LAMINA_SPEED": "speed",
    "LAMINA_SPEED_ANCHOR_TOKENS": "speed_anchor_tokens",
    "LAMINA_SPEED_PREFILL_LAYERS": "speed_prefill_layers",
    "LAMINA_SPEED_PREFILL_LAYERS_PERCENT": "speed_prefill_layers_percent",
    "LAMINA_KV_BACKEND": "kv_backend",
    "LAMINA_KV_TTL_SECONDS": "kv_ttl_seconds",
    "LAMINA_KV_REDIS_URL": "kv_redis_url",
    "LAMINA_KV_REDIS_PASSWORD": "kv_redis_password",
    "LAMINA_PREFILL_SERVICE": "prefill_service",
    "LAMINA_DECODE_SERVICE": "decode_service",
    "LAMINA_POD_NAME": "pod_name",
}


class ServeConfig(BaseModel):
    """One server process: its role, the engine settings and, for the router, its backends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = "unified"
    model: str | None = Field(None, description="checkpoint folder; default: the demo model")
    revision: str | None = Field(None, description="informational: the operator's revision")
    served_model_name: str | None = Field(None, description="the `model` clients send")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    deployment: str = "default"
    pod_name: str | None = None
    # engine
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scheduling_policy: str = "chunked"
    token_budget: int = Field(512, ge=1, description="tokens per step (chunked prefill)")
    cohort_token_budget: int = Field(8192, ge=1, description="layered: cohort budget B")
    max_layer_groups: int = Field(4, ge=1, description="layered Gmax; KV groups shipped")
    layered_group_tokens: int = Field(512, ge=1, description="layered: tokens per group step u")
    max_num_seqs: int = Field(64, ge=1)
    block_size: int = Field(16, ge=1)
    num_gpu_blocks: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    speed: bool = False
    speed_anchor_tokens: int | None = None
    speed_prefill_layers: int | None = None
    speed_prefill_layers_percent: float | None = None
    # KV transfer
    kv_backend: Literal["redis", "nixl", "local"] = "redis"
    kv_ttl_seconds: float = Field(120.0, gt=0)
    kv_redis_url: str = "redis://127.0.0.1:6379/0"
    kv_redis_password: SecretStr | None = None
    kv_wait_seconds: float = Field(
        30.0, gt=0, description="decode: longest wait for a prompt's KV before recomputing it"
    )
    # router
    prefill_service: str | None = None
    decode_service: str | None = None
    prefill_picker: Literal["prefix-load", "least-load", "round-robin"] = "prefix-load"
    decode_picker: Literal["least-kv", "round-robin"] = "least-kv"
    disaggregation_min_prompt_tokens: int = Field(0, ge=0)
    load_decay_seconds: float = Field(10.0, gt=0)
    backend_poll_seconds: float = Field(1.0, gt=0)

    @property
    def model_name(self) -> str:
        """The name clients use: --served-model-name, else the checkpoint folder's name."""
        if self.served_model_name:
            return self.served_model_name
        return os.path.basename(os.path.normpath(self.model)) if self.model else "lamina-demo"


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags of `lamina serve`; every default is None so the environment can fill it."""
    p.add_argument("--role", choices=["unified", "prefill", "decode", "router"])
    p.add_argument("--model", help="checkpoint folder (default: the built-in demo model)")
    p.add_argument("--revision")
    p.add_argument("--served-model-name")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--scheduling-policy")
    p.add_argument("--layered-group-tokens", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--block-size", type=int)
    p.add_argument("--num-gpu-blocks", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--kv-backend", choices=["redis", "nixl", "local"])
    p.add_argument("--kv-redis-url")
    p.add_argument("--kv-wait-seconds", type=float)
    p.add_argument("--prefill-service", help="HOST:PORT[,HOST:PORT] or file:/path (router)")
    p.add_argument("--decode-service", help="HOST:PORT[,HOST:PORT] or file:/path (router)")
    p.add_argument("--prefill-picker", choices=["prefix-load", "least-load", "round-robin"])
    p.add_argument("--decode-picker", choices=["least-kv", "round-robin"])
    p.add_argument("--disaggregation-min-prompt-tokens", type=int)
    p.add_argument("--load-decay-seconds", type=float)


def config_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeConfig:
    """Environment first, then every flag that was given. Raises pydantic's ValidationError
    naming the bad field when a value is wrong."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for var, name in ENV_FIELDS.items():
        raw = env.get(var)
        if raw is not None and raw != "":
            values[name] = _env_value(name, raw)
    for name, value in vars(args).items():
        if name in ServeConfig.model_fields and value is not None:
            values[name] = value
    return ServeConfig(**values)


def _env_value(name: str, raw: str) -> object:
    if name == "speed":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw
