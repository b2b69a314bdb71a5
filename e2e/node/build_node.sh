#!/usr/bin/env bash
# Everything a single-node cluster needs on this machine, built or installed once and cached:
#   Debian packages: containerd, runc, CNI plugins, iptables, conntrack, dnsmasq, debootstrap, buildah
#   kube-apiserver + kube-controller-manager: e2e/build_control_plane.sh (shared with `make e2e`)
#   kube-scheduler, kubelet, kube-proxy: the same patched 1.20 source tree -> $LAMINA_NODE_CACHE/bin
#   pause: gcc -static build/pause/linux/pause.c from that tree (the sandbox image's only file)
#   helm: e2e/get_helm.sh
# Idempotent; a second run returns at once. First run: ~10-15 min of Go on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
e2e="$(dirname "$here")"
cache="${LAMINA_NODE_CACHE:-$HOME/.cache/lamina/node}"
cp_cache="${LAMINA_E2E_CACHE:-$HOME/.cache/lamina/e2e}"
export LAMINA_E2E_CACHE="$cp_cache"
bin="$cache/bin"
recipe=1
mkdir -p "$bin"
log() { echo "[build_node] $*" >&2; }
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

[ "$(id -u)" = 0 ] || { echo "build_node: a node needs root (kubelet, containerd, iptables)" >&2; exit 1; }

need=()
for pair in containerd:containerd runc:runc iptables:iptables conntrack:conntrack \
    dnsmasq:dnsmasq-base debootstrap:debootstrap buildah:buildah gcc:gcc ip:iproute2 \
    unshare:util-linux; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt_get update -qq
    DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bash "$e2e/build_control_plane.sh"
bash "$e2e/get_helm.sh" >/dev/null

tree="$(find "$cp_cache/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
[ -n "$tree" ] || { echo "build_node: no kubernetes source tree in $cp_cache/src" >&2; exit 1; }

built() {
    for b in kube-scheduler kubelet kube-proxy pause; do [ -x "$bin/$b" ] || return 1; done
    [ "$(cat "$bin/node.recipe" 2>/dev/null)" = "$recipe" ]
}
if built; then
    log "cached: $bin/{kube-scheduler,kubelet,kube-proxy,pause}"
else
    log "building kube-scheduler, kubelet and kube-proxy (several minutes on 2 cores)"
    (
        cd "$tree/.go/src/k8s.io/kubernetes"
        export GOPATH="$tree/.go" GO111MODULE=off CGO_ENABLED=0 GOCACHE="$cp_cache/go-build"
        version="$(dpkg-parsechangelog -l debian/changelog -S Version | sed -E 's/^([0-9.]+).*/v\1/')"
        export KUBE_GIT_VERSION="$version" KUBE_GIT_TREE_STATE=clean
        nice make WHAT="cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" >"$cache/build.log" 2>&1 \
            || { tail -n 40 "$cache/build.log" >&2; exit 1; }
    )
    out="$tree/_output/local/bin/linux/$(go env GOARCH)"
    for b in kube-scheduler kubelet kube-proxy; do
        install -m 0755 "$out/$b" "$bin/$b.tmp" && mv "$bin/$b.tmp" "$bin/$b"
    done
    # The sandbox ("pause") process: static, so the image is one file.
    gcc -Os -static -o "$bin/pause.tmp" "$tree/build/pause/linux/pause.c"
    mv "$bin/pause.tmp" "$bin/pause"
    echo "$recipe" >"$bin/node.recipe"
    log "built $("$bin/kubelet" --version)"
fi
