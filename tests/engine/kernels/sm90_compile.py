"""Compiles every kernel, at every launch config in kernels/configs/*.json, in bf16 for sm_90
(H100/H200) down to a cubin with Triton's bundled ptxas: no GPU needed. Catches what the
interpreter cannot: illegal ops or types in compiled Triton, shared memory over the limit, and
register spills (stack or local memory, read with the bundled cuobjdump). Run in its own process
with TRITON_INTERPRET=0 (the interpreter is chosen when a kernel is decorated):

    TRITON_INTERPRET=0 python tests/engine/kernels/sm90_compile.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run with TRITON_INTERPRET=0")
os.environ["TRITON_INTERPRET"] = "0"  # lamina_engine.kernels only sets it when unset

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lamina_engine.kernels import (  # noqa: E402
    decode_attention,
    fused_moe,
    kv_store,
    launch_config,
    prefill_attention,
    rmsnorm,
)

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 227 * 1024  # H100/H200 per-block shared memory


def _aligned(name: str, ty: str) -> bool:
    if ty.startswith("*"):
        return True
    return ty == "i32" and name not in ("group", "head_dim", "num_splits", "block_size")


def _sig(names: str, types: str) -> dict[str, str]:
    return dict(zip(names.split(), types.split(), strict=True))


def _compile(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int = 1) -> None:
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    opts = dict(num_warps=num_warps, num_stages=num_stages)
    # As a launch specialises them: pointers and the Qwen3-30B-A3B shape's sizes and strides
    # are multiples of 16 (scale, eps and head counts are not).
    aligned = [i for i, (name, ty) in enumerate(signature.items()) if _aligned(name, ty)]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    kernel = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=TARGET, options=opts)
    shared = kernel.metadata.shared
    if shared > SMEM_LIMIT:
        raise SystemExit(f"{fn.__name__} {constexprs}: {shared} B shared memory > {SMEM_LIMIT}")
    usage = _resource_usage(kernel.asm["cubin"])
    if usage["STACK"] or usage["LOCAL"]:
        raise SystemExit(f"{fn.__name__} {constexprs} spills registers: {usage}")
    print(f"ok {fn.__name__} regs={usage['REG']} shared={shared} {constexprs} warps={num_warps}")


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """REG/STACK/LOCAL... of the one kernel in `cubin`, from Triton's bundled cuobjdump."""
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [str(tool), "--dump-resource-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(x for x in out.splitlines() if "REG:" in x)
    return {k: int(v) for k, v in re.findall(r"([A-Z]+):(\d+)", line)}


def _table(kernel: str) -> list[dict]:
    return list(launch_config._load(kernel)["default"].values())


def main() -> None:
    # bf16 only: the GPU dtype. fp32 on a GPU (tests) uses the same code with ieee dots; its
    # widest tiles take ptxas minutes to compile, too slow for this check.
    for dt, prec in (("bf16", "tf32"),):
        moe = _sig(
            "a_ptr w_ptr c_ptr route_w_ptr sorted_ids_ptr block_expert_ptr padded_count_ptr N Kd "
            "num_pairs stride_am stride_we stride_wn stride_cm up_offset",
            f"*{dt} *{dt} *{dt} *{dt} *i32 *i32 *i32 i32 i32 i32 i32 i32 i32 i32 i32",
        )
        for c in _table("fused_moe"):
            for gated in (True, False):
                consts = dict(
                    A_DIV=8 if gated else 1, GATED=gated, MUL_WEIGHT=not gated,
                    BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"], BLOCK_K=c["BLOCK_K"],
                    GROUP_M=c["GROUP_M"], PRECISION=prec,
                )  # fmt: skip
                _compile(fused_moe._moe_gemm, moe, consts, c["num_warps"], c["num_stages"])
        split = _sig(
            "q_ptr k_ptr v_ptr tables_ptr ctx_ptr part_out_ptr part_lse_ptr scale head_dim group "
            "split_len block_size stride_qb stride_qh stride_kb stride_ks stride_kh stride_tb",
            f"*{dt} *{dt} *{dt} *i64 *i64 *fp32 *fp32 fp32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32",
        )
        for c in _table("decode_attention"):
            consts = dict(G_PAD=16, HD_PAD=128, BLOCK_N=c["BLOCK_N"], PRECISION=prec)
            _compile(decode_attention._decode_split, split, consts, c["num_warps"], c["num_stages"])
        merge = _sig(
            "part_out_ptr part_lse_ptr out_ptr head_dim num_splits stride_ob stride_oh",
            f"*fp32 *fp32 *{dt} i32 i32 i32 i32",
        )
        _compile(decode_attention._decode_merge, merge, dict(S_PAD=32, HD_PAD=128), 4)
        pre = _sig(
            "q_ptr k_ptr v_ptr out_ptr starts_ptr q_lens_ptr contexts_ptr tables_ptr scale "
            "head_dim group block_size stride_qt stride_qh stride_ot stride_oh stride_kb "
            "stride_ks stride_kh stride_tb",
            f"*{dt} *{dt} *{dt} *{dt} *i64 *i64 *i64 *i64 fp32 i32 i32 i32 i32 i32 i32 i32 i32 "
            "i32 i32 i32",
        )
        for c in _table("prefill_attention"):
            consts = dict(HD_PAD=128, BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"], PRECISION=prec)
            _compile(
                prefill_attention._prefill_attention, pre, consts, c["num_warps"], c["num_stages"]
            )
        store = _sig(
            "k_ptr v_ptr cache_k_ptr cache_v_ptr slots_ptr width stride_k stride_v",
            f"*{dt} *{dt} *{dt} *{dt} *i64 i32 i32 i32",
        )
        _compile(kv_store._store_kv, store, dict(BLOCK=512), 4)
        norm = _sig(
            "x_ptr res_ptr w_ptr y_ptr res_out_ptr dim eps stride_x stride_r",
            f"*{dt} *{dt} *{dt} *{dt} *{dt} i32 fp32 i32 i32",
        )
        for has_residual in (True, False):
            _compile(
                rmsnorm._rmsnorm_residual, norm, dict(HAS_RESIDUAL=has_residual, BLOCK=2048), 8
            )
    print("all kernels compiled for sm_90")


if __name__ == "__main__":
    main()
