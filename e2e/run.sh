#!/usr/bin/env bash
# The whole e2e suite: build or reuse the control-plane binaries, get helm, run pytest on e2e/.
#   bash e2e/run.sh                 # local throwaway control plane (first build: several minutes)
#   KUBECONFIG=... LAMINA_E2E_ALLOW_CONTEXT=<context> bash e2e/run.sh   # an existing test cluster
# Extra arguments go to pytest (e.g. -k rbac, -x).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || { echo "e2e/run.sh: $python not found; run \`make install\` first" >&2; exit 1; }

if [ -z "${KUBECONFIG:-}" ]; then
    bash "$here/build_control_plane.sh"
fi
bash "$here/get_helm.sh" >/dev/null

exec "$python" -m pytest -p no:cacheprovider -o testpaths=e2e \
    --timeout=900 "$here" "$@"
