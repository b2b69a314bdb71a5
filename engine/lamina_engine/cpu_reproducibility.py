"""Run-to-run reproducible CPU matmuls: MKL's Conditional Numerical Reproducibility (CNR) mode.

torch's CPU build runs fp32 `torch.mm`, `F.linear` and `torch.bmm` on MKL. Without CNR, MKL picks
its code path by the operands' memory alignment (measured with torch 2.13 / MKL 2024.2 on an AMD
EPYC with AVX2, no AVX-512: the same values at a 4- instead of 8-byte aligned address give a
different result bitwise, for 1 to 8 rows; docs/benchmarks.md, "Determinism run to run"), and Intel
documents bitwise run-to-run results only in CNR mode ("deterministic reductions, static
scheduling"; unaligned data fully supported), for a fixed number of threads. A buffer's
alignment is up to the allocator and the checkpoint file's layout, so a row could round
differently from one run to the next and flip a router near-tie.

CNR is set through the MKL_CBWR environment variable, which MKL reads once, when it first runs;
a later change is refused. `import lamina_engine` sets it (AUTO: the CPU's own code path, made
deterministic) unless the user set it, so every entry point (the CLI, `LLM`, the server, the
supervisor's children, which inherit the environment) gets it before any matmul.
`mkl_cnr_branch()` reports what MKL actually runs with; the engine warns when it is OFF (a
program used MKL before importing lamina_engine). oneDNN (the other CPU kernels `linear` uses)
documents run-to-run determinism for a fixed environment and needs no setting.
"""

from __future__ import annotations

import ctypes
import os

MKL_CBWR_ENV = "MKL_CBWR"
DEFAULT_BRANCH = "AUTO"
# mkl_cbwr_get(MKL_CBWR_BRANCH) return values (mkl_service.h)
_BRANCHES = {
    1: "OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}
_MKL_CBWR_BRANCH = 1


def request_mkl_cnr() -> None:
    """MKL_CBWR=AUTO unless already set: takes effect if MKL has not run yet in this process."""
    os.environ.setdefault(MKL_CBWR_ENV, DEFAULT_BRANCH)


def _cbwr_get():
    """MKL's mkl_cbwr_get, from torch's own MKL (linked into libtorch_cpu) or a shared libmkl;
    None if not found."""
    import torch

    candidates = [os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"), None]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("mkl_cbwr_get", "mkl_serv_cbwr_get", "MKL_CBWR_Get"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                return fn
    return None


def mkl_cnr_branch() -> str | None:
    """The CNR branch torch's MKL runs with: "OFF" (no CNR: results may depend on alignment),
    "AUTO", "AVX512", ...; None if this torch does not use MKL or its CNR query is not found.
    Initialises MKL if it has not run yet (so call it after `request_mkl_cnr`)."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    get = _cbwr_get()
    if get is None:
        return None
    code = get(_MKL_CBWR_BRANCH)
    return _BRANCHES.get(code, f"unknown ({code})")


def cnr_warning() -> str | None:
    """Why CPU results may not be reproducible run to run, or None when MKL runs in CNR mode
    (or is not used)."""
    if mkl_cnr_branch() != "OFF":
        return None
    return (
        "MKL runs without Conditional Numerical Reproducibility: something used MKL before "
        "lamina_engine was imported, so MKL_CBWR was not read. fp32 CPU matmul results may then "
        "depend on buffer alignment and greedy tokens may change run to run; import "
        f"lamina_engine first or start the process with {MKL_CBWR_ENV}={DEFAULT_BRANCH}."
    )
