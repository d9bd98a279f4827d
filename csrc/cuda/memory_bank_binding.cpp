// Torch glue of the CUDA memory-bank write (csrc/cuda/memory_bank.h): argument checks that
// name the argument, device guard, current stream, launch check, and the CUDA registration
// of the `bank_write` schema of csrc/ops.cpp. Built only against a CUDA build of torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream (at:: = c10::)
#include <torch/library.h>

#include "cuda/binding.h"
#include "cuda/memory_bank.h"

namespace pixcontrast {
namespace {

constexpr const char* kOp = "pixcontrast::bank_write";

template <typename T>
cudaError_t launch(at::Tensor& features, at::Tensor& labels, const at::Tensor& values,
                   const at::Tensor& rows, const at::Tensor& keep,
                   const at::Tensor& entry_labels, cudaStream_t stream) {
  return cuda::bank_write<T>(
      reinterpret_cast<T*>(features.data_ptr()), features.stride(0),
      labels.data_ptr<int64_t>(), features.size(0),
      reinterpret_cast<const T*>(values.data_ptr()), values.stride(0),
      rows.data_ptr<int64_t>(), keep.data_ptr<bool>(), entry_labels.data_ptr<int64_t>(),
      values.size(0), values.size(1), stream);
}

void bank_write_cuda(at::Tensor& features, at::Tensor& labels, const at::Tensor& values,
                     const at::Tensor& rows, const at::Tensor& keep,
                     const at::Tensor& entry_labels) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, features, "features");
  TORCH_CHECK(features.dim() == 2, kOp, ": features must be 2-D [R, D], got shape ",
              features.sizes());
  const int64_t num_rows = features.size(0);
  const int64_t dim = features.size(1);
  TORCH_CHECK(dim <= 1 || features.stride(1) == 1, kOp,
              ": features must have contiguous rows (stride 1 along D; it is written in "
              "place), got strides ",
              features.strides());
  const at::ScalarType dtype = features.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              kOp, ": features must be float32, float64, float16 or bfloat16, got ", dtype);

  PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, labels, "labels");
  PIXCONTRAST_CHECK_SAME_DEVICE(kOp, labels, features, "labels", "features");
  PIXCONTRAST_CHECK_DTYPE(kOp, labels, at::kLong, "labels");
  PIXCONTRAST_CHECK_1D(kOp, labels, num_rows, "labels", "R");
  TORCH_CHECK(labels.is_contiguous(), kOp,
              ": labels must be contiguous (it is written in place), got strides ",
              labels.strides());

  PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, values, "values");
  PIXCONTRAST_CHECK_SAME_DEVICE(kOp, values, features, "values", "features");
  TORCH_CHECK(values.scalar_type() == dtype, kOp, ": values must have features' dtype ",
              dtype, ", got ", values.scalar_type());
  TORCH_CHECK(values.dim() == 2 && values.size(1) == dim, kOp,
              ": values must be 2-D [E, D] with D = ", dim, ", got shape ", values.sizes());
  const int64_t num_entries = values.size(0);
  // A strided column layout is made contiguous (a copy of the input, never written).
  const at::Tensor values_c =
      (dim <= 1 || values.stride(1) == 1) ? values : values.contiguous();

  auto entry_input = [&](const at::Tensor& t, const char* name, at::ScalarType want) {
    PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, t, name);
    PIXCONTRAST_CHECK_SAME_DEVICE(kOp, t, features, name, "features");
    PIXCONTRAST_CHECK_DTYPE(kOp, t, want, name);
    PIXCONTRAST_CHECK_1D(kOp, t, num_entries, name, "E");
    return t.contiguous();
  };
  const at::Tensor rows_c = entry_input(rows, "rows", at::kLong);
  const at::Tensor keep_c = entry_input(keep, "keep", at::kBool);
  const at::Tensor entry_labels_c = entry_input(entry_labels, "entry_labels", at::kLong);

  if (num_entries == 0 || num_rows == 0 || dim == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(features.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  switch (dtype) {  // the one dtype dispatch: at:: types to the CUDA types of the launcher
    case at::kFloat:
      err = launch<float>(features, labels, values_c, rows_c, keep_c, entry_labels_c, stream);
      break;
    case at::kDouble:
      err = launch<double>(features, labels, values_c, rows_c, keep_c, entry_labels_c, stream);
      break;
    case at::kHalf:
      err = launch<__half>(features, labels, values_c, rows_c, keep_c, entry_labels_c, stream);
      break;
    case at::kBFloat16:
      err = launch<__nv_bfloat16>(features, labels, values_c, rows_c, keep_c, entry_labels_c,
                                  stream);
      break;
    default:
      TORCH_CHECK(false, kOp, ": unsupported dtype ", dtype);
  }
  PIXCONTRAST_CHECK_LAUNCH(err, "bank_write");
}

}  // namespace
}  // namespace pixcontrast

TORCH_LIBRARY_IMPL(pixcontrast, CUDA, m) {
  m.impl("bank_write", &pixcontrast::bank_write_cuda);
}
