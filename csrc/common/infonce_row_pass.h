// The bodies of the CUDA row-pass kernels (csrc/cuda/infonce.cu), written once for a group
// of cooperating threads: on the GPU one CTA per row (its threads stride over the columns,
// reductions through shuffles and shared memory), on the CPU a single "thread" that visits
// every column (csrc/cpu/infonce.cpp's device schedule). So the CPU tests of
// `_infonce_*_device_schedule` (tests/test_infonce_rows.py) run the very code of the GPU
// kernels, one row at a time, against the float64 oracle.
//
// A Group provides `rank()`, `size()` (threads), `max(v)` and `sum(v)` (every member gets
// the group's result; a reduction is also a barrier on the GPU) and `any(pred)` (whether
// the predicate holds for any lane that runs this step with the caller: on the GPU the
// active lanes of its warp; a hint for skipping work, never a barrier). T is the accumulation type
// (float on the GPU), P the type the weights are stored in (the operand dtype), Cast<P> the
// conversion T → P (specialised for __half / __nv_bfloat16 by the .cu).
#pragma once

#include <cstdint>

#include "common/infonce_rows.h"

namespace pixcontrast::rows {

template <typename P>
struct Cast {
  template <typename T>
  PIXCONTRAST_HD static P to(T v) {
    return static_cast<P>(v);
  }
};

// One row of a logits chunk: s (dot products, `count` columns), its weights p (may alias s),
// the columns' labels z, the row's label y; self_col: the row's own column in the chunk
// (self-contrast), −1 if none; supcon: SupCon's switches (infonce_rows.h, docs/design.md §1.5).
template <typename T, typename P>
struct RowChunk {
  const T* s;
  P* p;
  const int64_t* z;
  int64_t count;
  int64_t y;
  int64_t self_col;
  T inv_t;
  int64_t ignore;
  bool supcon;
  // SupCon with the band's positives (docs/design.md §6.5): positives count in l but get no
  // weight in U; the band gives each its whole weight 1 − |P|·e^{s−λ} in V, so a 16-bit
  // weight is rounded once rather than as two nearly equal halves.
  bool exclude_positives = false;
};

// The weight a negatives pass stores for column j (its share of l is w either way).
template <typename T, typename P>
PIXCONTRAST_HD T stored_negative_weight(const RowChunk<T, P>& r, int64_t j, T w) {
  return r.exclude_positives && is_positive(r.z[j], r.y, r.ignore, j == r.self_col) ? T(0) : w;
}

// Negatives, general path (SupCon: every valid column but the row itself): the masked max,
// then p = e^{s − m_new}·scale and its sum; m, l updated and the row's U (d values, or null)
// rescaled by α. m is read by every member before the second reduction and written after it.
template <typename T, typename P, class Group>
PIXCONTRAST_HD void negatives_pass(const Group& g, const RowChunk<T, P>& r, T scale, T* m, T* l, T* u,
                                   int64_t d) {
  T mx = -infinity<T>();
  for (int64_t j = g.rank(); j < r.count; j += g.size())
    mx = max_of(mx, negative_logit(r.s[j], r.inv_t, r.z[j], r.y, r.ignore, j == r.self_col,
                                   r.supcon));
  mx = g.max(mx);
  const T m_old = *m;
  const T m_new = new_max(m_old, mx);
  T sum = 0;
  for (int64_t j = g.rank(); j < r.count; j += g.size()) {
    const T w = negative_weight(
        negative_logit(r.s[j], r.inv_t, r.z[j], r.y, r.ignore, j == r.self_col, r.supcon), m_new);
    sum += w;
    r.p[j] = Cast<P>::to(stored_negative_weight(r, j, w) * scale);
  }
  sum = g.sum(sum);
  const T alpha = rescale_factor(m_old, m_new);
  if (u != nullptr && alpha != T(1))
    for (int64_t e = g.rank(); e < d; e += g.size()) u[e] *= alpha;
  if (g.rank() == 0) {
    *m = m_new;
    *l = alpha * *l + sum;
  }
}

// The fast path's negatives (rows::fixed_shift): one read of S with the fixed shift
// m = 1/τ: p = e^{s − 1/τ}·scale, l += Σ e^{s − 1/τ}; no max, nothing rescaled (the caller
// starts m at 1/τ, so rows::lse_of gives λ = 1/τ + log l).
template <typename T, typename P, class Group>
PIXCONTRAST_HD void negatives_pass_fixed(const Group& g, const RowChunk<T, P>& r, T scale, T* l) {
  T sum = 0;
  for (int64_t j = g.rank(); j < r.count; j += g.size()) {
    const T w = fixed_shift_weight(r.s[j], r.inv_t, r.inv_t, r.z[j], r.y, r.ignore,
                                   j == r.self_col, r.supcon);
    sum += w;
    r.p[j] = Cast<P>::to(stored_negative_weight(r, j, w) * scale);
  }
  sum = g.sum(sum);
  if (g.rank() == 0) *l += sum;
}

// Positives: adds Σ softplus(λ − s), Σ σ(λ − s) and |P| to loss, sig, count; p = σ·scale for
// positives, 0 elsewhere (SupCon: Σ (L − s), Σ 1 and p = scale; rows::positive_terms).
template <typename T, typename P, class Group>
PIXCONTRAST_HD void positives_pass(const Group& g, const RowChunk<T, P>& r, T lse, T scale, T* loss,
                                   T* sig, T* count) {
  T sp_sum = 0, sg_sum = 0, n_pos = 0;
  for (int64_t j = g.rank(); j < r.count; j += g.size()) {
    const bool pos = is_positive(r.z[j], r.y, r.ignore, j == r.self_col);
    T sg = 0;
    // Skipped (logit not even loaded) when no column of the step's group of lanes is a
    // positive: in a class-sorted bank the positives are runs, so most warps skip.
    if (g.any(pos)) {
      T sp;
      positive_terms(lse - logit(r.s[j], r.inv_t), r.supcon, &sp, &sg);
      sg = keep_if(pos, sg);
      sp_sum += keep_if(pos, sp);
      sg_sum += sg;
      n_pos += pos ? T(1) : T(0);
    }
    r.p[j] = Cast<P>::to(sg * scale);
  }
  sp_sum = g.sum(sp_sum);
  sg_sum = g.sum(sg_sum);
  n_pos = g.sum(n_pos);
  if (g.rank() == 0) {
    *loss += sp_sum;
    *sig += sg_sum;
    *count += n_pos;
  }
}

// Column-backward weights: p = column_weight(...) with c_neg = coef·g·inv_t·inv_scale and
// c_pos = −coef·inv_t·inv_scale (the 1/τ of ∂s/∂ĉ and the fp16 range scale ride on the
// row coefficients).
template <typename T, typename P, class Group>
PIXCONTRAST_HD void weights_pass(const Group& g, const RowChunk<T, P>& r, T lse, T pos_sig, T row_coef,
                                 T inv_scale) {
  const T c_neg = negative_coef(row_coef, pos_sig) * r.inv_t * inv_scale;
  const T c_pos = -row_coef * r.inv_t * inv_scale;
  for (int64_t j = g.rank(); j < r.count; j += g.size()) {
    const bool pos = is_positive(r.z[j], r.y, r.ignore, j == r.self_col);
    const bool neg = is_negative(r.z[j], r.y, r.ignore);
    r.p[j] = Cast<P>::to(
        column_weight(logit(r.s[j], r.inv_t), lse, pos, neg, c_neg, c_pos, r.supcon));
  }
}

// Per-row outputs of the forward (csrc/ops.cpp) from the accumulated terms.
template <typename T>
struct RowTerms {
  T row_loss, pos_sig, num_pos;
};

template <typename T>
PIXCONTRAST_HD RowTerms<T> row_terms(T loss, T sig, T count) {
  return {count > T(0) ? loss / count : T(0), count > T(0) ? sig : T(0), count};
}

// The row gradient: g = (a·U − b·V)/weight_scale (rows::row_grad_coefs), then through the
// normalisation of the row (xhat(e): the normalised anchor's element e; inv: its 1/‖a‖).
template <typename T, class Group, class Xhat>
PIXCONTRAST_HD void row_gradient(const Group& g, T inv_t, T sig, T l, T count, const T* u, const T* v,
                                 T weight_scale, bool normalize, T inv, const Xhat& xhat, T* out,
                                 int64_t d) {
  T a, b;
  row_grad_coefs(inv_t, sig, l, count, &a, &b);
  a /= weight_scale;
  b /= weight_scale;
  T proj = 0;
  for (int64_t e = g.rank(); e < d; e += g.size()) {
    const T ge = count > T(0) ? a * u[e] - b * v[e] : T(0);
    out[e] = ge;
    proj += xhat(e) * ge;
  }
  proj = g.sum(proj);
  if (!normalize) return;
  const bool project = projects(inv);
  for (int64_t e = g.rank(); e < d; e += g.size())
    out[e] = normalize_backward(out[e], xhat(e), proj, inv, project);
}

// A column's gradient row (= Gᵀ·Â of the chunk) in place: times scale, then through the
// column's normalisation.
template <typename T, class Group, class Xhat>
PIXCONTRAST_HD void column_gradient(const Group& g, T* grad, T scale, bool normalize, T inv,
                                    const Xhat& xhat, int64_t d) {
  T proj = 0;
  for (int64_t e = g.rank(); e < d; e += g.size()) {
    grad[e] *= scale;
    proj += xhat(e) * grad[e];
  }
  proj = g.sum(proj);
  if (!normalize) return;
  const bool project = projects(inv);
  for (int64_t e = g.rank(); e < d; e += g.size())
    grad[e] = normalize_backward(grad[e], xhat(e), proj, inv, project);
}

// The group of one thread (the CPU's device schedule).
struct SerialGroup {
  PIXCONTRAST_HD int64_t rank() const { return 0; }
  PIXCONTRAST_HD int64_t size() const { return 1; }
  template <typename T>
  PIXCONTRAST_HD T max(T v) const {
    return v;
  }
  template <typename T>
  PIXCONTRAST_HD T sum(T v) const {
    return v;
  }
  PIXCONTRAST_HD bool any(bool pred) const { return pred; }
};

}  // namespace pixcontrast::rows
