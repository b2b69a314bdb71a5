// The Python module kernels/cpu_ops.py loads: Lamina's CPU kernels and the ISA they were built for.
#include <torch/extension.h>

#include "ops.h"
#include "vec.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("isa") = lamina::kIsa;
  m.attr("tile_rows") = lamina::kTile;
  m.def("grouped_gemv", &grouped_gemv, "out[p] = w[group(p)] @ inp[p], fp32");
  m.def("decode_attention", &decode_attention,
        "paged decode attention, one query token per sequence, fp32");
  m.def("rms_norm", &rms_norm, "RMSNorm over the last dim, fp32");
  m.def("add_rms_norm", &add_rms_norm, "(RMSNorm(x + residual), x + residual), fp32");
}
