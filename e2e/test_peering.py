"""`lamina-operator run --all-namespaces` and its ClusterKopfPeering, against a real API server.

It used to hang silently when the peering object was missing: nothing logged, nothing
reconciled. Now, without --peering it runs standalone and warns; with --peering NAME it waits,
says what is missing and how to create it, and starts acting once the object exists.
The session's namespaced operator is stopped meanwhile (two operators would share lamina-e2e).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube import Kubectl, condition, wait_for
from operator_process import OperatorProcess, wait_until_acting
from setup_cluster import WORK_NAMESPACE

from lamina_operator.handlers.peering import manifest

PEERING = "lamina-operator"
CLUSTER_PEERING = "clusterkopfpeerings.kopf.dev"


@pytest.fixture
def namespaced_operator_stopped(admin: Kubectl, operator: OperatorProcess) -> Iterator[None]:
    operator.stop()
    yield
    operator.start()
    wait_for("the namespaced operator's liveness endpoint", operator.healthy, 60)
    wait_until_acting(admin, WORK_NAMESPACE)


@pytest.fixture
def clusterwide(admin_kubeconfig: Path, installed: dict, tmp_path: Path):
    """Start `lamina-operator run --all-namespaces [extra args]` as cluster admin; stop after."""
    started: list[OperatorProcess] = []

    def start(*extra: str) -> OperatorProcess:
        proc = OperatorProcess(
            kubeconfig=admin_kubeconfig,
            namespaces=[],
            all_namespaces=True,
            extra_args=list(extra),
            log_path=tmp_path / f"operator-{len(started)}.log",
        )
        started.append(proc)
        proc.start()
        wait_for("the cluster-wide operator's liveness endpoint", proc.healthy, 60)
        return proc

    yield start
    for proc in started:
        proc.stop()


def _canary(admin: Kubectl, name: str) -> Kubectl:
    kubectl = admin.in_namespace(WORK_NAMESPACE)
    kubectl.apply(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "AutoscalingPolicy",
            "metadata": {"name": name},
            "spec": {"tbt": {"targetMilliseconds": 100}},
        }
    )
    return kubectl


def test_without_peering_flag_it_runs_standalone_and_warns(
    admin, namespaced_operator_stopped, clusterwide
):
    assert admin.get(CLUSTER_PEERING, PEERING) is None, "the suite expects no ClusterKopfPeering"
    proc = clusterwide()
    wait_until_acting(admin, WORK_NAMESPACE, timeout=90)  # it reconciles
    log = proc.log_tail(20000)
    assert f"ClusterKopfPeering '{PEERING}' does not exist: running standalone" in log, log
    assert "kind: ClusterKopfPeering" in log  # and says how to get leader election


def test_with_peering_flag_it_says_what_is_missing_and_starts_once_created(
    admin, namespaced_operator_stopped, clusterwide
):
    proc = clusterwide(f"--peering={PEERING}")
    wait_for(
        "the operator to say the peering object is missing",
        lambda: "nothing is reconciled until it exists" in proc.log_tail(20000),
        60,
    )
    kubectl = _canary(admin, "e2e-peering-canary")
    try:
        time.sleep(5)  # it would have acted on the canary within a second or two
        assert not condition(kubectl.get("autoscalingpolicies.lamina.dev", "e2e-peering-canary"),
                             "Ready")  # fmt: skip
        admin.apply(manifest(PEERING, None))
        wait_for(
            "the operator to act once the ClusterKopfPeering exists",
            lambda: condition(
                kubectl.get("autoscalingpolicies.lamina.dev", "e2e-peering-canary"), "Ready"
            ),
            90,
        )
    finally:
        kubectl.delete("autoscalingpolicies.lamina.dev", "e2e-peering-canary")
        admin.delete(CLUSTER_PEERING, PEERING)
