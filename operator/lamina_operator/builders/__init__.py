"""Pure builders: a validated ServingDeploymentSpec -> the manifests of its children.

`build_children` is the one entry point the reconciler uses; each `build_*` is also public so
tests (and the autoscaler later) can build a single child.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api import ServingDeploymentSpec
from ..constants import ROLES
from .config import build_config_map, config_hash, engine_env
from .engine import build_pool_deployment, engine_args
from .internal_key import build_internal_secret, derive, fingerprint, random_key
from .names import Owner, child_name, labels, selector_labels
from .network import build_pdb, build_service
from .policies import build_network_policies, build_network_policy
from .redis import (
    build_redis_deployment,
    build_redis_secret,
    build_redis_service,
    generate_password,
)


@dataclass(frozen=True)
class Desired:
    """One child as the spec wants it. `create_only`: never patched once it exists (Secret)."""

    manifest: dict[str, Any]
    create_only: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """(apiVersion, kind, name): how the reconciler finds the live object."""
        m = self.manifest
        return m["apiVersion"], m["kind"], m["metadata"]["name"]


@dataclass(frozen=True)
class BuildContext:
    """Facts about the cluster and the moment that the spec does not hold."""

    pdb_api_version: str = "policy/v1"  # policy/v1beta1 on Kubernetes 1.20
    # The operator's own namespace (the chart sets LAMINA_OPERATOR_NAMESPACE): engine
    # NetworkPolicies admit its pods from there only. None (run outside the chart): any.
    operator_namespace: str | None = None
    # Used only if the managed Redis Secret has to be created; an existing one is kept as is.
    redis_password: str = field(default_factory=generate_password, repr=False)
    # The operator's LAMINA_OPERATOR_KEY_SEED: internal keys are derived from it. None: a new
    # deployment's Secret gets `internal_key_fallback`, kept as is afterwards (internal_key.py).
    key_seed: bytes | None = field(default=None, repr=False)
    internal_key_fallback: str = field(default_factory=random_key, repr=False)

    def internal_key(self, owner: Owner) -> tuple[str, str | None]:
        """(the key a new `<name>-internal` Secret gets, its fingerprint or None unseeded)."""
        if self.key_seed is None:
            return self.internal_key_fallback, None
        key = derive(self.key_seed, owner.namespace, owner.name, owner.uid)
        return key, fingerprint(key)


def build_children(
    owner: Owner, spec: ServingDeploymentSpec, ctx: BuildContext | None = None
) -> list[Desired]:
    """Every child, in creation order: config, internal key and Redis first, then pools,
    Services, PDBs, NetworkPolicies."""
    ctx = ctx or BuildContext()
    config_map = build_config_map(owner, spec)
    key, key_fingerprint = ctx.internal_key(owner)
    out = [Desired(config_map), Desired(build_internal_secret(owner, key), create_only=True)]
    if spec.engine.kv_transfer.managed_redis:
        out += [
            Desired(build_redis_secret(owner, ctx.redis_password), create_only=True),
            Desired(build_redis_deployment(owner, spec)),
            Desired(build_redis_service(owner)),
        ]
    digest = config_hash(config_map)
    for role in ROLES:
        deployment = build_pool_deployment(owner, spec, role, digest, key_fingerprint)
        out.append(Desired(deployment))
        out.append(Desired(build_service(owner, spec, role)))
        out.append(Desired(build_pdb(owner, role, ctx.pdb_api_version)))
    policies = build_network_policies(owner, spec, ctx.operator_namespace)
    out += [Desired(policy) for policy in policies]
    return out


__all__ = [
    "BuildContext",
    "Desired",
    "Owner",
    "build_children",
    "build_config_map",
    "build_internal_secret",
    "build_network_policies",
    "build_network_policy",
    "build_pdb",
    "build_pool_deployment",
    "build_redis_deployment",
    "build_redis_secret",
    "build_redis_service",
    "build_service",
    "child_name",
    "config_hash",
    "engine_args",
    "engine_env",
    "labels",
    "selector_labels",
]
