// CUDA kernels of anchor sampling; contract in sampling.h. The histogram kernel is one CTA
// per image (block-wide loops over its pixels, shared-memory integer histograms, CUB block
// scans); its last CTA runs the pair stage. The select kernel is one thread per sorted
// position.
#include "cuda/sampling.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "cuda/common.h"

namespace pixcontrast {
namespace cuda {
namespace {

constexpr int kHistThreads = 512;    // a CTA per image: wide, to use its SM
constexpr int kSelectThreads = 256;
constexpr int kBins = 256;           // window bins; kSamplingWindow of them used
constexpr int64_t kInt64Max = INT64_MAX;

static_assert(kBins <= kHistThreads, "one thread per window bin");
static_assert(kSamplingWindow < kBins, "the window fits the bins");

using Reduce = cub::BlockReduce<int64_t, kHistThreads>;

struct Min {  // (cub::Min is gone from CUDA 13's CUB)
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};
using Scan = cub::BlockScan<int64_t, kHistThreads>;

struct Shared {
  union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  };
  int hard[kBins];
  int easy[kBins];
  int64_t lut[kBins];   // first window: bin -> pair j, or -1
  int64_t broadcast[2];
  int last;
};

// Block-wide sum / min / max of one int64 per thread, on every thread.
__device__ int64_t block_sum(Shared& sh, int64_t v) {
  const int64_t r = Reduce(sh.reduce).Sum(v);
  if (threadIdx.x == 0) sh.broadcast[0] = r;
  __syncthreads();
  const int64_t out = sh.broadcast[0];
  __syncthreads();
  return out;
}

__device__ int64_t block_min(Shared& sh, int64_t v) {
  const int64_t r = Reduce(sh.reduce).Reduce(v, Min());
  if (threadIdx.x == 0) sh.broadcast[0] = r;
  __syncthreads();
  const int64_t out = sh.broadcast[0];
  __syncthreads();
  return out;
}

// Exclusive prefix sum across the block; *total gets the block's sum (every thread).
__device__ int64_t block_exclusive(Shared& sh, int64_t v, int64_t* total) {
  int64_t prefix = 0, agg = 0;
  Scan(sh.scan).ExclusiveSum(v, prefix, agg);
  __syncthreads();
  *total = agg;
  return prefix;
}

// The pair stage, run by the last CTA (all its threads): see sampling.h, step 2.
__device__ void pair_stage(Shared& sh, const SamplingShape& s, int64_t pimg, int rand_bits,
                           const int64_t* pair_keys, int64_t* ws, const int64_t* npairs,
                           int64_t* out_idx, int64_t* out_lab) {
  const int64_t cols = s.batch * pimg;
  int64_t mine = 0;
  for (int64_t b = threadIdx.x; b < s.batch; b += blockDim.x) mine += __ldcg(npairs + b);
  const int64_t total = block_sum(sh, mine);
  int64_t views = s.max_samples / (total > 1 ? total : 1);
  views = views < 1 ? 1 : (views > s.max_views ? s.max_views : views);
  // Threshold key t and the number `need` of pairs kept at key t (module doc).
  int64_t t = int64_t{1} << rand_bits;
  int64_t need = 0;
  const bool subset = total > s.max_samples;
  if (subset) {
    int64_t lo = 0, hi = t - 1;
    while (lo < hi) {  // uniform across the block
      const int64_t mid = lo + (hi - lo) / 2;
      int64_t le = 0;
      for (int64_t g = threadIdx.x; g < total; g += blockDim.x) le += pair_keys[g] <= mid;
      if (block_sum(sh, le) < s.max_samples) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    t = lo;
    int64_t below = 0;
    for (int64_t g = threadIdx.x; g < total; g += blockDim.x) below += pair_keys[g] < t;
    need = s.max_samples - block_sum(sh, below);
  }
  // First rows: V x (kept pairs before), in (image, class) order.
  int64_t kept_before = 0, ties_before = 0, g_base = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t nb = __ldcg(npairs + b);
    for (int64_t j0 = 0; j0 < nb; j0 += blockDim.x) {
      const int64_t j = j0 + threadIdx.x;
      const bool in = j < nb;
      const int64_t key = in && subset ? pair_keys[g_base + j] : 0;
      const int64_t tie = in && key == t;
      int64_t ties = 0, kept_total = 0;
      const int64_t tie_rank = ties_before + block_exclusive(sh, tie, &ties);
      const int64_t kept = in && sampling_pair_kept(key, t, tie_rank, need);
      const int64_t before = kept_before + block_exclusive(sh, kept, &kept_total);
      if (in) {
        const int64_t col = b * pimg + j;
        int64_t q_hard, q_easy;
        sampling_quotas(__ldcg(ws + kWsHard * cols + col), __ldcg(ws + kWsEasy * cols + col),
                        views, &q_hard, &q_easy);
        ws[kWsRow * cols + col] = kept ? before * views : -1;
        ws[kWsQuotaHard * cols + col] = q_hard;
        ws[kWsQuotaEasy * cols + col] = q_easy;
      }
      kept_before += kept_total;
      ties_before += ties;
    }
    g_base += nb;
  }
  for (int64_t r = kept_before * views + threadIdx.x; r < s.max_samples; r += blockDim.x) {
    out_idx[r] = -1;
    out_lab[r] = s.ignore_index;
  }
}

__global__ void __launch_bounds__(kHistThreads)
    histogram_kernel(const int64_t* __restrict__ labels, const int64_t* __restrict__ preds,
                     const int64_t* __restrict__ keys, SamplingShape s, int64_t pimg,
                     int rand_bits, int64_t* __restrict__ sort_keys, int64_t* ws,
                     int64_t* npairs_out, int32_t* counter, int64_t* __restrict__ out_idx,
                     int64_t* __restrict__ out_lab) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int64_t img = b * s.hw;
  const int64_t cols = s.batch * pimg;
  const int64_t col0 = b * pimg;
  const int tid = threadIdx.x;
  // 1. The smallest valid label (kInt64Max and no valid pixel are told apart by `any`).
  int64_t lo = kInt64Max, any = 0;
  for (int64_t p = tid; p < s.hw; p += blockDim.x) {
    const int64_t l = labels[img + p];
    if (l != s.ignore_index) {
      lo = l < lo ? l : lo;
      any = 1;
    }
  }
  lo = block_min(sh, lo);
  any = block_sum(sh, any);
  // 2. Windows [lo, lo + kSamplingWindow) in increasing order.
  const int64_t lo0 = lo;
  int64_t npairs = 0, start = 0, windows = 0;
  while (any) {
    if (tid < kBins) {
      sh.hard[tid] = 0;
      sh.easy[tid] = 0;
    }
    __syncthreads();
    int64_t next = kInt64Max, next_any = 0;
    for (int64_t p = tid; p < s.hw; p += blockDim.x) {
      const int64_t l = labels[img + p];
      if (l == s.ignore_index || l < lo) continue;
      const int64_t bin = sampling_window_bin(l, lo, kSamplingWindow);
      if (bin >= 0) {
        atomicAdd(preds[img + p] == l ? &sh.easy[bin] : &sh.hard[bin], 1);  // integer: exact
      } else {
        next = l < next ? l : next;
        next_any = 1;
      }
    }
    __syncthreads();
    const int64_t hard = tid < kSamplingWindow ? sh.hard[tid] : 0;
    const int64_t easy = tid < kSamplingWindow ? sh.easy[tid] : 0;
    const int64_t eligible = hard + easy > s.max_views;
    int64_t found = 0, pixels = 0;
    const int64_t pos = npairs + block_exclusive(sh, eligible, &found);
    const int64_t first = start + block_exclusive(sh, eligible ? hard + easy : 0, &pixels);
    if (eligible) {
      const int64_t col = col0 + pos;
      ws[kWsLabel * cols + col] = lo + tid;
      ws[kWsHard * cols + col] = hard;
      ws[kWsEasy * cols + col] = easy;
      ws[kWsStart * cols + col] = first;
    }
    if (windows == 0 && tid < kBins) sh.lut[tid] = eligible ? pos : -1;
    npairs += found;
    start += pixels;
    ++windows;
    next = block_min(sh, next);
    any = block_sum(sh, next_any);
    lo = next;
  }
  if (tid == 0) npairs_out[b] = npairs;
  __syncthreads();  // this CTA's ws and table writes before the reads below
  // 3. Sort keys.
  for (int64_t p = tid; p < s.hw; p += blockDim.x) {
    const int64_t l = labels[img + p];
    int64_t set = 2 * pimg;
    if (l != s.ignore_index) {
      int64_t j = -1;
      if (windows == 1) {
        const int64_t bin = sampling_window_bin(l, lo0, kSamplingWindow);
        j = bin >= 0 ? sh.lut[bin] : -1;
      } else {  // lower bound of l among the image's eligible labels
        int64_t a = 0, z = npairs;
        while (a < z) {
          const int64_t mid = (a + z) / 2;
          if (ws[kWsLabel * cols + col0 + mid] < l) {
            a = mid + 1;
          } else {
            z = mid;
          }
        }
        j = a < npairs && ws[kWsLabel * cols + col0 + a] == l ? a : -1;
      }
      if (j >= 0) set = 2 * j + (preds[img + p] == l ? 1 : 0);
    }
    sort_keys[img + p] = (set << rand_bits) | keys[img + p];
  }
  // 4. The last CTA runs the pair stage on every image's pairs.
  __threadfence();
  __syncthreads();
  if (tid == 0) sh.last = atomicAdd(counter, 1) == static_cast<int32_t>(s.batch - 1);
  __syncthreads();
  if (sh.last) {
    __threadfence();
    pair_stage(sh, s, pimg, rand_bits, keys + s.batch * s.hw, ws, npairs_out, out_idx,
               out_lab);
    if (tid == 0) *counter = 0;
  }
}

__global__ void select_kernel(const int64_t* __restrict__ sorted_keys,
                              const int64_t* __restrict__ perm, const int64_t* __restrict__ ws,
                              SamplingShape s, int64_t pimg, int rand_bits,
                              int64_t* __restrict__ out_idx, int64_t* __restrict__ out_lab) {
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= s.hw) return;
  const int64_t cols = s.batch * pimg;
  const int64_t set = sorted_keys[b * s.hw + p] >> rand_bits;
  if (set >= 2 * pimg) return;
  const int64_t col = b * pimg + (set >> 1);
  const bool easy = (set & 1) != 0;
  const int64_t row = sampling_row(p, easy, ws[kWsStart * cols + col], ws[kWsHard * cols + col],
                                   ws[kWsRow * cols + col], ws[kWsQuotaHard * cols + col],
                                   ws[kWsQuotaEasy * cols + col], s.max_samples);
  if (row < 0) return;
  out_idx[row] = b * s.hw + perm[b * s.hw + p];
  out_lab[row] = ws[kWsLabel * cols + col];
}

}  // namespace

cudaError_t sampling_histogram(const int64_t* labels, const int64_t* predictions,
                               const int64_t* keys, const SamplingShape& shape,
                               int64_t* sort_keys, int64_t* ws, int64_t* npairs,
                               int32_t* counter, int64_t* out_idx, int64_t* out_lab,
                               cudaStream_t stream) {
  if (shape.batch <= 0 || shape.hw <= 0) {
    return cudaSuccess;
  }
  if (shape.batch > kMaxGridX || shape.max_samples < 1 || shape.max_views < 1) {
    return cudaErrorInvalidValue;
  }
  histogram_kernel<<<static_cast<unsigned int>(shape.batch), kHistThreads, 0, stream>>>(
      labels, predictions, keys, shape, sampling_pairs_per_image(shape.hw, shape.max_views),
      sampling_rand_bits(shape.hw, shape.max_views), sort_keys, ws, npairs, counter, out_idx,
      out_lab);
  PIXCONTRAST_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t sampling_select(const int64_t* sorted_keys, const int64_t* perm, const int64_t* ws,
                            const SamplingShape& shape, int64_t* out_idx, int64_t* out_lab,
                            cudaStream_t stream) {
  if (shape.batch <= 0 || shape.hw <= 0) {
    return cudaSuccess;
  }
  if (shape.batch > kMaxGridYZ) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned int>(ceil_div(shape.hw, kSelectThreads)),
                  static_cast<unsigned int>(shape.batch));
  select_kernel<<<grid, kSelectThreads, 0, stream>>>(
      sorted_keys, perm, ws, shape, sampling_pairs_per_image(shape.hw, shape.max_views),
      sampling_rand_bits(shape.hw, shape.max_views), out_idx, out_lab);
  PIXCONTRAST_LAUNCH_CHECK();
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace pixcontrast
