// Grouped GEMM for the CPU MoE and dense linears (fp32; AVX-512F, or AVX2 + FMA), built on
// first use by kernels/cpu_ops.py with torch.utils.cpp_extension and the flags of the host's ISA.
//
//   out[p, n] = sum_k inp[p, k] * w[e, n, k]   for the rows p in [offsets[e], offsets[e+1])
//
// One call covers every expert of a MoE layer (or one dense linear, E = 1), for any number of
// rows: a decode step's 1-3 rows per expert, where the work is streaming each weight once, and
// a prefill chunk's tens to hundreds, where it is FLOPs. Work items are (expert, 64 weight
// rows), handed out to torch's intra-op threads one at a time, the experts with the most rows
// first (parallel.h); an item's weights stay in L2 while its rows pass
// in register tiles of kRows input rows x kCols weight rows (kLanes accumulators: 16 of
// AVX-512's 32 registers, 8 of AVX2's 16), each an FMA chain along k. sum_each then reduces
// all kLanes accumulators at once (a quarter of the shuffles of reducing each on its own).
//
// Every output is one dot product added in the same order (one vector chain over k, the masked
// tail, then sum_each's fixed lane tree) whatever the row's tile, its group's size or the call's
// other rows: a row's result does not depend on which rows share the call, so the same request
// gives the same logits in any batch, run after run.
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "ops.h"
#include "parallel.h"
#include "vec.h"

namespace {

using namespace lamina;

constexpr int kCols = 4;      // weight rows per register tile
constexpr int kRows = kTile;  // input rows per register tile (vec.h): kRows * kCols = kLanes
static_assert(kRows * kCols == kLanes, "a tile's accumulators are one sum_each");
// Prefetch distance in floats (16 KB ahead of each weight row), into L2 (_MM_HINT_T1): the
// hardware prefetcher alone left a 1 MB expert's weight streaming at 60-70% of the memory's
// speed, and prefetching into L1 (T0) instead streamed a decode step's experts 1.25x (2
// threads) to 1.7x (1 thread) slower on a Zen 4 EPYC.
constexpr int64_t kAhead = 4096;

// Rows x[0..R) against weight rows [n, n + C). Accumulator (r, c) is slot kRows * c + r, which
// sum_each leaves in lane kCols * r + c: row r's C outputs are contiguous lanes. Unused slots
// stay zero; no lane of one slot reaches another's sum.
template <int R, int C, bool Ahead>
inline void block(const float* x, const float* w, int64_t n, int64_t K, int64_t full, Mask mask,
                  float* out, int64_t N) {
  Vec acc[kLanes];
  for (int s = 0; s < kLanes; ++s) acc[s] = zero();
  for (int64_t k = 0; k < full; k += kLanes) {
    Vec wv[C];
    for (int c = 0; c < C; ++c) {
      wv[c] = load(w + (n + c) * K + k);
      if (Ahead)
        _mm_prefetch(reinterpret_cast<const char*>(w + (n + c) * K + k + kAhead), _MM_HINT_T1);
    }
    for (int r = 0; r < R; ++r) {
      const Vec xv = load(x + r * K + k);
      for (int c = 0; c < C; ++c) acc[kRows * c + r] = fma(wv[c], xv, acc[kRows * c + r]);
    }
  }
  if (K > full) {
    Vec wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load_tail(w + (n + c) * K + full, mask);
    for (int r = 0; r < R; ++r) {
      const Vec xv = load_tail(x + r * K + full, mask);
      for (int c = 0; c < C; ++c) acc[kRows * c + r] = fma(wv[c], xv, acc[kRows * c + r]);
    }
  }
  alignas(64) float sums[kLanes];
  store(sums, sum_each(acc));
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * N + n + c] = sums[kCols * r + c];
}

template <int R, bool Ahead>
void tile(const float* x, const float* w, int64_t n0, int64_t n1, int64_t K, float* out,
          int64_t N) {
  const int64_t full = K / kLanes * kLanes;
  const Mask mask = tail_mask(K - full);
  int64_t n = n0;
  for (; n + kCols <= n1; n += kCols) block<R, kCols, Ahead>(x, w, n, K, full, mask, out, N);
  switch (n1 - n) {
    case 3: block<R, 3, Ahead>(x, w, n, K, full, mask, out, N); break;
    case 2: block<R, 2, Ahead>(x, w, n, K, full, mask, out, N); break;
    case 1: block<R, 1, Ahead>(x, w, n, K, full, mask, out, N); break;
    default: break;
  }
}

using TileFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template <int... R>
constexpr std::array<TileFn, 2 * sizeof...(R)> tiles(std::integer_sequence<int, R...>) {
  return {tile<R + 1, true>..., tile<R + 1, false>...};
}
constexpr auto kTiles = tiles(std::make_integer_sequence<int, kRows>{});
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
  std::vector<int64_t> active;  // experts with rows, the most rows first
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(offsets[e + 1] >= offsets[e], "grouped_gemv: offsets must not decrease");
    if (offsets[e + 1] > offsets[e]) active.push_back(e);
  }
  std::stable_sort(active.begin(), active.end(), [&](int64_t a, int64_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  const float* x = inp.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  parallel_items(static_cast<int64_t>(active.size()) * chunks, [&](int64_t it) {
    const int64_t e = active[it / chunks];
    const int64_t n0 = (it % chunks) * kChunk, n1 = std::min(N, n0 + kChunk);
    const float* we = wp + e * N * K;
    for (int64_t p = offsets[e]; p < offsets[e + 1]; p += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, offsets[e + 1] - p);
      // the first tile streams the item's weights from memory; later ones find them in L2
      kTiles[rows - 1 + (p == offsets[e] ? 0 : kRows)](x + p * K, we, n0, n1, K, o + p * N, N);
    }
  });
  return out;
}
