// The vector ISA Lamina's CPU kernels are built for: kernels/cpu_ops.py compiles them with
// -mavx512f (16 fp32 lanes) or -mavx2 -mfma (8 lanes), whichever the host has. Every kernel is
// written once against these helpers. Reductions (sum) use one fixed lane order.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace lamina {

#if defined(__AVX512F__)
constexpr char kIsa[] = "avx512f";
constexpr int64_t kLanes = 16;
constexpr int64_t kTile = 4;  // grouped_gemv: 4 input rows x 4 weight rows = 16 of 32 registers
using Vec = __m512;
using Mask = __mmask16;
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
inline Mask tail_mask(int64_t n) { return static_cast<Mask>((1u << n) - 1u); }
inline Vec load_tail(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline float sum(Vec v) { return _mm512_reduce_add_ps(v); }
inline Vec set1(float x) { return _mm512_set1_ps(x); }
inline void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline void store_tail(float* p, Vec v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
// The sums of 16 vectors at once: lane 4i + j holds the sum of v[4j + i]. Every vector's lanes
// are added in the same tree (j + 8, then j + 4, then pairs), whatever the other vectors hold.
inline Vec sum_each(const Vec* v) {
  Vec c[8], d[4], e[2];
  for (int i = 0; i < 8; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    e[i] = _mm512_add_ps(_mm512_shuffle_ps(d[2 * i], d[2 * i + 1], 0x88),
                         _mm512_shuffle_ps(d[2 * i], d[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr char kIsa[] = "avx2";
constexpr int64_t kLanes = 8;
constexpr int64_t kTile = 2;  // grouped_gemv: 2 input rows x 4 weight rows = 8 of 16 registers
using Vec = __m256;
using Mask = __m256i;
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
inline Mask tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec load_tail(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline float sum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline Vec set1(float x) { return _mm256_set1_ps(x); }
inline void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline void store_tail(float* p, Vec v, Mask m) { _mm256_maskstore_ps(p, m, v); }
// The sums of 8 vectors at once: lane 4i + j holds the sum of v[2j + i]. Every vector's lanes
// are added in the same tree (j + 4, then pairs), whatever the other vectors hold.
inline Vec sum_each(const Vec* v) {
  Vec c[4], d[2];
  for (int i = 0; i < 4; ++i)
    c[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                         _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
  for (int i = 0; i < 2; ++i)
    d[i] = _mm256_add_ps(_mm256_shuffle_ps(c[2 * i], c[2 * i + 1], 0x88),
                         _mm256_shuffle_ps(c[2 * i], c[2 * i + 1], 0xDD));
  return _mm256_add_ps(_mm256_shuffle_ps(d[0], d[1], 0x88), _mm256_shuffle_ps(d[0], d[1], 0xDD));
}
#else
#error "Lamina's CPU kernels need AVX-512F or AVX2 + FMA (kernels/cpu_ops.py picks the flags)"
#endif

}  // namespace lamina
