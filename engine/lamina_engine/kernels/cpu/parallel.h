// Work sharing for Lamina's CPU kernels: items handed out one at a time (OpenMP's dynamic
// schedule) over torch's intra-op threads. at::parallel_for splits a range into one equal
// slice per thread up front, which leaves a thread idle while the other finishes when items
// differ in cost (decodes of unequal contexts, experts with unequal rows): decode attention
// ran 15-25% faster handed out longest first.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace lamina {

// fn(item) for every item in [0, n), each on one of torch's threads; serial inside a parallel
// region (as at::parallel_for is). Items are handed out in order, so put the costliest first.
template <class Fn>
void parallel_items(int64_t n, const Fn& fn) {
  const int threads = static_cast<int>(std::min<int64_t>(n, at::get_num_threads()));
  if (threads <= 1 || at::in_parallel_region() || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace lamina
