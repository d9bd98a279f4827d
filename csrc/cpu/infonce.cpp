// C++ CPU kernels of the per-positive InfoNCE (docs/design.md §1; schemas in csrc/ops.cpp).
//
//   infonce_forward           one tiled pass over the columns for the negatives (online
//                             log-sum-exp and, flash-attention style, the softmax-weighted
//                             sum U of the negatives for the anchor gradient), then a pass
//                             over the same-class (row block, column block) pairs only for
//                             the positives, which need the final lse.
//   infonce_backward_columns  one recompute pass over the columns: S tile, G tile, Gᵀ·Â.
//
// Columns are the anchors themselves when self_contrast (the pair i == j excluded),
// followed by the M rows of `contrast`. The N × columns logits never exist: each pass
// holds one [rows, T] tile (≤ 8 MB) and one [T, D] column tile. Accumulation is float32
// (float64 for float64 inputs); every tile product is an MKL GEMM through at::mm_out /
// addmm_, and the elementwise work is a row loop parallelised with at::parallel_for whose
// fp32 inner loops GCC vectorises (fast_math.h, target clones).
//
// Measured on the 2-core AVX-512 dev machine at paper size (fp32, N = 1024, M = 190 000,
// D = 256, bank mode): forward with the anchor gradient 1.17-1.34 s, column backward
// 1.19-1.34 s, against 1.07-1.20 s for the two tiled GEMMs alone in the same processes
// (the machine is shared, hence the ranges); forward peak extra RSS 23 MB.
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

#include "fast_math.h"

namespace pixcontrast::cpu {
namespace {

constexpr double kNormEps = 1e-12;           // F.normalize's eps
constexpr int64_t kTileBytes = 8 << 20;      // one logits tile; also bounds the column tile
constexpr int64_t kMinTile = 64;
constexpr int kLanes = 16;                   // independent accumulators (row kernels)

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// ---------------------------------------------------------------------------------------
// Row kernels. Reductions keep kLanes independent partial results: without
// -ffast-math GCC will not reorder a float sum or max, but it does vectorise the lane loop.

template <typename T>
PIXCONTRAST_INLINE T dot_impl(const T* a, const T* b, int64_t n) {
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += a[j + k] * b[j + k];
  T total = 0;
  for (; j < n; ++j) total += a[j] * b[j];
  for (int k = 0; k < kLanes; ++k) total += acc[k];
  return total;
}

// Negatives of one row over one column tile (online log-sum-exp step). On entry s holds
// the logits; on exit p_j = e^{s_j − m_new} for negatives and 0 elsewhere, ready for the
// U += P·Ĉ product. Updates the running max m and sum l; returns α = e^{m_old − m_new},
// the factor the caller applies to the row's U.
template <typename T>
PIXCONTRAST_INLINE T negatives_row_impl(T* s, const int64_t* z, int64_t t, int64_t y,
                                        int64_t ignore, T* m, T* l) {
  T mx[kLanes];
  for (int k = 0; k < kLanes; ++k) mx[k] = -kInf<T>;
  T tail = -kInf<T>;
  int64_t j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const bool neg = (z[j + k] != y) & (z[j + k] != ignore);  // no short-circuit branch
      const T v = neg ? s[j + k] : -kInf<T>;
      s[j + k] = v;
      mx[k] = mx[k] > v ? mx[k] : v;
    }
  for (; j < t; ++j) {
    const bool neg = (z[j] != y) & (z[j] != ignore);
    const T v = neg ? s[j] : -kInf<T>;
    s[j] = v;
    tail = tail > v ? tail : v;
  }
  for (int k = 0; k < kLanes; ++k) tail = tail > mx[k] ? tail : mx[k];
  const T m_old = *m;
  const T m_new = m_old > tail ? m_old : tail;
  if (m_new == -kInf<T>) {  // no negative so far: nothing to add, e^{−inf − (−inf)} is NaN
    std::fill(s, s + t, T(0));
    return T(1);
  }
  T sum[kLanes] = {};
  j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T p = exp_acc(s[j + k] - m_new);  // −inf → 0
      s[j + k] = p;
      sum[k] += p;
    }
  T total = 0;
  for (; j < t; ++j) {
    const T p = exp_acc(s[j] - m_new);
    s[j] = p;
    total += p;
  }
  for (int k = 0; k < kLanes; ++k) total += sum[k];
  const T alpha = exp_acc(m_old - m_new);  // m_old = −inf → 0
  *m = m_new;
  *l = alpha * *l + total;
  return alpha;
}

// Positives of one row over one chunk of its own class: every entry is a positive (the
// caller sets an excluded self pair to +inf, which contributes exactly 0). Adds
// Σ softplus(lse − s) and Σ σ(lse − s) and leaves σ(lse − s) in s for V += σ·Ĉ.
template <typename T>
PIXCONTRAST_INLINE void positives_row_impl(T* s, int64_t t, T lse, double* loss,
                                           double* sig) {
  T lacc[kLanes] = {}, sacc[kLanes] = {};
  T ltail = 0, stail = 0;
  auto step = [lse](T& sj, T& la, T& sa) {
    const T x = lse - sj;
    const T e = exp_acc(-std::abs(x));  // stable softplus / sigmoid share e^{−|x|}
    const T sp = (x > T(0) ? x : T(0)) + log1p_unit(e);
    const T sg = (x >= T(0) ? T(1) : e) / (T(1) + e);
    sj = sg;
    la += sp;
    sa += sg;
  };
  int64_t j = 0;
  for (; j + kLanes <= t; j += kLanes)
    for (int k = 0; k < kLanes; ++k) step(s[j + k], lacc[k], sacc[k]);
  for (; j < t; ++j) step(s[j], ltail, stail);
  for (int k = 0; k < kLanes; ++k) {
    ltail += lacc[k];
    stail += sacc[k];
  }
  *loss += ltail;
  *sig += stail;
}

// Column-gradient weights of one row over one tile (without the self pair, which the
// caller zeroes): G = c_neg·e^{s−lse} for negatives, c_pos·σ(lse − s) = c_pos/(1 + e^{s−lse})
// for positives (one exponential serves both), 0 for ignored columns. With lse = −inf (no
// negative) e = inf: positives get c_pos/inf = 0, and the masked negative term drops the
// inf·0 = NaN it would otherwise produce.
template <typename T>
PIXCONTRAST_INLINE void gradient_row_impl(T* s, const int64_t* z, int64_t t, int64_t y,
                                          int64_t ignore, T lse, T c_neg, T c_pos) {
  for (int64_t j = 0; j < t; ++j) {
    const T e = exp_acc(s[j] - lse);
    s[j] = keep_if(z[j] == y, c_pos) / (T(1) + e) +
           keep_if((z[j] != y) & (z[j] != ignore), c_neg * e);
  }
}

// fp32 entry points get AVX-512 / AVX2 clones; fp64 ones are plain.
PIXCONTRAST_CLONES float dot(const float* a, const float* b, int64_t n) {
  return dot_impl(a, b, n);
}
double dot(const double* a, const double* b, int64_t n) { return dot_impl(a, b, n); }

PIXCONTRAST_CLONES float negatives_row(float* s, const int64_t* z, int64_t t, int64_t y,
                                       int64_t ignore, float* m, float* l) {
  return negatives_row_impl(s, z, t, y, ignore, m, l);
}
double negatives_row(double* s, const int64_t* z, int64_t t, int64_t y, int64_t ignore,
                     double* m, double* l) {
  return negatives_row_impl(s, z, t, y, ignore, m, l);
}

PIXCONTRAST_CLONES void positives_row(float* s, int64_t t, float lse, double* loss,
                                      double* sig) {
  positives_row_impl(s, t, lse, loss, sig);
}
void positives_row(double* s, int64_t t, double lse, double* loss, double* sig) {
  positives_row_impl(s, t, lse, loss, sig);
}

PIXCONTRAST_CLONES void gradient_row(float* s, const int64_t* z, int64_t t, int64_t y,
                                     int64_t ignore, float lse, float c_neg, float c_pos) {
  gradient_row_impl(s, z, t, y, ignore, lse, c_neg, c_pos);
}
void gradient_row(double* s, const int64_t* z, int64_t t, int64_t y, int64_t ignore,
                  double lse, double c_neg, double c_pos) {
  gradient_row_impl(s, z, t, y, ignore, lse, c_neg, c_pos);
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
  const T inv_eps = T(1) / T(kNormEps);  // same expression as in load_rows: exact compare
  if (inv < inv_eps) {
    const T p = dot(xhat, g, D);
    for (int64_t d = 0; d < D; ++d) g[d] = (g[d] - xhat[d] * p) * inv;
  } else {
    for (int64_t d = 0; d < D; ++d) g[d] *= inv;
  }
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
      if (normalize) inv = acc_t(1) / std::max(std::sqrt(dot(o, o, D)), acc_t(kNormEps));
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
// Forward.

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore, bool normalize, bool need_grad) {
  const int64_t N = anchors.size(0), D = anchors.size(1), M = contrast.size(0);
  const at::TensorOptions opts = anchors.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  // Outputs start at their empty-set values: what ignored rows, rows without positives
  // (loss, pos_sig, grad 0) and rows without negatives (lse −inf) keep.
  at::Tensor row_loss = at::zeros({N}, opts);
  at::Tensor lse_out = at::full({N}, -kInf<double>, opts);
  at::Tensor pos_sig_out = at::zeros({N}, opts);
  at::Tensor num_pos_out = at::zeros({N}, opts);
  at::Tensor row_grad = at::zeros({need_grad ? N : 0, D}, opts);

  // Valid rows, stably sorted by label: each class is then one contiguous row block, which
  // the positives pass multiplies against that class's columns only (cost N·M·D/K).
  const at::Tensor y_all_t = labels.contiguous();
  const int64_t* y_all = y_all_t.const_data_ptr<int64_t>();
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < N; ++i)
    if (y_all[i] != ignore) rows.push_back(i);
  std::stable_sort(rows.begin(), rows.end(),
                   [&](int64_t a, int64_t b) { return y_all[a] < y_all[b]; });
  const int64_t nv = static_cast<int64_t>(rows.size());
  std::vector<int64_t> ys(nv);
  for (int64_t k = 0; k < nv; ++k) ys[k] = y_all[rows[k]];

  // Valid contrast columns in label order (the memory bank is stored class-sorted, so the
  // sort is usually skipped); zs are their labels.
  const at::Tensor z_all_t = contrast_labels.contiguous();
  const int64_t* z_all = z_all_t.const_data_ptr<int64_t>();
  std::vector<int64_t> cols;
  for (int64_t j = 0; j < M; ++j)
    if (z_all[j] != ignore) cols.push_back(j);
  auto by_label = [&](int64_t a, int64_t b) { return z_all[a] < z_all[b]; };
  if (!std::is_sorted(cols.begin(), cols.end(), by_label))
    std::stable_sort(cols.begin(), cols.end(), by_label);
  const int64_t nc = static_cast<int64_t>(cols.size());
  std::vector<int64_t> zs(nc);
  for (int64_t k = 0; k < nc; ++k) zs[k] = z_all[cols[k]];

  if (nv == 0 || (nc == 0 && !self_contrast))
    return {row_loss, lse_out, pos_sig_out, num_pos_out, row_grad};

  // Â (normalised anchors, also the self columns) and Â_s = Â·inv_temperature, so that a
  // logits tile is the single GEMM S = Â_s·Ĉᵀ.
  at::Tensor a_hat = at::empty({nv, D}, opts);
  at::Tensor inv_norm_a = at::empty({nv}, opts);
  load_rows<acc_t>(anchors, rows.data(), 0, nv, normalize, acc_t(1), a_hat.data_ptr<acc_t>(),
                   inv_norm_a.data_ptr<acc_t>());
  const at::Tensor a_s = a_hat.mul(inv_temperature);

  const int64_t T = tile_width(nv, D, sizeof(acc_t), (self_contrast ? nv : 0) + nc);
  at::Tensor s_buf = at::empty({nv * T}, opts);
  at::Tensor c_buf = at::empty({T * D}, opts);
  auto load_columns = [&](int64_t start, int64_t t) {  // contrast columns cols[start, start+t)
    load_rows<acc_t>(contrast, cols.data() + start, 0, t, normalize, acc_t(1),
                     c_buf.data_ptr<acc_t>(), nullptr);
    return front(c_buf, t, D);
  };

  // Pass 1, negatives: online max m, sum l and U = Σ_neg e^{s−m} ĉ (flash-attention style).
  std::vector<acc_t> m(nv, -kInf<acc_t>), l(nv, acc_t(0));
  at::Tensor U = need_grad ? at::zeros({nv, D}, opts) : at::Tensor();
  auto negatives_tile = [&](const at::Tensor& c_tile, const int64_t* z) {
    const int64_t t = c_tile.size(0);
    at::Tensor S = front(s_buf, nv, t);
    at::mm_out(S, a_s, c_tile.t());
    acc_t* sp = S.data_ptr<acc_t>();
    acc_t* up = need_grad ? U.data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, nv, row_grain(t), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const acc_t alpha = negatives_row(sp + k * t, z, t, ys[k], ignore, &m[k], &l[k]);
        if (up && alpha != acc_t(1))
          for (int64_t d = 0; d < D; ++d) up[k * D + d] *= alpha;
      }
    });
    if (need_grad) U.addmm_(S, c_tile);
  };
  if (self_contrast)  // the self pair has equal labels, so it is never a negative
    for (int64_t start = 0; start < nv; start += T)
      negatives_tile(a_hat.narrow(0, start, std::min(T, nv - start)), ys.data() + start);
  for (int64_t start = 0; start < nc; start += T) {
    const int64_t t = std::min(T, nc - start);
    negatives_tile(load_columns(start, t), zs.data() + start);
  }
  std::vector<acc_t> lse(nv);
  for (int64_t k = 0; k < nv; ++k)
    lse[k] = m[k] == -kInf<acc_t> ? -kInf<acc_t> : m[k] + std::log(l[k]);

  // Pass 2, positives: for each class block, its own columns only (self block, then the
  // contrast columns of that label), in chunks of T.
  std::vector<double> loss(nv, 0.0), psig(nv, 0.0);
  std::vector<int64_t> npos(nv, 0);
  at::Tensor V = need_grad ? at::zeros({nv, D}, opts) : at::Tensor();
  for (int64_t begin = 0; begin < nv;) {
    int64_t end = begin;
    while (end < nv && ys[end] == ys[begin]) ++end;
    const int64_t nb = end - begin;
    const at::Tensor a_c = a_s.narrow(0, begin, nb);
    // self_first: sorted row index of the chunk's first column when the chunk holds self
    // columns (its self pair is excluded), −1 otherwise.
    auto positives_chunk = [&](const at::Tensor& c_chunk, int64_t self_first) {
      const int64_t t = c_chunk.size(0);
      at::Tensor S = front(s_buf, nb, t);
      at::mm_out(S, a_c, c_chunk.t());
      acc_t* sp = S.data_ptr<acc_t>();
      at::parallel_for(0, nb, row_grain(t), [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) {
          acc_t* s = sp + k * t;
          const int64_t q = begin + k - self_first;
          if (self_first >= 0 && q >= 0 && q < t) s[q] = kInf<acc_t>;  // contributes 0
          positives_row(s, t, lse[begin + k], &loss[begin + k], &psig[begin + k]);
        }
      });
      if (need_grad) V.narrow(0, begin, nb).addmm_(S, c_chunk);
    };
    if (self_contrast)
      for (int64_t start = begin; start < end; start += T)
        positives_chunk(a_hat.narrow(0, start, std::min(T, end - start)), start);
    const auto range = std::equal_range(zs.begin(), zs.end(), ys[begin]);
    const int64_t cb = range.first - zs.begin(), ce = range.second - zs.begin();
    for (int64_t start = cb; start < ce; start += T) {
      const int64_t t = std::min(T, ce - start);
      positives_chunk(load_columns(start, t), -1);
    }
    for (int64_t k = begin; k < end; ++k) npos[k] = (ce - cb) + (self_contrast ? nb - 1 : 0);
    begin = end;
  }

  // Finalise in the original row order. row_grad_i = (inv_t/|P|)·(pos_sig·U/l − V), then
  // through the normalisation.
  acc_t* loss_p = row_loss.data_ptr<acc_t>();
  acc_t* lse_p = lse_out.data_ptr<acc_t>();
  acc_t* sig_p = pos_sig_out.data_ptr<acc_t>();
  acc_t* np_p = num_pos_out.data_ptr<acc_t>();
  for (int64_t k = 0; k < nv; ++k) {
    const int64_t i = rows[k];
    lse_p[i] = lse[k];
    np_p[i] = static_cast<acc_t>(npos[k]);
    if (npos[k] > 0) {
      loss_p[i] = static_cast<acc_t>(loss[k] / static_cast<double>(npos[k]));
      sig_p[i] = static_cast<acc_t>(psig[k]);
    }
  }
  if (need_grad) {
    const acc_t* up = U.const_data_ptr<acc_t>();
    const acc_t* vp = V.const_data_ptr<acc_t>();
    const acc_t* ah = a_hat.const_data_ptr<acc_t>();
    const acc_t* inv_n = inv_norm_a.const_data_ptr<acc_t>();
    acc_t* gp = row_grad.data_ptr<acc_t>();
    at::parallel_for(0, nv, row_grain(D), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        if (npos[k] == 0) continue;
        acc_t* g = gp + rows[k] * D;
        const acc_t coef = static_cast<acc_t>(inv_temperature / static_cast<double>(npos[k]));
        // l = 0 only without negatives, where U = 0 as well.
        const acc_t u = l[k] > acc_t(0) ? static_cast<acc_t>(psig[k] / l[k]) : acc_t(0);
        for (int64_t d = 0; d < D; ++d) g[d] = coef * (u * up[k * D + d] - vp[k * D + d]);
        if (normalize) normalize_backward(g, ah + k * D, inv_n[k], D);
      }
    });
  }
  return {row_loss, lse_out, pos_sig_out, num_pos_out, row_grad};
}

// ---------------------------------------------------------------------------------------
// Column backward.

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> backward_columns_impl(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore, bool normalize, const at::Tensor& lse, const at::Tensor& pos_sig,
    const at::Tensor& row_coef) {
  const int64_t N = anchors.size(0), D = anchors.size(1), M = contrast.size(0);
  const at::TensorOptions opts = anchors.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor grad_contrast = at::zeros({M, D}, opts);
  at::Tensor grad_anchor_cols = at::zeros({self_contrast ? N : 0, D}, opts);

  const at::Tensor y_t = labels.contiguous();
  const at::Tensor z_t = contrast_labels.contiguous();
  const int64_t* y = y_t.const_data_ptr<int64_t>();
  const int64_t* z = z_t.const_data_ptr<int64_t>();
  const at::Tensor lse_t = lse.to(opts.dtype()).contiguous();
  const at::Tensor sig_t = pos_sig.to(opts.dtype()).contiguous();
  const at::Tensor coef_t = row_coef.to(opts.dtype()).contiguous();
  const acc_t* lse_p = lse_t.const_data_ptr<acc_t>();
  const acc_t* sig_p = sig_t.const_data_ptr<acc_t>();
  const acc_t* coef_p = coef_t.const_data_ptr<acc_t>();

  // Only rows with a nonzero coefficient contribute: the GEMMs run over those alone.
  std::vector<int64_t> act;
  for (int64_t i = 0; i < N; ++i)
    if (y[i] != ignore && coef_p[i] != acc_t(0)) act.push_back(i);
  const int64_t na = static_cast<int64_t>(act.size());
  if (na == 0 || (M == 0 && !self_contrast)) return {grad_contrast, grad_anchor_cols};

  // Â_s = inv_temperature·Â: the same matrix serves S = Â_s·Ĉᵀ and dĈ = Gᵀ·Â_s (which
  // carries the 1/τ of ∂s/∂ĉ).
  at::Tensor a_s = at::empty({na, D}, opts);
  load_rows<acc_t>(anchors, act.data(), 0, na, normalize, static_cast<acc_t>(inv_temperature),
                   a_s.data_ptr<acc_t>(), nullptr);
  std::vector<int64_t> y_a(na);
  std::vector<acc_t> lse_a(na), c_neg(na), c_pos(na);
  for (int64_t k = 0; k < na; ++k) {
    const int64_t i = act[k];
    y_a[k] = y[i];
    lse_a[k] = lse_p[i];
    c_neg[k] = coef_p[i] * sig_p[i];
    c_pos[k] = -coef_p[i];
  }

  const int64_t T = tile_width(na, D, sizeof(acc_t), (self_contrast ? N : 0) + M);
  at::Tensor s_buf = at::empty({na * T}, opts);
  at::Tensor c_buf = at::empty({T * D}, opts);
  at::Tensor inv_c = at::empty({T}, opts);

  // One tile of columns src[start, start+t) (labels zl) → out[start, start+t).
  auto tile = [&](const at::Tensor& src, const int64_t* zl, int64_t start, int64_t t,
                  at::Tensor& out, bool is_self) {
    acc_t* cp = c_buf.data_ptr<acc_t>();
    acc_t* inv_p = inv_c.data_ptr<acc_t>();
    load_rows<acc_t>(src, nullptr, start, t, normalize, acc_t(1), cp, inv_p);
    const at::Tensor C = front(c_buf, t, D);
    at::Tensor S = front(s_buf, na, t);
    at::mm_out(S, a_s, C.t());
    acc_t* sp = S.data_ptr<acc_t>();
    at::parallel_for(0, na, row_grain(t), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        acc_t* s = sp + k * t;
        gradient_row(s, zl + start, t, y_a[k], ignore, lse_a[k], c_neg[k], c_pos[k]);
        const int64_t q = act[k] - start;
        if (is_self && q >= 0 && q < t) s[q] = acc_t(0);  // the self pair
      }
    });
    at::Tensor dc = out.narrow(0, start, t);
    at::mm_out(dc, S.t(), a_s);
    if (normalize) {
      acc_t* gp = dc.data_ptr<acc_t>();
      at::parallel_for(0, t, row_grain(D), [&](int64_t b, int64_t e) {
        for (int64_t q = b; q < e; ++q) normalize_backward(gp + q * D, cp + q * D, inv_p[q], D);
      });
    }
  };
  if (self_contrast)
    for (int64_t start = 0; start < N; start += T)
      tile(anchors, y, start, std::min(T, N - start), grad_anchor_cols, true);
  for (int64_t start = 0; start < M; start += T)
    tile(contrast, z, start, std::min(T, M - start), grad_contrast, false);
  return {grad_contrast, grad_anchor_cols};
}

// ---------------------------------------------------------------------------------------
// Op entry points.

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> infonce_forward(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, bool need_grad,
    bool /*allow_tf32: the CPU kernels are IEEE fp32*/) {
  check_inputs("infonce_forward", anchors, labels, contrast, contrast_labels);
  TORCH_CHECK(std::isfinite(inv_temperature),
              "infonce_forward: inv_temperature must be finite, got ", inv_temperature);
  if (anchors.scalar_type() == at::kDouble)
    return forward_impl<double>(anchors, labels, contrast, contrast_labels, self_contrast,
                                inv_temperature, ignore_index, normalize, need_grad);
  return forward_impl<float>(anchors, labels, contrast, contrast_labels, self_contrast,
                             inv_temperature, ignore_index, normalize, need_grad);
}

std::tuple<at::Tensor, at::Tensor> infonce_backward_columns(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, const at::Tensor& lse, const at::Tensor& pos_sig,
    const at::Tensor& row_coef, bool /*allow_tf32: the CPU kernels are IEEE fp32*/) {
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
                                         normalize, lse, pos_sig, row_coef);
  return backward_columns_impl<float>(anchors, labels, contrast, contrast_labels, self_contrast,
                                      inv_temperature, ignore_index, normalize, lse, pos_sig,
                                      row_coef);
}

}  // namespace
}  // namespace pixcontrast::cpu

TORCH_LIBRARY_IMPL(pixcontrast, CPU, m) {
  m.impl("infonce_forward", &pixcontrast::cpu::infonce_forward);
  m.impl("infonce_backward_columns", &pixcontrast::cpu::infonce_backward_columns);
}
