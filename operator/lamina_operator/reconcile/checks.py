"""Checks the CRD schema cannot express: cross-field rules and references to other objects.

Each finding is a `Problem` with a CamelCase reason (it becomes the Degraded condition's
reason and a Warning event) and `retryable`: True when the world can fix it without a spec
change (a Secret or policy created later), False when only editing the spec helps.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api import AutoscalingPolicySpec, ServingDeploymentSpec
from ..constants import API_VERSION, MAX_NAME_LENGTH, POLICY_KIND
from ..kube import KubeClient, KubeError

LOG = logging.getLogger(__name__)
# Returned by _readable_secret when the operator may not read Secrets here (not None: absent).
UNREADABLE: dict[str, Any] = {}


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    retryable: bool


def format_validation_error(error: ValidationError, root: str = "spec") -> str:
    """One line per error: `spec.engine.speed: set either ... not both`."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in (root, *item["loc"]))
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def parse_spec(raw: dict[str, Any] | None) -> tuple[ServingDeploymentSpec | None, list[Problem]]:
    try:
        return ServingDeploymentSpec.model_validate(raw or {}), []
    except ValidationError as exc:
        return None, [Problem("InvalidSpec", format_validation_error(exc), retryable=False)]


def parse_policy(raw: dict[str, Any] | None) -> tuple[AutoscalingPolicySpec | None, str | None]:
    try:
        return AutoscalingPolicySpec.model_validate(raw or {}), None
    except ValidationError as exc:
        return None, format_validation_error(exc)


def check_name(name: str) -> list[Problem]:
    if len(name) > MAX_NAME_LENGTH:
        return [
            Problem(
                "InvalidName",
                f"name {name!r} has {len(name)} characters; child Service names need it to be at "
                f"most {MAX_NAME_LENGTH}: recreate the ServingDeployment with a shorter name",
                retryable=False,
            )
        ]
    return []


def check_references(
    client: KubeClient, namespace: str, spec: ServingDeploymentSpec
) -> list[Problem]:
    """The Redis password Secret (and its key) and the referenced AutoscalingPolicy exist.

    Secrets are checked only where the operator may read them (rbac.SECRET_READ_RULES); where
    it may not, a missing one shows as the pods' own error (CreateContainerConfigError, a volume
    that cannot mount)."""
    problems: list[Problem] = []
    kv = spec.engine.kv_transfer
    ref = kv.redis.password_secret_ref
    if kv.backend == "redis" and not kv.managed_redis and ref is not None:
        secret = _readable_secret(client, namespace, ref.name)
        if secret is UNREADABLE:
            pass  # not checked here: a pod that reads it reports a missing one
        elif secret is None:
            problems.append(
                Problem(
                    "MissingSecret",
                    f"Secret {ref.name!r} (engine.kvTransfer.redis.passwordSecretRef) does not "
                    f"exist in namespace {namespace!r}: create it with the Redis password under "
                    f"key {ref.key!r}",
                    retryable=True,
                )
            )
        elif ref.key not in (secret.get("data") or {}) and ref.key not in (
            secret.get("stringData") or {}
        ):
            keys = sorted((secret.get("data") or {}).keys())
            problems.append(
                Problem(
                    "MissingSecretKey",
                    f"Secret {ref.name!r} has no key {ref.key!r} (it has {keys}): add the key or "
                    "set passwordSecretRef.key to one of those",
                    retryable=True,
                )
            )
        elif not _decoded(secret, ref.key):
            problems.append(
                Problem(
                    "EmptySecretKey",
                    f"Secret {ref.name!r} key {ref.key!r} is empty: put the Redis password in it",
                    retryable=True,
                )
            )
    problems += _check_redis_tls(client, namespace, spec)
    auto = spec.autoscaling
    if auto is not None and auto.enabled and auto.policy_ref is not None:
        name = auto.policy_ref.name
        policy = client.get(API_VERSION, POLICY_KIND, namespace, name)
        if policy is None:
            problems.append(
                Problem(
                    "PolicyNotFound",
                    f"AutoscalingPolicy {name!r} (autoscaling.policyRef) does not exist in "
                    f"namespace {namespace!r}: create it or fix the name",
                    retryable=True,
                )
            )
        else:
            _, error = parse_policy(policy.get("spec"))
            if error is not None:
                problems.append(
                    Problem(
                        "InvalidPolicy",
                        f"AutoscalingPolicy {name!r} is invalid: {error}",
                        retryable=True,
                    )
                )
    return problems


def _check_redis_tls(
    client: KubeClient, namespace: str, spec: ServingDeploymentSpec
) -> list[Problem]:
    """The redis.tls Secret holds the CA (and, for a managed Redis, its tls.crt/tls.key): a
    missing one would leave pods waiting for a volume, with nothing on this object."""
    kv = spec.engine.kv_transfer
    tls = kv.redis.tls
    if kv.backend != "redis" or tls is None:
        return []
    secret = _readable_secret(client, namespace, tls.secret_name)
    if secret is UNREADABLE:
        return []
    if secret is None:
        return [
            Problem(
                "MissingSecret",
                f"Secret {tls.secret_name!r} (engine.kvTransfer.redis.tls.secretName) does not "
                f"exist in namespace {namespace!r}: create it with the Redis CA under key "
                f"{tls.ca_key!r}",
                retryable=True,
            )
        ]
    keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    wanted = [tls.ca_key] + (["tls.crt", "tls.key"] if kv.managed_redis else [])
    missing = [key for key in wanted if key not in keys]
    if not missing:
        return []
    return [
        Problem(
            "MissingSecretKey",
            f"Secret {tls.secret_name!r} (redis.tls) has no key(s) {missing} (it has "
            f"{sorted(keys)}): add them, or set redis.tls.caKey to the key holding the CA",
            retryable=True,
        )
    ]


def _readable_secret(client: KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret, None when it does not exist, UNREADABLE when RBAC forbids reading it."""
    try:
        return client.get("v1", "Secret", namespace, name)
    except KubeError as exc:
        if exc.status != 403:
            raise
        LOG.debug(
            "not checking Secret %s/%s: the operator may not read Secrets in this namespace "
            "(rbac.secretNamespaces); a pod that mounts it reports a missing one",
            namespace,
            name,
        )
        return UNREADABLE


def _decoded(secret: dict[str, Any], key: str) -> str:
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    try:
        return base64.b64decode(secret["data"][key]).decode()
    except (ValueError, UnicodeDecodeError):
        return ""
