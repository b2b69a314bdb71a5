"""A throwaway Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.

No kubelet and no scheduler, so pods stay Pending; everything else the API server does is real
(schema validation, RBAC, status subresource, Deployments -> ReplicaSets -> Pods, garbage
collection by ownerReferences, service-account tokens).

Binaries come from `e2e/build_control_plane.sh` (cached under e2e/.cache/bin). Used by
e2e/conftest.py, or by hand:

    python e2e/control_plane.py        # prints `export KUBECONFIG=...`, Ctrl-C tears it down
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LAMINA_E2E_CACHE", HERE / ".cache"))
# The identity `lamina-operator` in the token file: a plain user with no rights until a
# (Cluster)RoleBinding names it. The e2e suite prefers the chart's real ServiceAccount.
OPERATOR_USER = "lamina-operator"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or did not come up; the message says where to look."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_binaries() -> dict[str, Path]:
    """Build or reuse the binaries; returns name -> path for etcd, apiserver, controller-manager."""
    script = HERE / "build_control_plane.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"{script} failed:\n{proc.stderr[-4000:]}")
    etcd = shutil.which("etcd")
    if etcd is None:
        raise ControlPlaneError("etcd is not on PATH after the build; apt-get install etcd-server")
    return {
        "etcd": Path(etcd),
        "kube-apiserver": CACHE / "bin" / "kube-apiserver",
        "kube-controller-manager": CACHE / "bin" / "kube-controller-manager",
    }


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving cert for 127.0.0.1, and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=lamina-e2e-ca",
        "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    _openssl("genrsa", "-out", "apiserver.key", "2048", cwd=pki)
    sans = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc,IP:10.0.0.1"
    _openssl(
        "req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
        "-out", "apiserver.csr", cwd=pki,
    )  # fmt: skip
    (pki / "ext.cnf").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "apiserver.crt", cwd=pki,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> Path:
    # Plain text by hand: no PyYAML needed by the CLI, and the shape is fixed.
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: lamina-e2e\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca_file}\n"
        f"users:\n- name: {user}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: lamina-e2e\n  context:\n    cluster: lamina-e2e\n    user: {user}\n"
        "current-context: lamina-e2e\n"
    )
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """A running control plane; `stop()` kills every process group and removes its files."""

    workdir: Path
    server: str
    ca_file: Path
    admin_kubeconfig: Path
    operator_kubeconfig: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    keep_workdir: bool = False

    def log_tail(self, name: str, chars: int = 3000) -> str:
        log = self.workdir / "logs" / f"{name}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}; its log ends:\n{self.log_tail(name)}"
                )

    def stop(self) -> None:
        # Reverse start order: controllers first, etcd last, so nothing logs a storm of errors.
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(cp: ControlPlane, name: str, argv: list[str]) -> None:
    log = open(cp.workdir / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
    # A new session per child so stop() can kill the whole process group.
    cp.procs[name] = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()


def _wait(cp: ControlPlane, what: str, ready, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp.check_alive()
        if ready():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {n}\n{cp.log_tail(n, 1500)}" for n in cp.procs)
    raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def _get(cp: ControlPlane, token: str, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    req = urllib.request.Request(cp.server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


def start(workdir: Path | None = None, timeout: float = 120.0) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager; return once both serve."""
    bins = ensure_binaries()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lamina-e2e-cp-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    make_pki(pki)

    admin_token, operator_token, kcm_token = (secrets.token_hex(16) for _ in range(3))
    tokens = workdir / "tokens.csv"
    # token,user,uid,"groups"; kube-controller-manager's user is bound by RBAC's bootstrap policy.
    tokens.write_text(
        f'{admin_token},admin,admin,"system:masters"\n'
        f"{operator_token},{OPERATOR_USER},{OPERATOR_USER}\n"
        f"{kcm_token},system:kube-controller-manager,system:kube-controller-manager\n"
    )
    tokens.chmod(0o600)

    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    cp = ControlPlane(
        workdir=workdir,
        server=server,
        ca_file=pki / "ca.crt",
        admin_kubeconfig=write_kubeconfig(
            workdir / "admin.kubeconfig", server, pki / "ca.crt", "admin", admin_token
        ),
        operator_kubeconfig=write_kubeconfig(
            workdir / "operator.kubeconfig", server, pki / "ca.crt", OPERATOR_USER, operator_token
        ),
        keep_workdir=bool(os.environ.get("LAMINA_E2E_KEEP")),
    )
    kcm_kubeconfig = write_kubeconfig(
        workdir / "kcm.kubeconfig", server, pki / "ca.crt", "kcm", kcm_token
    )
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        _spawn(cp, "etcd", [
            str(bins["etcd"]), "--name", "e2e", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"e2e={peer_url}", "--log-level", "warn",
        ])  # fmt: skip
        _spawn(cp, "kube-apiserver", [
            str(bins["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--cert-dir={pki}",
            "--allow-privileged=false",
        ])  # fmt: skip
        _wait(
            cp, "kube-apiserver /readyz", lambda: _get(cp, admin_token, "/readyz") == 200, timeout
        )
        _spawn(cp, "kube-controller-manager", [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--root-ca-file={cp.ca_file}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false", "--port=0", "--secure-port=0",
        ])  # fmt: skip
        # The service-account controller creating `default` proves the controllers run.
        _wait(
            cp,
            "kube-controller-manager (the default ServiceAccount)",
            lambda: (
                _get(cp, admin_token, "/api/v1/namespaces/default/serviceaccounts/default") == 200
            ),
            timeout,
        )
    except BaseException:
        cp.stop()
        raise
    return cp


def main() -> int:
    cp = start()
    print(f"export KUBECONFIG={cp.admin_kubeconfig}", flush=True)
    print(f"# operator identity: {cp.operator_kubeconfig}; Ctrl-C stops it", file=sys.stderr)
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop:
            cp.check_alive()
            time.sleep(1)
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
