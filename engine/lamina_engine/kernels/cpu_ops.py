"""Native CPU kernels (C++; AVX-512F or AVX2 + FMA), built once per machine on first use.

    grouped_gemv(inp [P, K], w [E, N, K], offsets [E + 1]) -> [P, N]
        out[p] = w[e] @ inp[p] for the rows p in [offsets[e], offsets[e + 1]): every expert of
        a MoE layer in one call, or one dense linear with E = 1, any number of rows; a row's
        bits never depend on the call's other rows (kernels/cpu/grouped_gemv.cpp; torch
        reference: `grouped_gemv_reference`).
    decode_attention(q [Bd, H, hd], kv_cache, blocks, block_starts, contexts, scale)
        every decode's paged attention in one call, K/V read in place
        (kernels/cpu/decode_attention.cpp; reference: models/attention.py's torch path).
    rms_norm(x, w, eps), add_rms_norm(x, residual, w, eps)
        RMSNorm in one pass per row, after the residual add (kernels/cpu/rms_norm.cpp;
        reference: models/layers.py's RMSNorm torch path).

For the few rows of a decode step torch's CPU GEMMs stream a weight at 4-11 GB/s on a host
whose memory gives one core ~10; grouped_gemv streams it at 9-12 GB/s, and replaces ~6 small
ops per expert with one call per layer (docs/benchmarks.md, "CPU decode kernels"). Every
kernel gives a row (a sequence) the same result whatever else shares the call, and the same
result run after run. They are built with torch.utils.cpp_extension (ninja and a C++
compiler; 1-2 min) into ~/.cache/lamina/cpu_ops (under $XDG_CACHE_HOME when set), keyed by the
ISA and a hash of the sources, and reused from there by every later process. Without either
ISA or a compiler `native_ops()` is None (logged once) and the torch kernels run: the same
results up to fp32 rounding order.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# Rows per call (a linear's M, an expert's rows) up to which grouped_gemv is used by default.
# With 8 experts of the vs-hf shape it was 1.9x (AVX-512) / 1.15x (AVX2) faster than oneDNN's
# loop at 32 rows per expert, even at 64 / 40 rows (docs/benchmarks.md, "CPU kernels on an
# AVX-512 host").
MAX_ROWS = 32

SOURCES = Path(__file__).with_name("cpu")  # module.cpp binds the kernels; vec.h the ISA


# The vector ISA the kernel is built for, best first: (/proc/cpuinfo flags needed, cflags).
ISAS = {
    "avx512f": ({"avx512f", "fma"}, ["-mavx512f", "-mavx2", "-mfma"]),
    "avx2": ({"avx2", "fma"}, ["-mavx2", "-mfma"]),
}


def cpu_isa() -> str | None:
    """The best of ISAS this CPU has, or None (not x86-64, or neither AVX-512F nor AVX2+FMA).
    LAMINA_CPU_ISA=avx2 (or avx512f, or off) picks one instead, if the CPU has it: the AVX2
    build then runs, and is tested, on an AVX-512 host too."""
    forced = os.environ.get("LAMINA_CPU_ISA", "").strip().lower()
    if forced and forced != "off" and forced not in ISAS:
        raise ValueError(f"LAMINA_CPU_ISA={forced!r}: expected one of {', '.join(ISAS)} or off")
    if forced == "off" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next(
        (set(line.split()) for line in text.splitlines() if line.startswith("flags")), set()
    )
    if forced:
        if not ISAS[forced][0] <= flags:
            raise ValueError(
                f"LAMINA_CPU_ISA={forced}: this CPU lacks {' or '.join(ISAS[forced][0] - flags)}"
            )
        return forced
    return next((isa for isa, (needs, _) in ISAS.items() if needs <= flags), None)


@functools.cache
def native_ops() -> ModuleType | None:
    """The built extension, or None (with one log line saying why) where it cannot run."""
    isa = cpu_isa()
    if isa is None:
        log.info("CPU kernels off: this CPU has neither AVX-512F nor AVX2+FMA; torch runs")
        return None
    # -fopenmp: at::parallel_for runs on torch's OpenMP threads (serially without it)
    cflags = ["-O3", "-fopenmp", *ISAS[isa][1]]
    files = sorted(SOURCES.glob("*.[ch]*"))
    key = b"".join(f.name.encode() + f.read_bytes() for f in files) + " ".join(cflags).encode()
    digest = hashlib.sha256(key).hexdigest()
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:  # the engine image, for one: no toolchain
        log.warning(
            "CPU kernels unavailable (no C++ compiler %r on PATH); the torch kernels run instead",
            compiler,
        )
        return None
    try:  # no ninja, no Python headers, a read-only home, a failed build: run the torch loop
        from torch.utils.cpp_extension import load

        name = f"lamina_cpu_ops_{isa}_{digest[:12]}"
        build = _cache_dir() / name
        build.mkdir(parents=True, exist_ok=True)
        # One builder at a time, by a lock the kernel drops when its holder dies. torch's own
        # lock file outlives a process killed mid-build and would make every later one wait
        # forever; holding ours, any such file is stale.
        with open(build / "lamina.lock", "w") as held, _ninja_on_path():
            fcntl.flock(held, fcntl.LOCK_EX)
            (build / "lock").unlink(missing_ok=True)
            if not any(build.glob("*.so")):
                log.info("building Lamina's CPU kernels in %s (once per machine, 1-2 min)", build)
            return load(
                name=name,
                sources=[str(f) for f in files if f.suffix == ".cpp"],
                build_directory=str(build),
                extra_cflags=cflags,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as exc:
        log.warning("CPU kernels unavailable (%s); the torch kernels run instead", _why(exc))
        return None


def _why(exc: Exception) -> str:
    """The lines of a failed build that say what failed, not its whole log."""
    lines = str(exc).splitlines()
    errors = [ln.strip() for ln in lines if "error" in ln.lower() or "not found" in ln]
    return " | ".join(([lines[0][:200]] if lines else []) + errors[:3])


@contextlib.contextmanager
def _ninja_on_path():
    """torch runs `ninja` from PATH; the pip package's (an engine dependency) lies in the venv's
    bin folder, which is not on PATH when the venv's python runs without being activated."""
    saved = os.environ.get("PATH", "")
    try:
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, saved])
    except ImportError:  # a system ninja, if any
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lamina" / "cpu_ops"


def grouped_gemv_reference(inp: Tensor, w: Tensor, offsets: list[int]) -> Tensor:
    """What grouped_gemv computes, one torch matmul per group."""
    out = inp.new_empty(inp.shape[0], w.shape[1])
    for e in range(w.shape[0]):
        rows = slice(offsets[e], offsets[e + 1])
        if offsets[e + 1] > offsets[e]:
            out[rows] = inp[rows] @ w[e].t()
    return out


def can_run(x: Tensor, *weights: Tensor) -> bool:
    """Whether grouped_gemv takes these operands (fp32, contiguous, on the CPU)."""
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
        for t in (x, *weights)
    )


if __name__ == "__main__":  # `python -m lamina_engine.kernels.cpu_ops`: build now (make test, up)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ops = native_ops()
    print(
        f"CPU kernels: {ops.isa} ({ops.__file__})"
        if ops
        else "CPU kernels: off (the torch kernels run)"
    )
