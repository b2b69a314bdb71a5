"""The internal key of a ServingDeployment: the credential its pods (and the operator) present
on each other's internal port 8001, and the HMAC key of the KV handles the router mints.

    key = base64url(HMAC-SHA256(seed, "<namespace>/<name>/<uid>"))   (43 chars, unpadded)

The seed is the operator's LAMINA_OPERATOR_KEY_SEED (the chart keeps a random one in a Secret
across upgrades), so the operator can always recompute a deployment's key and never has to read
a Secret to call a pod's internal port. Each deployment's key lands in Secret `<name>-internal`
(key `key`), created by the operator and read by pods through secretKeyRef only. The uid makes
a deleted and recreated ServingDeployment of the same name get a new key.

Rotation: the pod templates carry a fingerprint of the key (sha256, 16 hex chars: it identifies
the key, it does not reveal it). When the seed changes, the fingerprint the live Deployments
carry no longer matches: the reconciler deletes the Secret, creates it with the new key and the
template change rolls every pool.

Without a seed (an operator run by hand): each deployment gets a random key when its Secret is
first created, kept as is afterwards (like the managed Redis password), and no fingerprint, so
restarting the operator never rotates keys or rolls pods. The operator cannot then recompute a
key (its own calls to internal ports are unauthenticated and refused); it says so at start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from ..constants import GROUP
from .names import Owner, internal_secret_name, metadata

SEED_ENV = "LAMINA_OPERATOR_KEY_SEED"
MIN_SEED_BYTES = 32
SECRET_KEY = "key"  # the key inside Secret <name>-internal
FINGERPRINT_ANNOTATION = f"{GROUP}/internal-key-sha256"  # on pod templates


def derive(seed: bytes, namespace: str, name: str, uid: str) -> str:
    """The internal key of ServingDeployment namespace/name with this uid."""
    digest = hmac.new(seed, f"{namespace}/{name}/{uid}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def seed_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """LAMINA_OPERATOR_KEY_SEED as bytes; None when unset or empty.

    Raises ValueError for a seed too short to be secret (fewer than 32 bytes)."""
    value = (os.environ if environ is None else environ).get(SEED_ENV, "")
    if not value:
        return None
    seed = value.encode()
    if len(seed) < MIN_SEED_BYTES:
        raise ValueError(
            f"{SEED_ENV} is {len(seed)} bytes; every internal key is derived from it, so it must "
            f"be at least {MIN_SEED_BYTES} random bytes (the chart generates 64 characters; by "
            "hand: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return seed


def random_key() -> str:
    """A key for a deployment whose operator has no seed (same length as a derived one)."""
    return secrets.token_urlsafe(32)


def fingerprint(key: str) -> str:
    """16 hex chars of sha256(key): the pod-template annotation that rolls pools on rotation."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_internal_secret(owner: Owner, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(owner, internal_secret_name(owner), "internal-key"),
        "type": "Opaque",
        "stringData": {SECRET_KEY: key},
    }


def stale(deployments: Iterable[dict[str, Any] | None], want: str) -> bool:
    """Whether a live pool Deployment was made for another key than `want` (a fingerprint):
    the Secret then holds that other key and must be replaced before the pools roll.

    A Deployment without the annotation was made by an operator without a seed (or before
    internal keys existed): its Secret, if any, holds a random key, so it is stale too. A pool
    not created yet says nothing."""
    for deployment in deployments:
        if deployment is None:
            continue
        template = (deployment.get("spec") or {}).get("template") or {}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        if annotations.get(FINGERPRINT_ANNOTATION) != want:
            return True
    return False
