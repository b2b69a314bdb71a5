// Lamina's CPU kernels (fp32), bound to Python in module.cpp; kernels/cpu_ops.py builds them.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

// out[p] = w[e] @ inp[p] for the rows p in [offsets[e], offsets[e + 1]) (grouped_gemv.cpp).
torch::Tensor grouped_gemv(const torch::Tensor& inp, const torch::Tensor& w,
                           const std::vector<int64_t>& offsets);

// One query token per sequence against its paged K/V, read in place (decode_attention.cpp).
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& kv_cache,
                               const torch::Tensor& blocks,
                               const std::vector<int64_t>& block_starts,
                               const std::vector<int64_t>& contexts, double scale);

// w * x / sqrt(mean(x^2) + eps) over the last dim of [T, D] or [T, H, D] (rms_norm.cpp).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);

// (rms_norm(x + residual), x + residual) for [T, D] (rms_norm.cpp).
std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x,
                                                      const torch::Tensor& residual,
                                                      const torch::Tensor& w, double eps);
