// RMSNorm on the CPU (fp32), optionally after adding the residual stream, in one pass per row:
//
//   rms_norm(x [..., D], w [D], eps) -> w * x / sqrt(mean(x^2) + eps)
//   add_rms_norm(x, residual, w, eps) -> (rms_norm(x + residual), x + residual)
//
// The torch path runs 7-9 small ops per norm; a decode step of 16 rows does 4 norms per layer
// (input, post-attention, q and k per head), so the ops' dispatch was ~4 ms of a ~60 ms step.
// x may be a strided view ([T, D] or [T, H, D] with unit stride along D: the q and k slices of
// the fused qkv projection); outputs are contiguous. Each row is reduced in one fixed order.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <tuple>

#include "ops.h"
#include "vec.h"

namespace {

using namespace lamina;

// Rows of x as (outer, inner) pairs: [T, D] is (T, 1), [T, H, D] is (T, H).
struct Rows {
  int64_t outer, inner, s0, s1, D;
  const float* at(const float* base, int64_t r) const {
    return base + (r / inner) * s0 + (r % inner) * s1;
  }
};

Rows rows_of(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3, "rms_norm: x must be [T, D] or [T, H, D]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "rms_norm: fp32 only");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "rms_norm: CPU tensors only");
  TORCH_CHECK(x.stride(-1) == 1 && w.is_contiguous(), "rms_norm: unit stride along D");
  const int64_t D = x.size(-1);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == D, "rms_norm: weight must be [D]");
  if (x.dim() == 2) return {x.size(0), 1, x.stride(0), 0, D};
  return {x.size(0), x.size(1), x.stride(0), x.stride(1), D};
}

inline void norm_row(const float* x, const float* w, float eps, int64_t D, float* out) {
  const int64_t full = D / kLanes * kLanes;
  const Mask mask = tail_mask(D - full);
  Vec acc = zero();
  for (int64_t k = 0; k < full; k += kLanes) acc = fma(load(x + k), load(x + k), acc);
  if (D > full) {
    const Vec v = load_tail(x + full, mask);
    acc = fma(v, v, acc);
  }
  const float scale = 1.f / std::sqrt(sum(acc) / static_cast<float>(D) + eps);
  for (int64_t k = 0; k < D; ++k) out[k] = w[k] * (x[k] * scale);
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  const Rows r = rows_of(x, w);
  auto out = torch::empty(x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, r.outer * r.inner, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      norm_row(r.at(xp, i), wp, static_cast<float>(eps), r.D, op + i * r.D);
  });
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x,
                                                      const torch::Tensor& residual,
                                                      const torch::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 2 && residual.sizes() == x.sizes(),
              "add_rms_norm: x and residual must be the same [T, D]");
  TORCH_CHECK(residual.scalar_type() == at::kFloat && residual.stride(-1) == 1 &&
                  residual.device().is_cpu(),
              "add_rms_norm: residual must be fp32 on the CPU with unit stride along D");
  const Rows r = rows_of(x, w);
  auto total = torch::empty(x.sizes(), x.options());
  auto out = torch::empty(x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  const float* rp = residual.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* tp = total.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t rs = residual.stride(0);
  at::parallel_for(0, r.outer, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = xp + i * r.s0;
      const float* ri = rp + i * rs;
      float* ti = tp + i * r.D;
      for (int64_t k = 0; k < r.D; ++k) ti[k] = xi[k] + ri[k];
      norm_row(ti, wp, static_cast<float>(eps), r.D, op + i * r.D);
    }
  });
  return {out, total};
}
