"""kopf registration only: which events call which handler body. Work lives in handlers/."""

from __future__ import annotations

import copy
import os
from typing import Any

import kopf

from .autoscaling.autoscaler import Autoscaler
from .builders import internal_key
from .constants import (
    GROUP,
    MANAGED_BY,
    OPERATOR_NAMESPACE_ENV,
    POLICY_PLURAL,
    SERVING_PLURAL,
    VERSION,
)
from .handlers.autoscaling import TICK_SECONDS, autoscale
from .handlers.errors import kube_errors
from .handlers.peering import settle_peering
from .handlers.policy import on_policy
from .handlers.serving import KopfRecorder, on_child_event, reconcile_serving
from .kube import KubeError
from .kube.rest import RestKubeClient, load_config
from .metrics import observe_reconcile
from .reconcile import Reconciler
from .settings import configure

_OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    configure(settings)
    try:
        load_config()
    except KubeError as exc:  # nothing to retry: without credentials the operator cannot run
        raise kopf.PermanentError(str(exc)) from exc
    client = RestKubeClient()
    with kube_errors("checking the peering object"):
        # kopf.run made peering mandatory iff a name was given (`--peering`); the namespaces
        # come from `lamina-operator run` through the memo.
        settle_peering(
            settings,
            explicit=settings.peering.mandatory,
            namespaces=memo.get("namespaces", []),
            exists=client.peering_exists,
            logger=logger,
        )
    namespace = os.environ.get(OPERATOR_NAMESPACE_ENV) or None
    try:
        seed = internal_key.seed_from_env()
    except ValueError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    if seed is None:
        logger.warning(
            "%s is not set: each new ServingDeployment gets a random internal key, which this "
            "operator cannot recompute (its drain calls to pods will be refused). The chart "
            "sets it; by hand, export a fixed value of 32+ random bytes.",
            internal_key.SEED_ENV,
        )
    memo.reconciler = Reconciler(
        client, KopfRecorder(), operator_namespace=namespace, key_seed=seed
    )
    memo.autoscaler = Autoscaler(client, KopfRecorder())


@kopf.on.resume(GROUP, VERSION, SERVING_PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, SERVING_PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, SERVING_PLURAL, id="reconcile")
def serving_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    with observe_reconcile("ServingDeployment"):
        reconcile_serving(memo.reconciler, dict(body), logger)


@kopf.index(GROUP, VERSION, SERVING_PLURAL)
def serving_bodies(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    """ServingDeployments by (namespace, name), kept from the watch: a child's event finds its
    owner here instead of GETting it."""
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.on.event("apps", "v1", "deployments", labels=_OWNED)
def owned_deployment_event(
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    serving_bodies: kopf.Index,
    logger: Any,
    **_: Any,
) -> None:
    with observe_reconcile("Deployment"):
        on_child_event(memo.reconciler, type, dict(body), serving_bodies, logger)


@kopf.on.resume(GROUP, VERSION, POLICY_PLURAL, id="validate")
@kopf.on.create(GROUP, VERSION, POLICY_PLURAL, id="validate")
@kopf.on.update(GROUP, VERSION, POLICY_PLURAL, id="validate")
def policy_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    with observe_reconcile("AutoscalingPolicy"):
        on_policy(memo.reconciler, dict(body), logger)


def _autoscaled(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    # Also while a drain is recorded: autoscaling removed mid-drain undrains that pod.
    drains = (status.get("autoscaling") or {}).get("drains")
    return bool(spec.get("autoscaling")) or bool(drains)


@kopf.timer(GROUP, VERSION, SERVING_PLURAL, interval=TICK_SECONDS, id="autoscale", when=_autoscaled)
def autoscale_timer(namespace: str, name: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    autoscale(memo.autoscaler, namespace, name, logger)
