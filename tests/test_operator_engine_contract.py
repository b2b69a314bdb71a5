"""The contract between operator and engine: what the operator's builders write into a pod,
`lamina serve` accepts, with the meaning the operator intends.

A pod runs `lamina <args>` with the engine ConfigMap plus the container's `env` as its
environment. Each case builds a ServingDeployment's children with the operator's real builders,
parses every pod's command line and environment with the engine's real parser and ServeConfig
(which builds the EngineConfig), and checks each value against the spec it came from. The walk
at the end sets every value the CRD's engine settings accept at its edges (each enum member,
both booleans, each range's bounds) and holds those pods to the same checks. This test lives
outside both packages because the operator must never import the engine.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import annotated_types
import pytest
from pydantic import ValidationError

from lamina_engine.cli import build_parser, main
from lamina_engine.flags import env_names
from lamina_engine.serving.config import ServeConfig, config_from
from lamina_engine.up import NAME as UP_NAME
from lamina_engine.up import kv_args, serve_args
from lamina_operator.api import ServingDeploymentSpec
from lamina_operator.api.serving import (
    KvTransferSpec,
    ModelSpec,
    RoutingSpec,
    SchedulingSpec,
    SpeedSpec,
)
from lamina_operator.builders import BuildContext, Owner, build_children
from lamina_operator.constants import ROLE_LABEL

OWNER = Owner(name="qwen", namespace="serving", uid="0000-1111")
PASSWORD = "pw-contract"
POD_NAME = "qwen-decode-5d8f9c7b6-x2x4q"
BASE: dict[str, Any] = {"model": {"name": "qwen3-moe", "source": "pvc://models/qwen3/moe"}}


def pods(spec: ServingDeploymentSpec) -> dict[str, tuple[list[str], dict[str, str]]]:
    """role -> (args after `lamina`, environment) of every pod that runs `lamina`."""
    ctx = BuildContext(redis_password=PASSWORD)
    built = [d.manifest for d in build_children(OWNER, spec, ctx)]
    config_maps = {m["metadata"]["name"]: m["data"] for m in built if m["kind"] == "ConfigMap"}
    out = {}
    for m in built:
        if m["kind"] != "Deployment":
            continue
        c = m["spec"]["template"]["spec"]["containers"][0]
        if c.get("command") != ["lamina"]:
            continue  # the managed Redis
        env: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            env.update(config_maps[ref["configMapRef"]["name"]])
        for var in c.get("env", []):
            env[var["name"]] = var["value"] if "value" in var else _kubelet(var["valueFrom"])
        out[m["metadata"]["labels"][ROLE_LABEL]] = (c["args"], env)
    return out


def _kubelet(source: dict[str, Any]) -> str:
    """The value the kubelet gives a `valueFrom` variable (an unknown field path fails)."""
    if "fieldRef" in source:
        return {"metadata.name": POD_NAME}[source["fieldRef"]["fieldPath"]]
    assert "secretKeyRef" in source, source
    return PASSWORD


def serve(args: list[str], env: dict[str, str]) -> ServeConfig:
    """What `lamina <args>` runs with: the real parser (an unknown flag exits), then
    ServeConfig from the flags and `env`, with its EngineConfig."""
    assert args[0] == "serve"
    every = env_names(ServeConfig)
    unread = sorted(name for name in env if name.startswith("LAMINA_") and name not in every)
    assert not unread, f"the operator writes {unread}, which `lamina serve` never reads"
    return config_from(build_parser().parse_args(args), env)


def check_pods_mean(spec_dict: dict[str, Any]) -> dict[str, ServeConfig]:
    """Parse every pod of `spec_dict` and check each setting against the spec."""
    spec = ServingDeploymentSpec.model_validate(spec_dict)
    configs = {role: serve(args, env) for role, (args, env) in pods(spec).items()}
    assert sorted(configs) == ["decode", "prefill", "router"]
    for role, cfg in configs.items():
        check_meaning(spec, role, cfg)
    return configs


def check_meaning(spec: ServingDeploymentSpec, role: str, cfg: ServeConfig) -> None:
    """The values the operator means, written out from the spec (not from the builders)."""
    sched, speed, kv = spec.engine.scheduling, spec.engine.speed, spec.engine.kv_transfer
    claim_path = spec.model.source.removeprefix("pvc://").partition("/")[2]
    assert (cfg.role, cfg.host, cfg.port) == (role, "0.0.0.0", 8000)
    # every pod serves its internal endpoints on 8001, behind the deployment's internal key
    assert cfg.internal_port == 8001 and cfg.internal_key is not None
    assert (cfg.api_key is not None) == (spec.router.api_key_secret is not None)
    assert cfg.engine.model == f"/models/{claim_path}".rstrip("/")
    assert cfg.model_name == spec.model.name
    assert (cfg.deployment, cfg.pod_name) == (OWNER.name, POD_NAME)
    e = cfg.engine
    assert e.dtype == spec.model.dtype
    assert e.scheduling_policy == sched.policy
    # tokenBudget below maxNumSeqs is raised to it: each running request decodes every step
    assert e.max_num_batched_tokens == max(sched.token_budget, sched.max_num_seqs)
    assert (e.layered_budget, e.layered_max_groups) == (
        sched.cohort_token_budget,
        sched.max_layer_groups,
    )
    assert (e.max_num_seqs, e.block_size) == (sched.max_num_seqs, sched.block_size)
    if not speed.enabled:
        assert e.speed is None
    else:
        assert e.speed is not None and e.speed.anchors == speed.anchor_tokens
        if speed.prefill_layers is not None:  # a layer count stays an int K
            assert type(e.speed.prefill_layers) is int
            assert e.speed.prefill_layers == speed.prefill_layers
        else:  # a percentage is the fraction of the layers, 100 % included
            assert type(e.speed.prefill_layers) is float
            want = max(1, round(speed.prefill_layers_percent / 100 * 48))
            assert e.speed.layers_for(48) == want
    assert (cfg.kv_backend, cfg.kv_ttl_seconds) == (kv.backend, kv.ttl_seconds)
    if kv.backend == "redis" and role != "router":  # the router never touches KV
        managed = f"redis://{OWNER.name}-redis.{OWNER.namespace}.svc:6379/0"
        assert cfg.kv_redis_url == (managed if kv.managed_redis else kv.redis.url)
        has_password = kv.managed_redis or kv.redis.password_secret_ref is not None
        password = cfg.kv_redis_password
        assert (password.get_secret_value() if password else None) == (
            PASSWORD if has_password else None
        )
    if role == "router":
        r = spec.router.routing
        # the router reaches engine pods on their internal port
        assert cfg.prefill_service == f"{OWNER.name}-prefill.{OWNER.namespace}.svc:8001"
        assert cfg.decode_service == f"{OWNER.name}-decode.{OWNER.namespace}.svc:8001"
        assert (cfg.prefill_picker, cfg.decode_picker) == (r.prefill_picker, r.decode_picker)
        assert cfg.disaggregation_min_prompt_tokens == r.disaggregation_min_prompt_tokens
        assert cfg.load_decay_seconds == r.load_decay_seconds


def with_engine(**engine: Any) -> dict[str, Any]:
    return {**BASE, "engine": engine}


CASES = {
    "defaults: chunked, managed redis": BASE,
    "layered, SPEED by layer count, external redis with a password": {
        "model": {"name": "qwen3-30b-a3b", "source": "pvc://models", "dtype": "float16"},
        "engine": {
            "scheduling": {"policy": "layered", "cohortTokenBudget": 4096, "maxLayerGroups": 8},
            "speed": {"enabled": True, "prefillLayers": 36, "anchorTokens": 2},
            "kvTransfer": {
                "redis": {
                    "url": "redis://redis.kv.svc:6379/0",
                    "passwordSecretRef": {"name": "kv-redis", "key": "password"},
                },
                "ttlSeconds": 60,
            },
        },
        "router": {
            "routing": {
                "prefillPicker": "least-load",
                "decodePicker": "round-robin",
                "disaggregationMinPromptTokens": 64,
                "loadDecaySeconds": 30,
            },
            "apiKeySecret": {"name": "clients", "key": "token"},
        },
    },  # fmt: skip
    "SPEED by percentage": with_engine(speed={"enabled": True, "prefillLayersPercent": 75}),
    "SPEED at 100 percent is every layer, not one": with_engine(
        speed={"enabled": True, "prefillLayersPercent": 100}
    ),
    "SPEED settings kept but off": with_engine(speed={"enabled": False, "prefillLayers": 12}),
    "local KV without a prefill pool": {
        **with_engine(kvTransfer={"backend": "local"}),
        "prefill": {"replicas": 0},
    },
    "external redis without a password": with_engine(
        kvTransfer={"redis": {"url": "rediss://r.example:6380/2"}}
    ),
    "token budget below max_num_seqs": with_engine(
        scheduling={"tokenBudget": 64, "maxNumSeqs": 256}
    ),
}


@pytest.mark.parametrize("spec_dict", list(CASES.values()), ids=list(CASES))
def test_every_pod_parses_with_the_meaning_the_operator_intends(spec_dict):
    check_pods_mean(spec_dict)


def test_speed_percent_reaches_the_engine_as_a_fraction():
    configs = check_pods_mean(CASES["SPEED at 100 percent is every layer, not one"])
    assert configs["decode"].engine.speed.layers_for(48) == 48


def test_extra_args_override_the_config_map():
    spec = {**BASE, "decode": {"extraArgs": ["--max-num-seqs", "8", "--max-model-len", "4096"]}}
    cfg = serve(*pods(ServingDeploymentSpec.model_validate(spec))["decode"])
    assert (cfg.engine.max_num_seqs, cfg.engine.max_model_len) == (8, 4096)


def fetch_commands(spec: ServingDeploymentSpec) -> dict[str, tuple[list[str], list[dict]]]:
    """role -> (args after `lamina`, env) of each pod's fetch-model init container."""
    built = [d.manifest for d in build_children(OWNER, spec, BuildContext(redis_password=PASSWORD))]
    out = {}
    for m in built:
        pod = m["spec"]["template"]["spec"] if m["kind"] == "Deployment" else {}
        for c in pod.get("initContainers", []):
            assert c["command"] == ["lamina"]
            out[m["metadata"]["labels"][ROLE_LABEL]] = (c["args"], c["env"])
    return out


@pytest.mark.parametrize(
    "source", ["hf://Qwen/Qwen3-30B-A3B@main", "s3://models-bucket/qwen3", "builtin://lamina-demo"]
)
def test_fetched_sources_reach_the_engine_through_the_init_container(source):
    spec = ServingDeploymentSpec.model_validate({"model": {"name": "q", "source": source}})
    fetches = fetch_commands(spec)
    assert sorted(fetches) == ["decode", "prefill", "router"]
    for role, (args, env) in pods(spec).items():
        fetch_args, fetch_env = fetches[role]
        parsed = build_parser().parse_args(fetch_args)  # an unknown flag exits
        assert (parsed.command, parsed.source) == ("fetch-model", source)
        assert str(parsed.dir) == serve(args, env).engine.model  # what it writes, serve loads
        assert not [v["name"] for v in fetch_env if v["name"].startswith("LAMINA_")]


def test_the_builtin_demo_init_command_writes_a_folder_the_engine_config_accepts(tmp_path):
    spec = ServingDeploymentSpec.model_validate(
        {"model": {"name": "demo", "source": "builtin://lamina-demo", "dtype": "float32"}}
    )
    args, _ = fetch_commands(spec)["decode"]
    dest = tmp_path / "checkpoint"
    assert main([*args[:-1], str(dest), "--termination-log", str(tmp_path / "log")]) == 0
    serve_args, env = pods(spec)["decode"]
    at = serve_args.index("--model")
    cfg = serve([*serve_args[: at + 1], str(dest), *serve_args[at + 2 :]], env)
    assert cfg.engine.model == str(dest) and (dest / "config.json").is_file()


def test_speed_on_without_a_cutoff_is_refused_by_the_crd():
    with pytest.raises(ValidationError, match="no cutoff is set"):
        ServingDeploymentSpec.model_validate(with_engine(speed={"enabled": True}))


@pytest.mark.parametrize("role", ["unified", "prefill", "decode", "router"])
def test_lamina_up_command_lines_parse(role):
    extra = kv_args(6390) if role in ("prefill", "decode") else []
    if role == "router":
        extra = ["--prefill-service", "127.0.0.1:1", "--decode-service", "127.0.0.1:2"]
    cfg = serve(serve_args(role, 8123, "/ckpt", *extra), {})
    assert (cfg.role, cfg.port, cfg.model, cfg.model_name) == (role, 8123, "/ckpt", UP_NAME)
    if role in ("prefill", "decode"):
        assert (cfg.kv_backend, cfg.kv_redis_url) == ("redis", "redis://127.0.0.1:6390/0")


# ---- every value the CRD's engine settings accept ----------------------------------------

# CRD section (path in the spec) -> its model. Fields that are not engine settings are listed
# in NOT_ENGINE_SETTINGS; any other field must yield values below, so a new CRD field fails
# this test until it is wired through to the engine (and checked in check_meaning).
SECTIONS = {
    ("model",): ModelSpec,
    ("engine", "scheduling"): SchedulingSpec,
    ("engine", "speed"): SpeedSpec,
    ("engine", "kvTransfer"): KvTransferSpec,
    ("router", "routing"): RoutingSpec,
}
# free text, Redis's own section, and the fetcher's credentials (test_fetched_sources_...)
NOT_ENGINE_SETTINGS = {"name", "source", "redis", "hf_token_secret", "s3"}


def edge_values(annotation: Any, metadata: list[Any]) -> list[Any]:
    """Each Literal member, both booleans, and each range's bounds."""
    out: list[Any] = []
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for kind in typing.get_args(annotation) if union else (annotation,):
        if typing.get_origin(kind) is Literal:
            out += typing.get_args(kind)
        elif kind is bool:
            out += [True, False]
        elif kind in (int, float):
            out += [m.ge for m in metadata if isinstance(m, annotated_types.Ge)]
            out += [m.le for m in metadata if isinstance(m, annotated_types.Le)]
    return out


def crd_values() -> list[tuple[tuple[str, ...], str, Any]]:
    found = []
    for path, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            values = edge_values(info.annotation, info.metadata)
            if name in NOT_ENGINE_SETTINGS:
                continue
            assert values, f"{model.__name__}.{name}: which values does the engine accept?"
            found += [(path, info.alias or name, v) for v in values]
    return found


def spec_with(path: tuple[str, ...], key: str, value: Any) -> dict[str, Any]:
    """BASE with one value set, completed the way the CRD's cross-field rules ask: SPEED
    values with SPEED on and one cutoff, local KV without a prefill pool."""
    spec: dict[str, Any] = {"model": dict(BASE["model"])}
    section = spec
    for part in path:
        section = section.setdefault(part, {})
    section[key] = value
    if path == ("engine", "speed"):
        section.setdefault("enabled", True)
        if key not in ("prefillLayers", "prefillLayersPercent"):
            section["prefillLayers"] = 2
    if path == ("engine", "kvTransfer") and value == "local":
        spec["prefill"] = {"replicas": 0}
    return spec


# Values the CRD's own rules may refuse with a message (so no pod is ever built with them):
# nixl needs each decode pod told which prefill pod holds a request's KV, which nothing does.
MAY_BE_REFUSED = {(("engine", "kvTransfer"), "backend", "nixl")}


@pytest.mark.parametrize("path, key, value", crd_values())
def test_every_value_the_crd_accepts_parses_into_an_engine_config(path, key, value):
    spec = spec_with(path, key, value)
    if (path, key, value) in MAY_BE_REFUSED:
        try:
            ServingDeploymentSpec.model_validate(spec)
        except ValidationError as exc:
            assert "not supported" in str(exc)
            return
    check_pods_mean(spec)
