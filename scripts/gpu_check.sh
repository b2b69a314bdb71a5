#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine, no network, within ~8 minutes on an H100/H200.
#
#   scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu-check
#
# 1. the `gpu`-marked kernel tests (each Triton kernel against the torch path, bf16 on CUDA)
# 2. the kernel benchmark (python -m lamina_engine.bench.kernels = `lamina bench kernels`):
#    Qwen3-30B-A3B layer shapes, Triton beside torch, as fractions of the copy bandwidth and
#    bf16 matmul FLOP/s measured in the same run
# and writes OUT_DIR/gpu-check.json (everything) and OUT_DIR/gpu-check.md (the tables).
#
# Needs only python3 with torch, triton and pytest (what the GPU machine has): the repo's engine
# is put on PYTHONPATH, nothing is installed. PYTHON=... picks another interpreter.
# DEVICE=cpu rehearses the plumbing on a host without CUDA (tests skip, tiny interpreted bench).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/engine${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

"$PY" - "$DEVICE" <<'PYEOF'
import sys, torch, triton
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device; this check needs a GPU")
name = torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu"
print(f"gpu_check: {name}, torch {torch.__version__}, triton {triton.__version__}")
PYEOF
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true

tests_rc=0
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
  tests/engine/kernels/test_fused_moe.py tests/engine/kernels/test_decode_attention.py \
  tests/engine/kernels/test_kv_store_rmsnorm.py tests/engine/kernels/test_prefill_attention.py \
  --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt" || tests_rc=$?

bench_rc=0
timeout 240 "$PY" -m lamina_engine.bench.kernels --device "$DEVICE" --out "$OUT/bench-kernels" \
  2>&1 | tee "$OUT/bench-kernels.txt" || bench_rc=$?

"$PY" - "$OUT" "$tests_rc" "$bench_rc" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, tests_rc, bench_rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tests = {"rc": tests_rc}
if (out / "gpu-tests.xml").exists():
    suite = ET.parse(out / "gpu-tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
bench_json = out / "bench-kernels.json"
bench = json.loads(bench_json.read_text()) if bench_json.exists() else None
report = {"tests": tests, "bench_rc": bench_rc, "bench_kernels": bench}
(out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
md = ["# GPU check", "", f"gpu-marked kernel tests: {tests}", ""]
md.append((out / "bench-kernels.md").read_text() if bench else f"bench failed (rc {bench_rc})")
(out / "gpu-check.md").write_text("\n".join(md) + "\n")
print(f"gpu_check: wrote {out}/gpu-check.json and {out}/gpu-check.md")
sys.exit(1 if tests_rc or bench_rc else 0)
PYEOF
