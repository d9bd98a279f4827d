// Per-element and per-row math of the per-positive InfoNCE (docs/design.md §1.3), shared by
// the CPU backend (csrc/cpu/infonce.cpp) and the CUDA row-pass kernels (csrc/cuda/infonce.cu).
//
// Every function is `__host__ __device__` under nvcc and plain inline C++ otherwise, and
// uses nothing but arithmetic and bit casts: the CPU tests exercise the very expressions the
// GPU kernels run (docs/design.md §6.5). Only CUDA-free standard headers are included, so
// plain nvcc, GCC and the torch build all compile it.
//
// Conventions (one row i of the logits against one chunk of columns j):
// * s = dot · inv_t, the logit of a normalised pair (the GEMM gives dot = â·ĉ);
// * a column is a negative of row i when z_j ≠ y_i and neither label is ignore_index, a
//   positive when z_j = y_i ≠ ignore_index and it is not the row itself (self-contrast);
// * ±∞ are meaningful (empty sets): no -ffast-math on the host (fast_math.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define PIXCONTRAST_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define PIXCONTRAST_HD inline __attribute__((always_inline))
#else
#define PIXCONTRAST_HD inline
#endif

namespace pixcontrast::rows {

constexpr double kNormEps = 1e-12;  // F.normalize's eps

// +∞ without std::numeric_limits (a host constexpr, which device code could only call
// under --expt-relaxed-constexpr).
template <typename T>
PIXCONTRAST_HD T infinity() {
  return static_cast<T>(__builtin_huge_valf());
}

// ---------------------------------------------------------------------------------------
// Elementary functions.

// exp(x) in float: range reduction x = k·ln2 + r, |r| ≤ ln2/2 (Cody-Waite), Cephes' degree-6
// polynomial for e^r, 2^k assembled in the exponent bits. Measured ≤ 0.7 ulp on
// [-86.6, 88.7] (without FMA contraction; with it, as nvcc compiles the device copy, within
// 1 ulp). Below -86.6 returns 0 (the exact result is < 2.5e-38; every caller adds it to a
// sum ≥ 1 or multiplies it by a bounded coefficient), so -inf → 0; above ln(FLT_MAX) +inf,
// so +inf → +inf; NaN stays NaN.
//
// Host: written so that GCC vectorises it at the default -ftrapping-math with SSE2 and AVX2
// too, not only with AVX-512 masking: no float select at all. A clamp of x (x < lo ? lo : x)
// makes the whole polynomial a constant on the clamped path, PRE then moves the arithmetic
// into the other path, and arithmetic in a conditional arm "may trap", so the loop keeps a
// branch. Instead k comes from the magic-number rounding as an integer, all integer
// arithmetic is unsigned (wraps, no UB) and the out-of-range cases are patched in the result
// bits with integer masks. Device: __expf instead (docs/notes/infonce-cuda.md: the
// polynomial cost ~18 more instructions per element in every row pass).
PIXCONTRAST_HD float exp_acc(float x) {
#if defined(__CUDA_ARCH__)
  // Device: ex2.approx of x·log2e (2 instructions; ~2 ulp plus the rounding of x·log2e,
  // ≤ 6e-6 relative for |x| ≤ 87). The same ±inf, 0 and NaN behaviour as below, and the
  // same function in every pass, so the passes' weights agree with each other.
  return __expf(x);
#else
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
#endif
}

PIXCONTRAST_HD double exp_acc(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// log1p(e) for e ∈ [0, 1] (the softplus tail log1p(exp(-|x|))): log1p(e) = 2·atanh(z) with
// z = e / (2 + e) ∈ [0, 1/3], computed without cancellation; the odd series up to z^17
// leaves a truncation error < 2e-10 relative.
PIXCONTRAST_HD float log1p_unit(float e) {
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

PIXCONTRAST_HD double log1p_unit(double e) {
#if defined(__CUDA_ARCH__)
  return ::log1p(e);
#else
  return std::log1p(e);
#endif
}

PIXCONTRAST_HD float log_acc(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  return std::log(x);
#endif
}

PIXCONTRAST_HD double log_acc(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

// c ? v : 0 through the bits, for a v computed on every path anyway (a float select whose
// arm may be inf · 0 = NaN, or whose arm GCC sinks arithmetic into, blocks vectorisation).
template <typename T>
PIXCONTRAST_HD T keep_if(bool c, T v) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits b;
  std::memcpy(&b, &v, sizeof(b));
  b &= c ? ~Bits(0) : Bits(0);
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

template <typename T>
PIXCONTRAST_HD T max_of(T a, T b) {
  return a > b ? a : b;
}

// ---------------------------------------------------------------------------------------
// Masks.

PIXCONTRAST_HD bool is_negative(int64_t z, int64_t y, int64_t ignore) {
  return (z != y) & (z != ignore) & (y != ignore);  // no short-circuit branch
}

// `self_pair`: the column is the row itself (self-contrast), which is never a positive.
PIXCONTRAST_HD bool is_positive(int64_t z, int64_t y, int64_t ignore, bool self_pair) {
  return (z == y) & (y != ignore) & !self_pair;
}

// SupCon (`supcon`, docs/design.md §1.5): the log-sum-exp runs over every valid column but
// the row itself, positives included; InfoNCE's over the negatives. A compile-time constant
// in the CPU's vectorised loops, a uniform runtime flag in the CUDA kernels.
PIXCONTRAST_HD bool in_denominator(int64_t z, int64_t y, int64_t ignore, bool self_pair,
                                   bool supcon) {
  return supcon ? (z != ignore) & (y != ignore) & !self_pair : is_negative(z, y, ignore);
}

// ---------------------------------------------------------------------------------------
// Negatives pass (online log-sum-exp, flash-attention style); with supcon, the denominator
// pass over every valid column.

// The logit of a GEMM dot product; the same expression in every pass, so that a logit
// recomputed in the column backward from the same dot is the forward's bit for bit.
// Rounded before any use: never contracted into an FMA with a later subtraction (host:
// -ffp-contract=off, setup.py and CMakeLists.txt; device: the round-to-nearest intrinsic).
PIXCONTRAST_HD float logit(float dot, float inv_t) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(dot, inv_t);
#else
  return dot * inv_t;
#endif
}

PIXCONTRAST_HD double logit(double dot, double inv_t) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(dot, inv_t);
#else
  return dot * inv_t;
#endif
}

// Step 1, per element: the value that enters the row max (−inf unless in the denominator:
// a negative, or with supcon any valid column but the row itself).
template <typename T>
PIXCONTRAST_HD T negative_logit(T dot, T inv_t, int64_t z, int64_t y, int64_t ignore,
                                bool self_pair, bool supcon) {
  return in_denominator(z, y, ignore, self_pair, supcon) ? logit(dot, inv_t) : -infinity<T>();
}

// The fast path's weight (fixed_shift below): e^{s − shift} for a column in the
// denominator, 0 elsewhere. Evaluated for every column and masked through the bits: with a
// float select in front of the exponential (negative_logit's −inf), GCC keeps a branch and
// the host loop is not vectorised with AVX2.
template <typename T>
PIXCONTRAST_HD T fixed_shift_weight(T dot, T inv_t, T shift, int64_t z, int64_t y,
                                    int64_t ignore, bool self_pair, bool supcon) {
  return keep_if(in_denominator(z, y, ignore, self_pair, supcon),
                 exp_acc(logit(dot, inv_t) - shift));
}

// Step 2, per row: the running max after the chunk.
template <typename T>
PIXCONTRAST_HD T new_max(T m_old, T chunk_max) {
  return max_of(m_old, chunk_max);
}

// Step 3, per element: the weight e^{s − m_new} of a negative (0 otherwise; 0 everywhere
// while the row has seen no negative, m_new = −inf, where e^{−inf − (−inf)} would be NaN).
template <typename T>
PIXCONTRAST_HD T negative_weight(T v, T m_new) {
  const T m_safe = m_new == -infinity<T>() ? T(0) : m_new;
  return exp_acc(v - m_safe);  // v = −inf → 0
}

// Step 4, per row: α = e^{m_old − m_new}, the factor applied to the row's l and U
// (m_old = −inf → 0; both −inf → 1, nothing accumulated yet).
template <typename T>
PIXCONTRAST_HD T rescale_factor(T m_old, T m_new) {
  return m_new == -infinity<T>() ? T(1) : exp_acc(m_old - m_new);
}

// λ = m + log l (−∞ without a negative: l = 0, whichever shift m the row used).
template <typename T>
PIXCONTRAST_HD T lse_of(T m, T l) {
  return l > T(0) ? m + log_acc(l) : -infinity<T>();
}

// The fixed-shift fast path (docs/design.md §1.4). With normalised rows |s| ≤ 1/τ (up to the
// operands' rounding: a bf16 row's norm is within 2⁻⁸ of 1), so the shift m = 1/τ, the same
// for every row and known before any logit, bounds every weight e^{s−m} by ≈ 1: the
// negatives pass reads S once, writes p = e^{s − 1/τ} and sums it, with no max reduction and
// no α rescale of l or U; λ = 1/τ + log l. Natural units, not base 2: every pass then builds
// s with the same rows::logit, so the column backward's e^{s−λ} comes from the very logits λ
// did, and the host's exp_acc serves unchanged (folding log2(e) in would merge the −1/τ and
// the ×log2(e) into one FFMA: 1–2 of the ≈ 19 device instructions per column of the pass,
// docs/notes/infonce-cuda.md v2.1).
//
// The limit is underflow. The smallest weight, of s = −1/τ (a negative pointing away from
// the anchor), is e^{−2/τ}; it must stay a normal fp32, or a row whose negatives all sit
// near −1/τ gets l = 0 and λ = −∞ instead of ≈ −1/τ. The device's ex2.approx.ftz flushes
// below 2⁻¹²⁶ = e^{−87.3} (τ < 0.0229), the host's exp_acc returns 0 below −86.6
// (τ < 0.0231). τ ≥ 0.03 keeps e^{−2/τ} ≥ e^{−66.7} ≈ 2⁻⁹⁶: 30 binary orders above the floor
// for the products p·ĉ_d of the second GEMM and for bf16 weights (fp32's exponent range).
// fp16 weights (normals from 2⁻¹⁴, stored ×2¹⁵) cannot hold e^{−66.7}: they keep the running
// max, whose largest weight is 1. The bound is the Triton backend's _FAST_MIN_TEMPERATURE
// (kernels/infonce.py), and the test `inv_t <= 1/0.03` is the same double expression.
constexpr double kFastMinTemperature = 0.03;

// Whether a call takes the fast path: normalised rows, τ ≥ kFastMinTemperature, weights
// stored in a type with fp32's exponent range (`narrow_weights`: fp16).
PIXCONTRAST_HD bool fixed_shift(bool normalize, double inv_t, bool narrow_weights) {
  return normalize && !narrow_weights && inv_t <= 1.0 / kFastMinTemperature;
}

// ---------------------------------------------------------------------------------------
// Positives pass.

// softplus(x) and σ(x) for x = lse − s from one e^{−|x|} (stable forms; both 0 at
// x = −∞, i.e. without a negative).
template <typename T>
PIXCONTRAST_HD void softplus_sigmoid(T x, T* sp, T* sg) {
  const T e = exp_acc(-(x < T(0) ? -x : x));
  *sp = (x > T(0) ? x : T(0)) + log1p_unit(e);
  *sg = (x >= T(0) ? T(1) : e) / (T(1) + e);
}

// Per positive: the loss term and the weight of ĉ_p in V. InfoNCE: softplus(x) and σ(x);
// SupCon: x = L − s itself and weight 1 (then Σ weights = |P|).
template <typename T>
PIXCONTRAST_HD void positive_terms(T x, bool supcon, T* sp, T* sg) {
  if (supcon) {
    *sp = x;
    *sg = T(1);
    return;
  }
  softplus_sigmoid(x, sp, sg);
}

// ---------------------------------------------------------------------------------------
// Column backward.

// Per row: the coefficients of the weights (§1.5): negatives c_neg = coef·g, positives
// c_pos = −coef (SupCon: g = |P|, so c_neg = dL/d row_loss).
template <typename T>
PIXCONTRAST_HD T negative_coef(T row_coef, T pos_sig) {
  return row_coef * pos_sig;
}

// Per element: G = c_neg·min(e^{s−lse}, 1) for negatives, c_pos·σ(lse − s) =
// c_pos/(1 + e^{s−lse}) for positives (one exponential serves both), 0 otherwise. With
// lse = −inf (no negative) e = inf: positives get c_pos/inf = 0, and the masked negative
// term drops the inf·0 = NaN it would otherwise produce. The clamp guards the last ulp of
// a negative that is its row's only term.
// SupCon: every valid column c_neg·min(e^{s−L}, 1) (the softmax over the denominator; a row
// with a valid column has a finite L ≥ s) and positives c_pos on top.
template <typename T>
PIXCONTRAST_HD T column_weight(T s, T lse, bool positive, bool negative, T c_neg, T c_pos,
                               bool supcon) {
  const T e = exp_acc(s - lse);
  const T en = e < T(1) ? e : T(1);
  if (supcon) return keep_if(positive | negative, c_neg * en) + keep_if(positive, c_pos);
  return keep_if(positive, c_pos) / (T(1) + e) + keep_if(negative, c_neg * en);
}

// ---------------------------------------------------------------------------------------
// Normalisation and finalisation.

// 1/max(‖x‖, eps) from Σx².
template <typename T>
PIXCONTRAST_HD T inv_norm(T sum_squares) {
#if defined(__CUDA_ARCH__)
  const T norm = sqrt(sum_squares);
#else
  const T norm = std::sqrt(sum_squares);
#endif
  return T(1) / max_of(norm, T(kNormEps));
}

// Whether the row's norm was above eps (inv_norm < 1/eps): then the normalisation
// backprop projects, else the norm is the constant eps (F.normalize's autograd).
template <typename T>
PIXCONTRAST_HD bool projects(T inv) {
  return inv < T(1) / T(kNormEps);
}

// ∂L/∂x_d from ∂L/∂x̂_d through x̂ = x / max(‖x‖, eps): (g − x̂·(x̂·g))·inv, or g·inv below
// eps. `proj` = x̂·g, `project` = projects(inv).
template <typename T>
PIXCONTRAST_HD T normalize_backward(T g, T xhat, T proj, T inv, bool project) {
  return project ? (g - xhat * proj) * inv : g * inv;
}

// The row gradient's two coefficients: row_grad = a_coef·U − b_coef·V before the
// normalisation backprop, with U = Σ_neg e^{s−m} ĉ and V = Σ_pos σ ĉ:
// a_coef = inv_t·g/(|P|·l) (0 without negatives, where U = 0 too), b_coef = inv_t/|P|.
// SupCon: U over the whole denominator, V = Σ_pos ĉ and g = |P|: the same formula.
template <typename T>
PIXCONTRAST_HD void row_grad_coefs(T inv_t, T pos_sig, T l, T num_pos, T* a_coef, T* b_coef) {
  const T b = num_pos > T(0) ? inv_t / num_pos : T(0);
  *b_coef = b;
  *a_coef = l > T(0) ? b * (pos_sig / l) : T(0);
}

}  // namespace pixcontrast::rows
