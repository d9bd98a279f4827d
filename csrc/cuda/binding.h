// Torch glue shared by the CUDA binding files (csrc/cuda/*_binding.cpp): argument checks
// that name the argument, and the conversion of a launcher's cudaError_t into a torch
// error that names the kernel. Built only against a CUDA build of torch.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <string>

// `op`: the op's name, `name`: the argument's name, as the user sees them.
#define PIXCONTRAST_CHECK_CUDA_TENSOR(op, t, name)                                        \
  TORCH_CHECK((t).is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ",      \
              (t).device())

#define PIXCONTRAST_CHECK_SAME_DEVICE(op, t, ref, name, ref_name)                         \
  TORCH_CHECK((t).device() == (ref).device(), op, ": ", name, " is on ", (t).device(),     \
              " but ", ref_name, " is on ", (ref).device())

#define PIXCONTRAST_CHECK_DTYPE(op, t, dtype, name)                                       \
  TORCH_CHECK((t).scalar_type() == (dtype), op, ": ", name, " must be ", (dtype),        \
              ", got ", (t).scalar_type())

#define PIXCONTRAST_CHECK_1D(op, t, n, name, n_name)                                      \
  TORCH_CHECK((t).dim() == 1 && (t).size(0) == (n), op, ": ", name, " must be 1-D [",     \
              n_name, "] with ", n_name, " = ", (n), ", got shape ", (t).sizes())

// A launcher's result: cudaSuccess or the error of its last launch.
#define PIXCONTRAST_CHECK_LAUNCH(err, kernel)                                             \
  do {                                                                                    \
    cudaError_t pixcontrast_err_ = (err);                                                 \
    TORCH_CHECK(pixcontrast_err_ == cudaSuccess, "pixcontrast: CUDA kernel ", kernel,     \
                " failed: ", cudaGetErrorString(pixcontrast_err_));                       \
  } while (0)

namespace pixcontrast {

// "[d0, d1, ...]" (sizes or strides) built with std::to_string only. The shape checks
// below format the shape themselves instead of streaming t.sizes() (an IntArrayRef)
// through TORCH_CHECK's variadic message: on the H200 (2026-11-30) the process died with a segfault, not a
// Python error, exactly when a 1-D shape check of a sliced argument failed, while the
// dtype checks before it raised fine; the IntArrayRef formatting is the one thing those
// shape checks did that the others did not.
inline std::string shape_string(c10::IntArrayRef dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(dims[i]);
  }
  return s + "]";
}

}  // namespace pixcontrast

// `t` must be 1-D with `n` elements (a std::string message; see shape_string). Checked on
// the tensor's metadata only, before any .contiguous() or data_ptr().
#define PIXCONTRAST_CHECK_1D_SIZE(op, t, n, name, n_name)                                 \
  do {                                                                                    \
    if (!((t).dim() == 1 && (t).size(0) == (n))) {                                        \
      const std::string pixcontrast_msg_ = std::string(op) + ": " + (name) +              \
                                           " must be 1-D [" + (n_name) + "] with " +     \
                                           (n_name) + " = " + std::to_string(n) +        \
                                           ", got shape " +                              \
                                           ::pixcontrast::shape_string((t).sizes());                \
      TORCH_CHECK(false, pixcontrast_msg_);                                               \
    }                                                                                     \
  } while (0)
