"""A first-time install: the chart's default values (watch.allNamespaces, no
rbac.secretNamespaces) and manifests/minimal.yaml, whose managed Redis needs a password Secret.

The operator runs under a ServiceAccount bound to nothing but the default ClusterRole, so the
API server enforces exactly what `helm install` grants: it may create Secrets everywhere but
read none. The session's namespaced operator is stopped meanwhile (two would share lamina-e2e).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube import Kubectl, load_yaml_docs, wait_for
from operator_process import OperatorProcess, service_account_kubeconfig, wait_until_acting
from setup_cluster import SYSTEM_NAMESPACE, WORK_NAMESPACE, render_chart
from test_rbac import can

REPO = Path(__file__).resolve().parents[1]
FULLNAME = "lamina-default"  # beside the session's namespaced install, not in its way
SD = "servingdeployments.lamina.dev"
NAME = "first-install"


@pytest.fixture
def default_install(admin: Kubectl, installed: dict) -> Iterator[list[dict]]:
    """The ServiceAccount, ClusterRoles and ClusterRoleBinding of a default-values render (no
    Deployment: the operator runs as a local process; no peering: it runs standalone)."""
    docs = render_chart(
        SYSTEM_NAMESPACE, f"fullnameOverride={FULLNAME}", "dashboards.enabled=false"
    )
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding")
    objects = [d for d in docs if d["kind"] in kinds]
    cluster_admin = Kubectl(admin.kubeconfig)
    cluster_admin.apply(objects)
    yield objects
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        extra = ["-n", namespace] if namespace else []
        cluster_admin.delete(obj["kind"], obj["metadata"]["name"], *extra)


@pytest.fixture
def clusterwide_operator(
    admin: Kubectl, operator: OperatorProcess, default_install: list[dict], tmp_path: Path
) -> Iterator[tuple[OperatorProcess, Kubectl]]:
    (sa,) = [d["metadata"]["name"] for d in default_install if d["kind"] == "ServiceAccount"]
    kubeconfig = service_account_kubeconfig(admin, SYSTEM_NAMESPACE, sa, tmp_path / "kubeconfig")
    operator.stop()
    proc = OperatorProcess(
        kubeconfig=kubeconfig,
        namespaces=[],
        all_namespaces=True,
        log_path=tmp_path / "operator.log",
    )
    proc.start()
    try:
        wait_for("the cluster-wide operator's liveness endpoint", proc.healthy, 60)
        wait_until_acting(admin, WORK_NAMESPACE, timeout=120)
        yield proc, Kubectl(kubeconfig, WORK_NAMESPACE)
    finally:
        proc.stop()
        operator.start()
        wait_for("the namespaced operator's liveness endpoint", operator.healthy, 60)
        wait_until_acting(admin, WORK_NAMESPACE)


def test_default_install_reconciles_a_managed_redis_without_reading_secrets(
    admin, clusterwide_operator
):
    proc, identity = clusterwide_operator
    # What `helm install` with default values grants, as the API server enforces it.
    assert can(identity, "create", "secrets") and can(identity, "delete", "secrets")
    for verb in ("get", "list", "watch", "patch"):
        assert not can(identity, verb, "secrets"), verb
        assert not can(identity, verb, "secrets", "kube-system"), verb

    (doc,) = load_yaml_docs(REPO / "manifests" / "minimal.yaml")
    doc["metadata"]["name"] = NAME
    admin.apply(doc)
    try:
        sd = wait_for(
            f"the operator to observe {NAME}",
            lambda: (
                (o := admin.get(SD, NAME))
                and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
                and o
            ),
            90,
        )
        assert "forbidden" not in str(sd["status"]), (sd["status"], proc.log_tail())
        uid = sd["metadata"]["uid"]
        roles = wait_for(
            "prefill, decode, router and redis Deployments",
            lambda: (
                (
                    r := {
                        d["metadata"]["labels"].get("lamina.dev/role")
                        for d in admin.owned_by("deployments", uid)
                    }
                )
                >= {"prefill", "decode", "router", "redis"}
                and r
            ),
            60,
        )
        assert roles
        secrets = {s["metadata"]["name"]: s for s in admin.owned_by("secrets", uid)}
        assert set(secrets) == {f"{NAME}-redis-auth", f"{NAME}-internal"}
        assert "password" in secrets[f"{NAME}-redis-auth"]["data"]
        assert "key" in secrets[f"{NAME}-internal"]["data"]
        assert "secrets is forbidden" not in proc.log_tail(20000), proc.log_tail()
    finally:
        admin.delete(SD, NAME, "--wait=false")
