"""Idempotent apply of desired children, and pruning of children no longer desired.

Each child we write carries `lamina.dev/last-applied`: the canonical JSON of what we wrote.
A child is written only when that differs from what we want now, and the patch is the merge
diff between the two (so a field we stopped setting is removed, and fields the apiserver or
other controllers added are left alone). Re-running with the same spec issues no writes; a
restarted operator finds its children by label (or by name, when a create collides) and
converges without duplicates.
Known limit (kubectl-apply semantics): a hand edit of a child field is not reverted until the
ServingDeployment changes in a way that touches that child.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..builders import Desired, Owner, child_name
from ..builders.names import redis_secret_name
from ..constants import LAST_APPLIED_ANNOTATION
from ..kube import AlreadyExists, KubeClient, KubeError, merge_diff
from .children import Children


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
    # Children the API server refused (400/422: schema, admission): (kind, name, its message).
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


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


def apply_one(
    client: KubeClient, owner: Owner, want: Desired, children: Children, result: ApplyResult
) -> None:
    """Bring one child to `want`, comparing with its listed live copy (no GET of its own).

    What the server answers to a create or patch replaces the listed copy in `children`.
    A create_only child (the password Secret) is not listed: created, or found there (409).
    """
    manifest = want.manifest
    api_version, kind, name = want.key
    stamp = canonical(manifest)
    body = json.loads(stamp)
    if want.create_only:  # the password Secret: no last-applied copy (it would hold the value)
        _create_only(client, body, result)
        return
    body["metadata"].setdefault("annotations", {})[LAST_APPLIED_ANNOTATION] = stamp
    live = children.get(kind, name)
    if live is None:
        try:
            children.put(client.create(body))
            result.actions.append(Action("Created", kind, name))
            return
        except AlreadyExists:  # unlabelled (orphan, foreign) or created by another instance
            live = client.get(api_version, kind, owner.namespace, name)
            if live is None:
                raise
    ref = _controller(live)
    if ref is not None and ref.get("uid") != owner.uid:
        result.conflicts.append((kind, name, f"{ref.get('kind')}/{ref.get('name')}"))
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
    children.put(client.patch(api_version, kind, owner.namespace, name, patch))
    result.actions.append(Action("Adopted" if ref is None else "Updated", kind, name, fields))


def _create_only(client: KubeClient, body: dict[str, Any], result: ApplyResult) -> None:
    """Create the password Secret unless it exists; never read, patch or adopt it.

    The operator may create Secrets but not read them (rbac.py), so the Secret is not listed and
    AlreadyExists is the answer "it is there": its data (the password Redis and the engines
    read by secretKeyRef) stays as first written. An orphan or foreign Secret with this name is
    used as it is (its "password" key, if any) and is not adopted: adopting would need patch,
    whose answer holds the data.
    """
    try:
        client.create(body)
    except AlreadyExists:
        return
    result.actions.append(Action("Created", body["kind"], body["metadata"]["name"]))


def apply_children(
    client: KubeClient, owner: Owner, desired: list[Desired], children: Children
) -> ApplyResult:
    result = ApplyResult()
    for want in desired:
        try:
            apply_one(client, owner, want, children, result)
        except KubeError as exc:
            if exc.status not in (400, 422):  # the same request may pass later: let it raise
                raise
            _, kind, name = want.key
            result.rejected.append((kind, name, exc.message))
    return result


def prune_children(
    client: KubeClient,
    owner: Owner,
    desired: list[Desired],
    children: Children,
    result: ApplyResult,
) -> None:
    """Delete listed children this owner controls that are no longer desired (managed Redis off).

    Only objects whose controller ownerReference is this very owner (uid) are candidates, so a
    user's object that merely shares our labels is never deleted. Kind and name identify a
    child, not the apiVersion it was read through. The password Secret is not listed (the
    operator may not read Secrets): it is deleted with the managed Redis Deployment it was made
    for, by name.
    """
    wanted = {(kind, name) for _, kind, name in (want.key for want in desired)}
    for (kind, name), obj in sorted(children.objects.items()):
        ref = _controller(obj)
        if (kind, name) in wanted or ref is None or ref.get("uid") != owner.uid:
            continue
        client.delete(obj["apiVersion"], kind, owner.namespace, name)
        children.remove(kind, name)
        result.actions.append(Action("Deleted", kind, name))
        if (kind, name) == ("Deployment", child_name(owner, "redis")):
            _delete_password_secret(client, owner, result)


def _delete_password_secret(client: KubeClient, owner: Owner, result: ApplyResult) -> None:
    name = redis_secret_name(owner)
    client.delete("v1", "Secret", owner.namespace, name)  # one already gone is no error
    result.actions.append(Action("Deleted", "Secret", name))
