// Vectorisable exp and log1p for the fp32 hot loops of csrc/cpu/infonce.cpp.
//
// Why not std::exp: a forward pass at paper size (N = 1024, M = 190 000) evaluates
// ~195 M exponentials. glibc's expf is not vectorised without -ffast-math (libmvec is only
// declared under __FAST_MATH__) and costs ~0.5-1 s here in a scalar loop; the polynomial
// below is plain arithmetic plus selects, so GCC auto-vectorises the loops that call it
// (~0.45 ns per element including the surrounding row loop, AVX-512). We cannot use
// -ffast-math: the kernels rely on ±inf (empty sets, excluded pairs).
//
// The float64 path keeps the libm functions (float64 is the gradcheck path, not a fast path).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

// Compile the hot row kernels for AVX-512 and AVX2 with a runtime (ifunc) choice; the
// extension is built with the distribution's generic flags and must still run on CPUs
// without those extensions.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define PIXCONTRAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef PIXCONTRAST_CLONES
#define PIXCONTRAST_CLONES
#endif

#if defined(__GNUC__)
#define PIXCONTRAST_INLINE inline __attribute__((always_inline))
#else
#define PIXCONTRAST_INLINE inline
#endif

namespace pixcontrast::cpu {

// exp(x) in float: range reduction x = k·ln2 + r, |r| ≤ ln2/2 (Cody-Waite), Cephes'
// degree-6 polynomial for e^r, 2^k assembled in the exponent bits. Measured ≤ 0.7 ulp on
// [-86.6, 88.7]. Below -86.6 returns 0 (the exact result is < 2.5e-38; every caller adds it
// to a sum ≥ 1 or multiplies it by a bounded coefficient), so -inf → 0; above ln(FLT_MAX)
// +inf, so +inf → +inf; NaN stays NaN.
//
// Written so that GCC vectorises it at the default -ftrapping-math with SSE2 and AVX2 too,
// not only with AVX-512 masking: no float select at all. A clamp of x (x < lo ? lo : x)
// makes the whole polynomial a constant on the clamped path, PRE then moves the arithmetic
// into the other path, and arithmetic in a conditional arm "may trap", so the loop keeps a
// branch (measured: scalar loop on AVX2). Instead k comes from the magic-number rounding as
// an integer, all integer arithmetic is unsigned (wraps, no UB) and the out-of-range cases
// are patched in the result bits with integer masks. No fma: the default clone has none,
// and -std=c++17 disables contraction anyway.
PIXCONTRAST_INLINE float exp_acc(float x) {
  const float magic = 12582912.f;  // 1.5·2^23: t's low mantissa bits hold round(x·log2e)
  const float t = x * 1.44269504088896341f + magic;
  const float kf = t - magic;
  uint32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof(t_bits));
  const uint32_t k = t_bits - 0x4B400000u;  // round(x·log2e) mod 2^32 (= k for |k| < 2^22)
  float r = x - kf * 0.693359375f;  // ln2 high part: 9 bits, so kf·C1 is exact
  r = r - kf * -2.12194440e-4f;     // ln2 low part
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // 2^k = 2·2^(k−1): on [-86.6, 88.8] k ∈ [-125, 128], so the biased exponent
  // k − 1 + 127 ∈ [1, 254] stays normal and the final multiply overflows to inf exactly
  // when e^x > FLT_MAX.
  const uint32_t scale_bits = (k + 126u) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  const float e = (y * 2.0f) * scale;
  uint32_t bits;
  std::memcpy(&bits, &e, sizeof(bits));
  const uint32_t keep = (x < -86.6f) | (x > 88.8f) ? 0u : ~0u;
  const uint32_t inf = x > 88.8f ? 0x7F800000u : 0u;
  bits = (bits & keep) | inf;  // below: +0 (−inf included); above: +inf (+inf included)
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

PIXCONTRAST_INLINE double exp_acc(double x) { return std::exp(x); }

// log1p(e) for e ∈ [0, 1] (the softplus tail log1p(exp(-|x|))): log1p(e) = 2·atanh(z) with
// z = e / (2 + e) ∈ [0, 1/3], computed without cancellation; the odd series up to z^17
// leaves a truncation error < 2e-10 relative.
PIXCONTRAST_INLINE float log1p_unit(float e) {
  const float z = e / (2.0f + e);
  const float w = z * z;
  float p = 1.0f / 17.0f;
  p = p * w + 1.0f / 15.0f;
  p = p * w + 1.0f / 13.0f;
  p = p * w + 1.0f / 11.0f;
  p = p * w + 1.0f / 9.0f;
  p = p * w + 1.0f / 7.0f;
  p = p * w + 1.0f / 5.0f;
  p = p * w + 1.0f / 3.0f;
  p = p * w + 1.0f;
  return 2.0f * z * p;
}

PIXCONTRAST_INLINE double log1p_unit(double e) { return std::log1p(e); }

// c ? v : 0 through the bits, for a v computed on every path anyway (a float select whose
// arm may be inf · 0 = NaN, or whose arm GCC sinks arithmetic into, blocks vectorisation;
// see exp_acc).
template <typename T>
PIXCONTRAST_INLINE T keep_if(bool c, T v) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits b;
  std::memcpy(&b, &v, sizeof(b));
  b &= c ? ~Bits(0) : Bits(0);
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

}  // namespace pixcontrast::cpu
