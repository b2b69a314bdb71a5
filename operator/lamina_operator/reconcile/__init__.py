"""Reconciliation: checks, idempotent apply, status computation, the per-object pass."""

from .apply import Action, ApplyResult, apply_children, prune_children
from .checks import Problem, check_references, parse_spec
from .policy import reconcile_policy, referencing_deployments
from .reconciler import EventRecorder, ListRecorder, Outcome, Reconciler
from .status import compute_conditions, compute_status

__all__ = [
    "Action",
    "ApplyResult",
    "EventRecorder",
    "ListRecorder",
    "Outcome",
    "Problem",
    "Reconciler",
    "apply_children",
    "check_references",
    "compute_conditions",
    "compute_status",
    "parse_spec",
    "prune_children",
    "reconcile_policy",
    "referencing_deployments",
]
