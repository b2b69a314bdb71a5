"""Running `lamina-operator run` as a local subprocess under a ServiceAccount's identity."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from control_plane import free_port, write_kubeconfig
from kube import Kubectl, KubectlError, condition, wait_for


def service_account_kubeconfig(admin: Kubectl, namespace: str, name: str, path: Path) -> Path:
    """Write a kubeconfig authenticating as ServiceAccount `namespace/name`.

    Prefers the TokenRequest API (`kubectl create token`, servers >= 1.20 with an issuer); falls
    back to the token Secret that servers before 1.24 create for every ServiceAccount.
    """
    try:
        token = admin.run("create", "token", name, "-n", namespace, "--duration=4h").strip()
    except KubectlError:
        token = _legacy_token(admin, namespace, name)
    view = json.loads(admin.run("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = view["clusters"][0]["cluster"]
    ca_file = path.with_name("ca.crt")
    if "certificate-authority-data" in cluster:
        ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        shutil.copy(cluster["certificate-authority"], ca_file)
    return write_kubeconfig(path, cluster["server"], ca_file, f"{namespace}-{name}", token)


def _legacy_token(admin: Kubectl, namespace: str, name: str) -> str:
    def secret_token() -> str | None:
        for secret in admin.in_namespace(namespace).list("secrets"):
            annotations = secret["metadata"].get("annotations") or {}
            if (
                secret.get("type") == "kubernetes.io/service-account-token"
                and annotations.get("kubernetes.io/service-account.name") == name
                and "token" in (secret.get("data") or {})
            ):
                return base64.b64decode(secret["data"]["token"]).decode()
        return None

    return wait_for(f"a token Secret for ServiceAccount {namespace}/{name}", secret_token, 60)


def operator_executable() -> str:
    beside = Path(sys.executable).parent / "lamina-operator"
    found = str(beside) if beside.exists() else shutil.which("lamina-operator")
    if not found:
        raise RuntimeError("lamina-operator is not installed; run `make install` first")
    return found


@dataclass
class OperatorProcess:
    kubeconfig: Path
    namespaces: list[str]
    log_path: Path
    all_namespaces: bool = False
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    health_port: int = 0

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def start(self) -> None:
        self.health_port = free_port()
        argv = [operator_executable(), "run"]
        if self.all_namespaces:
            argv.append("--all-namespaces")
        for ns in self.namespaces:
            argv.append(f"--namespace={ns}")
        argv += self.extra_args
        # The same flag the chart's Deployment passes (its liveness probe reads GET /healthz).
        argv.append(f"--liveness-port={self.health_port}")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"lamina-operator exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_until_acting(admin: Kubectl, namespace: str, timeout: float = 180.0) -> None:
    """Block until the operator handles objects, proven by a throwaway AutoscalingPolicy getting
    a Ready condition. Liveness alone is not enough: kopf serves /healthz at once but, without
    cluster-wide read rights, retries listing namespaces and CRDs for ~50 s before it starts."""
    kubectl = admin.in_namespace(namespace)
    name = f"e2e-canary-{free_port()}"
    kubectl.apply(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "AutoscalingPolicy",
            "metadata": {"name": name},
            "spec": {"tbt": {"targetMilliseconds": 100}},
        }
    )
    try:
        wait_for(
            "the operator to act on a canary AutoscalingPolicy",
            lambda: condition(kubectl.get("autoscalingpolicies.lamina.dev", name), "Ready"),
            timeout,
        )
    finally:
        kubectl.delete("autoscalingpolicies.lamina.dev", name)
