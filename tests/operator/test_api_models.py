"""Spec validation: what a user sees when a ServingDeployment or policy is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lamina_operator.api import AutoscalingPolicySpec, ServingDeploymentSpec
from lamina_operator.reconcile.checks import format_validation_error, parse_spec


def _error(spec: dict) -> str:
    with pytest.raises(ValidationError) as info:
        ServingDeploymentSpec.model_validate(spec)
    return format_validation_error(info.value)


def test_examples_parse_with_defaults(gpu_spec, minimal_spec):
    gpu = ServingDeploymentSpec.model_validate(gpu_spec)
    assert gpu.engine.speed.prefill_layers == 36
    assert gpu.engine.kv_transfer.redis.password_secret_ref.key == "password"
    minimal = ServingDeploymentSpec.model_validate(minimal_spec)
    assert minimal.engine.scheduling.policy == "chunked"
    assert minimal.engine.scheduling.token_budget == 512
    assert minimal.engine.kv_transfer.managed_redis  # no url given -> the operator runs one
    assert (minimal.prefill.replicas, minimal.decode.replicas, minimal.router.replicas) == (1, 1, 1)
    dumped = gpu.model_dump(by_alias=True, exclude_none=True)
    assert dumped["engine"]["kvTransfer"]["redis"]["passwordSecretRef"]["name"] == "kv-redis"


@pytest.mark.parametrize(
    "source, ok",
    [
        ("hf://Qwen/Qwen3-30B-A3B", True),
        ("hf://org/name@v1.0", True),
        ("pvc://models/qwen3/snap", True),
        ("s3://my-bucket/models/qwen3", True),
        ("hf://just-a-name", False),
        ("pvc://Bad_Claim/x", False),
        ("http://example.com/model", False),
        ("s3://", False),
    ],
)
def test_model_source_uri(minimal_spec, source, ok):
    minimal_spec["model"]["source"] = source
    if ok:
        ServingDeploymentSpec.model_validate(minimal_spec)
    else:
        assert "spec.model.source" in _error(minimal_spec)


def test_cross_field_messages_say_what_to_fix(gpu_spec, minimal_spec):
    bad = dict(gpu_spec, decode={"replicas": 0})
    assert "decode.replicas is 0 but prefill.replicas is 2" in _error(bad)
    assert "set decode.replicas >= 1" in _error(bad)

    gpu_spec["engine"]["speed"]["prefillLayers"] = 60
    assert "speed.prefillLayers (60) exceeds model.numLayers (48)" in _error(gpu_spec)

    gpu_spec["engine"]["speed"].update(prefillLayers=24, prefillLayersPercent=50)
    message = _error(gpu_spec)
    assert message.startswith("spec.engine.speed:") and "not both" in message

    managed_and_url = dict(minimal_spec, engine={"kvTransfer": {"redis": {
        "managed": True, "url": "redis://r:6379"}}})  # fmt: skip
    assert "remove redis.url" in _error(managed_and_url)

    no_redis = dict(minimal_spec, engine={"kvTransfer": {"redis": {"managed": False}}})
    assert "redis.url is missing" in _error(no_redis)

    local = dict(minimal_spec, engine={"kvTransfer": {"backend": "local"}})
    assert "use redis, or set prefill.replicas: 0" in _error(local)
    ServingDeploymentSpec.model_validate(dict(local, prefill={"replicas": 0}))


def test_autoscaling_needs_exactly_one_policy(minimal_spec):
    assert "exactly one of policyRef" in _error(dict(minimal_spec, autoscaling={}))
    both = {"policyRef": {"name": "p"}, "policy": {"tbt": {"targetMilliseconds": 40}}}
    assert "exactly one of policyRef" in _error(dict(minimal_spec, autoscaling=both))


def test_inline_policy_min_above_max(minimal_spec):
    policy = {"prefill": {"minReplicas": 5, "maxReplicas": 2}}
    message = _error(dict(minimal_spec, autoscaling={"policy": policy}))
    assert "spec.autoscaling.policy" in message
    assert "prefill.minReplicas (5) is greater than prefill.maxReplicas (2)" in message


def test_policy_rules():
    with pytest.raises(ValidationError, match="minPercent .* is greater than maxPercent"):
        AutoscalingPolicySpec.model_validate(
            {"prefillToDecodeRatio": {"minPercent": 300, "maxPercent": 100}}
        )
    with pytest.raises(ValidationError, match="allow at least one decode replica"):
        AutoscalingPolicySpec.model_validate({"decode": {"minReplicas": 0, "maxReplicas": 0}})
    policy = AutoscalingPolicySpec.model_validate({})
    assert policy.scale_down.stabilization_window_seconds == 300
    assert policy.scale_up.stabilization_window_seconds == 0


@pytest.mark.parametrize("quantity", ["1.5x", "-1", True, "4 Gi"])
def test_bad_quantities(minimal_spec, quantity):
    minimal_spec["decode"] = {"resources": {"limits": {"memory": quantity}}}
    assert "spec.decode.resources.limits.memory" in _error(minimal_spec)


def test_unknown_field_and_enum(minimal_spec):
    minimal_spec["engine"] = {"scheduling": {"policy": "fcfs"}}
    assert "spec.engine.scheduling.policy" in _error(minimal_spec)
    minimal_spec["engine"] = {"schedulng": {}}
    assert "spec.engine.schedulng: Extra inputs are not permitted" in _error(minimal_spec)


def test_parse_spec_returns_permanent_problem(minimal_spec):
    spec, problems = parse_spec(dict(minimal_spec, decode={"replicas": -1}))
    assert spec is None
    assert problems[0].reason == "InvalidSpec" and not problems[0].retryable
    assert "spec.decode.replicas" in problems[0].message
