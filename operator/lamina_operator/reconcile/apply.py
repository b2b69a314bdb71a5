"""Idempotent apply of desired children, and pruning of children no longer desired.

Each child we write carries `lamina.dev/last-applied`: the canonical JSON of what we wrote.
A child is written only when that differs from what we want now, and the patch is the merge
diff between the two (so a field we stopped setting is removed, and fields the apiserver or
other controllers added are left alone). Re-running with the same spec issues no writes; a
restarted operator finds children by name and converges without duplicates.
Known limit (kubectl-apply semantics): a hand edit of a child field is not reverted until the
ServingDeployment changes in a way that touches that child.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..builders import Desired, Owner
from ..constants import DEPLOYMENT_LABEL, LAST_APPLIED_ANNOTATION
from ..kube import AlreadyExists, KubeClient, merge_diff

# Kinds the operator creates, with the apiVersions it may have used: pruning looks at these.
CHILD_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("policy/v1beta1", "PodDisruptionBudget"),
)


@dataclass(frozen=True)
class Action:
    verb: str  # Created, Updated, Adopted, Deleted
    kind: str
    name: str
    fields: tuple[str, ...] = ()  # top-level paths that changed, for the event message

    def describe(self) -> str:
        changed = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.verb.lower()} {self.kind} {self.name}{changed}"


@dataclass
class ApplyResult:
    actions: list[Action] = field(default_factory=list)
    # Children whose name is taken by an object another controller owns: (kind, name, owner).
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)


def canonical(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))


def _controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    for ref in obj["metadata"].get("ownerReferences", []) or []:
        if ref.get("controller"):
            return ref
    return None


def _changed_paths(patch: dict[str, Any], prefix: str = "", depth: int = 3) -> list[str]:
    out = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and depth > 1 and value:
            out += _changed_paths(value, path, depth - 1)
        else:
            out.append(path)
    return out


def apply_one(client: KubeClient, owner: Owner, want: Desired, result: ApplyResult) -> None:
    manifest = want.manifest
    api_version, kind, name = want.key
    # create_only children (the password Secret) keep no last-applied copy: it would hold the value.
    stamp = canonical(manifest)
    body = json.loads(stamp)
    if not want.create_only:
        body["metadata"].setdefault("annotations", {})[LAST_APPLIED_ANNOTATION] = stamp
    live = client.get(api_version, kind, owner.namespace, name)
    if live is None:
        try:
            client.create(body)
            result.actions.append(Action("Created", kind, name))
            return
        except AlreadyExists:  # another instance created it between our get and create
            live = client.get(api_version, kind, owner.namespace, name)
            if live is None:
                raise
    ref = _controller(live)
    if ref is not None and ref.get("uid") != owner.uid:
        result.conflicts.append((kind, name, f"{ref.get('kind')}/{ref.get('name')}"))
        return
    if want.create_only:
        if ref is None:  # adopt, but never touch the data
            meta = manifest["metadata"]
            patch = {
                "metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}
            }
            client.patch(api_version, kind, owner.namespace, name, patch)
            result.actions.append(Action("Adopted", kind, name))
        return
    annotations = live["metadata"].get("annotations") or {}
    last_raw = annotations.get(LAST_APPLIED_ANNOTATION)
    if last_raw == stamp and ref is not None:
        return
    last = json.loads(last_raw) if last_raw else {}
    patch = merge_diff(last, manifest)
    fields = tuple(p for p in _changed_paths(patch) if not p.startswith("metadata"))
    patch.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED_ANNOTATION] = stamp
    if ref is None:  # an orphan with our name (e.g. left by a deleted owner): take it over
        patch["metadata"]["ownerReferences"] = manifest["metadata"]["ownerReferences"]
    client.patch(api_version, kind, owner.namespace, name, patch)
    result.actions.append(Action("Adopted" if ref is None else "Updated", kind, name, fields))


def apply_children(client: KubeClient, owner: Owner, desired: list[Desired]) -> ApplyResult:
    result = ApplyResult()
    for want in desired:
        apply_one(client, owner, want, result)
    return result


def prune_children(
    client: KubeClient, owner: Owner, desired: list[Desired], result: ApplyResult
) -> None:
    """Delete children this owner controls that are no longer desired (e.g. managed Redis off).

    Only objects whose controller ownerReference is this very owner (uid) are candidates, so a
    user's object that merely shares our labels is never deleted.
    """
    wanted = {want.key for want in desired}
    for api_version, kind in CHILD_KINDS:
        if not client.serves(api_version):
            continue
        for obj in client.list(api_version, kind, owner.namespace, {DEPLOYMENT_LABEL: owner.name}):
            name = obj["metadata"]["name"]
            ref = _controller(obj)
            if (api_version, kind, name) in wanted or ref is None or ref.get("uid") != owner.uid:
                continue
            client.delete(api_version, kind, owner.namespace, name)
            result.actions.append(Action("Deleted", kind, name))
