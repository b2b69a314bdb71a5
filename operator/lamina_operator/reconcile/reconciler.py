"""One reconcile pass of a ServingDeployment: check, build, apply, prune, report.

Called with the body kopf hands a handler (create, update, resume, a policy change, a deleted
child); an owned Deployment's other events only refresh status (`refresh_status`, one list).
The pass is idempotent, so running it again with nothing changed makes no write at all (not
even to status). It raises nothing for spec problems: it returns them, and the kopf handler
decides between PermanentError and TemporaryError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from ..builders import BuildContext, Owner, build_children, internal_key
from ..builders.names import internal_secret_name
from ..constants import API_VERSION, DEPLOYMENT_LABEL, ROLES, SERVING_KIND
from ..kube import KubeClient
from .apply import Action, ApplyResult, apply_children, prune_children
from .checks import Problem, check_name, check_references, parse_spec
from .children import Children
from .status import compute_status


class EventRecorder(Protocol):
    def event(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about `obj` (type Normal or Warning)."""


@dataclass
class ListRecorder:
    """EventRecorder that keeps events in memory (tests, dry runs)."""

    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    def event(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))


@dataclass
class Outcome:
    found: bool
    problems: list[Problem] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] | None = None

    @property
    def retryable(self) -> bool:
        return all(p.retryable for p in self.problems)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Holds the API client, the event recorder and a clock; stateless between passes (but for
    the PodDisruptionBudget version the server serves, asked once)."""

    def __init__(
        self,
        client: KubeClient,
        recorder: EventRecorder,
        clock: Callable[[], str] = utc_now,
        operator_namespace: str | None = None,
        key_seed: bytes | None = None,
    ):
        self.client = client
        self.recorder = recorder
        self.clock = clock
        self.operator_namespace = operator_namespace
        self.key_seed = key_seed  # LAMINA_OPERATOR_KEY_SEED (builders/internal_key.py)
        self._pdb_api_version: str | None = None

    def build_context(self) -> BuildContext:
        # A fresh context per pass: it carries the password a new managed Redis would get.
        if self._pdb_api_version is None:
            served = self.client.serves("policy/v1")
            self._pdb_api_version = "policy/v1" if served else "policy/v1beta1"
        return BuildContext(
            pdb_api_version=self._pdb_api_version,
            operator_namespace=self.operator_namespace,
            key_seed=self.key_seed,
        )

    def reconcile(self, body: dict[str, Any]) -> Outcome:
        """One pass over a ServingDeployment as kopf handed it (its body is not read again).

        API calls when nothing changed: one list per child kind (5), a create of the internal
        key Secret and of the managed Redis password Secret, each answered 409 (Secrets are
        not listed: the operator may not read them), plus a GET of each object the spec
        references (the Redis password or TLS Secret where the operator may read Secrets, the
        AutoscalingPolicy).
        """
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return Outcome(found=False)  # deleted: garbage collection removes the children
        namespace, name = meta["namespace"], meta["name"]
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        spec, problems = parse_spec(body.get("spec"))
        problems = check_name(name) + problems
        if spec is not None and not problems:
            problems += check_references(self.client, namespace, spec)
        result = ApplyResult()
        children = Children()
        if spec is not None and not problems:
            ctx = self.build_context()
            children = Children.listed(self.client, owner, ctx.pdb_api_version)
            desired = build_children(owner, spec, ctx)
            rotated = self._drop_stale_internal_key(owner, ctx, children)
            result = apply_children(self.client, owner, desired, children)
            result.actions[:0] = rotated
            problems += [
                Problem(
                    "NameConflict",
                    f"{kind} {child!r} already exists and is controlled by {other}: delete or "
                    "rename it, or rename this ServingDeployment",
                    retryable=True,
                )
                for kind, child, other in result.conflicts
            ] + [
                Problem(
                    "Rejected",
                    f"the API server rejected {kind} {child!r}: {message}: change the spec "
                    "field it comes from",
                    retryable=False,
                )
                for kind, child, message in result.rejected
            ]
            if not result.conflicts and not result.rejected:
                prune_children(self.client, owner, desired, children, result)
        elif spec is not None:  # blocked: report the pools as they are, touch nothing
            children = self._list_deployments(owner)
        status = compute_status(
            body, spec, problems, self._pools(owner, spec, children), self.clock()
        )
        self._write_status(body, status)
        self._post_events(body, result.actions, problems)
        return Outcome(found=True, problems=problems, actions=result.actions, status=status)

    def refresh_status(self, body: dict[str, Any]) -> Outcome:
        """An owned Deployment changed (pods became ready, a rollout moved): recompute status
        from the pool Deployments alone, one list call, and write it if it changed.

        Problems are found by full passes only, so while the last one reported a problem
        (Degraded for a reason other than a failing pool) status stays as that pass wrote it;
        the owner's handler retries, and its pass refreshes the pools too.
        """
        meta = body["metadata"]
        if meta.get("deletionTimestamp") or not _settled(body):
            return Outcome(found=not meta.get("deletionTimestamp"))
        spec, problems = parse_spec(body.get("spec"))
        if spec is None or problems:
            return Outcome(found=True, problems=problems)
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        children = self._list_deployments(owner)
        status = compute_status(body, spec, [], self._pools(owner, spec, children), self.clock())
        self._write_status(body, status)
        return Outcome(found=True, status=status)

    def _drop_stale_internal_key(
        self, owner: Owner, ctx: BuildContext, children: Children
    ) -> list[Action]:
        """The seed changed since the pools were made: their Secret holds the old key. Delete
        it, so this pass creates it with the new key before the pools roll to it."""
        _, want = ctx.internal_key(owner)
        pools = [children.deployment(owner, role) for role in ROLES]
        if want is None or not internal_key.stale(pools, want):
            return []
        name = internal_secret_name(owner)
        self.client.delete("v1", "Secret", owner.namespace, name)
        return [Action("Deleted", "Secret", name)]

    def _list_deployments(self, owner: Owner) -> Children:
        children = Children()
        labels = {DEPLOYMENT_LABEL: owner.name}
        for obj in self.client.list("apps/v1", "Deployment", owner.namespace, labels):
            children.put(obj)
        return children

    @staticmethod
    def _pools(owner: Owner, spec: Any, children: Children) -> dict[str, dict | None]:
        roles = ["prefill", "decode", "router"]
        if spec is not None and spec.engine.kv_transfer.managed_redis:
            roles.append("redis")
        return {role: children.deployment(owner, role) for role in roles}

    def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        current = body.get("status") or {}
        if all(current.get(key) == value for key, value in status.items()):
            return
        meta = body["metadata"]
        self.client.patch(
            API_VERSION, SERVING_KIND, meta["namespace"], meta["name"], {"status": status}, "status"
        )

    def _post_events(
        self, body: dict[str, Any], actions: list[Action], problems: list[Problem]
    ) -> None:
        for action in actions:
            self.recorder.event(body, "Normal", action.verb, action.describe())
        if not problems:
            return
        # Warn once per distinct problem, not on every timer tick: compare with what status said.
        previous = {
            c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []
        }.get("Degraded", {})
        message = "; ".join(p.message for p in problems)
        if previous.get("status") != "True" or previous.get("message") != message:
            for problem in problems:
                self.recorder.event(body, "Warning", problem.reason, problem.message)


def _settled(body: dict[str, Any]) -> bool:
    """Whether the last full pass saw this generation and found no problem of the spec's."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    degraded = next((c for c in status.get("conditions") or [] if c.get("type") == "Degraded"), {})
    return degraded.get("status") != "True" or degraded.get("reason") == "PoolFailing"
