"""One reconcile pass of a ServingDeployment: check, build, apply, prune, report.

Called by every kopf trigger (create, update, resume, a timer, an owned Deployment changing):
the pass is idempotent, so running it again with nothing changed makes no write at all (not
even to status). It raises nothing for spec problems: it returns them, and the kopf handler
decides between PermanentError and TemporaryError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from ..builders import BuildContext, Owner, build_children
from ..constants import API_VERSION, SERVING_KIND
from ..kube import KubeClient
from .apply import Action, ApplyResult, apply_children, prune_children
from .checks import Problem, check_name, check_references, parse_spec
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
    """Holds the API client, the event recorder and a clock; stateless between passes."""

    def __init__(
        self,
        client: KubeClient,
        recorder: EventRecorder,
        clock: Callable[[], str] = utc_now,
    ):
        self.client = client
        self.recorder = recorder
        self.clock = clock

    def build_context(self) -> BuildContext:
        pdb = "policy/v1" if self.client.serves("policy/v1") else "policy/v1beta1"
        return BuildContext(pdb_api_version=pdb)

    def reconcile(self, namespace: str, name: str) -> Outcome:
        body = self.client.get(API_VERSION, SERVING_KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome(found=False)  # deleted: garbage collection removes the children
        owner = Owner(name=name, namespace=namespace, uid=body["metadata"]["uid"])
        spec, problems = parse_spec(body.get("spec"))
        problems = check_name(name) + problems
        if spec is not None and not problems:
            problems += check_references(self.client, namespace, spec)
        result = ApplyResult()
        if spec is not None and not problems:
            desired = build_children(owner, spec, self.build_context())
            result = apply_children(self.client, owner, desired)
            problems += [
                Problem(
                    "NameConflict",
                    f"{kind} {child!r} already exists and is controlled by {other}: delete or "
                    "rename it, or rename this ServingDeployment",
                    retryable=True,
                )
                for kind, child, other in result.conflicts
            ]
            if not result.conflicts:
                prune_children(self.client, owner, desired, result)
        children = self._pool_deployments(owner, spec)
        status = compute_status(body, spec, problems, children, self.clock())
        self._write_status(body, status)
        self._post_events(body, result.actions, problems)
        return Outcome(found=True, problems=problems, actions=result.actions, status=status)

    def _pool_deployments(self, owner: Owner, spec: Any) -> dict[str, dict | None]:
        roles = ["prefill", "decode", "router"]
        if spec is not None and spec.engine.kv_transfer.managed_redis:
            roles.append("redis")
        return {
            role: self.client.get("apps/v1", "Deployment", owner.namespace, f"{owner.name}-{role}")
            for role in roles
        }

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
