// C++ CPU kernels of hard example mining, for InfoNCE and SupCon over the selected columns
// (docs/design.md §2.8; Python driver pixcontrast/mining.py, dense reference
// mining_reference there). SupCon without mining runs on the InfoNCE kernels
// (csrc/cpu/infonce.cpp, its `supcon` switch).
//
//   mining_select    per anchor row, the mined negatives and positives: an exact radix
//                    select on the logits' bits (11-bit digits: three histogram passes over
//                    the columns for fp32, six for fp64) gives each row's pool threshold,
//                    then one pass takes (hardest) or draws (semi-hard, Floyd) the selected
//                    columns in column order and returns their indices and logits.
//   mining_backward  gather-sums over the selected columns: the anchors' row term
//                    Σ_k coef_ik ĉ_idx and, column by column in a fixed order, the columns'
//                    term Σ coef_ik â_i, both through the normalisation.
//
// The N × columns logits never exist: a pass holds one [T, D] column tile of ≤ 256 KB (it
// stays in L2 while every row sweeps it).
// Every logit is s = dot(â_i, ĉ_j) · (1/τ) from the same loaded tile by the same loop in
// every pass, so the passes see bit-identical logits (the radix select relies on it). No
// float atomics: each row's state belongs to one thread; column sums run in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fast_math.h"

namespace pixcontrast::cpu::mining {
namespace {

constexpr double kNormEps = 1e-12;            // F.normalize's eps
constexpr int64_t kColumnTileBytes = 256 << 10;  // a [T, D] column tile: stays in L2 while
                                                 // every row sweeps it
constexpr int kDigit = 11;                    // radix digit width

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  return lane_dot(a, b, n);
}

// Every logit of every pass comes from logits_row: one function (one target clone chosen
// per process), so each pass rounds a logit the same way (FMA contraction included).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MINING_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MINING_CLONES
#endif

// out[t] = dot(a, c_t) · invt for the t < len rows of the column tile c [len, d].
MINING_CLONES void logits_row(const float* a, const float* c, int64_t len, int64_t d,
                              float invt, float* out) {
  for (int64_t t = 0; t < len; ++t) out[t] = dot(a, c + t * d, d) * invt;
}
void logits_row(const double* a, const double* c, int64_t len, int64_t d, double invt,
                double* out) {
  for (int64_t t = 0; t < len; ++t) out[t] = dot(a, c + t * d, d) * invt;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] += alpha * x[j];
}

// Monotone unsigned key of a float: key(a) < key(b) ⇔ a < b (−0 is mapped to +0 first,
// so that equal floats have equal keys).
inline uint32_t order_key(float s) {
  s += 0.0f;
  uint32_t b;
  std::memcpy(&b, &s, sizeof(b));
  return (b >> 31) ? ~b : (b | 0x80000000u);
}
inline uint64_t order_key(double s) {
  s += 0.0;
  uint64_t b;
  std::memcpy(&b, &s, sizeof(b));
  return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}

// Rows of `src` [j0, j0 + len) converted to T and (optionally) L2-normalised in place into
// `out` [len, D]; inv[r] = 1/max(‖x‖, ε) (1 without normalisation). The one loader of
// every pass, so a column gets the same values each time.
template <typename T>
void load_rows(const at::Tensor& src, int64_t j0, int64_t len, bool normalize,
               at::Tensor& out, std::vector<T>& inv) {
  const auto acc = std::is_same_v<T, double> ? at::kDouble : at::kFloat;
  out = src.narrow(0, j0, len).to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  inv.assign(len, T(1));
  if (!normalize) return;
  T* p = out.data_ptr<T>();
  const int64_t d = out.size(1);
  at::parallel_for(0, len, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      T* x = p + r * d;
      const T norm = std::sqrt(dot(x, x, d));
      const T v = T(1) / std::max(norm, T(kNormEps));
      inv[r] = v;
      for (int64_t k = 0; k < d; ++k) x[k] *= v;
    }
  });
}

// One row j of `src` (any float dtype and strides) converted to T and normalised like
// load_rows does; returns 1/max(‖x‖, ε) (1 without normalisation).
template <typename T>
T read_row(const at::Tensor& src, int64_t j, bool normalize, T* out) {
  const int64_t d = src.size(1), s0 = src.stride(0), s1 = src.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "read_row", [&] {
    const scalar_t* x = src.const_data_ptr<scalar_t>() + j * s0;
    for (int64_t k = 0; k < d; ++k) out[k] = static_cast<T>(x[k * s1]);
  });
  if (!normalize) return T(1);
  const T v = T(1) / std::max(std::sqrt(dot(out, out, d)), T(kNormEps));
  for (int64_t k = 0; k < d; ++k) out[k] *= v;
  return v;
}

// ∂L/∂x from ∂L/∂x̂ = g for x̂ = x/max(‖x‖, ε) (x̂ and inv = 1/max(‖x‖, ε) given).
template <typename T>
inline void normalize_backward(const T* xhat, T inv, bool normalize, T* g, int64_t d) {
  if (!normalize) return;
  if (inv >= T(1) / T(kNormEps)) {  // clamped: the norm is the constant ε
    for (int64_t k = 0; k < d; ++k) g[k] *= inv;
    return;
  }
  const T c = dot(xhat, g, d);
  for (int64_t k = 0; k < d; ++k) g[k] = (g[k] - xhat[k] * c) * inv;
}

int64_t tile_width(int64_t d, int64_t elem) {
  return std::max<int64_t>(16, kColumnTileBytes / std::max<int64_t>(d * elem, 1));
}

// The columns: the anchors themselves (when self_contrast), then the contrast rows.
template <typename T>
struct Columns {
  const at::Tensor& contrast;
  const int64_t* z;        // contrast labels
  const int64_t* y;        // anchor labels
  const T* ahat;           // normalised anchors [N, D]
  int64_t n, m, d;
  bool self, normalize;
  int64_t n_self() const { return self ? n : 0; }

  // fn(tile_start, len, cols [len, D], inv [len], labels [len], is_self_segment), tiles
  // in increasing column order.
  template <typename Fn>
  void for_each_tile(int64_t width, Fn&& fn) const {
    if (self)
      for (int64_t j0 = 0; j0 < n; j0 += width) {
        const int64_t len = std::min(width, n - j0);
        fn(j0, len, ahat + j0 * d, y + j0, true);
      }
    at::Tensor tile;
    std::vector<T> inv;
    for (int64_t j0 = 0; j0 < m; j0 += width) {
      const int64_t len = std::min(width, m - j0);
      load_rows<T>(contrast, j0, len, normalize, tile, inv);
      fn(n_self() + j0, len, tile.data_ptr<T>(), z + j0, false);
    }
  }
};

struct Prepared {
  at::Tensor labels, contrast_labels, ahat;
  std::vector<int64_t> rows;  // valid anchor rows
};

void check_common(const at::Tensor& anchors, const at::Tensor& labels,
                  const at::Tensor& contrast, const at::Tensor& contrast_labels,
                  const char* op) {
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be [N, D], got ", anchors.sizes());
  TORCH_CHECK(anchors.is_floating_point(), op, ": anchors must be floating point");
  TORCH_CHECK(contrast.dim() == 2 && contrast.size(1) == anchors.size(1), op,
              ": contrast must be [M, D] with the anchors' D, got ", contrast.sizes());
  TORCH_CHECK(contrast.is_floating_point(), op, ": contrast must be floating point");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == anchors.size(0), op,
              ": labels must be [N], got ", labels.sizes());
  TORCH_CHECK(contrast_labels.dim() == 1 && contrast_labels.size(0) == contrast.size(0), op,
              ": contrast_labels must be [M], got ", contrast_labels.sizes());
  TORCH_CHECK(anchors.device().is_cpu() && contrast.device().is_cpu(), op,
              ": CPU tensors expected");
}

template <typename T>
Prepared prepare(const at::Tensor& anchors, const at::Tensor& labels,
                 const at::Tensor& contrast_labels, int64_t ignore, bool normalize,
                 std::vector<T>& inv_a, at::Tensor& ahat) {
  Prepared p;
  p.labels = labels.to(at::kLong).contiguous();
  p.contrast_labels = contrast_labels.to(at::kLong).contiguous();
  load_rows<T>(anchors, 0, anchors.size(0), normalize, ahat, inv_a);
  const int64_t* y = p.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < anchors.size(0); ++i)
    if (y[i] != ignore) p.rows.push_back(i);
  return p;
}

// ---------------------------------------------------------------------------------------
// mining_select

template <typename T>
struct SetState {
  using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  int64_t count = 0, pool = 0, take = 0;
  Key prefix = 0;
  int64_t rank = 0;           // target rank among the keys matching the prefix
  int64_t eq_taken = 0, pool_seen = 0, ptr = 0;
  bool radix() const { return pool > 0 && pool < count; }
};

template <typename T>
std::tuple<at::Tensor, at::Tensor> select_impl(
    const at::Tensor& anchors, const at::Tensor& labels_in, const at::Tensor& contrast,
    const at::Tensor& contrast_labels_in, bool self_contrast, double inv_temperature,
    int64_t ignore, bool normalize, const at::Tensor& u_in, bool semi_hard, double fraction,
    int64_t k_neg, int64_t k_pos) {
  using Key = typename SetState<T>::Key;
  constexpr int kBits = sizeof(Key) * 8;
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  const int64_t k_all = k_neg + k_pos;
  const auto acc = std::is_same_v<T, double> ? at::kDouble : at::kFloat;
  at::Tensor sel_idx = at::full({n, k_all}, -1, anchors.options().dtype(at::kLong));
  at::Tensor sel_logit = at::zeros({n, k_all}, anchors.options().dtype(acc));
  if (n == 0 || k_all == 0) return {sel_idx, sel_logit};

  std::vector<T> inv_a;
  at::Tensor ahat;
  Prepared p = prepare<T>(anchors, labels_in, contrast_labels_in, ignore, normalize, inv_a,
                          ahat);
  Columns<T> cols{contrast, p.contrast_labels.data_ptr<int64_t>(),
                  p.labels.data_ptr<int64_t>(), ahat.data_ptr<T>(), n, m, d, self_contrast,
                  normalize};
  const int64_t* y = cols.y;
  const int64_t nv = static_cast<int64_t>(p.rows.size());
  const T invt = static_cast<T>(inv_temperature);

  // Candidate counts from the labels alone.
  std::unordered_map<int64_t, int64_t> per_label;
  int64_t n_valid = 0;
  auto count_label = [&](int64_t z) {
    if (z == ignore) return;
    ++per_label[z];
    ++n_valid;
  };
  if (self_contrast)
    for (int64_t i = 0; i < n; ++i) count_label(y[i]);
  for (int64_t j = 0; j < m; ++j) count_label(cols.z[j]);

  const int64_t ks[2] = {k_neg, k_pos};
  std::vector<SetState<T>> st(nv * 2);
  std::vector<int64_t> ranks(semi_hard ? nv * k_all : 0);
  const at::Tensor u = semi_hard ? u_in.to(at::kDouble).contiguous() : u_in;
  const double* up = semi_hard ? u.data_ptr<double>() : nullptr;
  bool any_radix = false;
  for (int64_t r = 0; r < nv; ++r) {
    const int64_t i = p.rows[r];
    const int64_t same = per_label.count(y[i]) ? per_label[y[i]] : 0;
    const int64_t counts[2] = {n_valid - same, same - (self_contrast ? 1 : 0)};
    for (int s = 0; s < 2; ++s) {
      auto& q = st[r * 2 + s];
      q.count = counts[s];
      q.pool = std::min(q.count, ks[s]);
      if (semi_hard) {
        const auto top = static_cast<int64_t>(std::ceil(static_cast<double>(q.count) * fraction));
        q.pool = std::min(q.count, std::max(ks[s], top));
      }
      q.take = std::min(ks[s], q.pool);
      q.rank = q.pool - 1;
      any_radix |= q.radix();
      if (semi_hard && q.take > 0) {
        // Floyd: a uniform take-subset of [0, pool), sorted.
        const int64_t off = s == 0 ? 0 : k_neg;
        std::unordered_set<int64_t> chosen;
        chosen.reserve(q.take * 2);
        for (int64_t t = 0; t < q.take; ++t) {
          const int64_t j = q.pool - q.take + t;
          int64_t c = static_cast<int64_t>(
              std::floor(up[i * k_all + off + t] * static_cast<double>(j + 1)));
          c = std::min(c, j);
          chosen.insert(chosen.count(c) ? j : c);
        }
        int64_t* out = ranks.data() + r * k_all + off;
        std::copy(chosen.begin(), chosen.end(), out);
        std::sort(out, out + q.take);
      }
    }
  }

  const int64_t width = tile_width(d, sizeof(T));
  auto key_of = [](T s, int set) -> Key {
    const Key k = order_key(s);
    return set == 0 ? static_cast<Key>(~k) : k;  // negatives: most similar first
  };
  // Visit every valid (row, column) pair of the rows in [b, e) for one tile.
  auto visit = [&](int64_t j0, int64_t len, const T* c, const int64_t* zt, bool self_seg,
                   int64_t b, int64_t e, auto&& fn) {
    std::vector<T> srow(len);
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = p.rows[r];
      logits_row(cols.ahat + i * d, c, len, d, invt, srow.data());
      for (int64_t t = 0; t < len; ++t) {
        if (zt[t] == ignore || (self_seg && j0 + t == i)) continue;
        fn(r, zt[t] == y[i] ? 1 : 0, j0 + t, srow[t]);
      }
    }
  };

  if (any_radix) {
    const int64_t bins = int64_t(1) << kDigit;
    std::vector<uint32_t> hist(nv * 2 * bins);
    for (int pass = 0; pass * kDigit < kBits; ++pass) {
      const int hi = kBits - pass * kDigit;
      const int lo = std::max(hi - kDigit, 0);
      const Key mask = (Key(1) << (hi - lo)) - 1;
      std::fill(hist.begin(), hist.end(), 0u);
      cols.for_each_tile(width, [&](int64_t j0, int64_t len, const T* c, const int64_t* zt,
                                    bool self_seg) {
        at::parallel_for(0, nv, 1, [&](int64_t b, int64_t e) {
          visit(j0, len, c, zt, self_seg, b, e, [&](int64_t r, int set, int64_t, T s) {
            const auto& q = st[r * 2 + set];
            if (!q.radix()) return;
            const Key key = key_of(s, set);
            if (pass > 0 && (key >> hi) != q.prefix) return;
            ++hist[(r * 2 + set) * bins + ((key >> lo) & mask)];
          });
        });
      });
      for (int64_t r = 0; r < nv; ++r)
        for (int set = 0; set < 2; ++set) {
          auto& q = st[r * 2 + set];
          if (!q.radix()) continue;
          const uint32_t* h = hist.data() + (r * 2 + set) * bins;
          int64_t cum = 0, digit = 0;
          while (cum + h[digit] <= q.rank) cum += h[digit++];
          q.rank -= cum;
          q.prefix = (pass == 0 ? Key(0) : (q.prefix << (hi - lo))) | static_cast<Key>(digit);
        }
    }
  }

  // The take pass: pool members in column order, the ranks drawn (or the first `take`).
  int64_t* out_idx = sel_idx.data_ptr<int64_t>();
  T* out_s = sel_logit.data_ptr<T>();
  cols.for_each_tile(width, [&](int64_t j0, int64_t len, const T* c, const int64_t* zt,
                                bool self_seg) {
    at::parallel_for(0, nv, 1, [&](int64_t b, int64_t e) {
      visit(j0, len, c, zt, self_seg, b, e, [&](int64_t r, int set, int64_t j, T s) {
        auto& q = st[r * 2 + set];
        if (q.ptr >= q.take) return;
        bool in_pool = !q.radix();
        if (!in_pool) {
          const Key key = key_of(s, set);
          if (key < q.prefix) {
            in_pool = true;
          } else if (key == q.prefix && q.eq_taken <= q.rank) {
            ++q.eq_taken;
            in_pool = true;
          }
        }
        if (!in_pool) return;
        const int64_t pr = q.pool_seen++;
        const int64_t off = set == 0 ? 0 : k_neg;
        const int64_t want = semi_hard ? ranks[r * k_all + off + q.ptr] : q.ptr;
        if (pr != want) return;
        const int64_t i = p.rows[r];
        out_idx[i * k_all + off + q.ptr] = j;
        out_s[i * k_all + off + q.ptr] = s;
        ++q.ptr;
      });
    });
  });
  return {sel_idx, sel_logit};
}

std::tuple<at::Tensor, at::Tensor> mining_select(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, const at::Tensor& u, bool semi_hard,
    double fraction, int64_t num_negatives, int64_t num_positives) {
  check_common(anchors, labels, contrast, contrast_labels, "mining_select");
  TORCH_CHECK(num_negatives >= 0 && num_positives >= 0,
              "mining_select: num_negatives and num_positives must be >= 0");
  TORCH_CHECK(fraction > 0 && fraction <= 1, "mining_select: fraction must be in (0, 1]");
  if (semi_hard)
    TORCH_CHECK(u.dim() == 2 && u.size(0) == anchors.size(0) &&
                    u.size(1) == num_negatives + num_positives,
                "mining_select: u must be [N, num_negatives + num_positives], got ", u.sizes());
  if (anchors.scalar_type() == at::kDouble)
    return select_impl<double>(anchors, labels, contrast, contrast_labels, self_contrast,
                               inv_temperature, ignore_index, normalize, u, semi_hard,
                               fraction, num_negatives, num_positives);
  return select_impl<float>(anchors, labels, contrast, contrast_labels, self_contrast,
                            inv_temperature, ignore_index, normalize, u, semi_hard, fraction,
                            num_negatives, num_positives);
}

// ---------------------------------------------------------------------------------------
// mining_backward

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& anchors, const at::Tensor& contrast, bool self_contrast,
    double inv_temperature, bool normalize, const at::Tensor& sel_idx_in,
    const at::Tensor& coef_in, bool need_rows, bool need_columns) {
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  const bool need_contrast = need_columns && m > 0;
  const auto acc = std::is_same_v<T, double> ? at::kDouble : at::kFloat;
  const auto opts = anchors.options().dtype(acc);
  at::Tensor g_rows = at::zeros({need_rows ? n : 0, d}, opts);
  at::Tensor g_self = at::zeros({need_columns && self_contrast ? n : 0, d}, opts);
  at::Tensor g_contrast = at::zeros({need_contrast ? m : 0, d}, opts);
  if (n == 0) return {g_rows, g_self, g_contrast};
  const at::Tensor sel_idx = sel_idx_in.contiguous();
  const at::Tensor coef = coef_in.to(acc).contiguous();
  const int64_t k_all = sel_idx.size(1);
  const int64_t* idx = sel_idx.data_ptr<int64_t>();
  const T* w = coef.data_ptr<T>();
  const T invt = static_cast<T>(inv_temperature);
  std::vector<T> inv_a;
  at::Tensor ahat_t;
  load_rows<T>(anchors, 0, n, normalize, ahat_t, inv_a);
  const T* ahat = ahat_t.data_ptr<T>();
  const int64_t n_self = self_contrast ? n : 0;
  const int64_t n_self_out = need_columns ? n_self : 0;

  if (need_rows) {
    T* out = g_rows.data_ptr<T>();
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
      std::vector<T> row(d);
      for (int64_t i = b; i < e; ++i) {
        T* g = out + i * d;
        for (int64_t k = 0; k < k_all; ++k) {
          const int64_t j = idx[i * k_all + k];
          const T c = w[i * k_all + k];
          if (j < 0 || c == T(0)) continue;
          if (j < n_self) {
            axpy(c, ahat + j * d, g, d);
          } else {
            read_row<T>(contrast, j - n_self, normalize, row.data());
            axpy(c, row.data(), g, d);
          }
        }
        for (int64_t k = 0; k < d; ++k) g[k] *= invt;
        normalize_backward(ahat + i * d, inv_a[i], normalize, g, d);
      }
    });
  }

  // Column terms: the pairs grouped by column (counting sort, (i, k) order kept).
  const int64_t total = n_self_out + (need_contrast ? m : 0);
  if (total == 0) return {g_rows, g_self, g_contrast};
  std::vector<int64_t> start(total + 1, 0);
  for (int64_t e = 0; e < n * k_all; ++e)
    if (idx[e] >= 0 && idx[e] < total) ++start[idx[e] + 1];
  for (int64_t j = 0; j < total; ++j) start[j + 1] += start[j];
  std::vector<int64_t> pairs(start[total]);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < n * k_all; ++e)
      if (idx[e] >= 0 && idx[e] < total) pairs[fill[idx[e]]++] = e;
  }
  T* out_self = n_self_out > 0 ? g_self.data_ptr<T>() : nullptr;
  T* out_c = need_contrast ? g_contrast.data_ptr<T>() : nullptr;
  at::parallel_for(0, total, 16, [&](int64_t b, int64_t e) {
    std::vector<T> row(d);
    for (int64_t j = b; j < e; ++j) {
      if (start[j] == start[j + 1]) continue;
      T* g = j < n_self ? out_self + j * d : out_c + (j - n_self) * d;
      for (int64_t q = start[j]; q < start[j + 1]; ++q) {
        const int64_t pe = pairs[q];
        axpy(w[pe], ahat + (pe / k_all) * d, g, d);
      }
      for (int64_t k = 0; k < d; ++k) g[k] *= invt;
      if (j < n_self) {
        normalize_backward(ahat + j * d, inv_a[j], normalize, g, d);
      } else {
        const T inv = read_row<T>(contrast, j - n_self, normalize, row.data());
        normalize_backward(row.data(), inv, normalize, g, d);
      }
    }
  });
  return {g_rows, g_self, g_contrast};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mining_backward(
    const at::Tensor& anchors, const at::Tensor& contrast, bool self_contrast,
    double inv_temperature, bool normalize, const at::Tensor& sel_idx, const at::Tensor& coef,
    bool need_rows, bool need_columns) {
  TORCH_CHECK(anchors.dim() == 2 && contrast.dim() == 2 &&
                  contrast.size(1) == anchors.size(1),
              "mining_backward: anchors [N, D] and contrast [M, D] expected");
  TORCH_CHECK(sel_idx.dim() == 2 && sel_idx.size(0) == anchors.size(0) &&
                  sel_idx.scalar_type() == at::kLong,
              "mining_backward: sel_idx must be int64 [N, K], got ", sel_idx.sizes());
  TORCH_CHECK(coef.sizes() == sel_idx.sizes(),
              "mining_backward: coef must have sel_idx's shape, got ", coef.sizes());
  if (anchors.scalar_type() == at::kDouble)
    return backward_impl<double>(anchors, contrast, self_contrast, inv_temperature, normalize,
                                 sel_idx, coef, need_rows, need_columns);
  return backward_impl<float>(anchors, contrast, self_contrast, inv_temperature, normalize,
                              sel_idx, coef, need_rows, need_columns);
}

}  // namespace
}  // namespace pixcontrast::cpu::mining

TORCH_LIBRARY_FRAGMENT(pixcontrast, m) {
  // Mined columns per anchor row (docs/design.md §2.8). Returns sel_idx [N, K_neg + K_pos]
  // int64 (column indices, anchors first when self_contrast, in increasing order within
  // each set; −1 empty) and sel_logit [N, K_neg + K_pos] f32 (f64 for f64 inputs). u:
  // [N, K_neg + K_pos] f64 uniforms of the semi-hard draw (ignored for hardest).
  m.def(
      "mining_select(Tensor anchors, Tensor labels, Tensor contrast, Tensor contrast_labels, "
      "bool self_contrast, float inv_temperature, int ignore_index, bool normalize, Tensor u, "
      "bool semi_hard, float fraction, int num_negatives, int num_positives) -> "
      "(Tensor, Tensor)");
  // Gradients of Σ coef_ik s_{i, idx_ik}, through the normalisation: the anchors' row term
  // [N, D] ([0, D] without need_rows); with need_columns, the anchors-as-columns term
  // ([N, D] when self_contrast, else [0, D]) and the contrast rows' [M, D] (pass a [0, D]
  // contrast when it needs none; its indices are then skipped).
  m.def(
      "mining_backward(Tensor anchors, Tensor contrast, bool self_contrast, "
      "float inv_temperature, bool normalize, Tensor sel_idx, Tensor coef, bool need_rows, "
      "bool need_columns) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pixcontrast, CPU, m) {
  m.impl("mining_select", &pixcontrast::cpu::mining::mining_select);
  m.impl("mining_backward", &pixcontrast::cpu::mining::mining_backward);
}
