"""Fixtures of the full-stack suite: the single-node cluster `make cluster-up` started.

These tests only run through `make e2e-node` (e2e/node/run.sh sets LAMINA_NODE_RUN): `make e2e`
collects e2e/ and must not pick them up on a machine with no node cluster.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# e2e/kube.py (kubectl wrapper) and this folder's helpers are plain modules, not packages.
sys.path[:0] = [str(HERE), str(HERE.parent)]

if not os.environ.get("LAMINA_NODE_RUN"):
    collect_ignore_glob = ["test_*.py"]
