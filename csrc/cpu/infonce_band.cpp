// The CPU twin of the CUDA band kernel for the same-class positives (csrc/common/infonce_band.h,
// csrc/cuda/infonce_band.cu; docs/notes/infonce-cuda.md "v2.2"): the same label sorts, work
// list, per-item schedule, row math and merge, run by one thread per item with the tile
// products as plain loops (fp32 accumulation of operand-dtype values, as the tensor cores).
// A private op for tests (tests/test_infonce_band.py), not a public API:
//
//   _infonce_band_positives(anchors [N, D], labels [N], contrast [M, D], contrast_labels [M],
//       self_contrast, inv_temperature, ignore_index, lse [N] f32, need_grad, supcon,
//       num_items, block) -> (loss [N], sig [N], count [N], V [N, D] or [0, D]), all f32
//
// with loss = Σ_p softplus(λ − s_p), sig = Σ_p σ(λ − s_p), count = |P| and V = Σ_p σ_p ĉ_p
// over each row's positives (SupCon: λ − s_p, 1, |P|, Σ_p ĉ_p), the anchors and the columns
// normalised (the band runs on the fast path only, where normalize is on). `num_items`: the
// work list's target item count; `block`: rows per block and columns per tile (0: what the
// CUDA binding picks, band_block and band_rows_block).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "common/infonce_band.h"
#include "common/infonce_rows.h"

namespace pixcontrast::cpu {
namespace {

namespace b = ::pixcontrast::band;

// The GPU's fp16 weight scale (csrc/cuda/infonce.h, kHalfWeightScale): P = σ·scale in fp16,
// V carries the factor; divided out before returning.
constexpr float kHalfWeightScale = 32768.f;
// The CUDA kernel's shared-memory budget for the tiles (csrc/cuda/infonce_band.cu).
constexpr int64_t kTileBudget = 220 << 10;

// 1/max(‖x‖, eps) per row (fp32 [R]) and, for the anchors, Â in the operand dtype,
// x·(1/max(‖x‖, eps)) rounded: what the GPU's normalise kernel gives the band.
template <typename T>
at::Tensor inverse_norms(const at::Tensor& x, at::Tensor* normalized) {
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t n = xf.size(0), d = xf.size(1);
  at::Tensor inv = at::empty({n}, xf.options());
  const float* xp = xf.const_data_ptr<float>();
  float* ip = inv.data_ptr<float>();
  T* op = nullptr;
  if (normalized != nullptr) {
    *normalized = at::empty({n, d}, x.options());
    op = static_cast<T*>(normalized->data_ptr());
  }
  for (int64_t i = 0; i < n; ++i) {
    float ss = 0.f;
    for (int64_t e = 0; e < d; ++e) ss += xp[i * d + e] * xp[i * d + e];
    ip[i] = rows::inv_norm(ss);
    if (op != nullptr)
      for (int64_t e = 0; e < d; ++e) op[i * d + e] = b::Operand<T>::store(xp[i * d + e] * ip[i]);
  }
  return inv;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> band_positives(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore, const at::Tensor& lse, bool need_grad, bool supcon, int64_t num_items,
    int64_t block, bool supcon_split) {
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  const auto f32 = anchors.options().dtype(at::kFloat);
  at::Tensor loss = at::zeros({n}, f32), sig = at::zeros({n}, f32), cnt = at::zeros({n}, f32);
  at::Tensor V = at::zeros({need_grad ? n : 0, d}, f32);
  const int S = (self_contrast ? 1 : 0) + (m > 0 ? 1 : 0);
  if (n == 0 || S == 0) return {loss, sig, cnt, V};

  const int bn = block > 0 ? static_cast<int>(block) : b::band_block<T>(d, kTileBudget);
  TORCH_CHECK(bn > 0, "_infonce_band_positives: D = ", d, " is too large for the band tiles");
  const int bm = block > 0 ? bn : b::band_rows_block(n, bn);
  at::Tensor a_hat;
  inverse_norms<T>(anchors, &a_hat);
  const at::Tensor inv_c = inverse_norms<T>(contrast, nullptr);
  const auto [ys, perm] = at::sort(labels, /*stable=*/true, 0, false);
  const auto [zs, cperm] = at::sort(contrast_labels, /*stable=*/true, 0, false);
  const at::Tensor lse_c = lse.to(at::kFloat).contiguous();
  const float scale = anchors.scalar_type() == at::kHalf ? kHalfWeightScale : 1.f;

  b::BandProblem pb{};
  pb.n = n;
  pb.d = d;
  pb.rows = a_hat.const_data_ptr();
  pb.perm = perm.const_data_ptr<int64_t>();
  pb.ys = ys.const_data_ptr<int64_t>();
  pb.lse = lse_c.const_data_ptr<float>();
  pb.num_segments = S;
  int s = 0;
  if (self_contrast)
    pb.seg[s++] = {n, a_hat.const_data_ptr(), d, 1, pb.perm, pb.ys, nullptr, true};
  if (m > 0)
    pb.seg[s++] = {m, contrast.const_data_ptr(), contrast.stride(0), contrast.stride(1),
                   cperm.const_data_ptr<int64_t>(), zs.const_data_ptr<int64_t>(),
                   inv_c.const_data_ptr<float>(), false};
  pb.self_first = self_contrast;
  pb.inv_t = static_cast<float>(inv_temperature);
  pb.ignore = ignore;
  pb.supcon = supcon;
  pb.supcon_split = supcon_split;
  pb.scale = scale;
  pb.block_rows = bm;
  pb.block_cols = bn;
  pb.target = num_items;
  pb.loss = loss.data_ptr<float>();
  pb.sig = sig.data_ptr<float>();
  pb.count = cnt.data_ptr<float>();
  pb.V = need_grad ? V.data_ptr<float>() : nullptr;
  at::Tensor ws = at::empty({b::band_layout(pb, nullptr, nullptr, nullptr, nullptr)},
                            anchors.options().dtype(at::kByte));
  b::BandPlan plan;
  b::BandArgs args;
  b::BandMerge merge;
  b::band_layout(pb, static_cast<char*>(ws.data_ptr()), &plan, &args, &merge);

  b::band_plan(b::SerialGroup{}, plan);
  const int64_t bytes = b::band_tiles<T>(nullptr, bm, bn, d, nullptr);
  // Items write disjoint partial rows: any split over threads gives the same bits.
  at::parallel_for(0, *plan.num_items, 1, [&](int64_t begin, int64_t end) {
    at::Tensor buf = at::empty({bytes}, anchors.options().dtype(at::kByte));
    b::BandTiles<T> t;
    b::band_tiles<T>(static_cast<char*>(buf.data_ptr()), bm, bn, d, &t);
    for (int64_t item = begin; item < end; ++item)
      b::band_item<T, b::LoopProducts>(b::SerialGroup{}, args, t, item);
  });
  for (int64_t r = 0; r < n; ++r) b::band_merge_row(b::SerialGroup{}, merge, r);
  if (need_grad && scale != 1.f) V.div_(scale);
  return {loss, sig, cnt, V};
}

}  // namespace

// The band of the CPU device schedule (csrc/cpu/infonce.cpp, which declares it), with its
// SupCon split (BandProblem::supcon_split); the op below runs it without the split.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> infonce_band_positives(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, const at::Tensor& lse, bool need_grad, bool supcon, int64_t num_items,
    int64_t block, bool supcon_split) {
  constexpr const char* op = "_infonce_band_positives";
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be 2-D [N, D], got shape ",
              anchors.sizes());
  const auto dt = anchors.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": anchors must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(contrast.dim() == 2 && contrast.size(1) == anchors.size(1) &&
                  contrast.scalar_type() == dt,
              op, ": contrast must be [M, D] with anchors' D and dtype, got ", contrast.sizes(),
              " ", contrast.scalar_type());
  const int64_t n = anchors.size(0), m = contrast.size(0);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == n && labels.scalar_type() == at::kLong, op,
              ": labels must be int64 [N] with N = ", n);
  TORCH_CHECK(contrast_labels.dim() == 1 && contrast_labels.size(0) == m &&
                  contrast_labels.scalar_type() == at::kLong,
              op, ": contrast_labels must be int64 [M] with M = ", m);
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == n && lse.is_floating_point(), op,
              ": lse must be a floating-point [N] with N = ", n);
  TORCH_CHECK(num_items >= 1, op, ": num_items must be >= 1, got ", num_items);
  TORCH_CHECK(block == 0 || block == 16 || block == 32 || block == 64, op,
              ": block must be 0, 16, 32 or 64, got ", block);
  switch (dt) {
    case at::kBFloat16:
      return band_positives<c10::BFloat16>(anchors, labels, contrast, contrast_labels,
                                           self_contrast, inv_temperature, ignore_index, lse,
                                           need_grad, supcon, num_items, block, supcon_split);
    case at::kHalf:
      return band_positives<c10::Half>(anchors, labels, contrast, contrast_labels,
                                       self_contrast, inv_temperature, ignore_index, lse,
                                       need_grad, supcon, num_items, block, supcon_split);
    default:
      return band_positives<float>(anchors, labels, contrast, contrast_labels, self_contrast,
                                   inv_temperature, ignore_index, lse, need_grad, supcon,
                                   num_items, block, supcon_split);
  }
}

// The op (tests/test_infonce_band.py): V with SupCon's positive weights of 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> infonce_band_positives_op(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrast,
    const at::Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, const at::Tensor& lse, bool need_grad, bool supcon, int64_t num_items,
    int64_t block) {
  return infonce_band_positives(anchors, labels, contrast, contrast_labels, self_contrast,
                                inv_temperature, ignore_index, lse, need_grad, supcon,
                                num_items, block, false);
}

}  // namespace pixcontrast::cpu

TORCH_LIBRARY_FRAGMENT(pixcontrast, m) {
  m.def(
      "_infonce_band_positives(Tensor anchors, Tensor labels, Tensor contrast, "
      "Tensor contrast_labels, bool self_contrast, float inv_temperature, int ignore_index, "
      "Tensor lse, bool need_grad, bool supcon, int num_items, int block) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pixcontrast, CPU, m) {
  m.impl("_infonce_band_positives", &pixcontrast::cpu::infonce_band_positives_op);
}
