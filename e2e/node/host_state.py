"""What a node run changes on the machine, recorded before `cluster-up` and put back by `cluster-down`.

The kubelet writes sysctls (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...),
kube-proxy and the bridge plugin turn on ip_forward / route_localnet, kube-proxy and the kubelet
add KUBE-* iptables chains, the kubelet bind-mounts its root dir and makes /kubepods cgroups,
containerd mounts network namespaces under /run/netns and overlay/shm mounts under its folders.
`snapshot()` records the machine's side of all that; `restore()` undoes it; `differences()` is
what the harness's own test compares.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

# Sysctls worth restoring: the families the node's components write. Counters and per-device
# keys of devices that come and go (veths, the bridge) are not configuration.
SYSCTL_PREFIXES = ("kernel.", "vm.", "net.ipv4.", "net.ipv6.conf.all.", "net.ipv6.conf.default.",
                   "net.bridge.", "net.netfilter.nf_conntrack_max", "fs.inotify.")  # fmt: skip
VOLATILE = ("kernel.random.", "kernel.ns_last_pid", "kernel.pty.nr", "fs.", "vm.stat",
            "net.netfilter.nf_conntrack_count", "kernel.tainted", "net.ipv4.tcp_mem",
            "net.ipv4.udp_mem", "net.ipv4.conf.veth", "net.ipv4.neigh.veth", "vm.nr_",
            "kernel.sched_domain", "net.ipv4.tcp_fastopen_key", "net.ipv4.conf.lamina0", "net.ipv4.neigh.lamina0")  # fmt: skip
BUILTIN_CHAINS = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
# Folders the kubelet/CNI/containerd create at fixed places (besides the run's own folder).
FIXED_DIRS = ("/var/lib/kubelet", "/var/lib/cni", "/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*argv: str) -> str:
    """A tool's output; empty when the tool is not installed (a fresh machine has no iptables
    until build_node.sh installs it, and then no rules either)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout
    except FileNotFoundError:
        return ""


def sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _run("sysctl", "-a").splitlines():
        key, sep, value = line.partition(" = ")
        if not sep or not key.startswith(SYSCTL_PREFIXES) or key.startswith(VOLATILE):
            continue
        out[key] = " ".join(value.split())
    return out


def iptables_rules() -> dict[str, list[str]]:
    """iptables-save / ip6tables-save without counters and comments: rules and chains only."""
    out = {}
    for tool in ("iptables-save", "ip6tables-save"):
        lines = []
        for line in _run(tool).splitlines():
            # Table headers, COMMIT and built-in chains with the default policy are there once a
            # table was touched, even when empty again: only rules and other chains count.
            if line.startswith(("#", "*", "COMMIT")):
                continue
            if line.startswith(":"):
                name, policy = line.split(" ")[:2]  # ":CHAIN POLICY [pkts:bytes]"
                if name[1:] in BUILTIN_CHAINS and policy == "ACCEPT":
                    continue
                line = name
            lines.append(line)
        out[tool] = lines
    return out


def mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted({line.split()[4] for line in f})


def cgroup_dirs() -> list[str]:
    """Top two levels of every cgroup hierarchy (where /kubepods would appear)."""
    found = []
    for ctrl in sorted(CGROUP_ROOT.iterdir()):
        if ctrl.is_dir():
            found += [str(p) for p in ctrl.iterdir() if p.is_dir()]
    return sorted(found)


def links() -> list[str]:
    """Network interfaces by name ("veth12@if3" -> "veth12")."""
    lines = _run("ip", "-o", "link", "show").splitlines()
    return sorted(line.split(":")[1].strip().split("@")[0] for line in lines)


def snapshot() -> dict:
    return {
        "sysctls": sysctls(),
        "iptables": iptables_rules(),
        "mounts": mountpoints(),
        "cgroups": cgroup_dirs(),
        "fixed_dirs": {d: os.path.exists(d) for d in FIXED_DIRS},
        "links": links(),
    }


def differences(before: dict, after: dict) -> list[str]:
    """Human-readable differences between two snapshots (empty: the machine is as it was)."""
    diffs = []
    for key in sorted(set(before["sysctls"]) | set(after["sysctls"])):
        b, a = before["sysctls"].get(key), after["sysctls"].get(key)
        if b != a and b is not None:
            diffs.append(f"sysctl {key}: {b!r} -> {a!r}")
    for tool in before["iptables"]:
        b, a = before["iptables"][tool], after["iptables"][tool]
        added = sorted(set(a) - set(b))
        removed = sorted(set(b) - set(a))
        diffs += [f"{tool} added: {x}" for x in added] + [f"{tool} removed: {x}" for x in removed]
    # The image builder's own overlay mounts (images.sh, possibly running beside) are not the node's.
    cache = os.environ.get("LAMINA_NODE_CACHE", os.path.expanduser("~/.cache/lamina/node"))
    before = {**before, "mounts": [m for m in before["mounts"] if not m.startswith(cache)]}
    after = {**after, "mounts": [m for m in after["mounts"] if not m.startswith(cache)]}
    for name in ("mounts", "cgroups", "links"):
        diffs += [f"{name} added: {x}" for x in sorted(set(after[name]) - set(before[name]))]
        diffs += [f"{name} removed: {x}" for x in sorted(set(before[name]) - set(after[name]))]
    for d, existed in before["fixed_dirs"].items():
        if os.path.exists(d) != existed:
            diffs.append(f"{d}: existed={existed}, now exists={os.path.exists(d)}")
    return diffs


def _kubepods_cgroups() -> list[Path]:
    """Every cgroup under a /kubepods tree, deepest first (rmdir order)."""
    dirs: list[Path] = []
    for ctrl in CGROUP_ROOT.iterdir():
        top = ctrl / "kubepods"
        if top.is_dir():
            dirs += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def kill_pod_processes() -> int:
    """SIGKILL every process left in the node's pod cgroups (the pods' own processes, by pid)."""
    pids: set[int] = set()
    for cg in _kubepods_cgroups():
        try:
            pids |= {int(p) for p in (cg / "cgroup.procs").read_text().split()}
        except OSError:
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def unmount_under(prefixes: list[str], keep: set[str]) -> list[str]:
    """Unmount (lazily, deepest first) every mount under `prefixes` that is not in `keep`."""
    targets = [m for m in mountpoints() if m not in keep
               and any(m == p or m.startswith(p.rstrip("/") + "/") for p in prefixes)]  # fmt: skip
    failed = []
    for m in sorted(targets, key=len, reverse=True):
        proc = subprocess.run(["umount", "-l", m], capture_output=True, text=True)
        if proc.returncode != 0 and m in mountpoints():
            failed.append(f"{m}: {proc.stderr.strip()}")
    return failed


def remove_kube_iptables() -> None:
    """Drop every KUBE-* chain and every rule that mentions one, table by table, atomically."""
    for save, restore in (("iptables-save", "iptables-restore"),
                          ("ip6tables-save", "ip6tables-restore")):  # fmt: skip
        text = _run(save)
        if "KUBE-" not in text:
            continue
        kept = [line for line in text.splitlines() if "KUBE-" not in line]
        subprocess.run([restore], input="\n".join(kept) + "\n", text=True, check=True)


def restore_sysctls(before: dict[str, str]) -> list[str]:
    """Write back every recorded sysctl whose value changed; returns the keys restored."""
    now = sysctls()
    restored = []
    for key, value in before.items():
        if key in now and now[key] != value:
            proc = subprocess.run(["sysctl", "-q", "-w", f"{key}={value}"], capture_output=True)
            if proc.returncode == 0:
                restored.append(key)
    return restored


def remove_cgroups() -> list[str]:
    left = []
    for cg in _kubepods_cgroups():
        for _ in range(20):  # a cgroup empties a moment after its last process died
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        else:
            left.append(str(cg))
    return left


def main(argv: list[str]) -> int:
    """`snapshot FILE` records the machine; `compare FILE` exits 1 listing what differs now."""
    import json

    cmd, path = argv
    if cmd == "snapshot":
        Path(path).write_text(json.dumps(snapshot()))
        return 0
    diffs = differences(json.loads(Path(path).read_text()), snapshot())
    for d in diffs:
        print(f"host_state: not restored: {d}")
    if not diffs:
        print("host_state: sysctls, iptables, mounts, cgroups, links and folders as before")
    return 1 if diffs else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
