// C++ CPU kernels of the per-positive InfoNCE (docs/design.md §1, §6.3; schemas in
// csrc/ops.cpp).
//
// The chunk loops are csrc/common/chunk_loop.h's, shared with the CUDA binding, and the
// per-element math is csrc/common/infonce_rows.h's, shared with the CUDA row-pass kernels;
// this file holds the CPU policy: GEMMs through the torch build's BLAS (at::mm_out / addmm_,
// MKL on x86) and the row passes as row loops parallelised with at::parallel_for, whose
// fp32 inner loops GCC vectorises (fast_math.h, target clones).
//
//   infonce_forward           a chunked pass over the columns for the negatives (online
//                             log-sum-exp and, flash-attention style, the softmax-weighted
//                             sum U of the negatives for the anchor gradient; normalised with
//                             τ ≥ 0.03, the fixed shift 1/τ instead of the running max: one
//                             sweep of each chunk, nothing rescaled), then a pass
//                             over the same-class (row block, column block) pairs only for
//                             the positives, which need the final lse.
//   infonce_backward_columns  one recompute pass over the columns: S chunk, G chunk, Gᵀ·Â.
//
// Columns are the anchors themselves when self_contrast (the pair i == j excluded),
// followed by the M rows of `contrast`. The N × columns logits never exist: each pass
// holds one [rows, T] chunk (≤ 8 MB) and one [T, D] column chunk. Accumulation is float32
// (float64 for float64 inputs).
//
// `_infonce_forward_device_schedule` / `_infonce_backward_columns_device_schedule` run the
// same loops with the CUDA binding's schedule (no host filtering or sorting, masks only,
// one positive block over everything; on the fast path in fp32 the band of
// csrc/cpu/infonce_band.cpp instead, as the binding) and the CUDA kernels' bodies
// (csrc/common/infonce_row_pass.h, one thread per row): the CPU tests of what the GPU runs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "common/chunk_loop.h"
#include "common/infonce_band.h"
#include "common/infonce_row_pass.h"
#include "common/infonce_rows.h"
#include "fast_math.h"

namespace pixcontrast::cpu {

// The band of the same-class positives on the CPU (csrc/cpu/infonce_band.cpp, the private op
// _infonce_band_positives): the device schedule runs it where the CUDA binding does.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> infonce_band_positives(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, const at::Tensor& lse, bool need_grad, bool supcon, int64_t num_items,
    int64_t block, bool supcon_split);

namespace {

constexpr int64_t kTileBytes = 8 << 20;      // one logits chunk; also bounds the column chunk
constexpr int64_t kMinTile = 64;
constexpr int kLanes = 16;                   // independent accumulators (row kernels)

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// ---------------------------------------------------------------------------------------
// Row kernels: one row of a logits chunk, the per-element math of csrc/common/infonce_rows.h.
// Reductions keep kLanes independent partial results: without -ffast-math GCC will not
// reorder a float sum or max, but it does vectorise the lane loop.

// Negatives of one row over one chunk (online log-sum-exp step). On entry s holds the dot
// products; on exit p_j = e^{s_j − m_new} for negatives and 0 elsewhere, ready for the
// U += P·Ĉ product. Updates the running max m and sum l; returns α = e^{m_old − m_new},
// the factor the caller applies to the row's U. kSupcon: over every valid column but the
// row's own (`self_col`, −1 if none) instead of the negatives.
template <bool kSupcon, typename T>
PIXCONTRAST_INLINE T negatives_row_impl(T* s, const int64_t* z, int64_t t, int64_t y,
                                        int64_t ignore, T inv_t, int64_t self_col, T* m, T* l) {
  T mx[kLanes];
  for (int k = 0; k < kLanes; ++k) mx[k] = -kInf<T>;
  T tail = -kInf<T>;
  int64_t j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T v = rows::negative_logit(s[j + k], inv_t, z[j + k], y, ignore,
                                       j + k == self_col, kSupcon);
      s[j + k] = v;
      mx[k] = mx[k] > v ? mx[k] : v;
    }
  for (; j < t; ++j) {
    const T v = rows::negative_logit(s[j], inv_t, z[j], y, ignore, j == self_col, kSupcon);
    s[j] = v;
    tail = tail > v ? tail : v;
  }
  for (int k = 0; k < kLanes; ++k) tail = tail > mx[k] ? tail : mx[k];
  const T m_old = *m;
  const T m_new = rows::new_max(m_old, tail);
  T sum[kLanes] = {};
  j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T p = rows::negative_weight(s[j + k], m_new);
      s[j + k] = p;
      sum[k] += p;
    }
  T total = 0;
  for (; j < t; ++j) {
    const T p = rows::negative_weight(s[j], m_new);
    s[j] = p;
    total += p;
  }
  for (int k = 0; k < kLanes; ++k) total += sum[k];
  const T alpha = rows::rescale_factor(m_old, m_new);
  *m = m_new;
  *l = alpha * *l + total;
  return alpha;
}

// The fast path's negatives of one row over one chunk (rows::fixed_shift): one sweep with
// the fixed shift 1/τ, p_j = e^{s_j − 1/τ} for the row's negatives (0 elsewhere) and
// l += Σ p; nothing to rescale.
template <bool kSupcon, typename T>
PIXCONTRAST_INLINE void negatives_fixed_row_impl(T* s, const int64_t* z, int64_t t, int64_t y,
                                                 int64_t ignore, T inv_t, int64_t self_col,
                                                 T* l) {
  T sum[kLanes] = {};
  T total = 0;
  int64_t j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T p = rows::fixed_shift_weight(s[j + k], inv_t, inv_t, z[j + k], y, ignore,
                                           j + k == self_col, kSupcon);
      s[j + k] = p;
      sum[k] += p;
    }
  for (; j < t; ++j) {
    const T p =
        rows::fixed_shift_weight(s[j], inv_t, inv_t, z[j], y, ignore, j == self_col, kSupcon);
    s[j] = p;
    total += p;
  }
  for (int k = 0; k < kLanes; ++k) total += sum[k];
  *l += total;
}

// Positives of one row over one chunk: adds Σ softplus(lse − s), Σ σ(lse − s) and |P| over
// its positives (column `self_col` is the row itself, −1 if none) and leaves σ (0 for the
// other columns) in s for V += σ·Ĉ. kSupcon: Σ (lse − s), |P| and weight 1
// (rows::positive_terms).
template <bool kSupcon, typename T>
PIXCONTRAST_INLINE void positives_row_impl(T* s, const int64_t* z, int64_t t, int64_t y,
                                           int64_t ignore, T inv_t, T lse, int64_t self_col,
                                           double* loss, double* sig, int64_t* count) {
  T lacc[kLanes] = {}, sacc[kLanes] = {};
  int64_t cacc[kLanes] = {};
  T ltail = 0, stail = 0;
  int64_t ctail = 0;
  auto step = [&](int64_t jj, T& la, T& sa, int64_t& ca) {
    const bool pos = rows::is_positive(z[jj], y, ignore, jj == self_col);
    T sp, sg;
    rows::positive_terms(lse - rows::logit(s[jj], inv_t), kSupcon, &sp, &sg);
    sg = keep_if(pos, sg);
    s[jj] = sg;
    la += keep_if(pos, sp);
    sa += sg;
    ca += pos;
  };
  int64_t j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) step(j + k, lacc[k], sacc[k], cacc[k]);
  for (; j < t; ++j) step(j, ltail, stail, ctail);
  for (int k = 0; k < kLanes; ++k) {
    ltail += lacc[k];
    stail += sacc[k];
    ctail += cacc[k];
  }
  *loss += ltail;
  *sig += stail;
  *count += ctail;
}

// Column-gradient weights of one row over one chunk (rows::column_weight; `self_col` as in
// positives_row, its weight 0).
template <bool kSupcon, typename T>
PIXCONTRAST_INLINE void gradient_row_impl(T* s, const int64_t* z, int64_t t, int64_t y,
                                          int64_t ignore, T inv_t, T lse, T c_neg, T c_pos,
                                          int64_t self_col) {
  for (int64_t j = 0; j < t; ++j) {
    const bool pos = rows::is_positive(z[j], y, ignore, j == self_col);
    const bool neg = rows::is_negative(z[j], y, ignore);
    s[j] = rows::column_weight(rows::logit(s[j], inv_t), lse, pos, neg, c_neg, c_pos, kSupcon);
  }
}

// fp32 entry points get AVX-512 / AVX2 clones; fp64 ones are plain. `supcon` picks one of
// two inlined instantiations (the loops stay free of the switch).
PIXCONTRAST_CLONES float dot(const float* a, const float* b, int64_t n) {
  return lane_dot(a, b, n);
}
double dot(const double* a, const double* b, int64_t n) { return lane_dot(a, b, n); }

PIXCONTRAST_CLONES float negatives_row(float* s, const int64_t* z, int64_t t, int64_t y,
                                       int64_t ignore, float inv_t, int64_t self_col,
                                       bool supcon, float* m, float* l) {
  return supcon ? negatives_row_impl<true>(s, z, t, y, ignore, inv_t, self_col, m, l)
                : negatives_row_impl<false>(s, z, t, y, ignore, inv_t, self_col, m, l);
}
double negatives_row(double* s, const int64_t* z, int64_t t, int64_t y, int64_t ignore,
                     double inv_t, int64_t self_col, bool supcon, double* m, double* l) {
  return supcon ? negatives_row_impl<true>(s, z, t, y, ignore, inv_t, self_col, m, l)
                : negatives_row_impl<false>(s, z, t, y, ignore, inv_t, self_col, m, l);
}

PIXCONTRAST_CLONES void negatives_fixed_row(float* s, const int64_t* z, int64_t t, int64_t y,
                                            int64_t ignore, float inv_t, int64_t self_col,
                                            bool supcon, float* l) {
  if (supcon)
    negatives_fixed_row_impl<true>(s, z, t, y, ignore, inv_t, self_col, l);
  else
    negatives_fixed_row_impl<false>(s, z, t, y, ignore, inv_t, self_col, l);
}
void negatives_fixed_row(double* s, const int64_t* z, int64_t t, int64_t y, int64_t ignore,
                         double inv_t, int64_t self_col, bool supcon, double* l) {
  if (supcon)
    negatives_fixed_row_impl<true>(s, z, t, y, ignore, inv_t, self_col, l);
  else
    negatives_fixed_row_impl<false>(s, z, t, y, ignore, inv_t, self_col, l);
}

PIXCONTRAST_CLONES void positives_row(float* s, const int64_t* z, int64_t t, int64_t y,
                                      int64_t ignore, float inv_t, float lse, int64_t self_col,
                                      bool supcon, double* loss, double* sig, int64_t* count) {
  if (supcon)
    positives_row_impl<true>(s, z, t, y, ignore, inv_t, lse, self_col, loss, sig, count);
  else
    positives_row_impl<false>(s, z, t, y, ignore, inv_t, lse, self_col, loss, sig, count);
}
void positives_row(double* s, const int64_t* z, int64_t t, int64_t y, int64_t ignore,
                   double inv_t, double lse, int64_t self_col, bool supcon, double* loss,
                   double* sig, int64_t* count) {
  if (supcon)
    positives_row_impl<true>(s, z, t, y, ignore, inv_t, lse, self_col, loss, sig, count);
  else
    positives_row_impl<false>(s, z, t, y, ignore, inv_t, lse, self_col, loss, sig, count);
}

PIXCONTRAST_CLONES void gradient_row(float* s, const int64_t* z, int64_t t, int64_t y,
                                     int64_t ignore, float inv_t, float lse, float c_neg,
                                     float c_pos, int64_t self_col, bool supcon) {
  if (supcon)
    gradient_row_impl<true>(s, z, t, y, ignore, inv_t, lse, c_neg, c_pos, self_col);
  else
    gradient_row_impl<false>(s, z, t, y, ignore, inv_t, lse, c_neg, c_pos, self_col);
}
void gradient_row(double* s, const int64_t* z, int64_t t, int64_t y, int64_t ignore,
                  double inv_t, double lse, double c_neg, double c_pos, int64_t self_col,
                  bool supcon) {
  if (supcon)
    gradient_row_impl<true>(s, z, t, y, ignore, inv_t, lse, c_neg, c_pos, self_col);
  else
    gradient_row_impl<false>(s, z, t, y, ignore, inv_t, lse, c_neg, c_pos, self_col);
}

// ---------------------------------------------------------------------------------------
// Helpers.

// Rows per parallel_for chunk so that a chunk holds ~16k elements of work.
int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
}

// Backprop through x̂ = x / max(‖x‖, eps), in place on g (∂L/∂x̂ → ∂L/∂x). inv = 1/max(‖x‖, eps);
// below eps the norm is a constant, so there is no projection (as F.normalize's autograd).
template <typename T>
void normalize_backward(T* g, const T* xhat, T inv, int64_t D) {
  const bool project = rows::projects(inv);
  const T p = project ? dot(xhat, g, D) : T(0);
  for (int64_t d = 0; d < D; ++d) g[d] = rows::normalize_backward(g[d], xhat[d], p, inv, project);
}

// out[k] = scale · x̂_r (x̂ = x/max(‖x‖, eps) if normalize, else x) for r = idx[k] (or
// first + k when idx is null), converted to the accumulation type; contiguous [count, D].
// Handles any strides and the bf16/f16 → f32 conversion in the same sweep.
template <typename in_t, typename acc_t>
void load_rows_typed(const at::Tensor& src, const int64_t* idx, int64_t first, int64_t count,
                     bool normalize, acc_t scale, acc_t* out, acc_t* inv_norm) {
  const in_t* base = src.const_data_ptr<in_t>();
  const int64_t D = src.size(1), s0 = src.stride(0), s1 = src.stride(1);
  at::parallel_for(0, count, row_grain(D) * 4, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const in_t* row = base + (idx ? idx[k] : first + k) * s0;
      acc_t* o = out + k * D;
      if (s1 == 1) {
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<acc_t>(row[d]);
      } else {
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<acc_t>(row[d * s1]);
      }
      acc_t inv = 1;
      if (normalize) inv = rows::inv_norm(dot(o, o, D));
      const acc_t f = inv * scale;
      if (f != acc_t(1))
        for (int64_t d = 0; d < D; ++d) o[d] *= f;
      if (inv_norm) inv_norm[k] = inv;
    }
  });
}

template <typename acc_t>
void load_rows(const at::Tensor& src, const int64_t* idx, int64_t first, int64_t count,
               bool normalize, acc_t scale, acc_t* out, acc_t* inv_norm) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "load_rows", [&] {
    load_rows_typed<scalar_t, acc_t>(src, idx, first, count, normalize, scale, out, inv_norm);
  });
}

// Column tile width: the [rows, T] logits tile and the [T, D] column tile stay ≤ 8 MB each
// (T = 2048 at N = 1024 fp32), which keeps the workspace bounded whatever M is.
int64_t tile_width(int64_t rows, int64_t D, int64_t elem, int64_t columns) {
  int64_t t = std::min(kTileBytes / (std::max<int64_t>(rows, 1) * elem),
                       kTileBytes / (std::max<int64_t>(D, 1) * elem));
  t = std::max(t, kMinTile);
  return std::max<int64_t>(1, std::min(t, columns));
}

// [rows, cols] contiguous view on the front of a flat workspace.
at::Tensor front(const at::Tensor& buf, int64_t rows, int64_t cols) {
  return buf.narrow(0, 0, rows * cols).view({rows, cols});
}

void check_inputs(const char* op, const at::Tensor& anchors, const at::Tensor& labels,
                  const at::Tensor& contrast, const at::Tensor& contrast_labels) {
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be 2-D [N, D], got shape ", anchors.sizes());
  const auto dt = anchors.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
              op, ": anchors must be float32, bfloat16, float16 or float64, got ", dt);
  TORCH_CHECK(contrast.dim() == 2 && contrast.size(1) == anchors.size(1), op,
              ": contrast must be 2-D [M, D] with D = anchors.size(1) = ", anchors.size(1),
              ", got shape ", contrast.sizes());
  TORCH_CHECK(contrast.scalar_type() == dt, op, ": contrast dtype ", contrast.scalar_type(),
              " must match anchors dtype ", dt);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == anchors.size(0), op,
              ": labels must be 1-D [N] with N = ", anchors.size(0), ", got shape ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(contrast_labels.dim() == 1 && contrast_labels.size(0) == contrast.size(0), op,
              ": contrast_labels must be 1-D [M] with M = ", contrast.size(0), ", got shape ",
              contrast_labels.sizes());
  TORCH_CHECK(contrast_labels.scalar_type() == at::kLong, op,
              ": contrast_labels must be int64, got ", contrast_labels.scalar_type());
  for (const auto* t : {&anchors, &labels, &contrast, &contrast_labels})
    TORCH_CHECK(t->device().is_cpu(), op, ": all tensors must be on the CPU, got one on ",
                t->device());
}

// ---------------------------------------------------------------------------------------
// Policies of the shared chunk loops (csrc/common/chunk_loop.h).
//
// Host schedule (the CPU op): ignored rows and columns are dropped on the host, rows are
// visited in stable label order and the valid contrast columns in label order (the sort is
// skipped when they already are, as the bank's), so that the positives pass multiplies each
// class block of rows against that class's columns only (cost N·M·D/K).
// Device schedule (the CPU twin of the CUDA op, `_infonce_*_device_schedule`, for tests):
// what the CUDA binding does without reading any label on the host: every row and column
// in the caller's order, the masks of the row passes alone excluding ignored ones, and one
// positive block holding everything.

struct Chunk {
  at::Tensor op;       // [count, D] normalised columns, accumulation dtype
  const int64_t* z;    // [count] their labels
  bool is_self;        // the anchors seen as columns
  int64_t start;       // the first column's index within its segment
};

// Sorted position of the self pair in a chunk for a row whose own column index is `id`.
inline int64_t self_column(const Chunk& c, int64_t id, int64_t count) {
  const int64_t q = id - c.start;
  return c.is_self && q >= 0 && q < count ? q : -1;
}

// S = rows·Ĉᵀ of a chunk into the front of the policy's logits workspace.
inline at::Tensor chunk_logits(const at::Tensor& s_buf, const at::Tensor& rows_op,
                               const Chunk& c) {
  at::Tensor S = front(s_buf, rows_op.size(0), c.op.size(0));
  at::mm_out(S, rows_op, c.op.t());
  return S;
}

template <typename acc_t>
struct ForwardPolicy {
  const at::Tensor& anchors;
  const at::Tensor& contrast;
  bool self_contrast, normalize, need_grad_, supcon;
  acc_t inv_t;
  int64_t ignore;
  at::TensorOptions opts;
  int64_t D = 0;
  bool fixed = false;  // the fixed-shift fast path (rows::fixed_shift): m = 1/τ throughout
  bool band = false;   // device schedule, fp32, band::band_applies: the positives as the
                       // CUDA binding's band (v2.2); labels_t, contrast_labels_t its inputs
  at::Tensor labels_t, contrast_labels_t;
  std::vector<int64_t> row_ids, ys;  // caller's row index and label per visited row
  std::vector<int64_t> col_ids, zs;  // contrast columns visited (empty ids: all, in order)
  const int64_t* z_all = nullptr;
  bool host_schedule;
  at::Tensor a_hat, inv_norm_a, s_buf, c_buf, U_, V_;
  int64_t T = 1;
  std::vector<acc_t> m, l, lse;
  std::vector<double> loss, psig;  // host schedule
  std::vector<int64_t> npos;
  std::vector<acc_t> loss_t, sig_t, cnt_t;  // device schedule (the GPU kernels' accumulators)
  // outputs (caller's row order)
  at::Tensor row_loss, lse_out, pos_sig_out, num_pos_out, row_grad;

  int64_t rows_count() const { return static_cast<int64_t>(row_ids.size()); }
  int64_t columns_count() const {
    return host_schedule ? static_cast<int64_t>(col_ids.size()) : contrast.size(0);
  }

  // Segments: 0 = the anchors (self-contrast only), then the contrast rows.
  int num_segments() const { return self_contrast ? 2 : 1; }
  bool segment_is_self(int seg) const { return self_contrast && seg == 0; }
  int64_t segment_size(int seg) const {
    return segment_is_self(seg) ? rows_count() : columns_count();
  }
  int64_t chunk_width() const { return T; }
  bool need_grad() const { return need_grad_; }
  at::Tensor rows() const { return a_hat; }
  at::Tensor& U() { return U_; }
  at::Tensor& V() { return V_; }

  Chunk columns(int seg, int64_t start, int64_t count) {
    if (segment_is_self(seg)) return {a_hat.narrow(0, start, count), ys.data() + start, true, start};
    load_rows<acc_t>(contrast, host_schedule ? col_ids.data() + start : nullptr,
                     host_schedule ? 0 : start, count, normalize, acc_t(1),
                     c_buf.data_ptr<acc_t>(), nullptr);
    return {front(c_buf, count, D), (host_schedule ? zs.data() : z_all) + start, false, start};
  }

  at::Tensor logits(const at::Tensor& rows_op, const Chunk& c) {
    return chunk_logits(s_buf, rows_op, c);
  }

  at::Tensor negatives(const at::Tensor& S, const Chunk& c) {
    const int64_t t = S.size(1);
    acc_t* sp = S.data_ptr<acc_t>();
    acc_t* up = need_grad_ ? U_.data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, S.size(0), row_grain(t), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        if (!host_schedule) {  // the GPU kernels' bodies, one thread per row
          if (fixed)
            rows::negatives_pass_fixed(rows::SerialGroup{}, row_chunk(sp, c, k, t), acc_t(1),
                                       &l[k]);
          else
            rows::negatives_pass(rows::SerialGroup{}, row_chunk(sp, c, k, t), acc_t(1), &m[k],
                                 &l[k], up ? up + k * D : nullptr, D);
          continue;
        }
        if (fixed) {
          negatives_fixed_row(sp + k * t, c.z, t, ys[k], ignore, inv_t, self_column(c, k, t),
                              supcon, &l[k]);
          continue;
        }
        const acc_t alpha = negatives_row(sp + k * t, c.z, t, ys[k], ignore, inv_t,
                                          self_column(c, k, t), supcon, &m[k], &l[k]);
        if (up && alpha != acc_t(1))
          for (int64_t d = 0; d < D; ++d) up[k * D + d] *= alpha;
      }
    });
    return S;
  }

  void accumulate(at::Tensor& acc, const at::Tensor& P, const Chunk& c) { acc.addmm_(P, c.op); }

  void finish_negatives() {
    for (int64_t k = 0; k < rows_count(); ++k) lse[k] = rows::lse_of(m[k], l[k]);
    if (band) band_positives();
  }

  // The band (csrc/common/infonce_band.h) as the CUDA binding runs it, 3 items.
  void band_positives() {
    const int64_t nv = rows_count();
    const at::Tensor lse_t = at::from_blob(lse.data(), {nv}, opts).clone();
    const auto [loss_b, sig_b, cnt_b, v_b] =
        infonce_band_positives(anchors, labels_t, contrast, contrast_labels_t, self_contrast,
                               inv_t, ignore, lse_t, need_grad_, supcon, 3, 0, supcon);
    const float* lp = loss_b.template const_data_ptr<float>();
    const float* sp = sig_b.template const_data_ptr<float>();
    const float* cp = cnt_b.template const_data_ptr<float>();
    for (int64_t k = 0; k < nv; ++k) {
      loss_t[k] = lp[k];
      sig_t[k] = sp[k];
      cnt_t[k] = cp[k];
    }
    if (need_grad_) V_.copy_(v_b);
  }

  std::vector<chunks::PositiveBlock> positive_blocks() const {
    if (band) return {};  // the band did the positives (finish_negatives)
    std::vector<chunks::PositiveBlock> blocks;
    const int64_t nv = rows_count();
    if (!host_schedule) {
      for (int seg = 0; seg < num_segments(); ++seg)
        blocks.push_back({0, nv, seg, 0, segment_size(seg)});
      return blocks;
    }
    for (int64_t begin = 0; begin < nv;) {  // one class block of rows at a time
      int64_t end = begin;
      while (end < nv && ys[end] == ys[begin]) ++end;
      if (self_contrast) blocks.push_back({begin, end, 0, begin, end});
      const auto range = std::equal_range(zs.begin(), zs.end(), ys[begin]);
      blocks.push_back({begin, end, num_segments() - 1, range.first - zs.begin(),
                        range.second - zs.begin()});
      begin = end;
    }
    return blocks;
  }

  at::Tensor positives(const at::Tensor& S, const Chunk& c, int64_t row_begin) {
    const int64_t t = S.size(1);
    acc_t* sp = S.data_ptr<acc_t>();
    at::parallel_for(0, S.size(0), row_grain(t), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t r = row_begin + k;
        if (!host_schedule) {
          rows::positives_pass(rows::SerialGroup{}, row_chunk(sp, c, k, t, row_begin), lse[r],
                               acc_t(1), &loss_t[r], &sig_t[r], &cnt_t[r]);
          continue;
        }
        positives_row(sp + k * t, c.z, t, ys[r], ignore, inv_t, lse[r], self_column(c, r, t),
                      supcon, &loss[r], &psig[r], &npos[r]);
      }
    });
    return S;
  }

  // Outputs in the caller's row order. row_grad_i = a·U − b·V (rows::row_grad_coefs), then
  // through the normalisation.
  // Row k of a chunk for the GPU kernels' bodies (weights in place over S).
  rows::RowChunk<acc_t, acc_t> row_chunk(acc_t* sp, const Chunk& c, int64_t k, int64_t t,
                                         int64_t row_begin = 0) const {
    const int64_t r = row_begin + k;
    return {sp + k * t, sp + k * t, c.z, t, ys[r], self_column(c, r, t),
            inv_t, ignore, supcon, supcon && band};
  }

  void finalize() {
    if (!host_schedule) return finalize_device_schedule();
    acc_t* loss_p = row_loss.data_ptr<acc_t>();
    acc_t* lse_p = lse_out.data_ptr<acc_t>();
    acc_t* sig_p = pos_sig_out.data_ptr<acc_t>();
    acc_t* np_p = num_pos_out.data_ptr<acc_t>();
    const int64_t nv = rows_count();
    for (int64_t k = 0; k < nv; ++k) {
      const int64_t i = row_ids[k];
      lse_p[i] = lse[k];
      np_p[i] = static_cast<acc_t>(npos[k]);
      if (npos[k] > 0) {
        loss_p[i] = static_cast<acc_t>(loss[k] / static_cast<double>(npos[k]));
        sig_p[i] = static_cast<acc_t>(psig[k]);
      }
    }
    if (!need_grad_) return;
    const acc_t* up = U_.const_data_ptr<acc_t>();
    const acc_t* vp = V_.const_data_ptr<acc_t>();
    const acc_t* ah = a_hat.const_data_ptr<acc_t>();
    const acc_t* inv_n = inv_norm_a.const_data_ptr<acc_t>();
    acc_t* gp = row_grad.data_ptr<acc_t>();
    at::parallel_for(0, nv, row_grain(D), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        if (npos[k] == 0) continue;
        acc_t* g = gp + row_ids[k] * D;
        acc_t ca, cb;
        rows::row_grad_coefs(inv_t, static_cast<acc_t>(psig[k]), l[k],
                             static_cast<acc_t>(npos[k]), &ca, &cb);
        for (int64_t d = 0; d < D; ++d) g[d] = ca * up[k * D + d] - cb * vp[k * D + d];
        if (normalize) normalize_backward(g, ah + k * D, inv_n[k], D);
      }
    });
  }

  // The GPU finalize kernel's body (rows in the caller's order).
  void finalize_device_schedule() {
    acc_t* loss_p = row_loss.data_ptr<acc_t>();
    acc_t* lse_p = lse_out.data_ptr<acc_t>();
    acc_t* sig_p = pos_sig_out.data_ptr<acc_t>();
    acc_t* np_p = num_pos_out.data_ptr<acc_t>();
    const acc_t* up = need_grad_ ? U_.const_data_ptr<acc_t>() : nullptr;
    const acc_t* vp = need_grad_ ? V_.const_data_ptr<acc_t>() : nullptr;
    const acc_t* ah = a_hat.const_data_ptr<acc_t>();
    const acc_t* inv_n = inv_norm_a.const_data_ptr<acc_t>();
    acc_t* gp = need_grad_ ? row_grad.data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, rows_count(), row_grain(D), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const rows::RowTerms<acc_t> t = rows::row_terms(loss_t[k], sig_t[k], cnt_t[k]);
        lse_p[k] = lse[k];
        np_p[k] = t.num_pos;
        loss_p[k] = t.row_loss;
        sig_p[k] = t.pos_sig;
        if (gp == nullptr) continue;
        const acc_t* x = ah + k * D;
        rows::row_gradient(rows::SerialGroup{}, inv_t, sig_t[k], l[k], t.num_pos, up + k * D,
                           vp + k * D, acc_t(1), normalize, inv_n[k],
                           [x](int64_t d) { return x[d]; }, gp + k * D, D);
      }
    });
  }
};

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore, bool normalize, bool need_grad, bool supcon, bool host_schedule) {
  const int64_t N = anchors.size(0), D = anchors.size(1), M = contrast.size(0);
  const at::TensorOptions opts = anchors.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  ForwardPolicy<acc_t> pol{anchors, contrast, self_contrast, normalize, need_grad, supcon,
                           static_cast<acc_t>(inv_temperature), ignore, opts};
  pol.D = D;
  pol.host_schedule = host_schedule;
  // Outputs start at their empty-set values: what ignored rows, rows without positives
  // (loss, pos_sig, grad 0) and rows without negatives (lse −inf) keep.
  pol.row_loss = at::zeros({N}, opts);
  pol.lse_out = at::full({N}, -kInf<double>, opts);
  pol.pos_sig_out = at::zeros({N}, opts);
  pol.num_pos_out = at::zeros({N}, opts);
  pol.row_grad = at::zeros({need_grad ? N : 0, D}, opts);
  auto outputs = [&] {
    return std::make_tuple(pol.row_loss, pol.lse_out, pol.pos_sig_out, pol.num_pos_out,
                           pol.row_grad);
  };

  const at::Tensor y_all_t = labels.contiguous();
  const int64_t* y_all = y_all_t.const_data_ptr<int64_t>();
  const at::Tensor z_all_t = contrast_labels.contiguous();
  pol.z_all = z_all_t.const_data_ptr<int64_t>();
  if (host_schedule) {
    for (int64_t i = 0; i < N; ++i)
      if (y_all[i] != ignore) pol.row_ids.push_back(i);
    std::stable_sort(pol.row_ids.begin(), pol.row_ids.end(),
                     [&](int64_t a, int64_t b) { return y_all[a] < y_all[b]; });
    for (int64_t j = 0; j < M; ++j)
      if (pol.z_all[j] != ignore) pol.col_ids.push_back(j);
    auto by_label = [&](int64_t a, int64_t b) { return pol.z_all[a] < pol.z_all[b]; };
    if (!std::is_sorted(pol.col_ids.begin(), pol.col_ids.end(), by_label))
      std::stable_sort(pol.col_ids.begin(), pol.col_ids.end(), by_label);
    for (int64_t j : pol.col_ids) pol.zs.push_back(pol.z_all[j]);
  } else {
    for (int64_t i = 0; i < N; ++i) pol.row_ids.push_back(i);
  }
  const int64_t nv = pol.rows_count(), nc = pol.columns_count();
  for (int64_t i : pol.row_ids) pol.ys.push_back(y_all[i]);
  if (nv == 0 || (nc == 0 && !self_contrast)) return outputs();

  pol.a_hat = at::empty({nv, D}, opts);
  pol.inv_norm_a = at::empty({nv}, opts);
  load_rows<acc_t>(anchors, pol.row_ids.data(), 0, nv, normalize, acc_t(1),
                   pol.a_hat.template data_ptr<acc_t>(), pol.inv_norm_a.template data_ptr<acc_t>());
  pol.T = tile_width(nv, D, sizeof(acc_t), (self_contrast ? nv : 0) + nc);
  pol.s_buf = at::empty({nv * pol.T}, opts);
  pol.c_buf = at::empty({pol.T * D}, opts);
  // The weights are acc_t here (16-bit inputs are converted on load): any dtype qualifies.
  pol.fixed = rows::fixed_shift(normalize, inv_temperature, false);
  pol.band = !host_schedule && std::is_same_v<acc_t, float> &&
             band::band_applies(normalize, inv_temperature);
  pol.labels_t = labels;
  pol.contrast_labels_t = contrast_labels;
  pol.m.assign(nv, pol.fixed ? pol.inv_t : -kInf<acc_t>);  // the fast path's shift, fixed
  pol.l.assign(nv, acc_t(0));
  pol.lse.assign(nv, -kInf<acc_t>);
  pol.loss.assign(nv, 0.0);
  pol.psig.assign(nv, 0.0);
  pol.npos.assign(nv, 0);
  if (!host_schedule) {
    pol.loss_t.assign(nv, acc_t(0));
    pol.sig_t.assign(nv, acc_t(0));
    pol.cnt_t.assign(nv, acc_t(0));
  }
  if (need_grad) {
    pol.U_ = at::zeros({nv, D}, opts);
    pol.V_ = at::zeros({nv, D}, opts);
  }
  chunks::forward(pol);
  return outputs();
}

// ---------------------------------------------------------------------------------------
// Column backward.

template <typename acc_t>
struct BackwardPolicy {
  const at::Tensor& anchors;
  const at::Tensor& contrast;
  const int64_t* y;
  const int64_t* z;
  bool self_contrast, normalize, supcon;
  acc_t inv_t;
  int64_t ignore;
  int64_t D = 0, T = 1;
  bool host_schedule = true;
  std::vector<int64_t> act, y_a;
  std::vector<acc_t> lse_a, c_neg, c_pos, sig_a, coef_a;
  at::Tensor a_hat, s_buf, c_buf, inv_c, grad_contrast, grad_anchor_cols;

  int num_segments() const { return self_contrast ? 2 : 1; }
  bool segment_is_self(int seg) const { return self_contrast && seg == 0; }
  int64_t segment_size(int seg) const {
    return segment_is_self(seg) ? anchors.size(0) : contrast.size(0);
  }
  int64_t chunk_width() const { return T; }
  at::Tensor rows() const { return a_hat; }

  Chunk columns(int seg, int64_t start, int64_t count) {
    const bool self = segment_is_self(seg);
    load_rows<acc_t>(self ? anchors : contrast, nullptr, start, count, normalize, acc_t(1),
                     c_buf.data_ptr<acc_t>(), inv_c.data_ptr<acc_t>());
    return {front(c_buf, count, D), (self ? y : z) + start, self, start};
  }

  at::Tensor logits(const at::Tensor& rows_op, const Chunk& c) {
    return chunk_logits(s_buf, rows_op, c);
  }

  at::Tensor weights(const at::Tensor& S, const Chunk& c) {
    const int64_t t = S.size(1);
    acc_t* sp = S.data_ptr<acc_t>();
    at::parallel_for(0, S.size(0), row_grain(t), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        if (!host_schedule) {  // the GPU kernel's body
          const rows::RowChunk<acc_t, acc_t> r{sp + k * t, sp + k * t, c.z, t, y_a[k],
                                               self_column(c, act[k], t), inv_t, ignore,
                                               supcon};
          rows::weights_pass(rows::SerialGroup{}, r, lse_a[k], sig_a[k], coef_a[k], acc_t(1));
          continue;
        }
        gradient_row(sp + k * t, c.z, t, y_a[k], ignore, inv_t, lse_a[k], c_neg[k], c_pos[k],
                     self_column(c, act[k], t), supcon);
      }
    });
    return S;
  }

  // dĈ = Gᵀ·Â (G carries the 1/τ of ∂s/∂ĉ), then the column normalisation backprop.
  void column_gradient(int seg, int64_t start, const at::Tensor& G, const Chunk& c) {
    const int64_t t = G.size(1);
    at::Tensor dc = (segment_is_self(seg) ? grad_anchor_cols : grad_contrast).narrow(0, start, t);
    at::mm_out(dc, G.t(), a_hat);
    if (!normalize) return;
    acc_t* gp = dc.data_ptr<acc_t>();
    const acc_t* cp = c.op.template const_data_ptr<acc_t>();
    const acc_t* inv_p = inv_c.const_data_ptr<acc_t>();
    at::parallel_for(0, t, row_grain(D), [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        if (host_schedule) {
          normalize_backward(gp + q * D, cp + q * D, inv_p[q], D);
          continue;
        }
        const acc_t* x = cp + q * D;  // the GPU column kernel's body
        rows::column_gradient(rows::SerialGroup{}, gp + q * D, acc_t(1), true, inv_p[q],
                              [x](int64_t d) { return x[d]; }, D);
      }
    });
  }
};

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> backward_columns_impl(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore, bool normalize, const at::Tensor& lse, const at::Tensor& pos_sig,
    const at::Tensor& row_coef, bool supcon, bool host_schedule) {
  const int64_t N = anchors.size(0), D = anchors.size(1), M = contrast.size(0);
  const at::TensorOptions opts = anchors.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor y_t = labels.contiguous();
  const at::Tensor z_t = contrast_labels.contiguous();
  BackwardPolicy<acc_t> pol{anchors, contrast, y_t.const_data_ptr<int64_t>(),
                            z_t.const_data_ptr<int64_t>(), self_contrast, normalize, supcon,
                            static_cast<acc_t>(inv_temperature), ignore};
  pol.D = D;
  pol.host_schedule = host_schedule;
  pol.grad_contrast = at::zeros({M, D}, opts);
  pol.grad_anchor_cols = at::zeros({self_contrast ? N : 0, D}, opts);

  const at::Tensor lse_t = lse.to(opts.dtype()).contiguous();
  const at::Tensor sig_t = pos_sig.to(opts.dtype()).contiguous();
  const at::Tensor coef_t = row_coef.to(opts.dtype()).contiguous();
  const acc_t* lse_p = lse_t.const_data_ptr<acc_t>();
  const acc_t* sig_p = sig_t.const_data_ptr<acc_t>();
  const acc_t* coef_p = coef_t.const_data_ptr<acc_t>();

  // Host schedule: only rows with a nonzero coefficient contribute, the GEMMs run over those
  // alone. Device schedule: every row (the masks zero the others).
  for (int64_t i = 0; i < N; ++i)
    if (!host_schedule || (pol.y[i] != ignore && coef_p[i] != acc_t(0))) pol.act.push_back(i);
  const int64_t na = static_cast<int64_t>(pol.act.size());
  if (na == 0 || (M == 0 && !self_contrast))
    return {pol.grad_contrast, pol.grad_anchor_cols};

  pol.a_hat = at::empty({na, D}, opts);
  load_rows<acc_t>(anchors, pol.act.data(), 0, na, normalize, acc_t(1),
                   pol.a_hat.template data_ptr<acc_t>(), nullptr);
  for (int64_t i : pol.act) {
    pol.y_a.push_back(pol.y[i]);
    pol.lse_a.push_back(lse_p[i]);
    // The 1/τ of ∂s/∂ĉ rides on the coefficients.
    pol.c_neg.push_back(rows::negative_coef(coef_p[i], sig_p[i]) * pol.inv_t);
    pol.c_pos.push_back(-coef_p[i] * pol.inv_t);
    pol.sig_a.push_back(sig_p[i]);
    pol.coef_a.push_back(coef_p[i]);
  }
  pol.T = tile_width(na, D, sizeof(acc_t), (self_contrast ? N : 0) + M);
  pol.s_buf = at::empty({na * pol.T}, opts);
  pol.c_buf = at::empty({pol.T * D}, opts);
  pol.inv_c = at::empty({pol.T}, opts);
  chunks::backward_columns(pol);
  return {pol.grad_contrast, pol.grad_anchor_cols};
}

// ---------------------------------------------------------------------------------------
// Op entry points.

template <bool kHostSchedule>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> infonce_forward(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, bool need_grad,
    bool /*allow_tf32: the CPU kernels are IEEE fp32*/, bool supcon) {
  check_inputs("infonce_forward", anchors, labels, contrast, contrast_labels);
  TORCH_CHECK(std::isfinite(inv_temperature),
              "infonce_forward: inv_temperature must be finite, got ", inv_temperature);
  if (anchors.scalar_type() == at::kDouble)
    return forward_impl<double>(anchors, labels, contrast, contrast_labels, self_contrast,
                                inv_temperature, ignore_index, normalize, need_grad, supcon,
                                kHostSchedule);
  return forward_impl<float>(anchors, labels, contrast, contrast_labels, self_contrast,
                             inv_temperature, ignore_index, normalize, need_grad, supcon,
                             kHostSchedule);
}

template <bool kHostSchedule>
std::tuple<at::Tensor, at::Tensor> infonce_backward_columns(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, const at::Tensor& lse, const at::Tensor& pos_sig,
    const at::Tensor& row_coef, bool /*allow_tf32: the CPU kernels are IEEE fp32*/,
    bool supcon) {
  const char* op = "infonce_backward_columns";
  check_inputs(op, anchors, labels, contrast, contrast_labels);
  TORCH_CHECK(std::isfinite(inv_temperature), op, ": inv_temperature must be finite, got ",
              inv_temperature);
  const int64_t N = anchors.size(0);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"lse", &lse},
                                {"pos_sig", &pos_sig}, {"row_coef", &row_coef}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == N, op, ": ", name, " must be 1-D [N] with N = ",
                N, ", got shape ", t->sizes());
    TORCH_CHECK(t->is_floating_point(), op, ": ", name, " must be floating point, got ",
                t->scalar_type());
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t->device());
  }
  if (anchors.scalar_type() == at::kDouble)
    return backward_columns_impl<double>(anchors, labels, contrast, contrast_labels,
                                         self_contrast, inv_temperature, ignore_index,
                                         normalize, lse, pos_sig, row_coef, supcon,
                                         kHostSchedule);
  return backward_columns_impl<float>(anchors, labels, contrast, contrast_labels, self_contrast,
                                      inv_temperature, ignore_index, normalize, lse, pos_sig,
                                      row_coef, supcon, kHostSchedule);
}

}  // namespace
}  // namespace pixcontrast::cpu

TORCH_LIBRARY_IMPL(pixcontrast, CPU, m) {
  m.impl("infonce_forward", &pixcontrast::cpu::infonce_forward<true>);
  m.impl("infonce_backward_columns", &pixcontrast::cpu::infonce_backward_columns<true>);
  m.impl("_infonce_forward_device_schedule", &pixcontrast::cpu::infonce_forward<false>);
  m.impl("_infonce_backward_columns_device_schedule",
         &pixcontrast::cpu::infonce_backward_columns<false>);
}
