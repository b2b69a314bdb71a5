"""e2e fixtures: a control plane (or $KUBECONFIG), the CRDs and chart RBAC, the operator process.

Everything here is marked `e2e`. With KUBECONFIG set the suite runs against that cluster, but only
when its current context is `lamina-e2e` (what e2e/control_plane.py writes) or is named exactly
by LAMINA_E2E_ALLOW_CONTEXT, so it never touches a cluster by accident.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The helpers beside this file are plain modules, not a package (pytest runs with importlib).
sys.path.insert(0, str(HERE))

import control_plane  # noqa: E402
from kube import Kubectl, wait_for  # noqa: E402
from operator_process import (  # noqa: E402
    OperatorProcess,
    service_account_kubeconfig,
    wait_until_acting,
)
from setup_cluster import (  # noqa: E402
    SYSTEM_NAMESPACE,
    WORK_NAMESPACE,
    install_crds,
    install_rbac,
    remove_installation,
)

OWN_CONTEXT = "lamina-e2e"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection sees the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):  # type: ignore[no-untyped-def]
    """Attach the operator's log to failures: the first question is always what it did."""
    outcome = yield
    report = outcome.get_result()
    proc = getattr(item, "funcargs", {}).get("operator")
    if report.failed and isinstance(proc, OperatorProcess):
        report.sections.append(("lamina-operator log (tail)", proc.log_tail()))


def _guard_context(kubeconfig: Path) -> None:
    kubectl = Kubectl(kubeconfig)
    context = kubectl.run("config", "current-context").strip()
    allowed = {OWN_CONTEXT, os.environ.get("LAMINA_E2E_ALLOW_CONTEXT", "")} - {""}
    if context not in allowed:
        pytest.exit(
            f"refusing to run the e2e suite against kube context {context!r}: it creates and deletes "
            f"namespaces, CRDs and cluster RBAC. Unset KUBECONFIG to get a throwaway local control "
            f"plane, or set LAMINA_E2E_ALLOW_CONTEXT={context} if this cluster is meant for it.",
            returncode=2,
        )


@pytest.fixture(scope="session")
def admin_kubeconfig() -> Iterator[Path]:
    """Cluster-admin kubeconfig: $KUBECONFIG (guarded) or a fresh local control plane."""
    external = os.environ.get("KUBECONFIG")
    if external:
        path = Path(external.split(os.pathsep)[0])
        _guard_context(path)
        yield path
        return
    cp = control_plane.start()
    try:
        yield cp.admin_kubeconfig
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def admin(admin_kubeconfig: Path) -> Kubectl:
    """kubectl as cluster admin, defaulting to the namespace the examples go into."""
    return Kubectl(admin_kubeconfig, WORK_NAMESPACE)


@pytest.fixture(scope="session")
def installed(admin: Kubectl) -> Iterator[dict]:
    """CRDs installed and the chart's RBAC applied (every rendered object but the Deployment)."""
    crds = install_crds(admin)
    rbac = install_rbac(admin)
    try:
        yield {"crds": crds, "rbac": rbac}
    finally:
        if os.environ.get("KUBECONFIG"):
            # A shared cluster: remove what the suite added. A local one is thrown away whole.
            remove_installation(admin, rbac)


@pytest.fixture(scope="session")
def operator_kubeconfig(admin: Kubectl, installed: dict, tmp_path_factory) -> Path:
    """A kubeconfig holding a token of the chart's own ServiceAccount (its RBAC, nothing more)."""
    return service_account_kubeconfig(
        admin,
        SYSTEM_NAMESPACE,
        installed["rbac"]["serviceAccount"],
        tmp_path_factory.mktemp("operator") / "kubeconfig",
    )


@pytest.fixture(scope="session")
def operator(
    admin: Kubectl, operator_kubeconfig: Path, tmp_path_factory
) -> Iterator[OperatorProcess]:
    """`lamina-operator run --namespace <work ns>` as a subprocess under the chart's identity."""
    proc = OperatorProcess(
        kubeconfig=operator_kubeconfig,
        namespaces=[WORK_NAMESPACE],
        log_path=tmp_path_factory.mktemp("operator-log") / "operator.log",
    )
    proc.start()
    try:
        wait_for("the operator's liveness endpoint", proc.healthy, timeout=60)
        wait_until_acting(admin, WORK_NAMESPACE)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def operator_identity(operator_kubeconfig: Path) -> Kubectl:
    """kubectl as the operator's ServiceAccount (for `auth can-i` checks)."""
    return Kubectl(operator_kubeconfig, WORK_NAMESPACE)
