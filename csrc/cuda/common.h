// Framework-free helpers shared by the CUDA kernels of pixcontrast (csrc/cuda/*.cu).
//
// Only CUDA headers: plain nvcc compiles every kernel on a machine without a GPU or a CUDA
// build of torch (CMakeLists.txt does, in CI). The torch glue (stream, device guard,
// dispatcher registration, argument checks on tensors) lives in csrc/cuda/*_binding.cpp.
//
// Conventions of every launcher:
// * takes raw device pointers, sizes (int64_t) and a cudaStream_t; never allocates unless
//   it is given a workspace; never synchronises the host;
// * returns early (cudaSuccess) on empty inputs without launching;
// * returns the error of the last launch (PIXCONTRAST_RETURN_IF_ERROR after each launch),
//   which the binding turns into a torch error naming the kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#define PIXCONTRAST_RETURN_IF_ERROR(expr)          \
  do {                                             \
    cudaError_t pixcontrast_err_ = (expr);         \
    if (pixcontrast_err_ != cudaSuccess) {         \
      return pixcontrast_err_;                     \
    }                                              \
  } while (0)

// After a <<<...>>> launch: configuration errors surface here (asynchronous faults
// surface at the next synchronising call, as for any CUDA op).
#define PIXCONTRAST_LAUNCH_CHECK() PIXCONTRAST_RETURN_IF_ERROR(cudaGetLastError())

namespace pixcontrast {
namespace cuda {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid dimension y and z are limited to 65535; x to 2^31 - 1.
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;

}  // namespace cuda
}  // namespace pixcontrast
