// Torch glue of the CUDA anchor-sampling kernels (csrc/cuda/sampling.h): argument checks
// that name the argument, device guard, current stream, launch check, and the CUDA
// registration of the `sampling_run_histogram` / `sampling_select_scatter` schemas of
// csrc/ops.cpp. Built only against a CUDA build of torch (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream (at:: = c10::)
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/binding.h"
#include "cuda/sampling.h"

namespace pixcontrast {
namespace {

constexpr const char* kHistogramOp = "pixcontrast::sampling_run_histogram";
constexpr const char* kSelectOp = "pixcontrast::sampling_select_scatter";

// A 1-D [n] tensor of `dtype` on `ref`'s CUDA device; returned contiguous (a copy only
// when the caller passed a strided view: inputs are never written).
at::Tensor checked_input(const char* op, const at::Tensor& t, const char* name,
                         at::ScalarType dtype, int64_t n, const char* n_name,
                         const at::Tensor& ref, const char* ref_name) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(op, t, name);
  PIXCONTRAST_CHECK_SAME_DEVICE(op, t, ref, name, ref_name);
  PIXCONTRAST_CHECK_DTYPE(op, t, dtype, name);
  PIXCONTRAST_CHECK_1D(op, t, n, name, n_name);
  return t.contiguous();
}

at::Tensor sampling_run_histogram_cuda(const at::Tensor& run_key, const at::Tensor& rank,
                                       const at::Tensor& cls, const at::Tensor& easy,
                                       const at::Tensor& valid, int64_t hw) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(kHistogramOp, run_key, "run_key");
  TORCH_CHECK(run_key.dim() == 1, kHistogramOp, ": run_key must be 1-D [n], got shape ",
              run_key.sizes());
  const int64_t n = run_key.size(0);
  const at::Tensor key_c = checked_input(kHistogramOp, run_key, "run_key", at::kLong, n, "n",
                                         run_key, "run_key");
  const at::Tensor rank_c =
      checked_input(kHistogramOp, rank, "rank", at::kLong, n, "n", run_key, "run_key");
  const at::Tensor cls_c =
      checked_input(kHistogramOp, cls, "cls", at::kLong, n, "n", run_key, "run_key");
  const at::Tensor easy_c =
      checked_input(kHistogramOp, easy, "easy", at::kBool, n, "n", run_key, "run_key");
  const at::Tensor valid_c =
      checked_input(kHistogramOp, valid, "valid", at::kBool, n, "n", run_key, "run_key");
  TORCH_CHECK(n == 0 || hw > 0, kHistogramOp, ": hw (pixels per image) must be > 0, got ",
              hw);
  TORCH_CHECK(n == 0 || n % hw == 0, kHistogramOp, ": n = ", n,
              " must be a multiple of hw = ", hw, " (n = B·h·w)");

  const c10::cuda::CUDAGuard guard(run_key.device());
  at::Tensor counts = at::empty({n, 2}, run_key.options().dtype(at::kLong));
  if (n == 0) {
    return counts;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  PIXCONTRAST_CHECK_LAUNCH(
      cuda::sampling_run_histogram(key_c.data_ptr<int64_t>(), rank_c.data_ptr<int64_t>(),
                                   cls_c.data_ptr<int64_t>(), easy_c.data_ptr<bool>(),
                                   valid_c.data_ptr<bool>(), n, hw,
                                   counts.data_ptr<int64_t>(), stream),
      "sampling_run_histogram");
  return counts;
}

void sampling_select_scatter_cuda(const at::Tensor& cls, const at::Tensor& easy,
                                  const at::Tensor& rank, const at::Tensor& lab,
                                  const at::Tensor& pix, const at::Tensor& pair_of_cls,
                                  const at::Tensor& kept, const at::Tensor& pair_hard,
                                  const at::Tensor& pair_easy, const at::Tensor& offset,
                                  const at::Tensor& views, at::Tensor& out_idx,
                                  at::Tensor& out_lab, int64_t ignore_index) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(kSelectOp, cls, "cls");
  TORCH_CHECK(cls.dim() == 1, kSelectOp, ": cls must be 1-D [n], got shape ", cls.sizes());
  TORCH_CHECK(kept.dim() == 1, kSelectOp, ": kept must be 1-D [num_pairs], got shape ",
              kept.sizes());
  TORCH_CHECK(out_idx.dim() == 1, kSelectOp, ": out_idx must be 1-D [out_size], got shape ",
              out_idx.sizes());
  const int64_t n = cls.size(0);
  const int64_t num_pairs = kept.size(0);
  const int64_t out_size = out_idx.size(0);
  auto in = [&](const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t size,
                const char* size_name) {
    return checked_input(kSelectOp, t, name, dtype, size, size_name, cls, "cls");
  };
  const at::Tensor cls_c = in(cls, "cls", at::kLong, n, "n");
  const at::Tensor easy_c = in(easy, "easy", at::kBool, n, "n");
  const at::Tensor rank_c = in(rank, "rank", at::kLong, n, "n");
  const at::Tensor lab_c = in(lab, "lab", at::kLong, n, "n");
  const at::Tensor pix_c = in(pix, "pix", at::kLong, n, "n");
  const at::Tensor pair_of_cls_c = in(pair_of_cls, "pair_of_cls", at::kLong, n, "n");
  const at::Tensor kept_c = in(kept, "kept", at::kBool, num_pairs, "num_pairs");
  const at::Tensor hard_c = in(pair_hard, "pair_hard", at::kLong, num_pairs, "num_pairs");
  const at::Tensor easy_n_c = in(pair_easy, "pair_easy", at::kLong, num_pairs, "num_pairs");
  const at::Tensor offset_c = in(offset, "offset", at::kLong, num_pairs, "num_pairs");
  PIXCONTRAST_CHECK_CUDA_TENSOR(kSelectOp, views, "views");
  PIXCONTRAST_CHECK_SAME_DEVICE(kSelectOp, views, cls, "views", "cls");
  PIXCONTRAST_CHECK_DTYPE(kSelectOp, views, at::kLong, "views");
  TORCH_CHECK(views.numel() == 1, kSelectOp,
              ": views must hold one element (V, on the device), got shape ", views.sizes());
  const at::Tensor views_c = views.contiguous();
  // Outputs are written in place: they must be the caller's own contiguous storage.
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{out_idx, "out_idx"},
                                {out_lab, "out_lab"}}) {
    PIXCONTRAST_CHECK_CUDA_TENSOR(kSelectOp, t, name);
    PIXCONTRAST_CHECK_SAME_DEVICE(kSelectOp, t, cls, name, "cls");
    PIXCONTRAST_CHECK_DTYPE(kSelectOp, t, at::kLong, name);
    PIXCONTRAST_CHECK_1D(kSelectOp, t, out_size, name, "out_size");
    TORCH_CHECK(t.is_contiguous(), kSelectOp, ": ", name,
                " must be contiguous (it is written in place), got strides ", t.strides());
  }

  if (n == 0 || num_pairs == 0 || out_size == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(cls.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  PIXCONTRAST_CHECK_LAUNCH(
      cuda::sampling_select_scatter(
          cls_c.data_ptr<int64_t>(), easy_c.data_ptr<bool>(), rank_c.data_ptr<int64_t>(),
          lab_c.data_ptr<int64_t>(), pix_c.data_ptr<int64_t>(),
          pair_of_cls_c.data_ptr<int64_t>(), n, kept_c.data_ptr<bool>(),
          hard_c.data_ptr<int64_t>(), easy_n_c.data_ptr<int64_t>(),
          offset_c.data_ptr<int64_t>(), num_pairs, views_c.data_ptr<int64_t>(), ignore_index,
          out_idx.data_ptr<int64_t>(), out_lab.data_ptr<int64_t>(), out_size, stream),
      "sampling_select_scatter");
}

}  // namespace
}  // namespace pixcontrast

TORCH_LIBRARY_IMPL(pixcontrast, CUDA, m) {
  m.impl("sampling_run_histogram", &pixcontrast::sampling_run_histogram_cuda);
  m.impl("sampling_select_scatter", &pixcontrast::sampling_select_scatter_cuda);
}
