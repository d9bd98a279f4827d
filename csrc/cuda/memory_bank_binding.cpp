// Torch glue of the CUDA memory-bank kernels (csrc/cuda/memory_bank.h): argument checks
// that name the argument (metadata only, shapes formatted by shape_string, before any
// data_ptr), device guard, current stream, launch check, and the CUDA registration of the
// `bank_write` schema of csrc/ops.cpp and `bank_update` of csrc/sampling_ops.cpp. Built
// only against a CUDA build of torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream (at:: = c10::)
#include <torch/library.h>

#include <tuple>
#include <utility>

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
              shape_string(features.sizes()));
  const int64_t num_rows = features.size(0);
  const int64_t dim = features.size(1);
  TORCH_CHECK(dim <= 1 || features.stride(1) == 1, kOp,
              ": features must have contiguous rows (stride 1 along D; it is written in "
              "place), got strides ",
              shape_string(features.strides()));
  const at::ScalarType dtype = features.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              kOp, ": features must be float32, float64, float16 or bfloat16, got ", dtype);

  PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, labels, "labels");
  PIXCONTRAST_CHECK_SAME_DEVICE(kOp, labels, features, "labels", "features");
  PIXCONTRAST_CHECK_DTYPE(kOp, labels, at::kLong, "labels");
  PIXCONTRAST_CHECK_1D_SIZE(kOp, labels, num_rows, "labels", "R");
  TORCH_CHECK(labels.is_contiguous(), kOp,
              ": labels must be contiguous (it is written in place), got strides ",
              shape_string(labels.strides()));

  PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, values, "values");
  PIXCONTRAST_CHECK_SAME_DEVICE(kOp, values, features, "values", "features");
  TORCH_CHECK(values.scalar_type() == dtype, kOp, ": values must have features' dtype ",
              dtype, ", got ", values.scalar_type());
  TORCH_CHECK(values.dim() == 2 && values.size(1) == dim, kOp,
              ": values must be 2-D [E, D] with D = ", dim, ", got shape ",
              shape_string(values.sizes()));
  const int64_t num_entries = values.size(0);
  // A strided column layout is made contiguous (a copy of the input, never written).
  const at::Tensor values_c =
      (dim <= 1 || values.stride(1) == 1) ? values : values.contiguous();

  auto entry_input = [&](const at::Tensor& t, const char* name, at::ScalarType want) {
    PIXCONTRAST_CHECK_CUDA_TENSOR(kOp, t, name);
    PIXCONTRAST_CHECK_SAME_DEVICE(kOp, t, features, name, "features");
    PIXCONTRAST_CHECK_DTYPE(kOp, t, want, name);
    PIXCONTRAST_CHECK_1D_SIZE(kOp, t, num_entries, name, "E");
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

constexpr const char* kUpdateOp = "pixcontrast::bank_update";

template <typename X, typename T>
cudaError_t launch_update(const at::Tensor& x, const at::Tensor& y, const at::Tensor& keys,
                          const cuda::BankShape& shape, at::Tensor& features,
                          at::Tensor& labels, at::Tensor& pointers, at::Tensor& counters,
                          at::Tensor& workspace, at::Tensor& ok, cudaStream_t stream) {
  return cuda::bank_update<X, T>(
      reinterpret_cast<const X*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(2),
      y.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), shape,
      reinterpret_cast<T*>(features.data_ptr()), labels.data_ptr<int64_t>(),
      pointers.data_ptr<int64_t>(), counters.data_ptr<int32_t>(), workspace.data_ptr(),
      ok.data_ptr<int32_t>(), stream);
}

template <typename X>
cudaError_t launch_update_for(at::ScalarType bank, const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& keys, const cuda::BankShape& shape,
                              at::Tensor& features, at::Tensor& labels, at::Tensor& pointers,
                              at::Tensor& counters, at::Tensor& workspace, at::Tensor& ok,
                              cudaStream_t stream) {
  switch (bank) {
    case at::kFloat:
      return launch_update<X, float>(x, y, keys, shape, features, labels, pointers, counters,
                                     workspace, ok, stream);
    case at::kDouble:
      return launch_update<X, double>(x, y, keys, shape, features, labels, pointers, counters,
                                      workspace, ok, stream);
    case at::kHalf:
      return launch_update<X, __half>(x, y, keys, shape, features, labels, pointers, counters,
                                      workspace, ok, stream);
    default:
      return launch_update<X, __nv_bfloat16>(x, y, keys, shape, features, labels, pointers,
                                             counters, workspace, ok, stream);
  }
}

// The fused update (csrc/cuda/memory_bank.h): checks (metadata only, before any
// data_ptr), workspace, the (embedding, bank) dtype dispatch; returns ok [1] int32.
at::Tensor bank_update_cuda(at::Tensor& features, at::Tensor& labels, at::Tensor& pointers,
                            at::Tensor& counters, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& keys, int64_t pixels_per_update) {
  auto is_float = [](at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
  };
  PIXCONTRAST_CHECK_CUDA_TENSOR(kUpdateOp, features, "features");
  TORCH_CHECK(features.dim() == 4 && features.size(1) == 2 && features.is_contiguous(),
              kUpdateOp, ": features must be a contiguous [K, 2, size, D], got shape ",
              shape_string(features.sizes()), " strides ", shape_string(features.strides()));
  TORCH_CHECK(is_float(features.scalar_type()), kUpdateOp,
              ": features must be float32, float64, float16 or bfloat16, got ",
              features.scalar_type());
  const int64_t k = features.size(0), size = features.size(2), dim = features.size(3);
  TORCH_CHECK(k >= 1 && k <= cuda::kBankMaxClasses, kUpdateOp, ": K = ", k,
              " classes: the fused update takes 1 to ", cuda::kBankMaxClasses);
  for (const auto& [t, name, dtype, numel] :
       {std::tuple<const at::Tensor&, const char*, at::ScalarType, int64_t>{
            labels, "labels", at::kLong, k * 2 * size},
        {pointers, "pointers", at::kLong, k * 2}}) {
    PIXCONTRAST_CHECK_CUDA_TENSOR(kUpdateOp, t, name);
    PIXCONTRAST_CHECK_SAME_DEVICE(kUpdateOp, t, features, name, "features");
    PIXCONTRAST_CHECK_DTYPE(kUpdateOp, t, dtype, name);
    TORCH_CHECK(t.numel() == numel && t.is_contiguous(), kUpdateOp, ": ", name,
                " must be contiguous with ", numel, " elements, got shape ",
                shape_string(t.sizes()));
  }
  PIXCONTRAST_CHECK_CUDA_TENSOR(kUpdateOp, x, "x");
  PIXCONTRAST_CHECK_SAME_DEVICE(kUpdateOp, x, features, "x", "features");
  TORCH_CHECK(is_float(x.scalar_type()), kUpdateOp,
              ": x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3 && x.size(1) == dim, kUpdateOp, ": x must be [B, D, HW] with D = ",
              dim, ", got shape ", shape_string(x.sizes()));
  const int64_t batch = x.size(0), hw = x.size(2);
  TORCH_CHECK(hw <= (int64_t{1} << cuda::kBankPixelBits), kUpdateOp,
              ": at most 2^23 pixels per image, got ", hw);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{y, "y"},
                                {keys, "keys"}}) {
    PIXCONTRAST_CHECK_CUDA_TENSOR(kUpdateOp, t, name);
    PIXCONTRAST_CHECK_SAME_DEVICE(kUpdateOp, t, features, name, "features");
    PIXCONTRAST_CHECK_DTYPE(kUpdateOp, t, at::kLong, name);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == hw && t.is_contiguous(),
                kUpdateOp, ": ", name, " must be a contiguous [B, HW] = [", batch, ", ", hw,
                "], got shape ", shape_string(t.sizes()));
  }
  PIXCONTRAST_CHECK_CUDA_TENSOR(kUpdateOp, counters, "counters");
  PIXCONTRAST_CHECK_SAME_DEVICE(kUpdateOp, counters, features, "counters", "features");
  PIXCONTRAST_CHECK_DTYPE(kUpdateOp, counters, at::kInt, "counters");
  TORCH_CHECK(counters.dim() == 1 && counters.size(0) >= batch + 1 && counters.is_contiguous(),
              kUpdateOp, ": counters must be 1-D with at least B + 1 = ", batch + 1,
              " elements, got shape ", shape_string(counters.sizes()));
  TORCH_CHECK(pixels_per_update >= 1, kUpdateOp, ": pixels_per_update must be >= 1, got ",
              pixels_per_update);

  if (batch == 0 || hw == 0 || dim == 0) {
    return at::ones({1}, features.options().dtype(at::kInt));  // nothing to write
  }
  at::Tensor ok = at::empty({1}, features.options().dtype(at::kInt));  // the kernel writes it
  const cuda::BankShape shape{batch, dim, hw, k, size, pixels_per_update};
  at::Tensor workspace = at::empty(
      {static_cast<int64_t>(cuda::bank_update_workspace(
          shape, features.scalar_type() == at::kDouble))},
      features.options().dtype(at::kByte));
  const c10::cuda::CUDAGuard guard(features.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::ScalarType bank = features.scalar_type();
  cudaError_t err = cudaSuccess;
  switch (x.scalar_type()) {  // the one dtype dispatch: (embedding, bank) to CUDA types
    case at::kFloat:
      err = launch_update_for<float>(bank, x, y, keys, shape, features, labels, pointers,
                                     counters, workspace, ok, stream);
      break;
    case at::kDouble:
      err = launch_update_for<double>(bank, x, y, keys, shape, features, labels, pointers,
                                      counters, workspace, ok, stream);
      break;
    case at::kHalf:
      err = launch_update_for<__half>(bank, x, y, keys, shape, features, labels, pointers,
                                      counters, workspace, ok, stream);
      break;
    default:
      err = launch_update_for<__nv_bfloat16>(bank, x, y, keys, shape, features, labels,
                                             pointers, counters, workspace, ok, stream);
  }
  PIXCONTRAST_CHECK_LAUNCH(err, "bank_update");
  return ok;
}

}  // namespace
}  // namespace pixcontrast

TORCH_LIBRARY_IMPL(pixcontrast, CUDA, m) {
  m.impl("bank_write", &pixcontrast::bank_write_cuda);
  m.impl("bank_update", &pixcontrast::bank_update_cuda);
}
