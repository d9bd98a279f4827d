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

// ------------------------------------------------------------------------------------------
// The fused update (MemoryBank.update(backend="cuda") in one process): the CUDA twin of
// kernels/memory_bank.py `fused_update`, two kernels.
//
//   1. bank_update_kernel, a CTA per (image, block of kBankChunk pixels): counts and class
//      sums of its pixels (a thread per embedding column, per-class accumulators in shared
//      memory, pixels in order: deterministic) into per-CTA partials; its pick candidates,
//      its pixels sorted by (class, key, pixel) (CUB block radix sort), the first ppu of
//      each class. The last CTA of each image (integer counter) reduces the partials in
//      block order, checks them finite, and merges the candidates per class (the ppu lowest
//      (key, pixel): the torch path's picks). The last image computes every (image,
//      class)'s enqueue orders and moves the pointers (only when everything was finite).
//   2. bank_write_kernel, a CTA per (image, class): the kept segment and pixel entries,
//      normalised, at their ring slots.
//
// The helpers below are shared with the CPU test (tests/cpp/test_memory_bank_cuda.cu).
// ------------------------------------------------------------------------------------------

constexpr int64_t kBankChunk = 2048;     // pixels per CTA of kernel 1
constexpr int kBankKeyBits = 40;         // random bits of a pick key (MemoryBank._RAND_BITS)
constexpr int kBankPixelBits = 63 - kBankKeyBits;   // a candidate: key << 23 | pixel
constexpr int64_t kBankMaxClasses = 95;  // K + 1 <= 96: the per-class accumulators

// Whether (image, class)'s entry with enqueue order e survives an update that enqueues
// `total` entries into a ring of `size` rows, and its row when it does.
__host__ __device__ inline bool bank_entry_kept(int64_t e, int64_t total, int64_t size) {
  return e >= total - size;
}
__host__ __device__ inline int64_t bank_entry_row(int64_t cls, int queue, int64_t pointer,
                                                  int64_t e, int64_t size) {
  return (2 * cls + queue) * size + (pointer + e) % size;
}
// A pick candidate: the 40-bit key above the pixel index (hw <= 2^23), so that candidates
// order by (key, pixel) as the torch path's stable sort does.
__host__ __device__ inline int64_t bank_candidate(int64_t key, int64_t pixel) {
  return (key << kBankPixelBits) | pixel;
}
__host__ __device__ inline int64_t bank_candidate_pixel(int64_t candidate) {
  return candidate & ((int64_t{1} << kBankPixelBits) - 1);
}

struct BankShape {
  int64_t batch, dim, hw, classes, size, ppu;
};

// x [B, D, HW] of X (strides in elements), y [B, HW] int64, keys [B, HW] int64 (40-bit);
// features [K, 2, size, D] of T contiguous, labels [K, 2, size] int64, pointers [K, 2]
// int64; counters [B + 1] int32 zeros (left zero); workspace: bank_update_workspace(shape)
// bytes (any content); ok: one int32, 0 when the embeddings held NaN/Inf (then nothing is
// written). X and T are float, double, __half or __nv_bfloat16 (instantiated in
// memory_bank.cu); the sums are in double for a double bank, float otherwise.
size_t bank_update_workspace(const BankShape& shape, bool double_sums);

template <typename X, typename T>
cudaError_t bank_update(const X* x, int64_t sxb, int64_t sxd, int64_t sxp, const int64_t* y,
                        const int64_t* keys, const BankShape& shape, T* features,
                        int64_t* labels, int64_t* pointers, int32_t* counters, void* workspace,
                        int32_t* ok, cudaStream_t stream);

}  // namespace cuda
}  // namespace pixcontrast
