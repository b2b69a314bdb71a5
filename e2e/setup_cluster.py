"""Installing Lamina's CRDs and the chart's RBAC into the e2e cluster, and removing them again."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from kube import Kubectl, load_yaml_docs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHART = REPO / "charts" / "lamina"
CRD_DIR = REPO / "crds"
# The operator lives in SYSTEM_NAMESPACE (as `helm install -n lamina-system` puts it) and watches
# WORK_NAMESPACE, where the tests apply ServingDeployments.
SYSTEM_NAMESPACE = "lamina-system"
WORK_NAMESPACE = "lamina-e2e"
RELEASE = "lamina"


def helm_binary() -> str:
    """Path of a helm binary, fetched and cached by e2e/get_helm.sh on first use."""
    proc = subprocess.run(["bash", str(HERE / "get_helm.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"e2e/get_helm.sh failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def render_chart(namespace: str, *set_args: str) -> list[dict[str, Any]]:
    """`helm template` of charts/lamina with `--set` overrides; returns the rendered objects."""
    argv = [helm_binary(), "template", RELEASE, str(CHART), "--namespace", namespace]
    for arg in set_args:
        argv += ["--set", arg]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed: {proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def ensure_namespace(admin: Kubectl, name: str) -> None:
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def install_crds(admin: Kubectl) -> list[str]:
    """Apply every CRD in crds/ and wait until the API server serves them; returns their names."""
    files = sorted(CRD_DIR.glob("*.yaml"))
    if not files:
        raise RuntimeError(f"no CRDs in {CRD_DIR}; generate them with `make crds`")
    names = []
    for path in files:
        for doc in load_yaml_docs(path):
            # Server-side apply: CRDs are too big for the last-applied annotation of client apply.
            admin.apply(doc, "--server-side", "--force-conflicts")
            names.append(doc["metadata"]["name"])
    for name in names:
        admin.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return names


def install_rbac(admin: Kubectl) -> dict[str, Any]:
    """The chart's ServiceAccount and RBAC for a namespaced install watching WORK_NAMESPACE."""
    # Objects carry their own namespaces (lamina-system and the watched one): no default.
    admin = Kubectl(admin.kubeconfig)
    for ns in (SYSTEM_NAMESPACE, WORK_NAMESPACE):
        ensure_namespace(admin, ns)
    docs = render_chart(
        SYSTEM_NAMESPACE,
        "watch.allNamespaces=false",
        f"watch.namespaces={{{WORK_NAMESPACE}}}",
        "dashboards.enabled=false",
    )
    # The operator runs as a local process instead of the Deployment (no kubelet, no image).
    objects = [d for d in docs if d["kind"] != "Deployment"]
    admin.apply(objects)
    (sa,) = [d["metadata"]["name"] for d in objects if d["kind"] == "ServiceAccount"]
    return {"objects": objects, "serviceAccount": sa}


def remove_installation(admin: Kubectl, rbac: dict[str, Any]) -> None:
    admin = Kubectl(admin.kubeconfig)
    for obj in rbac["objects"]:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            admin.delete(obj["kind"], obj["metadata"]["name"])
    for ns in (WORK_NAMESPACE, SYSTEM_NAMESPACE):
        admin.delete("namespace", ns, "--wait=false")
