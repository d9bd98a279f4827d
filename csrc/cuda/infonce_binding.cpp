// Torch glue of the CUDA InfoNCE kernels (csrc/cuda/infonce.cu): argument checks that name
// the argument, the device guard and current stream, the label sort and the workspace, and
// the registration under the CUDA dispatch key of the schemas in csrc/ops.cpp.
// Built only against a CUDA build of torch (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cuda/binding.h"
#include "cuda/infonce.h"

namespace pixcontrast {
namespace cuda {
namespace {

using at::Tensor;

// Cap of the forward's split workspace: more splits fill more SMs, each costs a slot.
constexpr int64_t kWorkspaceBytes = 32 << 20;

ScalarKind kind_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      return ScalarKind::kFloat32;
  }
}

void check_inputs(const char* op, const Tensor& anchors, const Tensor& labels,
                  const Tensor& contrast, const Tensor& contrast_labels, double inv_temperature) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(op, anchors, "anchors");
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be 2-D [N, D], got shape ",
              anchors.sizes());
  const auto dt = anchors.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": anchors must be float32, bfloat16 or float16 on CUDA, got ", dt);
  TORCH_CHECK(anchors.size(1) >= 1 && anchors.size(1) <= kInfonceMaxDim, op,
              ": the embedding dim D = anchors.size(1) must be in [1, ", kInfonceMaxDim,
              "] for the CUDA kernels, got ", anchors.size(1));
  TORCH_CHECK(contrast.dim() == 2 && contrast.size(1) == anchors.size(1), op,
              ": contrast must be 2-D [M, D] with D = anchors.size(1) = ", anchors.size(1),
              ", got shape ", contrast.sizes());
  TORCH_CHECK(contrast.scalar_type() == dt, op, ": contrast dtype ", contrast.scalar_type(),
              " must match anchors dtype ", dt);
  PIXCONTRAST_CHECK_SAME_DEVICE(op, contrast, anchors, "contrast", "anchors");
  PIXCONTRAST_CHECK_1D(op, labels, anchors.size(0), "labels", "N");
  PIXCONTRAST_CHECK_DTYPE(op, labels, at::kLong, "labels");
  PIXCONTRAST_CHECK_SAME_DEVICE(op, labels, anchors, "labels", "anchors");
  PIXCONTRAST_CHECK_1D(op, contrast_labels, contrast.size(0), "contrast_labels", "M");
  PIXCONTRAST_CHECK_DTYPE(op, contrast_labels, at::kLong, "contrast_labels");
  PIXCONTRAST_CHECK_SAME_DEVICE(op, contrast_labels, anchors, "contrast_labels", "anchors");
  TORCH_CHECK(std::isfinite(inv_temperature), op, ": inv_temperature must be finite, got ",
              inv_temperature);
}

InfonceRows make_rows(const Tensor& anchors, const Tensor& perm, const Tensor& sorted_labels,
                      double inv_temperature, int64_t ignore_index, bool normalize,
                      bool allow_tf32) {
  InfonceRows rows{};
  rows.anchors = anchors.data_ptr();
  rows.stride_row = anchors.stride(0);
  rows.stride_dim = anchors.stride(1);
  rows.perm = perm.data_ptr<int64_t>();
  rows.sorted_labels = sorted_labels.data_ptr<int64_t>();
  rows.n = anchors.size(0);
  rows.d = anchors.size(1);
  rows.kind = kind_of(anchors.scalar_type());
  // The op's argument (the Python wrapper reads torch's TF32 setting once per call).
  rows.allow_tf32 = allow_tf32;
  rows.normalize = normalize;
  rows.inv_temperature = static_cast<float>(inv_temperature);
  rows.ignore_index = ignore_index;
  return rows;
}

InfonceSegment make_segment(const Tensor& data, const Tensor& labels, bool is_self) {
  InfonceSegment seg{};
  seg.data = data.data_ptr();
  seg.stride_row = data.stride(0);
  seg.stride_dim = data.stride(1);
  seg.labels = labels.data_ptr<int64_t>();
  seg.stride_labels = labels.stride(0);
  seg.num = data.size(0);
  seg.is_self = is_self;
  return seg;
}

int64_t multiprocessor_count(int device) {
  int count = 0;  // a device attribute query: no synchronisation
  const cudaError_t err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, "pixcontrast: cudaDeviceGetAttribute failed: ",
              cudaGetErrorString(err));
  return count;
}

// The rows' label-sorted order, on the device (stable: deterministic, and the backward
// recomputes exactly the forward's order).
std::tuple<Tensor, Tensor> sort_rows(const Tensor& labels) {
  auto sorted = at::sort(labels, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  return {std::get<0>(sorted).contiguous(), std::get<1>(sorted).contiguous()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> infonce_forward_cuda(
    const Tensor& anchors, const Tensor& labels, const Tensor& contrast,
    const Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, bool need_grad, bool allow_tf32) {
  constexpr const char* op = "infonce_forward";
  check_inputs(op, anchors, labels, contrast, contrast_labels, inv_temperature);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  const auto f32 = anchors.options().dtype(at::kFloat);

  std::vector<InfonceSegment> segments;
  if (self_contrast && n > 0) segments.push_back(make_segment(anchors, labels, true));
  if (m > 0 && n > 0) segments.push_back(make_segment(contrast, contrast_labels, false));
  if (segments.empty()) {  // no rows or no columns: nothing to contrast against
    return {at::zeros({n}, f32), at::full({n}, -INFINITY, f32), at::zeros({n}, f32),
            at::zeros({n}, f32), at::zeros({need_grad ? n : 0, d}, f32)};
  }

  Tensor sorted_labels, perm;
  std::tie(sorted_labels, perm) = sort_rows(labels);
  const InfonceRows rows = make_rows(anchors, perm, sorted_labels, inv_temperature,
                                     ignore_index, normalize, allow_tf32);
  const InfonceTiles tiles = infonce_tiles(rows.kind, rows.allow_tf32, d);
  const int64_t row_blocks = (n + tiles.block_rows - 1) / tiles.block_rows;
  TORCH_CHECK(row_blocks <= 65535, op, ": too many anchors for the CUDA kernels (N = ", n,
              ", at most ", 65535 * tiles.block_rows, ")");
  // About two CTAs per SM over the row blocks (flash-decoding split of the columns).
  const int64_t sms = multiprocessor_count(anchors.device().index());
  const int64_t target = (2 * sms + row_blocks - 1) / row_blocks;
  const int64_t slots = infonce_plan_splits(segments.data(), static_cast<int>(segments.size()),
                                            rows, need_grad, target, kWorkspaceBytes);

  Tensor ws_scalars = at::empty({infonce_workspace_scalars(slots, n)}, f32);
  Tensor ws_vectors = need_grad ? at::empty({infonce_workspace_vectors(slots, n, d)}, f32)
                                : at::empty({0}, f32);
  Tensor row_loss = at::empty({n}, f32), lse = at::empty({n}, f32);
  Tensor pos_sig = at::empty({n}, f32), num_pos = at::empty({n}, f32);
  Tensor row_grad = at::empty({need_grad ? n : 0, d}, f32);
  InfonceForwardOutputs out{row_loss.data_ptr<float>(), lse.data_ptr<float>(),
                            pos_sig.data_ptr<float>(), num_pos.data_ptr<float>(),
                            need_grad ? row_grad.data_ptr<float>() : nullptr};
  PIXCONTRAST_CHECK_LAUNCH(
      infonce_forward(rows, segments.data(), static_cast<int>(segments.size()), slots,
                      need_grad, ws_scalars.data_ptr<float>(),
                      need_grad ? ws_vectors.data_ptr<float>() : nullptr, out,
                      c10::cuda::getCurrentCUDAStream()),
      "infonce_forward");
  return {row_loss, lse, pos_sig, num_pos, row_grad};
}

std::tuple<Tensor, Tensor> infonce_backward_columns_cuda(
    const Tensor& anchors, const Tensor& labels, const Tensor& contrast,
    const Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, const Tensor& lse, const Tensor& pos_sig,
    const Tensor& row_coef, bool allow_tf32) {
  constexpr const char* op = "infonce_backward_columns";
  check_inputs(op, anchors, labels, contrast, contrast_labels, inv_temperature);
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{lse, "lse"},
                                {pos_sig, "pos_sig"},
                                {row_coef, "row_coef"}}) {
    PIXCONTRAST_CHECK_1D(op, t, n, name, "N");
    TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating point, got ",
                t.scalar_type());
    PIXCONTRAST_CHECK_SAME_DEVICE(op, t, anchors, name, "anchors");
  }
  const c10::cuda::CUDAGuard guard(anchors.device());
  const auto f32 = anchors.options().dtype(at::kFloat);
  const int64_t n_cols = self_contrast ? n : 0;
  if (n == 0) return {at::zeros({m, d}, f32), at::zeros({n_cols, d}, f32)};

  const Tensor lse32 = lse.to(at::kFloat).contiguous();
  const Tensor sig32 = pos_sig.to(at::kFloat).contiguous();
  const Tensor coef32 = row_coef.to(at::kFloat).contiguous();
  Tensor sorted_labels, perm;
  std::tie(sorted_labels, perm) = sort_rows(labels);
  const InfonceRows rows = make_rows(anchors, perm, sorted_labels, inv_temperature,
                                     ignore_index, normalize, allow_tf32);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  // One launch per column segment (the launcher returns at once for an empty one).
  auto column_grad = [&](const Tensor& data, const Tensor& data_labels, int64_t num,
                         bool is_self, const char* kernel) {
    Tensor grad = at::empty({num, d}, f32);
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_backward_columns(rows, make_segment(data, data_labels, is_self),
                                 lse32.data_ptr<float>(), sig32.data_ptr<float>(),
                                 coef32.data_ptr<float>(), grad.data_ptr<float>(), stream),
        kernel);
    return grad;
  };
  Tensor grad_contrast = column_grad(contrast, contrast_labels, m, false,
                                     "infonce_backward_columns (contrast)");
  Tensor grad_anchor_cols = self_contrast
      ? column_grad(anchors, labels, n, true, "infonce_backward_columns (anchors)")
      : at::empty({0, d}, f32);
  return {grad_contrast, grad_anchor_cols};
}

}  // namespace
}  // namespace cuda
}  // namespace pixcontrast

TORCH_LIBRARY_IMPL(pixcontrast, CUDA, m) {
  m.impl("infonce_forward", &pixcontrast::cuda::infonce_forward_cuda);
  m.impl("infonce_backward_columns", &pixcontrast::cuda::infonce_backward_columns_cuda);
}
