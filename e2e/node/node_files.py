"""The files a single-node cluster run reads: certificates, tokens, kubeconfigs, component configs.

Everything lands in the run's folder (`Layout`); nothing is written outside it. The node's
address is the harness's bridge IP, which is also the API server's bind and advertise address,
so pods reach the API through the `kubernetes` Service and the host reaches it directly.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "lamina-node"
CONTEXT = "lamina-node"
BRIDGE = "lamina0"


@dataclass(frozen=True)
class Layout:
    """Paths and addresses of one run; `root` is the run's own folder."""

    root: Path
    subnet_octet: int  # the run's pod subnet is 10.88.<octet>.0/24; services 10.89.<octet>.0/24

    @property
    def bridge_ip(self) -> str:
        return f"10.88.{self.subnet_octet}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.88.{self.subnet_octet}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.89.{self.subnet_octet}.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        return f"10.89.{self.subnet_octet}.1"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"


class FilesError(RuntimeError):
    pass


def _openssl(pki: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=pki, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FilesError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def _signed_cert(pki: Path, name: str, subject: str, ext: str) -> None:
    """`name`.key + `name`.crt signed by the run's CA (valid 2 days: a run is short-lived)."""
    _openssl(pki, "genrsa", "-out", f"{name}.key", "2048")
    _openssl(pki, "req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
    (pki / f"{name}.ext").write_text(ext)
    _openssl(
        pki, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
    )  # fmt: skip


def make_pki(lay: Layout) -> None:
    """CA; API server and kubelet serving certs; the API server's client cert for the kubelet
    (so `kubectl logs/exec` work); the service-account key pair."""
    pki = lay.pki
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(pki, "genrsa", "-out", "ca.key", "2048")
    _openssl(
        pki, "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=lamina-node-ca",
        "-out", "ca.crt",
    )  # fmt: skip
    sans = (
        f"IP:127.0.0.1,IP:{lay.bridge_ip},IP:{lay.kubernetes_service_ip},DNS:localhost,"
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local"
    )
    _signed_cert(
        pki, "apiserver", "/CN=kube-apiserver",
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    _signed_cert(
        pki, "kubelet", f"/CN={NODE_NAME}",
        f"subjectAltName=IP:{lay.bridge_ip},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    _signed_cert(
        pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "extendedKeyUsage=clientAuth\n",
    )  # fmt: skip
    _openssl(pki, "genrsa", "-out", "sa.key", "2048")
    _openssl(pki, "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


# token-file identities: (file stem, user, groups). The bootstrap RBAC policy binds each
# system:kube-* user and the system:nodes group (Node authorizer) to what the component needs.
IDENTITIES = [
    ("admin", "admin", "system:masters"),
    ("kcm", "system:kube-controller-manager", ""),
    ("scheduler", "system:kube-scheduler", ""),
    ("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
    ("proxy", "system:kube-proxy", ""),
    ("dns", "lamina-node-dns", "system:masters"),
]


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {CONTEXT}\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: {user}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: {CONTEXT}\n  context:\n    cluster: {CONTEXT}\n    user: {user}\n"
        f"current-context: {CONTEXT}\n"
    )
    path.chmod(0o600)
    return path


def make_tokens(lay: Layout, server: str) -> dict[str, str]:
    """tokens.csv for the API server and one kubeconfig per identity; returns stem -> token."""
    tokens = {stem: secrets.token_hex(16) for stem, _, _ in IDENTITIES}
    lines = []
    for stem, user, groups in IDENTITIES:
        line = f"{tokens[stem]},{user},{user}"
        lines.append(f'{line},"{groups}"' if groups else line)
        write_kubeconfig(lay.path(f"{stem}.kubeconfig"), server, lay.pki / "ca.crt", user,
                         tokens[stem])  # fmt: skip
    csv = lay.path("tokens.csv")
    csv.write_text("\n".join(lines) + "\n")
    csv.chmod(0o600)
    return tokens


def write_containerd_config(lay: Layout) -> Path:
    c = lay.path("containerd")
    (c / "root").mkdir(parents=True, exist_ok=True)
    text = f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
[grpc]
  address = "{lay.containerd_socket}"
[ttrpc]
  address = "{lay.containerd_socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: without this, runc fails every sandbox writing
  # /proc/self/oom_score_adj ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "{lay.path("runc-root")}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{lay.path("cni", "net.d")}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"
"""
    path = c / "config.toml"
    path.write_text(text)
    return path


def write_cni_config(lay: Layout) -> None:
    """Bridge + host-local on the harness's bridge; no masquerade: pods reach only the bridge."""
    conf = {
        "cniVersion": "0.4.0",
        "name": "lamina-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": lay.pod_cidr, "gateway": lay.bridge_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(lay.path("cni", "ipam")),
                },
            }
        ],
    }
    d = lay.path("cni", "net.d")
    d.mkdir(parents=True, exist_ok=True)
    (d / "10-lamina-node.conflist").write_text(json.dumps(conf, indent=2))


def write_kubelet_config(lay: Layout, port: int, healthz_port: int) -> Path:
    pki = lay.pki
    text = f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {lay.bridge_ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
tlsCertFile: {pki / "kubelet.crt"}
tlsPrivateKeyFile: {pki / "kubelet.key"}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {pki / "ca.crt"}}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: ["{lay.bridge_ip}"]
resolvConf: /etc/resolv.conf
protectKernelDefaults: false
serializeImagePulls: false
# Images are imported, never pulled: do not garbage-collect them on a busy shared disk.
imageGCHighThresholdPercent: 100
evictionHard: {{memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}}
"""
    path = lay.path("kubelet-config.yaml")
    path.write_text(text)
    return path
