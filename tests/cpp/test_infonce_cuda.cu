// C++ test of the CUDA InfoNCE row passes (csrc/cuda/infonce.h) without torch. Built by
// CMakeLists.txt, run by ctest; exits 77 (skipped) when no CUDA device is present.
//
// The binding's GEMMs are cuBLAS calls through ATen, which this framework-free test cannot
// make: here the products run on the host in float64, and the kernels run the whole chunk
// schedule of the binding (normalise, negatives, λ, positives, finalize; weights and column
// backprop) between them. Two kinds of checks:
// * each kernel against the host evaluation of the same csrc/common/infonce_rows.h
//   functions on the same inputs (differences: FMA contraction and --use_fast_math only);
// * the end result (loss terms, row gradient, column gradients) against a float64
//   computation of docs/design.md §1.3, for fp32, bf16 and fp16 operands, with and without
//   self-contrast, ignored rows and columns, a row without positives, several chunks;
//   InfoNCE and SupCon (the `supcon` switch: the denominator over every valid column but the
//   row itself, positive terms λ − s with weight 1).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/infonce_rows.h"
#include "cuda/infonce.h"
#include "test_util.h"

namespace r = pixcontrast::rows;
using pixcontrast::cuda::InfonceChunk;
using pixcontrast::cuda::InfonceFinalize;
using pixcontrast::cuda::ScalarKind;
using pixcontrast_test::Device;

namespace {

constexpr int64_t kIgnore = -1;
int failures = 0;

// |got − want| ≤ atol + rtol·|want| + scale_rtol·max|want| (±inf must match exactly).
template <typename G, typename W>
void expect_close(const char* what, const std::vector<G>& got, const std::vector<W>& want,
                  double rtol, double atol, double scale_rtol = 0) {
  double scale = 0;
  for (const W& w : want) scale = std::max(scale, std::isfinite(double(w)) ? std::fabs(double(w)) : 0.0);
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    const bool ok = (std::isinf(w) && g == w) ||
                    std::fabs(g - w) <= atol + rtol * std::fabs(w) + scale_rtol * scale;
    if (!ok) {
      std::fprintf(stderr, "  %s[%zu]: got %.8g, want %.8g\n", what, i, g, w);
      ++failures;
      return;
    }
  }
}

float round_to(ScalarKind kind, float x) {
  switch (kind) {
    case ScalarKind::kBFloat16:
      return __bfloat162float(__float2bfloat16(x));
    case ScalarKind::kFloat16:
      return __half2float(__float2half(x));
    default:
      return x;
  }
}

struct Problem {
  int64_t n, m, d;
  bool self_contrast;
  ScalarKind kind;
  bool supcon;
  float inv_t = 10.f;
  std::vector<float> a, c;  // values exactly representable in the operand dtype
  std::vector<int64_t> y, z;
  std::vector<float> coef;
};

Problem make_problem(int64_t n, int64_t m, int64_t d, bool self_contrast, ScalarKind kind,
                     bool supcon, std::mt19937& rng) {
  Problem p{n, m, d, self_contrast, kind, supcon};
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> cls(0, 4);
  std::uniform_real_distribution<float> unif(0.f, 1.f);
  constexpr int64_t kMaxLabel = 9;  // label of row 0: a class without positives
  std::vector<float> centers((kMaxLabel + 2) * d);
  for (auto& v : centers) v = 1.5f * normal(rng);
  auto sample = [&](int64_t label, std::vector<float>& out) {
    const int64_t center = label < 0 ? kMaxLabel + 1 : label;
    for (int64_t k = 0; k < d; ++k) {
      const float v = centers[center * d + k] + normal(rng);
      out.push_back(round_to(kind, v));
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    int64_t label = unif(rng) < 0.1f ? kIgnore : cls(rng);
    if (i == 0) label = kMaxLabel;
    p.y.push_back(label);
    sample(label, p.a);
    p.coef.push_back(unif(rng) - 0.3f);
  }
  for (int64_t j = 0; j < m; ++j) {
    const int64_t label = unif(rng) < 0.1f ? kIgnore : cls(rng);
    p.z.push_back(label);
    sample(label, p.c);
  }
  return p;
}

// ---------------------------------------------------------------------------------------
// Float64 oracle of §1.3.

struct Reference {
  std::vector<double> loss, lse, sig, npos, row_grad, grad_cols;  // grad_cols: all columns
};

std::vector<double> normalized(const float* x, int64_t d, double* inv) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k) s += double(x[k]) * x[k];
  *inv = 1 / std::max(std::sqrt(s), 1e-12);
  std::vector<double> v(d);
  for (int64_t k = 0; k < d; ++k) v[k] = x[k] * *inv;
  return v;
}

std::vector<double> backprop(std::vector<double> g, const float* x, int64_t d) {
  double inv;
  const std::vector<double> xh = normalized(x, d, &inv);
  double proj = 0;
  for (int64_t k = 0; k < d; ++k) proj += xh[k] * g[k];
  for (int64_t k = 0; k < d; ++k) g[k] = (g[k] - xh[k] * proj) * inv;
  return g;
}

// Columns: the anchors (self-contrast), then the contrast rows.
struct Columns {
  std::vector<const float*> x;
  std::vector<int64_t> z, self_of;
};

Columns columns_of(const Problem& p) {
  Columns c;
  if (p.self_contrast)
    for (int64_t i = 0; i < p.n; ++i)
      c.x.push_back(&p.a[i * p.d]), c.z.push_back(p.y[i]), c.self_of.push_back(i);
  for (int64_t j = 0; j < p.m; ++j)
    c.x.push_back(&p.c[j * p.d]), c.z.push_back(p.z[j]), c.self_of.push_back(-1);
  return c;
}

Reference reference(const Problem& p) {
  const int64_t n = p.n, d = p.d;
  const Columns cols = columns_of(p);
  const int64_t mc = static_cast<int64_t>(cols.x.size());
  std::vector<std::vector<double>> ah(n), ch(mc);
  double inv;
  for (int64_t i = 0; i < n; ++i) ah[i] = normalized(&p.a[i * d], d, &inv);
  for (int64_t j = 0; j < mc; ++j) ch[j] = normalized(cols.x[j], d, &inv);
  Reference ref;
  ref.loss.assign(n, 0), ref.lse.assign(n, -INFINITY), ref.sig.assign(n, 0), ref.npos.assign(n, 0);
  ref.row_grad.assign(n * d, 0);
  std::vector<std::vector<double>> gc(mc, std::vector<double>(d, 0));
  for (int64_t i = 0; i < n; ++i) {
    if (p.y[i] == kIgnore) continue;
    // The log-sum-exp's set: the negatives (InfoNCE), every valid column but the row itself
    // (SupCon).
    auto in_denominator = [&](int64_t j) {
      return cols.z[j] != kIgnore && (p.supcon ? cols.self_of[j] != i : cols.z[j] != p.y[i]);
    };
    std::vector<double> s(mc);
    double mx = -INFINITY;
    for (int64_t j = 0; j < mc; ++j) {
      double dot = 0;
      for (int64_t k = 0; k < d; ++k) dot += ah[i][k] * ch[j][k];
      s[j] = dot * p.inv_t;
      if (in_denominator(j)) mx = std::max(mx, s[j]);
    }
    double lse = -INFINITY;
    if (mx > -INFINITY) {
      double sum = 0;
      for (int64_t j = 0; j < mc; ++j)
        if (in_denominator(j)) sum += std::exp(s[j] - mx);
      lse = mx + std::log(sum);
    }
    ref.lse[i] = lse;
    std::vector<double> G(mc, 0);
    for (int64_t j = 0; j < mc; ++j) {
      if (cols.z[j] != p.y[i] || cols.self_of[j] == i) continue;
      const double x = lse - s[j];
      double sp = x == -INFINITY ? 0 : std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x)));
      double sg = x == -INFINITY ? 0 : 1 / (1 + std::exp(-x));
      if (p.supcon) sp = x, sg = 1;
      ref.loss[i] += sp, ref.sig[i] += sg, ref.npos[i] += 1;
      G[j] = -sg;
    }
    if (ref.npos[i] == 0) continue;
    for (int64_t j = 0; j < mc; ++j)  // positives: −σ (InfoNCE), −1 + the softmax (SupCon)
      if (in_denominator(j)) G[j] += ref.sig[i] * std::exp(s[j] - lse);
    std::vector<double> gh(d, 0);
    for (int64_t j = 0; j < mc; ++j) {
      if (G[j] == 0) continue;
      for (int64_t k = 0; k < d; ++k) {
        gh[k] += G[j] * ch[j][k] * p.inv_t / ref.npos[i];
        gc[j][k] += p.coef[i] * G[j] * ah[i][k] * p.inv_t;
      }
    }
    ref.loss[i] /= ref.npos[i];
    const auto g = backprop(gh, &p.a[i * d], d);
    std::copy(g.begin(), g.end(), ref.row_grad.begin() + i * d);
  }
  for (int64_t j = 0; j < mc; ++j) {
    const auto g = backprop(gc[j], cols.x[j], d);
    ref.grad_cols.insert(ref.grad_cols.end(), g.begin(), g.end());
  }
  return ref;
}

// ---------------------------------------------------------------------------------------
// The binding's schedule with host GEMMs.

template <typename T>
std::vector<float> as_float(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, float>) {
      out[i] = v[i];
    } else {
      out[i] = __bfloat162float(v[i]);
    }
  }
  return out;
}

// A device buffer of the operand dtype (bytes).
struct Raw {
  void* ptr = nullptr;
  explicit Raw(size_t bytes) { CUDA_OK(cudaMalloc(&ptr, std::max<size_t>(bytes, 1))); }
  ~Raw() { cudaFree(ptr); }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;
  static std::vector<float> read_f32(const float* ptr, size_t count) {
    std::vector<float> h(count);
    CUDA_OK(cudaMemcpy(h.data(), ptr, count * 4, cudaMemcpyDeviceToHost));
    return h;
  }
  std::vector<float> read(ScalarKind kind, size_t count) const {
    if (kind == ScalarKind::kFloat32) {
      std::vector<float> h(count);
      CUDA_OK(cudaMemcpy(h.data(), ptr, count * 4, cudaMemcpyDeviceToHost));
      return h;
    }
    if (kind == ScalarKind::kFloat16) {
      std::vector<__half> h(count);
      CUDA_OK(cudaMemcpy(h.data(), ptr, count * 2, cudaMemcpyDeviceToHost));
      std::vector<float> out(count);
      for (size_t i = 0; i < count; ++i) out[i] = __half2float(h[i]);
      return out;
    }
    std::vector<__nv_bfloat16> h(count);
    CUDA_OK(cudaMemcpy(h.data(), ptr, count * 2, cudaMemcpyDeviceToHost));
    return as_float(h);
  }
};

void* upload(const Problem& p, const std::vector<float>& x, std::vector<Raw*>& keep) {
  Raw* raw = new Raw(x.size() * (p.kind == ScalarKind::kFloat32 ? 4 : 2));
  keep.push_back(raw);
  if (p.kind == ScalarKind::kBFloat16) {
    std::vector<__nv_bfloat16> h;
    for (float v : x) h.push_back(__float2bfloat16(v));
    CUDA_OK(cudaMemcpy(raw->ptr, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else if (p.kind == ScalarKind::kFloat16) {
    std::vector<__half> h;
    for (float v : x) h.push_back(__float2half(v));
    CUDA_OK(cudaMemcpy(raw->ptr, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    CUDA_OK(cudaMemcpy(raw->ptr, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  }
  return raw->ptr;
}

// S = rows·colsᵀ in float64, rounded to fp32 (what cuBLAS returns, up to its rounding).
std::vector<float> host_logits(const std::vector<float>& rows, int64_t nr,
                               const std::vector<float>& cols, int64_t nc, int64_t d) {
  std::vector<float> S(nr * nc);
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t j = 0; j < nc; ++j) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += double(rows[i * d + k]) * cols[j * d + k];
      S[i * nc + j] = static_cast<float>(s);
    }
  return S;
}

const char* name_of(ScalarKind kind) {
  return kind == ScalarKind::kBFloat16 ? "bf16" : kind == ScalarKind::kFloat16 ? "fp16" : "fp32";
}

void run_case(int64_t n, int64_t m, int64_t d, bool self_contrast, ScalarKind kind, int64_t width,
              std::mt19937& rng, bool supcon = false) {
  std::printf("case n=%lld m=%lld d=%lld self=%d %s chunk=%lld supcon=%d\n", (long long)n,
              (long long)m, (long long)d, self_contrast, name_of(kind), (long long)width, supcon);
  const Problem p = make_problem(n, m, d, self_contrast, kind, supcon, rng);
  const bool bf16 = kind != ScalarKind::kFloat32;  // 16-bit operands, weights in P_dev
  const Reference ref = reference(p);
  const size_t e = bf16 ? 2 : 4;
  const float wscale = pixcontrast::cuda::weight_scale(kind);
  std::vector<Raw*> keep;
  void* a_dev = upload(p, p.a, keep);
  void* c_dev = upload(p, p.c, keep);
  Device<int64_t> y_dev(p.y), z_dev(p.z);

  // Â and its inverse norms.
  Raw a_hat(n * d * e);
  Device<float> inv_a(std::vector<float>(n, 0.f));
  CUDA_OK(pixcontrast::cuda::infonce_normalize_rows(a_dev, kind, d, 1, 0, n, d, true,
                                                    a_hat.ptr, inv_a.ptr, nullptr));
  const std::vector<float> a_host = a_hat.read(kind, n * d);
  {
    std::vector<double> want;
    for (int64_t i = 0; i < n; ++i) {
      double inv;
      const auto v = normalized(&p.a[i * d], d, &inv);
      for (double x : v) want.push_back(bf16 ? round_to(kind, static_cast<float>(x)) : x);
    }
    expect_close("normalized anchors", a_host, want, bf16 ? 8e-3 : 2e-6, 1e-7);
  }

  // Segments as the binding cuts them.
  struct Seg {
    void* src;
    const int64_t* z_dev;
    const std::vector<int64_t>* z;
    int64_t num;
    bool self;
    int64_t column0;  // index of its first column in Columns order
  };
  std::vector<Seg> segs;
  if (self_contrast) segs.push_back({a_dev, y_dev.ptr, &p.y, n, true, 0});
  segs.push_back({c_dev, z_dev.ptr, &p.z, m, false, self_contrast ? n : 0});

  Device<float> m_dev(std::vector<float>(n, -INFINITY)), l_dev(std::vector<float>(n, 0.f));
  Device<float> lse_dev(std::vector<float>(n, 0.f));
  Device<float> loss_dev(std::vector<float>(n, 0.f)), sig_dev(std::vector<float>(n, 0.f)),
      cnt_dev(std::vector<float>(n, 0.f));
  std::vector<double> U(n * d, 0), V(n * d, 0);
  Device<float> U_dev(std::vector<float>(n * d, 0.f));
  Raw c_buf(width * d * e);
  Device<float> S_dev(std::vector<float>(n * width, 0.f));
  Raw P_dev(n * width * e);

  auto chunk_of = [&](const Seg& s, int64_t start, int64_t count, std::vector<float>* cols) {
    CUDA_OK(pixcontrast::cuda::infonce_normalize_rows(s.src, kind, d, 1, start, count, d, true,
                                                      c_buf.ptr, nullptr, nullptr));
    *cols = c_buf.read(kind, count * d);
    const std::vector<float> S = host_logits(a_host, n, *cols, count, d);
    CUDA_OK(cudaMemcpy(S_dev.ptr, S.data(), S.size() * 4, cudaMemcpyHostToDevice));
    InfonceChunk c{};
    c.S = S_dev.ptr;
    c.P = bf16 ? P_dev.ptr : static_cast<void*>(S_dev.ptr);
    c.kind = kind;
    c.rows = n;
    c.count = count;
    c.z = s.z_dev + start;
    c.y = y_dev.ptr;
    c.has_self = s.self;
    c.self_start = start;
    c.inv_t = p.inv_t;
    c.ignore = kIgnore;
    c.supcon = p.supcon;
    return std::make_pair(c, S);
  };
  // acc += P·cols on the host (the binding's second cuBLAS product).
  auto accumulate = [&](std::vector<double>& acc, const std::vector<float>& P,
                        const std::vector<float>& cols, int64_t count) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < count; ++j) {
        const double w = P[i * count + j];
        if (w == 0) continue;
        for (int64_t k = 0; k < d; ++k) acc[i * d + k] += w * cols[j * d + k];
      }
  };

  // Negatives, chunk by chunk; the first chunk's kernel output is also checked against the
  // host evaluation of the shared functions.
  bool checked_row_pass = false;
  for (const Seg& s : segs)
    for (int64_t start = 0; start < s.num; start += width) {
      const int64_t count = std::min(width, s.num - start);
      std::vector<float> cols;
      auto [c, S] = chunk_of(s, start, count, &cols);
      const std::vector<float> m_before = m_dev.to_host(), l_before = l_dev.to_host();
      std::vector<float> u_dev_host = U_dev.to_host();
      for (int64_t i = 0; i < n * d; ++i) u_dev_host[i] = static_cast<float>(U[i]);
      CUDA_OK(cudaMemcpy(U_dev.ptr, u_dev_host.data(), n * d * 4, cudaMemcpyHostToDevice));
      CUDA_OK(pixcontrast::cuda::infonce_negatives(c, m_dev.ptr, l_dev.ptr, U_dev.ptr, d, nullptr));
      const std::vector<float> Pk = bf16 ? P_dev.read(kind, n * count)
                                         : Raw::read_f32(S_dev.ptr, n * count);
      const std::vector<float> m_after = m_dev.to_host(), l_after = l_dev.to_host();
      const std::vector<float> u_after = U_dev.to_host();
      // U on the host follows the device's rescale exactly (α read back), then the product.
      for (int64_t i = 0; i < n; ++i) {
        const float alpha = r::rescale_factor(m_before[i], m_after[i]);
        if (alpha != 1.f)
          for (int64_t k = 0; k < d; ++k) U[i * d + k] *= alpha;
      }
      if (!checked_row_pass) {
        std::vector<float> want_p(n * count), want_m(n), want_l(n);
        for (int64_t i = 0; i < n; ++i) {
          float mx = -INFINITY;
          for (int64_t j = 0; j < count; ++j)
            mx = std::max(mx, r::negative_logit(S[i * count + j], p.inv_t, (*s.z)[start + j], p.y[i],
                                                kIgnore, s.self && start + j == i, p.supcon));
          want_m[i] = r::new_max(m_before[i], mx);
          double sum = 0;
          for (int64_t j = 0; j < count; ++j) {
            const float w = r::negative_weight(
                r::negative_logit(S[i * count + j], p.inv_t, (*s.z)[start + j], p.y[i], kIgnore,
                                  s.self && start + j == i, p.supcon),
                want_m[i]);
            want_p[i * count + j] = round_to(kind, w * wscale);
            sum += w;
          }
          want_l[i] = r::rescale_factor(m_before[i], want_m[i]) * l_before[i] + float(sum);
        }
        expect_close("negatives: m", m_after, want_m, 1e-7, 0);
        // Host exp: the Cody-Waite polynomial; device: __expf (~1e-6 relative at |x| ≤ 20).
        expect_close("negatives: l", l_after, want_l, 1e-5, 1e-30);
        expect_close("negatives: P", Pk, want_p, bf16 ? 8e-3 : 1e-5, 1e-30);
        std::vector<double> u_want(U);
        expect_close("negatives: rescaled U", u_after, u_want, 1e-5, 1e-30);
        checked_row_pass = true;
      }
      accumulate(U, Pk, cols, count);
    }
  CUDA_OK(pixcontrast::cuda::infonce_lse(m_dev.ptr, l_dev.ptr, lse_dev.ptr, n, nullptr));
  expect_close("lse", lse_dev.to_host(), ref.lse, 2e-5, 1e-5);

  // Positives over every chunk (the binding's schedule).
  for (const Seg& s : segs)
    for (int64_t start = 0; start < s.num; start += width) {
      const int64_t count = std::min(width, s.num - start);
      std::vector<float> cols;
      auto [c, S] = chunk_of(s, start, count, &cols);
      CUDA_OK(pixcontrast::cuda::infonce_positives(c, lse_dev.ptr, loss_dev.ptr, sig_dev.ptr,
                                                   cnt_dev.ptr, nullptr));
      const std::vector<float> Pk = bf16 ? P_dev.read(kind, n * count)
                                         : Raw::read_f32(S_dev.ptr, n * count);
      accumulate(V, Pk, cols, count);
    }

  // Finalize with the host products.
  std::vector<float> U32(U.begin(), U.end()), V32(V.begin(), V.end());
  Device<float> U_fin(U32), V_fin(V32);
  Device<float> row_loss(std::vector<float>(n, 0.f)), lse_out(std::vector<float>(n, 0.f)),
      pos_sig(std::vector<float>(n, 0.f)), num_pos(std::vector<float>(n, 0.f)),
      row_grad(std::vector<float>(n * d, 0.f));
  InfonceFinalize f{};
  f.n = n, f.d = d, f.m = m_dev.ptr, f.l = l_dev.ptr, f.lse = lse_dev.ptr;
  f.loss = loss_dev.ptr, f.sig = sig_dev.ptr, f.count = cnt_dev.ptr;
  f.U = U_fin.ptr, f.V = V_fin.ptr, f.anchors = a_dev, f.kind = kind;
  f.stride_row = d, f.stride_dim = 1, f.inv_norm = inv_a.ptr, f.normalize = true;
  f.inv_t = p.inv_t, f.weight_scale = wscale;
  f.row_loss = row_loss.ptr, f.lse_out = lse_out.ptr, f.pos_sig = pos_sig.ptr;
  f.num_pos = num_pos.ptr, f.row_grad = row_grad.ptr;
  CUDA_OK(pixcontrast::cuda::infonce_finalize(f, nullptr));
  const double tol = bf16 ? 2e-2 : 1e-4;
  expect_close("row_loss", row_loss.to_host(), ref.loss, tol, 1e-5);
  expect_close("pos_sig", pos_sig.to_host(), ref.sig, tol, 1e-5);
  expect_close("num_pos", num_pos.to_host(), ref.npos, 0, 0);
  expect_close("row_grad", row_grad.to_host(), ref.row_grad, 0, 1e-6, bf16 ? 3e-2 : 1e-4);

  // Column backward: weights, host Gᵀ·Â, column kernel. fp16: the binding's range scale,
  // the power of two at or above max |coef|·max(g, 1)/τ (computed here on the host).
  Device<float> coef(p.coef);
  const std::vector<float> sig_host = pos_sig.to_host();
  double top = 0;
  for (int64_t i = 0; i < n; ++i)
    top = std::max(top, std::fabs(double(p.coef[i])) * std::max(double(sig_host[i]), 1.0) * p.inv_t);
  Device<float> scale_dev(std::vector<float>{static_cast<float>(std::exp2(std::ceil(std::log2(std::max(top, 1e-30)))))});
  const float* scale = kind == ScalarKind::kFloat16 ? scale_dev.ptr : nullptr;
  std::vector<float> grad_cols;
  for (const Seg& s : segs)
    for (int64_t start = 0; start < s.num; start += width) {
      const int64_t count = std::min(width, s.num - start);
      std::vector<float> cols;
      auto [c, S] = chunk_of(s, start, count, &cols);
      CUDA_OK(pixcontrast::cuda::infonce_weights(c, lse_dev.ptr, pos_sig.ptr, coef.ptr, scale,
                                                 nullptr));
      const std::vector<float> G = bf16 ? P_dev.read(kind, n * count)
                                        : Raw::read_f32(S_dev.ptr, n * count);
      std::vector<float> dc(count * d, 0.f);
      for (int64_t j = 0; j < count; ++j)
        for (int64_t k = 0; k < d; ++k) {
          double acc = 0;
          for (int64_t i = 0; i < n; ++i) acc += double(G[i * count + j]) * a_host[i * d + k];
          dc[j * d + k] = static_cast<float>(acc);
        }
      Device<float> dc_dev(dc);
      CUDA_OK(pixcontrast::cuda::infonce_columns_backward(dc_dev.ptr, scale, s.src, kind, d, 1,
                                                          start, count, d, true, nullptr));
      const std::vector<float> out = dc_dev.to_host();
      grad_cols.insert(grad_cols.end(), out.begin(), out.end());
    }
  expect_close("column gradients", grad_cols, ref.grad_cols, 0, 1e-6, bf16 ? 3e-2 : 1e-4);

  // Determinism: the same chunk twice gives the same bits.
  {
    std::vector<float> cols;
    auto [c, S] = chunk_of(segs.back(), 0, std::min(width, segs.back().num), &cols);
    CUDA_OK(pixcontrast::cuda::infonce_weights(c, lse_dev.ptr, pos_sig.ptr, coef.ptr, nullptr,
                                               nullptr));
    const auto g1 = bf16 ? P_dev.read(kind, n * c.count) : Raw::read_f32(S_dev.ptr, n * c.count);
    auto [c2, S2] = chunk_of(segs.back(), 0, std::min(width, segs.back().num), &cols);
    CUDA_OK(pixcontrast::cuda::infonce_weights(c2, lse_dev.ptr, pos_sig.ptr, coef.ptr, nullptr,
                                               nullptr));
    const auto g2 = bf16 ? P_dev.read(kind, n * c.count) : Raw::read_f32(S_dev.ptr, n * c.count);
    if (g1 != g2) {
      std::fprintf(stderr, "  weights differ between two identical runs\n");
      ++failures;
    }
  }
  CUDA_OK(cudaDeviceSynchronize());
  for (Raw* raw : keep) delete raw;
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = pixcontrast_test::seed_or_skip("test_infonce_cuda", argc, argv);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  run_case(37, 101, 20, false, ScalarKind::kFloat32, 64, rng);    // two chunks
  run_case(37, 101, 20, true, ScalarKind::kFloat32, 64, rng);     // self segment + contrast, chunks
  run_case(50, 300, 64, false, ScalarKind::kBFloat16, 128, rng);
  run_case(45, 200, 48, true, ScalarKind::kFloat16, 64, rng);  // fp16: the weight scales
  run_case(19, 0, 33, true, ScalarKind::kBFloat16, 64, rng);        // self-contrast alone
  // SupCon on the same kernels: fp32 over chunks with the self segment, bf16 bank, fp16
  // (its weight scales: positives weigh 1·scale).
  run_case(37, 101, 20, true, ScalarKind::kFloat32, 64, rng, true);
  run_case(50, 300, 64, false, ScalarKind::kBFloat16, 128, rng, true);
  run_case(45, 200, 48, true, ScalarKind::kFloat16, 64, rng, true);
  pixcontrast_test::g_failures += failures;
  return pixcontrast_test::finish("test_infonce_cuda", seed);
}
