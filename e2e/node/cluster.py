"""A real single-node Kubernetes on this machine: `make cluster-up` / `make cluster-down`.

    python e2e/node/cluster.py up      # build/reuse binaries and images, start, print exports
    python e2e/node/cluster.py down    # stop every daemon by pid, put the machine back
    python e2e/node/cluster.py status  # exit 0 when a cluster is up and every daemon runs

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy (1.20, built by
build_node.sh), containerd + runc with their own root/state/socket, bridge CNI on the bridge
`lamina0` the harness creates, dnsmasq fed by dns_shim.py as cluster DNS. Ports are free ports
and every file lives in the run's folder; /run/lamina-node/current names the run that is up
(one per machine: kube-proxy's KUBE-* chains are machine-wide).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import host_state
import processes as procs
from node_files import (
    BRIDGE,
    CONTEXT,
    NODE_NAME,
    Layout,
    make_pki,
    make_tokens,
    write_cni_config,
    write_containerd_config,
    write_kubelet_config,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("LAMINA_NODE_CACHE", Path.home() / ".cache/lamina/node"))
CP_BIN = Path(os.environ.get("LAMINA_E2E_CACHE", Path.home() / ".cache/lamina/e2e")) / "bin"
STATE = Path(os.environ.get("LAMINA_NODE_STATE", "/run/lamina-node"))
IMAGES = ("pause", "redis", "lamina-operator", "lamina-engine")
# Stop order: what uses the API first, etcd last.
DAEMONS = ("dns-shim", "dnsmasq", "kube-proxy", "kubelet", "kube-scheduler",
           "kube-controller-manager", "containerd", "kube-apiserver", "etcd")  # fmt: skip


class ClusterError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*argv: str, check: bool = True, timeout: float | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def current_run() -> Path | None:
    f = STATE / "current"
    return Path(f.read_text().strip()) if f.exists() else None


def dead_daemons(root: Path) -> list[str]:
    """The daemons of run `root` that are not running (all of them after a reboot, or when the
    session that started the run was killed and /run/lamina-node/current outlived it)."""
    return [name for name in DAEMONS if not procs.alive(root, name)]


def stale_run() -> str | None:
    """Why the run named in /run/lamina-node/current is stale (its daemons gone), or None when no
    run is named or every daemon of it runs."""
    run = current_run()
    dead = dead_daemons(run) if run is not None else []
    return f"the run {run} is not running ({', '.join(dead)} gone)" if dead else None


def clear_stale_run() -> None:
    """A stale run is cleaned up (mounts, iptables, bridge, sysctls put back as `down` does) so a
    new run can start; a live one stays."""
    why = stale_run()
    if why:
        log(f"{why}: cleaning it up first")
        down()


def kubectl(lay: Layout, *args: str, check: bool = True, timeout: float = 120) -> str:
    """kubectl as cluster admin; with check=False a failure or a timeout (a loaded machine
    answers slowly) reads as empty output, for polling."""
    argv = (os.environ.get("KUBECTL", "kubectl"), "--kubeconfig", str(lay.admin_kubeconfig), *args)
    try:
        return sh(*argv, check=check, timeout=timeout)
    except subprocess.TimeoutExpired:
        if check:
            raise ClusterError(f"{' '.join(argv)} timed out after {timeout:.0f} s") from None
        return ""


def wait(root: Path, what: str, ready, timeout: float, daemons: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive(root, daemons)
        if ready():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {d}\n{procs.log_tail(root, d, 1500)}" for d in daemons)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def pick_subnet_octet() -> int:
    """The first 10.88.N.0/24 (pods) + 10.89.N.0/24 (services) no route on this machine uses."""
    routes = sh("ip", "-4", "route", "show", "table", "all")
    for n in range(256):
        if f"10.88.{n}." not in routes and f"10.89.{n}." not in routes:
            return n
    raise ClusterError("no free 10.88.N.0/24 subnet: every N has a route on this machine")


def start_control_plane(lay: Layout, ports: dict[str, int]) -> None:
    root, pki = lay.root, lay.pki
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    procs.spawn(root, "etcd", [
        shutil.which("etcd") or "etcd", "--name", "node", "--data-dir", str(root / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"node={peer_url}", "--log-level", "warn",
    ])  # fmt: skip
    procs.spawn(root, "kube-apiserver", [
        str(CP_BIN / "kube-apiserver"), f"--etcd-servers={etcd_url}",
        f"--bind-address={lay.bridge_ip}", f"--advertise-address={lay.bridge_ip}",
        f"--secure-port={ports['apiserver']}", "--insecure-port=0",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={root / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={lay.service_cidr}", f"--cert-dir={pki}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP", "--allow-privileged=false",
    ])  # fmt: skip
    server = f"https://{lay.bridge_ip}:{ports['apiserver']}"
    ready = lambda: kubectl(lay, "get", "--raw", "/readyz", check=False, timeout=30) == "ok"  # noqa: E731
    wait(root, "kube-apiserver /readyz", ready, 120, ["etcd", "kube-apiserver"])
    procs.spawn(root, "kube-controller-manager", [
        str(CP_BIN / "kube-controller-manager"), f"--kubeconfig={root / 'kcm.kubeconfig'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--port=0", "--secure-port=0",
    ])  # fmt: skip
    procs.spawn(root, "kube-scheduler", [
        str(CACHE / "bin" / "kube-scheduler"), f"--kubeconfig={root / 'scheduler.kubeconfig'}",
        "--leader-elect=false", "--port=0", "--secure-port=0",
    ])  # fmt: skip
    log(f"control plane at {server}")


def start_containerd(lay: Layout) -> None:
    root = lay.root
    config = write_containerd_config(lay)
    write_cni_config(lay)
    procs.spawn(root, "containerd", ["/usr/bin/containerd", "--config", str(config)])
    wait(root, "containerd's socket", lay.containerd_socket.exists, 60, ["containerd"])
    ctr = ["ctr", "-a", str(lay.containerd_socket), "-n", "k8s.io"]
    for name in IMAGES:
        tar = CACHE / "images" / f"{name}.tar"
        if not tar.exists():
            raise ClusterError(f"{tar} is missing: e2e/node/images.sh builds it")
        t0 = time.monotonic()
        sh(*ctr, "images", "import", str(tar), timeout=900)
        log(f"imported localhost/{name}:local ({time.monotonic() - t0:.0f} s)")


def start_node(lay: Layout, ports: dict[str, int]) -> None:
    root = lay.root
    config = write_kubelet_config(lay, ports["kubelet"], ports["kubelet_healthz"])
    procs.spawn(root, "kubelet", [
        str(CACHE / "bin" / "kubelet"), f"--config={config}",
        f"--kubeconfig={root / 'kubelet.kubeconfig'}", "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{lay.containerd_socket}",
        f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'kubelet-pki'}",
        f"--node-ip={lay.bridge_ip}", f"--hostname-override={NODE_NAME}",
        "--pod-infra-container-image=localhost/pause:local",
        # Both default to folders outside the run (/usr/libexec/..., /var/lib/kubelet/seccomp).
        f"--volume-plugin-dir={root / 'kubelet-plugins'}",
        f"--seccomp-profile-root={root / 'kubelet' / 'seccomp'}", "--v=1",
    ])  # fmt: skip
    procs.spawn(root, "kube-proxy", [
        str(CACHE / "bin" / "kube-proxy"), f"--kubeconfig={root / 'proxy.kubeconfig'}",
        f"--hostname-override={NODE_NAME}", "--proxy-mode=iptables",
        f"--cluster-cidr={lay.pod_cidr}", f"--bind-address={lay.bridge_ip}",
        # 0: leave the machine's conntrack table and timeouts alone.
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        f"--healthz-bind-address=127.0.0.1:{ports['proxy_healthz']}",
        f"--metrics-bind-address=127.0.0.1:{ports['proxy_metrics']}",
    ])  # fmt: skip
    hosts = root / "dns" / "hosts"
    hosts.mkdir(parents=True, exist_ok=True)
    procs.spawn(root, "dnsmasq", [
        "/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
        f"--hostsdir={hosts}", f"--listen-address={lay.bridge_ip}", "--bind-interfaces",
        "--user=root", "--pid-file", "--log-facility=-",
    ])  # fmt: skip
    token = root / "dns.token"
    token.write_text(_token_of(root, "dns"))
    token.chmod(0o600)
    server = f"https://{lay.bridge_ip}:{ports['apiserver']}"
    procs.spawn(root, "dns-shim", [
        sys.executable, str(HERE / "dns_shim.py"), server, str(lay.pki / "ca.crt"), str(token),
        str(hosts / "svc.hosts"),
    ])  # fmt: skip

    def node_ready() -> bool:
        out = kubectl(lay, "get", "node", NODE_NAME, "-o",
                      'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                      check=False, timeout=10)  # fmt: skip
        return out.strip() == "True"

    wait(root, f"node {NODE_NAME} Ready", node_ready, 180, list(DAEMONS))


def _token_of(root: Path, stem: str) -> str:
    for line in (root / f"{stem}.kubeconfig").read_text().splitlines():
        if line.strip().startswith("token:"):
            return line.split(":", 1)[1].strip()
    raise ClusterError(f"no token in {stem}.kubeconfig")


def up() -> Path:
    if os.geteuid() != 0:
        raise ClusterError("cluster-up needs root (kubelet, containerd, iptables, mounts)")
    clear_stale_run()
    run = current_run()
    if run is not None:
        raise ClusterError(
            f"a node cluster is already up (run folder {run}); `make cluster-down` stops it"
        )
    t0 = time.monotonic()
    # LAMINA_NODE_SKIP_BUILD=1: use the cached binaries and image tarballs as they are (iterating
    # on the harness while HEAD moves would otherwise rebuild the images).
    if not os.environ.get("LAMINA_NODE_SKIP_BUILD"):
        subprocess.run(["bash", str(HERE / "build_node.sh")], check=True)
        subprocess.run(["bash", str(HERE / "images.sh")], check=True)
    log(f"binaries and images ready ({time.monotonic() - t0:.0f} s)")
    root = Path(tempfile.mkdtemp(prefix="lamina-node-", dir=os.environ.get("LAMINA_NODE_RUNS")))
    STATE.mkdir(parents=True, exist_ok=True)
    # Claimed before anything starts, so `cluster-down` can clean a half-started run too.
    (STATE / "current").write_text(str(root) + "\n")
    (root / "host-before.json").write_text(json.dumps(host_state.snapshot()))
    if BRIDGE in host_state.links():
        raise ClusterError(f"interface {BRIDGE} already exists: another node run left it?")
    lay = Layout(root=root, subnet_octet=pick_subnet_octet())
    ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kubelet",
                                      "kubelet_healthz", "proxy_healthz", "proxy_metrics")}  # fmt: skip
    (root / "layout.json").write_text(json.dumps({"octet": lay.subnet_octet, "ports": ports}))
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{lay.bridge_ip}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    make_pki(lay)
    make_tokens(lay, f"https://{lay.bridge_ip}:{ports['apiserver']}")
    start_control_plane(lay, ports)
    start_containerd(lay)
    start_node(lay, ports)
    log(f"node {NODE_NAME} Ready; cluster up in {time.monotonic() - t0:.0f} s (run folder {root})")
    return root


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def down() -> None:
    root = current_run()
    if root is None:
        log("no node cluster is up (nothing in /run/lamina-node/current)")
        return
    t0 = time.monotonic()
    layout = _read_json(root / "layout.json")
    before = _read_json(root / "host-before.json")
    lay = Layout(root=root, subnet_octet=layout["octet"] if layout else 0)
    if layout and procs.alive(root, "kube-apiserver") and procs.alive(root, "kubelet"):
        # Through the API first, so the kubelet tears pods down and CNI releases their veths.
        namespaces = kubectl(lay, "get", "ns", "-o", "name", check=False, timeout=20).split()
        mine = [n for n in namespaces if n.split("/")[1] not in
                ("default", "kube-system", "kube-public", "kube-node-lease")]  # fmt: skip
        kubectl(lay, "delete", "servingdeployments.lamina.dev", "--all", "-A", "--wait=true",
                "--timeout=60s", check=False, timeout=90)  # fmt: skip
        if mine:
            kubectl(lay, "delete", *mine, "--wait=true", "--timeout=60s", check=False, timeout=90)
        kubectl(lay, "delete", "pods", "--all", "-A", "--grace-period=5", "--wait=true",
                "--timeout=60s", check=False, timeout=90)  # fmt: skip
    for name in DAEMONS[:5]:  # dns, proxy, kubelet, scheduler
        procs.stop(root, name)
    killed = host_state.kill_pod_processes()
    if killed:
        log(f"killed {killed} leftover pod processes")
    procs.stop(root, "containerd")
    for pid in procs.pids_mentioning(str(root), "containerd-shim-runc-v2"):
        procs.kill_pid(pid, "containerd-shim-runc-v2", grace=2)
    for name in DAEMONS[5:]:
        procs.stop(root, name)
    keep_mounts = set(before["mounts"]) if before else set()
    failed = host_state.unmount_under([str(root), *host_state.FIXED_DIRS], keep_mounts)
    left_cgroups = host_state.remove_cgroups()
    host_state.remove_kube_iptables()
    if BRIDGE in host_state.links():
        sh("ip", "link", "del", BRIDGE, check=False)
    if before:
        restored = host_state.restore_sysctls(before["sysctls"])
        if restored:
            log(f"restored sysctls: {', '.join(restored)}")
        for d, existed in before["fixed_dirs"].items():
            if not existed and os.path.exists(d) and not failed:
                shutil.rmtree(d, ignore_errors=True)
    if failed or left_cgroups:
        raise ClusterError(f"could not unmount {failed} / remove cgroups {left_cgroups}; run "
                           f"`make cluster-down` again (the run folder {root} is kept)")  # fmt: skip
    if not os.environ.get("LAMINA_NODE_KEEP"):
        shutil.rmtree(root, ignore_errors=True)
    (STATE / "current").unlink(missing_ok=True)
    try:  # /run/lamina-node did not exist before the first cluster-up either
        STATE.rmdir()
    except OSError:
        pass  # something else lives there
    log(f"cluster down in {time.monotonic() - t0:.0f} s")


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    try:
        if cmd == "up":
            root = up()
            helm = CP_BIN / "helm"
            print(f"export KUBECONFIG={root / 'admin.kubeconfig'}")
            print(
                f"kubectl create namespace lamina-demo && {helm} install lamina {REPO / 'charts' / 'lamina'} -n lamina-system "
                "--create-namespace --set image.repository=localhost/lamina-operator "
                "--set image.tag=local --set image.pullPolicy=Never "
                "--set 'rbac.secretNamespaces={lamina-demo}'"
            )
            print(f"# context {CONTEXT}; `make cluster-down` stops it", file=sys.stderr)
        elif cmd == "down":
            down()
        elif cmd == "status":
            run, why = current_run(), stale_run()
            if run is None or why:
                print(f"{why}; `make cluster-down` cleans it up" if why else
                      "no node cluster is up", file=sys.stderr)  # fmt: skip
                return 1
            print(run)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (ClusterError, procs.DaemonError, subprocess.CalledProcessError) as err:
        print(f"cluster {cmd}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
