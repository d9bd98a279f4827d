// CUDA kernel of the memory-bank write; contract in memory_bank.h.
//
// One CTA per entry (grid-stride over entries): the CTA reads keep/rows once and its
// threads copy the row's `dim` elements. Entries are few (B·K·(1 + ppu): ~1.7k for 8
// images, 19 classes, ppu 10) and rows short (D = 256), so this is a latency-bound copy;
// the payload moves as raw bits (a 2-byte type is copied as uint16, and so on), which keeps
// it exact for every dtype and lets one kernel body serve all four.
#include "cuda/memory_bank.h"

#include "cuda/common.h"

namespace pixcontrast {
namespace cuda {
namespace {

// 128 threads: D = 256 fp32 is two elements per thread; a wider CTA would idle.
constexpr int kBankThreads = 128;
// Upper bound on the CTAs of one launch; the kernel loops over the remaining entries.
constexpr int64_t kBankMaxBlocks = 65535;

template <int kBytes>
struct BitsOf;
template <>
struct BitsOf<2> {
  using type = uint16_t;
};
template <>
struct BitsOf<4> {
  using type = uint32_t;
};
template <>
struct BitsOf<8> {
  using type = uint64_t;
};

template <typename Bits>
__global__ void bank_write_kernel(Bits* __restrict__ features, int64_t features_row_stride,
                                  int64_t* __restrict__ labels, int64_t num_rows,
                                  const Bits* __restrict__ values, int64_t values_row_stride,
                                  const int64_t* __restrict__ rows,
                                  const bool* __restrict__ keep,
                                  const int64_t* __restrict__ entry_labels,
                                  int64_t num_entries, int64_t dim) {
  for (int64_t e = blockIdx.x; e < num_entries; e += gridDim.x) {
    if (!keep[e]) {
      continue;  // uniform across the CTA
    }
    const int64_t row = rows[e];
    if (row < 0 || row >= num_rows) {
      continue;
    }
    const Bits* src = values + e * values_row_stride;
    Bits* dst = features + row * features_row_stride;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      dst[j] = src[j];
    }
    if (threadIdx.x == 0) {
      labels[row] = entry_labels[e];
    }
  }
}

}  // namespace

template <typename T>
cudaError_t bank_write(T* features, int64_t features_row_stride, int64_t* labels,
                       int64_t num_rows, const T* values, int64_t values_row_stride,
                       const int64_t* rows, const bool* keep, const int64_t* entry_labels,
                       int64_t num_entries, int64_t dim, cudaStream_t stream) {
  if (num_entries <= 0 || num_rows <= 0 || dim <= 0) {
    return cudaSuccess;
  }
  using Bits = typename BitsOf<sizeof(T)>::type;
  static_assert(sizeof(Bits) == sizeof(T), "bit-copy type of the wrong size");
  const int64_t blocks = num_entries < kBankMaxBlocks ? num_entries : kBankMaxBlocks;
  bank_write_kernel<Bits><<<static_cast<unsigned int>(blocks), kBankThreads, 0, stream>>>(
      reinterpret_cast<Bits*>(features), features_row_stride, labels, num_rows,
      reinterpret_cast<const Bits*>(values), values_row_stride, rows, keep, entry_labels,
      num_entries, dim);
  PIXCONTRAST_LAUNCH_CHECK();
  return cudaSuccess;
}

template cudaError_t bank_write<float>(float*, int64_t, int64_t*, int64_t, const float*,
                                       int64_t, const int64_t*, const bool*, const int64_t*,
                                       int64_t, int64_t, cudaStream_t);
template cudaError_t bank_write<double>(double*, int64_t, int64_t*, int64_t, const double*,
                                        int64_t, const int64_t*, const bool*, const int64_t*,
                                        int64_t, int64_t, cudaStream_t);
template cudaError_t bank_write<__half>(__half*, int64_t, int64_t*, int64_t, const __half*,
                                        int64_t, const int64_t*, const bool*, const int64_t*,
                                        int64_t, int64_t, cudaStream_t);
template cudaError_t bank_write<__nv_bfloat16>(__nv_bfloat16*, int64_t, int64_t*, int64_t,
                                               const __nv_bfloat16*, int64_t, const int64_t*,
                                               const bool*, const int64_t*, int64_t, int64_t,
                                               cudaStream_t);

}  // namespace cuda
}  // namespace pixcontrast
