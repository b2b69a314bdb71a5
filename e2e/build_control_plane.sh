#!/usr/bin/env bash
# Builds (once) the binaries of a local Kubernetes control plane for the e2e suite:
#   e2e/.cache/bin/kube-apiserver, e2e/.cache/bin/kube-controller-manager  (Debian's 1.20 sources)
#   etcd from Debian's etcd-server package (/usr/bin/etcd)
# Idempotent and resumable: a finished binary is never rebuilt, a half-done source tree is reused.
# First run takes ~5 minutes on 2 cores (Go compile); later runs return at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LAMINA_E2E_CACHE:-$here/.cache}"
bin="$cache/bin"
src="$cache/src"
# Bump when the recipe below changes what the binaries do: cached binaries of another recipe are
# rebuilt (the Go build cache makes that incremental).
recipe=2
mkdir -p "$bin" "$src"

log() { echo "[build_control_plane] $*" >&2; }

# apt may be busy with another engineer's install: wait for its lock instead of failing.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v go >/dev/null || need_pkgs+=(golang-go)
command -v rsync >/dev/null || need_pkgs+=(rsync)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v dpkg-source >/dev/null || need_pkgs+=(dpkg-dev)
reflect2_dir=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$reflect2_dir" ] || need_pkgs+=(golang-github-modern-go-reflect2-dev)

built() {
    [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] \
        && [ "$(cat "$bin/control-plane.recipe" 2>/dev/null)" = "$recipe" ]
}

if built && [ ${#need_pkgs[@]} -eq 0 ]; then
    log "cached: $bin/kube-apiserver, $bin/kube-controller-manager, $(command -v etcd)"
    exit 0
fi

if [ "$(id -u)" != 0 ] && [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "build_control_plane: missing Debian packages ${need_pkgs[*]} and not root;" \
        "install them with: sudo apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt_get update -qq
    DEBIAN_FRONTEND=noninteractive apt_get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if built; then
    log "cached binaries in $bin"
    exit 0
fi

# Source package: needs a deb-src entry for bookworm main (the image only ships binary entries).
tree="$(find "$src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
if [ -z "$tree" ]; then
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
        && ! grep -rqs '^deb-src .*bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # Reuse the mirror apt already uses for binary packages (first URIs/deb line).
        mirror="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'NR==1{print $2}')"
        [ -n "$mirror" ] || mirror="$(grep -hm1 '^deb .* bookworm ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}')"
        [ -n "$mirror" ] || { echo "build_control_plane: no Debian mirror found in apt's sources" >&2; exit 1; }
        log "adding deb-src entry for bookworm main ($mirror)"
        cat >/etc/apt/sources.list.d/lamina-deb-src.sources <<EOF
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt_get update -qq
    fi
    log "fetching Debian's kubernetes source package"
    (cd "$src" && apt-get source -qq kubernetes >/dev/null)
    tree="$(find "$src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
fi
[ -n "$tree" ] || { echo "build_control_plane: apt-get source kubernetes left no tree in $src" >&2; exit 1; }
log "source tree: $tree"

# Go 1.19 + the vendored reflect2 1.0.1 crash the apiserver on its first JSON map; Debian's
# packaged reflect2 has the fix. Replace the whole set of files (the old set has files the new one
# dropped, e.g. go_above_17.go, which would redeclare symbols); idempotent.
rm -f "$tree/vendor/github.com/modern-go/reflect2/"*.go "$tree/vendor/github.com/modern-go/reflect2/"*.s
cp "$reflect2_dir"/*.go "$reflect2_dir"/*.s "$tree/vendor/github.com/modern-go/reflect2/"

# OpenAPI type validation tests "is data the zero value?" with DeepEqual on two reflect.Values.
# Built with Go >= 1.18, reflect.ValueOf("") and reflect.Zero(string) compare equal, so every
# empty string in a custom resource (or a CRD `default: ""`) is rejected as "null". Test for nil
# as the check effectively did with the Go 1.15 that 1.20 was released with.
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
         vendor/github.com/go-openapi/validate/type.go; do
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$tree/$f"
    grep -q 'if data == nil {' "$tree/$f" || { echo "build_control_plane: could not patch $f" >&2; exit 1; }
done

# GOPATH mode, as debian/rules builds it: the tree must live at $GOPATH/src/k8s.io/kubernetes.
gopath="$tree/.go"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"

log "building kube-apiserver and kube-controller-manager (several minutes on 2 cores)"
(
    cd "$gopath/src/k8s.io/kubernetes"
    export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0
    export GOCACHE="$cache/go-build"
    # Debian's tree is not a git checkout: pin the version the build would otherwise ask git for.
    version="$(dpkg-parsechangelog -l debian/changelog -S Version | sed -E 's/^([0-9.]+).*/v\1/')"
    export KUBE_GIT_VERSION="$version" KUBE_GIT_TREE_STATE=clean
    nice make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$cache/build.log" 2>&1 \
        || { tail -n 40 "$cache/build.log" >&2; exit 1; }
)
out="$tree/_output/local/bin/linux/$(go env GOARCH)"
install -m 0755 "$out/kube-apiserver" "$bin/kube-apiserver.tmp"
install -m 0755 "$out/kube-controller-manager" "$bin/kube-controller-manager.tmp"
mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
mv "$bin/kube-controller-manager.tmp" "$bin/kube-controller-manager"
echo "$recipe" >"$bin/control-plane.recipe"
log "built $("$bin/kube-apiserver" --version)"
