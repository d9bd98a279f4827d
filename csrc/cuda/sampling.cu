// CUDA kernels of anchor sampling; contract in sampling.h. One thread per sorted pixel,
// grid-stride loops with int64 indices (B·h·w may exceed 2^31 in principle).
#include "cuda/sampling.h"

#include "cuda/common.h"

namespace pixcontrast {
namespace cuda {
namespace {

// 256 threads: the kernels are memory-bound gathers; any multiple of the warp would do.
constexpr int kSamplingThreads = 256;

int64_t grid_for(int64_t n) {
  int64_t blocks = ceil_div(n, kSamplingThreads);
  return blocks < kMaxGridX ? blocks : kMaxGridX;
}

__global__ void run_histogram_kernel(const int64_t* __restrict__ run_key,
                                     const int64_t* __restrict__ rank,
                                     const int64_t* __restrict__ cls,
                                     const bool* __restrict__ easy,
                                     const bool* __restrict__ valid, int64_t n, int64_t hw,
                                     int64_t* __restrict__ counts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    if (!valid[i]) {
      continue;
    }
    const int64_t next = i + 1;
    // last of its run: end of the array, end of an image row, or the key changes next
    const bool is_last = next == n || next % hw == 0 || run_key[next] != run_key[i];
    if (!is_last) {
      continue;
    }
    const int64_t group = cls[i];
    if (group < 0 || group >= n) {  // cannot happen for the driver's inputs
      continue;
    }
    counts[group * 2 + (easy[i] ? 1 : 0)] = rank[i] + 1;
  }
}

// Same rule as pixcontrast.sampling.sampling_quotas (integers; x >= V/2 as 2x >= V).
__device__ __forceinline__ void quotas(int64_t hard, int64_t easy, int64_t views,
                                       int64_t* q_hard, int64_t* q_easy) {
  const int64_t half = views / 2;
  const bool many_hard = 2 * hard >= views;
  const bool both = many_hard && 2 * easy >= views;
  if (both) {
    *q_hard = half;
    *q_easy = views - half;
  } else if (many_hard) {
    *q_hard = views - easy;
    *q_easy = easy;
  } else {
    *q_hard = hard;
    *q_easy = views - hard;
  }
}

__global__ void select_scatter_kernel(
    const int64_t* __restrict__ cls, const bool* __restrict__ easy,
    const int64_t* __restrict__ rank, const int64_t* __restrict__ lab,
    const int64_t* __restrict__ pix, const int64_t* __restrict__ pair_of_cls, int64_t n,
    const bool* __restrict__ kept, const int64_t* __restrict__ pair_hard,
    const int64_t* __restrict__ pair_easy, const int64_t* __restrict__ offset,
    int64_t num_pairs, const int64_t* __restrict__ views_ptr, int64_t ignore_index,
    int64_t* __restrict__ out_idx, int64_t* __restrict__ out_lab, int64_t out_size) {
  const int64_t views = *views_ptr;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t label = lab[i];
    if (label == ignore_index) {
      continue;
    }
    const int64_t group = cls[i];
    if (group < 0 || group >= n) {
      continue;
    }
    const int64_t pair = pair_of_cls[group];
    if (pair < 0 || pair >= num_pairs || !kept[pair]) {
      continue;
    }
    int64_t q_hard, q_easy;
    quotas(pair_hard[pair], pair_easy[pair], views, &q_hard, &q_easy);
    const bool is_easy = easy[i];
    const int64_t r = rank[i];
    if (r >= (is_easy ? q_easy : q_hard)) {
      continue;
    }
    const int64_t row = offset[pair] + (is_easy ? q_hard : 0) + r;
    if (row < 0 || row >= out_size) {
      continue;
    }
    out_idx[row] = pix[i];
    out_lab[row] = label;
  }
}

}  // namespace

cudaError_t sampling_run_histogram(const int64_t* run_key, const int64_t* rank,
                                   const int64_t* cls, const bool* easy, const bool* valid,
                                   int64_t n, int64_t hw, int64_t* counts,
                                   cudaStream_t stream) {
  if (n <= 0) {
    return cudaSuccess;
  }
  if (hw <= 0) {
    return cudaErrorInvalidValue;
  }
  PIXCONTRAST_RETURN_IF_ERROR(
      cudaMemsetAsync(counts, 0, static_cast<size_t>(n) * 2 * sizeof(int64_t), stream));
  run_histogram_kernel<<<static_cast<unsigned int>(grid_for(n)), kSamplingThreads, 0,
                         stream>>>(run_key, rank, cls, easy, valid, n, hw, counts);
  PIXCONTRAST_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t sampling_select_scatter(const int64_t* cls, const bool* easy, const int64_t* rank,
                                    const int64_t* lab, const int64_t* pix,
                                    const int64_t* pair_of_cls, int64_t n, const bool* kept,
                                    const int64_t* pair_hard, const int64_t* pair_easy,
                                    const int64_t* offset, int64_t num_pairs,
                                    const int64_t* views, int64_t ignore_index,
                                    int64_t* out_idx, int64_t* out_lab, int64_t out_size,
                                    cudaStream_t stream) {
  if (n <= 0 || num_pairs <= 0 || out_size <= 0) {
    return cudaSuccess;  // nothing can be selected
  }
  select_scatter_kernel<<<static_cast<unsigned int>(grid_for(n)), kSamplingThreads, 0,
                          stream>>>(cls, easy, rank, lab, pix, pair_of_cls, n, kept, pair_hard,
                                    pair_easy, offset, num_pairs, views, ignore_index,
                                    out_idx, out_lab, out_size);
  PIXCONTRAST_LAUNCH_CHECK();
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace pixcontrast
