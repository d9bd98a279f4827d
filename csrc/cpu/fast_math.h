// Vectorisation support for the fp32 hot loops of csrc/cpu/infonce.cpp: the target clones
// and the vectorisable exp and log1p (defined in csrc/common/infonce_rows.h, shared with the
// CUDA kernels).
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

#include <cstdint>

#include "common/infonce_rows.h"

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

// The elementary functions (exp_acc, log1p_unit, keep_if) live in csrc/common/infonce_rows.h,
// shared with the CUDA kernels; their vectorisation notes are there.
using rows::exp_acc;
using rows::keep_if;
using rows::log1p_unit;

// Dot product with kDotLanes independent partial sums: without -ffast-math GCC will not
// reorder a float sum, but it does vectorise the lane loop. The one dot product of the CPU
// InfoNCE row kernels and of every logit of the mining kernels (csrc/cpu/mining.cpp).
constexpr int kDotLanes = 16;

template <typename T>
PIXCONTRAST_INLINE T lane_dot(const T* a, const T* b, int64_t n) {
  T acc[kDotLanes] = {};
  int64_t j = 0;
  for (; j + kDotLanes <= n; j += kDotLanes)
    for (int k = 0; k < kDotLanes; ++k) acc[k] += a[j + k] * b[j + k];
  T total = 0;
  for (; j < n; ++j) total += a[j] * b[j];
  for (int k = 0; k < kDotLanes; ++k) total += acc[k];
  return total;
}

}  // namespace pixcontrast::cpu
