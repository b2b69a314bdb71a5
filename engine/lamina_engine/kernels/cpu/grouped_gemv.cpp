// Grouped small-M GEMM for the CPU MoE path (fp32; AVX-512F, or AVX2 + FMA), built on first
// use by kernels/cpu_ops.py with torch.utils.cpp_extension and the flags of the host's ISA.
//
//   out[p, n] = sum_k inp[p, k] * w[e, n, k]   for the rows p in [offsets[e], offsets[e+1])
//
// A decode step gives each expert a few rows (16 sequences x top-4 / 32 experts ~ 2), so the
// work is streaming the expert's weight once: each weight row is loaded once per tile of up to
// kTile input rows and dotted with all of them. Work items are (expert, 64 weight rows), spread
// over torch's intra-op threads. One call covers every expert of a layer.
//
// Every output is one dot product accumulated in the same order (one vector chain over k, the
// masked tail, then a fixed lane reduction) whatever the row's tile or group size: a row's
// result does not depend on which other rows share the call, so the same request gives the
// same logits in any batch, run after run.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace {

using namespace lamina;

constexpr int kPair = 2;  // weight rows per pass
// Prefetch distance in floats (16 KB): the hardware prefetcher alone left a 1 MB expert's
// weight streaming at 60-70% of the memory's speed once a pass does 2+ rows of work.
constexpr int64_t kAhead = 4096;

// Rows x[0..R) against weight rows [n0, n1): kPair weight rows per pass, so a pass holds
// kPair * R independent accumulators (enough FMAs in flight to hide their latency) and loads
// each x vector once per kPair weight rows. Each (n, r) is one chain over k in order, then the
// masked tail, then sum(): the same for every R and for a weight row with or without a partner.
template <int R, int B>
inline void pass(const float* x, const float* w, int64_t n, int64_t K, int64_t full, Mask mask,
                 float* out, int64_t N) {
  Vec acc[B][R];
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = zero();
  for (int64_t k = 0; k < full; k += kLanes) {
    Vec wv[B];
    for (int b = 0; b < B; ++b) {
      wv[b] = load(w + (n + b) * K + k);
      _mm_prefetch(reinterpret_cast<const char*>(w + (n + b) * K + k + kAhead), _MM_HINT_T0);
    }
    for (int r = 0; r < R; ++r) {
      const Vec xv = load(x + r * K + k);
      for (int b = 0; b < B; ++b) acc[b][r] = fma(wv[b], xv, acc[b][r]);
    }
  }
  if (K > full) {
    Vec wv[B];
    for (int b = 0; b < B; ++b) wv[b] = load_tail(w + (n + b) * K + full, mask);
    for (int r = 0; r < R; ++r) {
      const Vec xv = load_tail(x + r * K + full, mask);
      for (int b = 0; b < B; ++b) acc[b][r] = fma(wv[b], xv, acc[b][r]);
    }
  }
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r) out[r * N + n + b] = sum(acc[b][r]);
}

template <int R>
void tile(const float* x, const float* w, int64_t n0, int64_t n1, int64_t K, float* out,
          int64_t N) {
  const int64_t full = K / kLanes * kLanes;
  const Mask mask = tail_mask(K - full);
  int64_t n = n0;
  for (; n + kPair <= n1; n += kPair) pass<R, kPair>(x, w, n, K, full, mask, out, N);
  for (; n < n1; ++n) pass<R, 1>(x, w, n, K, full, mask, out, N);
}

using TileFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template <int... R>
constexpr std::array<TileFn, sizeof...(R)> tiles(std::integer_sequence<int, R...>) {
  return {tile<R + 1>...};
}
constexpr auto kTiles = tiles(std::make_integer_sequence<int, kTile>{});
constexpr int64_t kChunk = 64;  // weight rows per work item

}  // namespace

torch::Tensor grouped_gemv(const torch::Tensor& inp, const torch::Tensor& w,
                           const std::vector<int64_t>& offsets) {
  TORCH_CHECK(inp.dim() == 2 && w.dim() == 3, "grouped_gemv: inp [P, K], w [E, N, K]");
  TORCH_CHECK(inp.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "grouped_gemv: fp32 only");
  TORCH_CHECK(inp.device().is_cpu() && w.device().is_cpu(), "grouped_gemv: CPU tensors only");
  TORCH_CHECK(inp.is_contiguous() && w.is_contiguous(), "grouped_gemv: contiguous operands");
  TORCH_CHECK(inp.size(1) == w.size(2), "grouped_gemv: K differs");
  const int64_t P = inp.size(0), K = inp.size(1), N = w.size(1);
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
  TORCH_CHECK(E == w.size(0) && offsets.front() == 0 && offsets.back() == P,
              "grouped_gemv: offsets must be [E + 1] from 0 to P");
  auto out = torch::empty({P, N}, inp.options());
  std::vector<int64_t> active;
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(offsets[e + 1] >= offsets[e], "grouped_gemv: offsets must not decrease");
    if (offsets[e + 1] > offsets[e]) active.push_back(e);
  }
  const float* x = inp.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t items = static_cast<int64_t>(active.size()) * chunks;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t e = active[it / chunks];
      const int64_t n0 = (it % chunks) * kChunk, n1 = std::min(N, n0 + kChunk);
      const float* we = wp + e * N * K;
      for (int64_t p = offsets[e]; p < offsets[e + 1]; p += kTile) {
        const int64_t rows = std::min(kTile, offsets[e + 1] - p);
        kTiles[rows - 1](x + p * K, we, n0, n1, K, o + p * N, N);
      }
    }
  });
  return out;
}
