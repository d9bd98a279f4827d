// Torch glue of the CUDA anchor-sampling kernels (csrc/cuda/sampling.h): argument checks
// that name the argument, device guard, current stream, launch check, and the CUDA
// registration of the `sample_histogram` / `sample_select` schemas of csrc/sampling_ops.cpp.
// Built only against a CUDA build of torch (setup.py).
//
// Every check reads metadata only and runs before any data_ptr(); shapes are formatted by
// shape_string (csrc/cuda/binding.h), never streamed as IntArrayRef.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream (at:: = c10::)
#include <torch/library.h>

#include "cuda/binding.h"
#include "cuda/sampling.h"

namespace pixcontrast {
namespace {

constexpr const char* kHistogramOp = "pixcontrast::sample_histogram";
constexpr const char* kSelectOp = "pixcontrast::sample_select";

// A CUDA int64 tensor on `ref`'s device, contiguous (the kernels index it flat).
void check_int64(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                 const char* ref_name) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(op, t, name);
  PIXCONTRAST_CHECK_SAME_DEVICE(op, t, ref, name, ref_name);
  PIXCONTRAST_CHECK_DTYPE(op, t, at::kLong, name);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ",
              shape_string(t.strides()));
}

void check_2d(const char* op, const at::Tensor& t, const char* name, int64_t rows,
              int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name,
              " must be [", rows, ", ", cols, "], got shape ", shape_string(t.sizes()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_histogram_cuda(
    const at::Tensor& labels, const at::Tensor& predictions, const at::Tensor& keys,
    at::Tensor& counter, int64_t max_samples, int64_t max_views, int64_t ignore_index) {
  check_int64(kHistogramOp, labels, "labels", labels, "labels");
  TORCH_CHECK(labels.dim() == 2, kHistogramOp, ": labels must be 2-D [B, hw], got shape ",
              shape_string(labels.sizes()));
  const int64_t batch = labels.size(0), hw = labels.size(1);
  check_int64(kHistogramOp, predictions, "predictions", labels, "labels");
  check_2d(kHistogramOp, predictions, "predictions", batch, hw);
  TORCH_CHECK(max_samples >= 1 && max_views >= 1, kHistogramOp,
              ": max_samples and max_views must be >= 1, got ", max_samples, " and ",
              max_views);
  const int64_t n = batch * hw;
  const int64_t slots = n / (max_views + 1) > 1 ? n / (max_views + 1) : 1;  // P
  const int64_t n_keys = n + (max_samples < slots ? slots : 0);
  check_int64(kHistogramOp, keys, "keys", labels, "labels");
  PIXCONTRAST_CHECK_1D_SIZE(kHistogramOp, keys, n_keys, "keys",
                            "B·hw (+ P when max_samples < P)");
  PIXCONTRAST_CHECK_CUDA_TENSOR(kHistogramOp, counter, "counter");
  PIXCONTRAST_CHECK_SAME_DEVICE(kHistogramOp, counter, labels, "counter", "labels");
  PIXCONTRAST_CHECK_DTYPE(kHistogramOp, counter, at::kInt, "counter");
  TORCH_CHECK(counter.numel() == 1, kHistogramOp, ": counter must hold one element, got shape ",
              shape_string(counter.sizes()));

  const int64_t pimg = cuda::sampling_pairs_per_image(hw, max_views);
  const auto opts = labels.options();
  at::Tensor sort_keys = at::empty({batch, hw}, opts);
  at::Tensor ws = at::empty({cuda::kWsRows, batch * pimg}, opts);
  at::Tensor npairs = at::empty({batch}, opts);
  at::Tensor out_idx = at::empty({max_samples}, opts);
  at::Tensor out_lab = at::empty({max_samples}, opts);
  if (n == 0) {
    out_idx.fill_(-1);
    out_lab.fill_(ignore_index);
    return {sort_keys, ws, out_idx, out_lab};
  }
  const c10::cuda::CUDAGuard guard(labels.device());
  const cuda::SamplingShape shape{batch, hw, max_samples, max_views, ignore_index};
  PIXCONTRAST_CHECK_LAUNCH(
      cuda::sampling_histogram(labels.data_ptr<int64_t>(), predictions.data_ptr<int64_t>(),
                               keys.data_ptr<int64_t>(), shape, sort_keys.data_ptr<int64_t>(),
                               ws.data_ptr<int64_t>(), npairs.data_ptr<int64_t>(),
                               counter.data_ptr<int32_t>(), out_idx.data_ptr<int64_t>(),
                               out_lab.data_ptr<int64_t>(),
                               at::cuda::getCurrentCUDAStream()),
      "sampling_histogram");
  return {sort_keys, ws, out_idx, out_lab};
}

void sample_select_cuda(const at::Tensor& sorted_keys, const at::Tensor& perm,
                        const at::Tensor& ws, at::Tensor& out_idx, at::Tensor& out_lab,
                        int64_t max_views) {
  check_int64(kSelectOp, sorted_keys, "sorted_keys", sorted_keys, "sorted_keys");
  TORCH_CHECK(sorted_keys.dim() == 2, kSelectOp,
              ": sorted_keys must be 2-D [B, hw], got shape ", shape_string(sorted_keys.sizes()));
  const int64_t batch = sorted_keys.size(0), hw = sorted_keys.size(1);
  check_int64(kSelectOp, perm, "perm", sorted_keys, "sorted_keys");
  check_2d(kSelectOp, perm, "perm", batch, hw);
  TORCH_CHECK(max_views >= 1, kSelectOp, ": max_views must be >= 1, got ", max_views);
  check_int64(kSelectOp, ws, "ws", sorted_keys, "sorted_keys");
  check_2d(kSelectOp, ws, "ws", cuda::kWsRows,
           batch * cuda::sampling_pairs_per_image(hw, max_views));
  check_int64(kSelectOp, out_idx, "out_idx", sorted_keys, "sorted_keys");
  TORCH_CHECK(out_idx.dim() == 1, kSelectOp, ": out_idx must be 1-D [max_samples], got shape ",
              shape_string(out_idx.sizes()));
  check_int64(kSelectOp, out_lab, "out_lab", sorted_keys, "sorted_keys");
  PIXCONTRAST_CHECK_1D_SIZE(kSelectOp, out_lab, out_idx.size(0), "out_lab", "max_samples");
  const int64_t max_samples = out_idx.size(0);
  if (batch * hw == 0 || max_samples == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(sorted_keys.device());
  const cuda::SamplingShape shape{batch, hw, max_samples, max_views, 0};
  PIXCONTRAST_CHECK_LAUNCH(
      cuda::sampling_select(sorted_keys.data_ptr<int64_t>(), perm.data_ptr<int64_t>(),
                            ws.data_ptr<int64_t>(), shape, out_idx.data_ptr<int64_t>(),
                            out_lab.data_ptr<int64_t>(), at::cuda::getCurrentCUDAStream()),
      "sampling_select");
}

}  // namespace
}  // namespace pixcontrast

TORCH_LIBRARY_IMPL(pixcontrast, CUDA, m) {
  m.impl("sample_histogram", &pixcontrast::sample_histogram_cuda);
  m.impl("sample_select", &pixcontrast::sample_select_cuda);
}
