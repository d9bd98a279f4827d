// C++ test of the CUDA InfoNCE launchers (csrc/cuda/infonce.h) against a float64 CPU
// computation, without torch. Built by CMakeLists.txt, run by ctest; exits 77 (skipped)
// when no CUDA device is present.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/infonce.h"
#include "test_util.h"

using pixcontrast::cuda::InfonceForwardOutputs;
using pixcontrast::cuda::InfonceRows;
using pixcontrast::cuda::InfonceSegment;
using pixcontrast::cuda::ScalarKind;

namespace {

constexpr int64_t kIgnore = -1;

template <class T>
T* to_device(const std::vector<T>& host) {
  T* ptr = nullptr;
  CUDA_OK(cudaMalloc(&ptr, std::max<size_t>(host.size(), 1) * sizeof(T)));
  if (!host.empty()) {
    CUDA_OK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  return ptr;
}

template <class T>
std::vector<T> to_host(const T* ptr, size_t count) {
  std::vector<T> host(count);
  if (count) CUDA_OK(cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

struct Problem {
  int64_t n, m, d;
  bool self_contrast, bf16;
  double inv_t = 10.0;
  std::vector<float> a, c;  // values exactly representable in the operand dtype
  std::vector<int64_t> y, z;
  std::vector<float> coef;  // backward's row_coef
};

float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

Problem make_problem(int64_t n, int64_t m, int64_t d, bool self_contrast, bool bf16,
                     std::mt19937& rng) {
  Problem p{n, m, d, self_contrast, bf16};
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> cls(0, 4);
  std::uniform_real_distribution<float> unif(0.f, 1.f);
  // One centre per label in [0, kMaxLabel] and one for ignored rows (index kMaxLabel + 1).
  // (Row 0's label 9 used to index past a 6-centre table: its embedding was whatever
  // memory followed, up to ~1e30, whose fp32 norm overflows; lse[0] then mismatched.)
  constexpr int64_t kMaxLabel = 9;
  std::vector<float> centers((kMaxLabel + 2) * d);
  for (auto& v : centers) v = 1.5f * normal(rng);
  auto sample = [&](int64_t label) {
    std::vector<float> row(d);
    const int64_t center = label < 0 ? kMaxLabel + 1 : label;
    for (int64_t k = 0; k < d; ++k) {
      float v = centers[center * d + k] + normal(rng);
      row[k] = bf16 ? round_bf16(v) : v;
    }
    return row;
  };
  for (int64_t i = 0; i < n; ++i) {
    int64_t label = unif(rng) < 0.1f ? kIgnore : cls(rng);
    if (i == 0) label = kMaxLabel;  // no positive anywhere
    p.y.push_back(label);
    auto row = sample(label);
    p.a.insert(p.a.end(), row.begin(), row.end());
    p.coef.push_back(unif(rng) - 0.3f);
  }
  for (int64_t j = 0; j < m; ++j) {
    int64_t label = unif(rng) < 0.1f ? kIgnore : cls(rng);
    p.z.push_back(label);
  }
  std::sort(p.z.begin(), p.z.end());  // the memory bank's class-sorted layout
  for (int64_t j = 0; j < m; ++j) {
    auto row = sample(p.z[j]);
    p.c.insert(p.c.end(), row.begin(), row.end());
  }
  return p;
}

// Float64 reference of the row terms, the row gradient and the column gradients.
struct Reference {
  std::vector<double> loss, lse, sig, npos, row_grad, grad_c, grad_a_cols;
};

Reference reference(const Problem& p) {
  const int64_t n = p.n, d = p.d;
  // columns: [anchors (self)] + bank
  std::vector<const float*> col;
  std::vector<int64_t> zc, self_of;
  if (p.self_contrast)
    for (int64_t i = 0; i < n; ++i) col.push_back(&p.a[i * d]), zc.push_back(p.y[i]), self_of.push_back(i);
  for (int64_t j = 0; j < p.m; ++j) col.push_back(&p.c[j * d]), zc.push_back(p.z[j]), self_of.push_back(-1);
  const int64_t mc = static_cast<int64_t>(col.size());
  auto normalized = [&](const float* x) {
    std::vector<double> v(x, x + d);
    double s = 0;
    for (double e : v) s += e * e;
    s = std::max(std::sqrt(s), 1e-12);
    for (double& e : v) e /= s;
    return v;
  };
  std::vector<std::vector<double>> ah(n), ch(mc);
  for (int64_t i = 0; i < n; ++i) ah[i] = normalized(&p.a[i * d]);
  for (int64_t j = 0; j < mc; ++j) ch[j] = normalized(col[j]);
  auto logit = [&](int64_t i, int64_t j) {
    double s = 0;
    for (int64_t k = 0; k < d; ++k) s += ah[i][k] * ch[j][k];
    return s * p.inv_t;
  };
  auto backprop = [&](std::vector<double> g, const float* x) {  // through x/‖x‖
    std::vector<double> xh = normalized(x);
    double norm = 0, proj = 0;
    for (int64_t k = 0; k < d; ++k) norm += double(x[k]) * x[k], proj += xh[k] * g[k];
    norm = std::sqrt(norm);
    for (int64_t k = 0; k < d; ++k) g[k] = (g[k] - xh[k] * proj) / norm;
    return g;
  };
  Reference r;
  r.loss.assign(n, 0), r.lse.assign(n, -INFINITY), r.sig.assign(n, 0), r.npos.assign(n, 0);
  r.row_grad.assign(n * d, 0);
  std::vector<std::vector<double>> gc(mc, std::vector<double>(d, 0));
  for (int64_t i = 0; i < n; ++i) {
    if (p.y[i] == kIgnore) continue;
    std::vector<double> s(mc);
    double mx = -INFINITY;
    for (int64_t j = 0; j < mc; ++j) {
      s[j] = logit(i, j);
      if (zc[j] != kIgnore && zc[j] != p.y[i]) mx = std::max(mx, s[j]);
    }
    double l = 0;
    for (int64_t j = 0; j < mc; ++j)
      if (zc[j] != kIgnore && zc[j] != p.y[i]) l += std::exp(s[j] - mx);
    const double lse = l > 0 ? mx + std::log(l) : -INFINITY;
    r.lse[i] = lse;
    std::vector<double> gh(d, 0);
    std::vector<double> G(mc, 0);
    for (int64_t j = 0; j < mc; ++j) {
      if (zc[j] != p.y[i] || self_of[j] == i) continue;
      const double x = lse - s[j];
      const double sp = x == -INFINITY ? 0 : std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x)));
      const double sg = x == -INFINITY ? 0 : 1 / (1 + std::exp(-x));
      r.loss[i] += sp, r.sig[i] += sg, r.npos[i] += 1;
      G[j] = -sg;
    }
    if (r.npos[i] == 0) continue;
    for (int64_t j = 0; j < mc; ++j)
      if (zc[j] != kIgnore && zc[j] != p.y[i]) G[j] = r.sig[i] * std::exp(s[j] - lse);
    for (int64_t j = 0; j < mc; ++j) {
      if (G[j] == 0) continue;
      for (int64_t k = 0; k < d; ++k) {
        gh[k] += G[j] * ch[j][k] * p.inv_t / r.npos[i];
        gc[j][k] += p.coef[i] * G[j] * ah[i][k] * p.inv_t;
      }
    }
    r.loss[i] /= r.npos[i];
    auto g = backprop(gh, &p.a[i * d]);
    std::copy(g.begin(), g.end(), r.row_grad.begin() + i * d);
  }
  for (int64_t j = 0; j < mc; ++j) {
    auto g = backprop(gc[j], col[j]);
    auto& out = self_of[j] >= 0 ? r.grad_a_cols : r.grad_c;
    out.insert(out.end(), g.begin(), g.end());
  }
  return r;
}

int failures = 0;

// |got - want| <= atol + rtol·|want| + scale_rtol·max|want|: an elementwise part and a part
// relative to the array's scale, as the Python tests judge (tests/_oracle.py fp32_rtol: the
// tensor cores' truncating fp32 accumulation errs relative to the magnitude of the dot
// products, not of each small output element).
void expect_close(const char* what, const std::vector<float>& got, const std::vector<double>& want,
                  double rtol, double atol, double scale_rtol) {
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::isfinite(w) ? std::fabs(w) : 0.0);
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = (std::isinf(w) && g == w) ||
                    std::fabs(g - w) <= atol + rtol * std::fabs(w) + scale_rtol * scale;
    if (!ok) {
      std::fprintf(stderr, "  %s[%zu]: got %.7g, want %.7g\n", what, i, g, w);
      ++failures;
      return;
    }
  }
}

void run_case(int64_t n, int64_t m, int64_t d, bool self_contrast, bool bf16, int64_t target,
              std::mt19937& rng) {
  std::printf("case n=%lld m=%lld d=%lld self=%d %s splits_target=%lld\n", (long long)n,
              (long long)m, (long long)d, self_contrast, bf16 ? "bf16" : "fp32",
              (long long)target);
  Problem p = make_problem(n, m, d, self_contrast, bf16, rng);
  Reference ref = reference(p);

  // label-sorted row order (stable), as the binding computes it with torch.sort
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return p.y[a] < p.y[b]; });
  std::vector<int64_t> sorted(n);
  for (int64_t r = 0; r < n; ++r) sorted[r] = p.y[perm[r]];

  void *a_dev, *c_dev;
  if (bf16) {
    std::vector<__nv_bfloat16> a16(p.a.size()), c16(p.c.size());
    for (size_t i = 0; i < a16.size(); ++i) a16[i] = __float2bfloat16(p.a[i]);
    for (size_t i = 0; i < c16.size(); ++i) c16[i] = __float2bfloat16(p.c[i]);
    a_dev = to_device(a16), c_dev = to_device(c16);
  } else {
    a_dev = to_device(p.a), c_dev = to_device(p.c);
  }
  int64_t *y_dev = to_device(p.y), *z_dev = to_device(p.z);
  int64_t *perm_dev = to_device(perm), *sorted_dev = to_device(sorted);

  InfonceRows rows{a_dev, d, 1, perm_dev, sorted_dev, n, d,
                   bf16 ? ScalarKind::kBFloat16 : ScalarKind::kFloat32,
                   /*allow_tf32=*/false, /*normalize=*/true, float(p.inv_t), kIgnore};
  std::vector<InfonceSegment> segs;
  if (self_contrast) segs.push_back(InfonceSegment{a_dev, d, 1, y_dev, 1, n, true});
  segs.push_back(InfonceSegment{c_dev, d, 1, z_dev, 1, m, false});
  const int64_t slots = pixcontrast::cuda::infonce_plan_splits(
      segs.data(), int(segs.size()), rows, true, target, int64_t(1) << 30);

  float* ws_s = to_device(std::vector<float>(pixcontrast::cuda::infonce_workspace_scalars(slots, n)));
  float* ws_v = to_device(std::vector<float>(pixcontrast::cuda::infonce_workspace_vectors(slots, n, d)));
  std::vector<float*> outs;
  for (int k = 0; k < 4; ++k) outs.push_back(to_device(std::vector<float>(n)));
  float* row_grad = to_device(std::vector<float>(n * d));
  InfonceForwardOutputs out{outs[0], outs[1], outs[2], outs[3], row_grad};
  CUDA_OK(pixcontrast::cuda::infonce_forward(rows, segs.data(), int(segs.size()), slots, true,
                                                ws_s, ws_v, out, nullptr));
  CUDA_OK(cudaDeviceSynchronize());

  // bf16: the former bound (3e-2 of max(|want|, 1% of the scale)). fp32 (3xTF32 on the tensor
  // cores): tests/_oracle.py's model, 2e-5 + 3·ceil(D/8)·2^-23 of the scale at τ = 0.1.
  const double rtol = bf16 ? 3e-2 : 1e-4, atol = bf16 ? 2e-3 : 1e-6;
  const double scale_rtol = bf16 ? 3e-4 : 2e-5 + 3.0 * double((d + 7) / 8) * std::ldexp(1.0, -23);
  expect_close("row_loss", to_host(outs[0], n), ref.loss, rtol, atol, scale_rtol);
  expect_close("lse", to_host(outs[1], n), ref.lse, rtol, atol, scale_rtol);
  expect_close("pos_sig", to_host(outs[2], n), ref.sig, rtol, atol, scale_rtol);
  expect_close("num_pos", to_host(outs[3], n), ref.npos, 0, 0, 0);
  expect_close("row_grad", to_host(row_grad, n * d), ref.row_grad, rtol, atol, scale_rtol);

  // Column backward with row_coef = p.coef (the reference used the same coefficients).
  float* coef_dev = to_device(p.coef);
  float* grad_c = to_device(std::vector<float>(m * d));
  CUDA_OK(pixcontrast::cuda::infonce_backward_columns(rows, segs.back(), outs[1], outs[2],
                                                         coef_dev, grad_c, nullptr));
  float* grad_a = nullptr;
  if (self_contrast) {
    grad_a = to_device(std::vector<float>(n * d));
    CUDA_OK(pixcontrast::cuda::infonce_backward_columns(rows, segs.front(), outs[1], outs[2],
                                                           coef_dev, grad_a, nullptr));
  }
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("grad_contrast", to_host(grad_c, m * d), ref.grad_c, rtol, atol, scale_rtol);
  if (self_contrast)
    expect_close("grad_anchor_columns", to_host(grad_a, n * d), ref.grad_a_cols, rtol, atol,
                 scale_rtol);

  for (void* ptr : {a_dev, c_dev, (void*)y_dev, (void*)z_dev, (void*)perm_dev, (void*)sorted_dev,
                    (void*)ws_s, (void*)ws_v, (void*)row_grad, (void*)coef_dev, (void*)grad_c,
                    (void*)grad_a})
    if (ptr) cudaFree(ptr);
  for (float* ptr : outs) cudaFree(ptr);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("test_infonce_cuda: no CUDA device, skipped\n");
    return 77;
  }
  std::mt19937 rng(std::random_device{}());
  run_case(77, 301, 40, false, false, 3, rng);
  run_case(77, 301, 40, true, false, 5, rng);
  run_case(130, 517, 256, true, false, 9, rng);
  run_case(65, 333, 96, false, true, 4, rng);
  run_case(33, 200, 300, true, true, 2, rng);
  if (failures) {
    std::fprintf(stderr, "test_infonce_cuda: %d mismatches\n", failures);
    return 1;
  }
  std::printf("test_infonce_cuda: all cases match the float64 reference\n");
  return 0;
}
