// Framework-free launcher of the memory-bank write on CUDA (docs/design.md §2, "Memory bank
// semantics"). It mirrors the Triton kernel of kernels/memory_bank.py; the driver is
// pixcontrast/memory_bank.py::MemoryBank._enqueue.
//
// Only CUDA headers: csrc/cuda/memory_bank.cu compiles with plain nvcc; the torch glue is
// csrc/cuda/memory_bank_binding.cpp (op `bank_write` of csrc/ops.cpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pixcontrast {
namespace cuda {

// Scatters `num_entries` entries into the class-sorted bank, in place:
//
//   features [num_rows, dim] T, row stride `features_row_stride` elements, columns
//     contiguous (MemoryBank.features.view(-1, D));  labels [num_rows] int64 contiguous;
//   values [num_entries, dim] T (already normalised, in the bank's dtype), row stride
//     `values_row_stride` elements, columns contiguous;
//   rows [num_entries] int64: the target row of each entry;
//   keep [num_entries] bool: entries with keep false are not written (empty classes,
//     padding, entries pushed out of a ring within the same update);
//   entry_labels [num_entries] int64.
//
// The kept rows are distinct (the caller guarantees it), so the write is race-free and
// deterministic; a kept row outside [0, num_rows) is dropped (it cannot occur for the
// driver's inputs; the guard keeps a bad input from writing out of bounds). The values are
// copied bit for bit. Equivalent PyTorch (with a host sync this launcher does not have):
//
//   k = keep.nonzero().squeeze(1)
//   features[rows[k]] = values[k];  labels[rows[k]] = entry_labels[k]
//
// T is float, double, __half or __nv_bfloat16 (instantiated in memory_bank.cu).
template <typename T>
cudaError_t bank_write(T* features, int64_t features_row_stride, int64_t* labels,
                       int64_t num_rows, const T* values, int64_t values_row_stride,
                       const int64_t* rows, const bool* keep, const int64_t* entry_labels,
                       int64_t num_entries, int64_t dim, cudaStream_t stream);

extern template cudaError_t bank_write<float>(float*, int64_t, int64_t*, int64_t, const float*,
                                              int64_t, const int64_t*, const bool*,
                                              const int64_t*, int64_t, int64_t, cudaStream_t);
extern template cudaError_t bank_write<double>(double*, int64_t, int64_t*, int64_t,
                                               const double*, int64_t, const int64_t*,
                                               const bool*, const int64_t*, int64_t, int64_t,
                                               cudaStream_t);
extern template cudaError_t bank_write<__half>(__half*, int64_t, int64_t*, int64_t,
                                               const __half*, int64_t, const int64_t*,
                                               const bool*, const int64_t*, int64_t, int64_t,
                                               cudaStream_t);
extern template cudaError_t bank_write<__nv_bfloat16>(__nv_bfloat16*, int64_t, int64_t*,
                                                      int64_t, const __nv_bfloat16*, int64_t,
                                                      const int64_t*, const bool*,
                                                      const int64_t*, int64_t, int64_t,
                                                      cudaStream_t);

}  // namespace cuda
}  // namespace pixcontrast
