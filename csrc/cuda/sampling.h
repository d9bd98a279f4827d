// Framework-free launchers of anchor sampling on CUDA (docs/design.md §2.5): two kernels
// around one sort, the CUDA twins of kernels/sampling.py (same inputs, same workspace
// layout, the same samples bit for bit). The driver (pixcontrast/sampling.py,
// `_sample_fused`) makes four launches in all:
//
//   1. torch.randint: R-bit keys, B·hw for the pixels, then P for the pair slots when
//      max_samples < P (P = B·hw // (max_views + 1), R = sampling_rand_bits);
//   2. sample_histogram (one CTA per image): the image's eligible classes in increasing
//      label order with their hard/easy counts and the sorted position of their first
//      pixel (windows of kSamplingWindow label values; shared-memory integer histograms),
//      then per pixel the sort key set << R | key (set = 2·j + easy for the j-th eligible
//      class, 2·pimg for the rest). The CTA that finishes last (an integer counter, reset
//      by it) runs the pair stage: V, the max_samples pairs of lowest (key, index), their
//      quotas and first output rows, and the padding of the unused rows;
//   3. torch.sort(stable=True) of the sort keys per image;
//   4. sample_select (one thread per sorted position): rank in the run = position minus
//      the run's start; selected when below the set's quota.
//
// Workspace ws [7, B·pimg] int64, pimg = sampling_pairs_per_image(hw, max_views); column
// b·pimg + j holds the j-th eligible pair of image b, rows kWsLabel..kWsQuotaEasy.
//
// Only CUDA headers (and CUB): the kernels compile with plain nvcc; the torch glue is
// csrc/cuda/sampling_binding.cpp (ops of csrc/sampling_ops.cpp). Neither launcher allocates
// nor synchronises the host; both are CUDA-graph capturable. The helpers below are
// __host__ __device__ so that the C++ test checks them on the CPU too.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pixcontrast {
namespace cuda {

enum SamplingWsRow : int64_t {
  kWsLabel = 0,      // the class (label value)
  kWsHard = 1,       // its hard pixels in the image
  kWsEasy = 2,       // its easy pixels
  kWsStart = 3,      // sorted position of its first pixel in the image
  kWsRow = 4,        // first output row, -1 when the pair is not kept
  kWsQuotaHard = 5,  // hard pixels to take
  kWsQuotaEasy = 6,  // easy pixels to take
  kWsRows = 7,
};

// Label values per histogram window (a window of 256 bins, the last one unused, as in
// kernels/sampling.py): labels spanning fewer values are one pass and a table lookup.
constexpr int64_t kSamplingWindow = 255;

struct SamplingShape {
  int64_t batch;         // B
  int64_t hw;            // pixels per image
  int64_t max_samples;   // output rows
  int64_t max_views;
  int64_t ignore_index;
};

// Slots per image for its eligible pairs (at least one).
__host__ __device__ inline int64_t sampling_pairs_per_image(int64_t hw, int64_t max_views) {
  const int64_t p = hw / (max_views + 1);
  return p > 1 ? p : 1;
}

// Random bits per key: set << R | key must fit 63 bits (min(62, 63 - bit_length(2·pimg))).
__host__ __device__ inline int sampling_rand_bits(int64_t hw, int64_t max_views) {
  int64_t v = 2 * sampling_pairs_per_image(hw, max_views);
  int bits = 0;
  while (v) {
    ++bits;
    v >>= 1;
  }
  return 63 - bits < 62 ? 63 - bits : 62;
}

// The bin of `label` in the window [lo, lo + width), or -1. Exact for every int64 pair
// (the difference is taken in uint64 once label >= lo is known).
__host__ __device__ inline int64_t sampling_window_bin(int64_t label, int64_t lo,
                                                       int64_t width) {
  if (label < lo) {
    return -1;
  }
  const uint64_t rel = static_cast<uint64_t>(label) - static_cast<uint64_t>(lo);
  return rel < static_cast<uint64_t>(width) ? static_cast<int64_t>(rel) : -1;
}

// The quota rule (docs/design.md §2.5, pixcontrast.sampling.sampling_quotas): x >= V/2 as
// 2x >= V, exact in integers.
__host__ __device__ inline void sampling_quotas(int64_t hard, int64_t easy, int64_t views,
                                                int64_t* q_hard, int64_t* q_easy) {
  const int64_t half = views / 2;
  const bool many_hard = 2 * hard >= views;
  const bool both = many_hard && 2 * easy >= views;
  *q_hard = both ? half : (many_hard ? views - easy : hard);
  *q_easy = both ? views - half : (many_hard ? easy : views - hard);
}

// A pair with key k is kept when k < t, or k == t and fewer than `need` tied pairs come
// before it (t: the max_samples-th smallest key; need = max_samples - #{keys < t}).
__host__ __device__ inline bool sampling_pair_kept(int64_t key, int64_t t, int64_t tie_rank,
                                                   int64_t need) {
  return key < t || (key == t && tie_rank < need);
}

// Output row of the sorted position `pos` of an image, or -1 when not selected: `start` is
// the pair's first sorted position, `row0` its first output row (-1: not kept).
__host__ __device__ inline int64_t sampling_row(int64_t pos, bool easy, int64_t start,
                                                int64_t hard, int64_t row0, int64_t q_hard,
                                                int64_t q_easy, int64_t max_samples) {
  if (row0 < 0) {
    return -1;
  }
  const int64_t rank = pos - start - (easy ? hard : 0);
  if (rank < 0 || rank >= (easy ? q_easy : q_hard)) {
    return -1;
  }
  const int64_t row = row0 + (easy ? q_hard : 0) + rank;
  return row < max_samples ? row : -1;
}

// Kernel 2 of the header comment. labels/predictions/sort_keys [B, hw], keys [B·hw (+ P)],
// ws [7, B·pimg], npairs [B], counter: one int32, zero (left zero); out_idx/out_lab
// [max_samples]: the unused rows are written here, the others by sampling_select.
cudaError_t sampling_histogram(const int64_t* labels, const int64_t* predictions,
                               const int64_t* keys, const SamplingShape& shape,
                               int64_t* sort_keys, int64_t* ws, int64_t* npairs,
                               int32_t* counter, int64_t* out_idx, int64_t* out_lab,
                               cudaStream_t stream);

// Kernel 4: sorted_keys/perm [B, hw] (torch.sort's values and indices), ws as written by
// sampling_histogram; writes the selected rows of out_idx/out_lab.
cudaError_t sampling_select(const int64_t* sorted_keys, const int64_t* perm, const int64_t* ws,
                            const SamplingShape& shape, int64_t* out_idx, int64_t* out_lab,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace pixcontrast
