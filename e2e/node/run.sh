#!/usr/bin/env bash
# The full-stack e2e on a real single-node cluster (`make e2e-node`):
#   bash e2e/node/run.sh            # cluster-up if none is up, the tests, cluster-down if it started one
#   bash e2e/node/run.sh -k scale   # extra arguments go to pytest
# Needs root. Cold (nothing cached): binaries, base rootfs and images are built first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || { echo "e2e/node/run.sh: $python not found; run \`make install\` first" >&2; exit 1; }
cd "$repo"

# A run named in /run/lamina-node/current whose daemons are gone (the shell that started it was
# killed) is cleaned up first; only a live cluster is reused.
if [ -s /run/lamina-node/current ] && ! "$python" "$here/cluster.py" status >/dev/null 2>&1; then
    "$python" "$here/cluster.py" down
fi
# Started here: stopped here, and the machine compared with how it was before (sysctls,
# iptables, mounts, cgroups, interfaces): a difference fails the run.
if [ ! -s /run/lamina-node/current ]; then
    before="$(mktemp /tmp/lamina-node-before.XXXXXX)"
    "$python" "$here/host_state.py" snapshot "$before"
    finish() {
        local rc=$?
        "$python" "$here/cluster.py" down || rc=1
        "$python" "$here/host_state.py" compare "$before" || rc=1
        rm -f "$before"
        exit $rc
    }
    trap finish EXIT
    "$python" "$here/cluster.py" up >/dev/null
fi
run_dir="$(cat /run/lamina-node/current)"
export LAMINA_NODE_RUN="$run_dir" KUBECONFIG="$run_dir/admin.kubeconfig"
"$python" -m pytest -p no:cacheprovider -o testpaths=e2e/node --timeout=1800 "$here" "$@"
