// CUDA kernel of the memory-bank write; contract in memory_bank.h.
//
// One CTA per entry (grid-stride over entries): the CTA reads keep/rows once and its
// threads copy the row's `dim` elements. Entries are few (B·K·(1 + ppu): ~1.7k for 8
// images, 19 classes, ppu 10) and rows short (D = 256), so this is a latency-bound copy;
// the payload moves as raw bits (a 2-byte type is copied as uint16, and so on), which keeps
// it exact for every dtype and lets one kernel body serve all four.
#include "cuda/memory_bank.h"

#include <cub/block/block_radix_sort.cuh>

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

// ------------------------------------------------------------------------------------------
// The fused update (contract in memory_bank.h).
// ------------------------------------------------------------------------------------------
namespace {

constexpr int kUpdateThreads = 256;
constexpr int kUpdateItems = static_cast<int>(kBankChunk) / kUpdateThreads;  // per thread
constexpr int kChunkBits = 11;                      // log2(kBankChunk)
constexpr int kUpdateTile = 32;                     // pixels per step of the class sums
constexpr int kMaxBins = static_cast<int>(kBankMaxClasses) + 1;
constexpr int kNoClass = 127;                       // sorts after every class
constexpr int64_t kStage = 2048;                    // candidates of one class in smem
static_assert(kBankChunk == (int64_t{1} << kChunkBits), "chunk is 2^kChunkBits pixels");
static_assert(kBankChunk % kUpdateThreads == 0, "whole items per thread");

__device__ inline float to_acc(float v, float) { return v; }
__device__ inline float to_acc(__half v, float) { return __half2float(v); }
__device__ inline float to_acc(__nv_bfloat16 v, float) { return __bfloat162float(v); }
__device__ inline float to_acc(double v, float) { return static_cast<float>(v); }
__device__ inline double to_acc(float v, double) { return v; }
__device__ inline double to_acc(double v, double) { return v; }
__device__ inline double to_acc(__half v, double) { return __half2float(v); }
__device__ inline double to_acc(__nv_bfloat16 v, double) { return __bfloat162float(v); }

template <typename T>
__device__ inline T from_acc(float v);
template <>
__device__ inline float from_acc<float>(float v) { return v; }
template <>
__device__ inline __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T>
__device__ inline T from_acc(double v) { return static_cast<T>(v); }  // double bank only

// Byte offsets of the workspace's arrays (16-byte aligned).
struct UpdateWorkspace {
  size_t sum, cnt, cand, tot, mean, norm, bad, pick, slot, bytes;
  UpdateWorkspace(const BankShape& s, bool double_sums) {
    const int64_t nsplit = ceil_div(s.hw, kBankChunk), kc = s.classes + 1;
    const size_t acc = double_sums ? 8 : 4;
    size_t at = 0;
    auto take = [&at](size_t n) {
      const size_t here = at;
      at += (n + 15) / 16 * 16;
      return here;
    };
    sum = take(acc * s.batch * nsplit * kc * s.dim);
    cnt = take(4 * s.batch * nsplit * kc);
    cand = take(8 * s.batch * nsplit * s.classes * s.ppu);
    tot = take(4 * s.batch * kc);
    mean = take(acc * s.batch * kc * s.dim);
    norm = take(acc * s.batch * kc);
    bad = take(4 * s.batch);
    pick = take(8 * s.batch * s.classes * s.ppu);
    slot = take(8 * (2 * s.batch + 4) * kc);
    bytes = at;
  }
};

template <typename T>
__device__ inline T* at_offset(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(base) + offset);
}

template <typename X, typename Acc>
__global__ void __launch_bounds__(kUpdateThreads)
    bank_update_kernel(const X* __restrict__ x, int64_t sxb, int64_t sxd, int64_t sxp,
                       const int64_t* __restrict__ y, const int64_t* __restrict__ keys,
                       BankShape s, void* ws, UpdateWorkspace off, int64_t* pointers,
                       int32_t* counters, int32_t* ok) {
  using Sort = cub::BlockRadixSort<uint64_t, kUpdateThreads, kUpdateItems>;
  __shared__ typename Sort::TempStorage sort_storage;
  __shared__ int tile[kUpdateTile];
  __shared__ int counts[kMaxBins];
  __shared__ int starts[kMaxBins];
  __shared__ int64_t stage[kStage];
  __shared__ int flag;
  extern __shared__ unsigned char dynamic_smem[];
  Acc* acc = reinterpret_cast<Acc*>(dynamic_smem);  // [kc][kUpdateThreads]
  const int tid = threadIdx.x;
  const int64_t split = blockIdx.x, b = blockIdx.y;
  const int64_t nsplit = gridDim.x;
  const int64_t k = s.classes, kc = k + 1;
  const int64_t part = b * nsplit + split;
  const int64_t p_begin = split * kBankChunk;
  const int64_t p_end = p_begin + kBankChunk < s.hw ? p_begin + kBankChunk : s.hw;
  Acc* sums = at_offset<Acc>(ws, off.sum);
  int32_t* cnt = at_offset<int32_t>(ws, off.cnt);
  int64_t* cand = at_offset<int64_t>(ws, off.cand);
  int32_t* tot = at_offset<int32_t>(ws, off.tot);
  Acc* mean = at_offset<Acc>(ws, off.mean);
  Acc* norm = at_offset<Acc>(ws, off.norm);
  int32_t* bad = at_offset<int32_t>(ws, off.bad);
  int64_t* pick = at_offset<int64_t>(ws, off.pick);
  int64_t* slot = at_offset<int64_t>(ws, off.slot);

  // 1. Counts and pick candidates of pixels [p_begin, p_end): sort (class, key, pixel).
  for (int c = tid; c < kc; c += kUpdateThreads) counts[c] = 0;
  __syncthreads();
  uint64_t items[kUpdateItems];
  for (int i = 0; i < kUpdateItems; ++i) {
    const int64_t q = static_cast<int64_t>(tid) * kUpdateItems + i, p = p_begin + q;
    items[i] = ~uint64_t{0};
    if (p < p_end) {
      const int64_t label = y[b * s.hw + p];
      const int64_t c = label >= 0 && label < k ? label : k;
      atomicAdd(&counts[c], 1);  // integer: exact
      const uint64_t code = c < k ? static_cast<uint64_t>(c) : kNoClass;
      items[i] = code << (kBankKeyBits + kChunkBits) |
                 static_cast<uint64_t>(keys[b * s.hw + p]) << kChunkBits |
                 static_cast<uint64_t>(q);
    }
  }
  __syncthreads();
  if (tid == 0) {
    int run = 0;
    for (int c = 0; c < kc; ++c) {
      starts[c] = run;
      run += counts[c];
    }
  }
  for (int c = tid; c < kc; c += kUpdateThreads) cnt[part * kc + c] = counts[c];
  __syncthreads();
  Sort(sort_storage).Sort(items);  // blocked: thread t holds positions t·items + i
  for (int i = 0; i < kUpdateItems; ++i) {
    const uint64_t v = items[i];
    const int64_t code = static_cast<int64_t>(v >> (kBankKeyBits + kChunkBits));
    if (code >= k) continue;
    const int64_t rank = static_cast<int64_t>(tid) * kUpdateItems + i - starts[code];
    if (rank >= s.ppu) continue;
    const int64_t key =
        static_cast<int64_t>((v >> kChunkBits) & ((uint64_t{1} << kBankKeyBits) - 1));
    const int64_t q = static_cast<int64_t>(v & (kBankChunk - 1));
    cand[(part * k + code) * s.ppu + rank] = bank_candidate(key, p_begin + q);
  }
  // Class sums: a thread per column d, pixels in order (deterministic), [kc] accumulators
  // per thread in shared memory.
  for (int64_t d0 = 0; d0 < s.dim; d0 += kUpdateThreads) {
    const int64_t d = d0 + tid;
    for (int64_t c = 0; c < kc; ++c) acc[c * kUpdateThreads + tid] = Acc(0);
    for (int64_t pt = p_begin; pt < p_end; pt += kUpdateTile) {
      __syncthreads();
      if (tid < kUpdateTile) {
        const int64_t p = pt + tid;
        const int64_t label = p < p_end ? y[b * s.hw + p] : -1;
        tile[tid] = static_cast<int>(label >= 0 && label < k ? label : k);
      }
      __syncthreads();
      if (d < s.dim) {
        const int64_t n = p_end - pt < kUpdateTile ? p_end - pt : kUpdateTile;
        const X* row = x + b * sxb + d * sxd + pt * sxp;
        for (int64_t j = 0; j < n; ++j) {
          acc[tile[j] * kUpdateThreads + tid] += to_acc(row[j * sxp], Acc(0));
        }
      }
    }
    if (d < s.dim) {
      for (int64_t c = 0; c < kc; ++c) {
        sums[(part * kc + c) * s.dim + d] = acc[c * kUpdateThreads + tid];
      }
    }
  }
  // 2. The last CTA of image b.
  __threadfence();
  __syncthreads();
  if (tid == 0) flag = atomicAdd(&counters[b], 1) == static_cast<int32_t>(nsplit - 1);
  __syncthreads();
  if (!flag) return;
  __threadfence();
  for (int c = tid; c < kc; c += kUpdateThreads) {
    int t = 0;
    for (int64_t s2 = 0; s2 < nsplit; ++s2) t += __ldcg(&cnt[(b * nsplit + s2) * kc + c]);
    counts[c] = t;
    tot[b * kc + c] = t;
  }
  __syncthreads();
  Acc* sq = acc;  // per-thread partial sums of squares, [kc][threads]
  for (int64_t c = 0; c < kc; ++c) sq[c * kUpdateThreads + tid] = Acc(0);
  int not_finite = 0;
  for (int64_t d0 = 0; d0 < s.dim; d0 += kUpdateThreads) {
    const int64_t d = d0 + tid;
    if (d >= s.dim) continue;
    for (int64_t c = 0; c < kc; ++c) {
      Acc v = 0;
      for (int64_t s2 = 0; s2 < nsplit; ++s2) {
        v += __ldcg(&sums[((b * nsplit + s2) * kc + c) * s.dim + d]);
      }
      not_finite |= !isfinite(v);  // NaN/Inf anywhere lands in some bin (ignored: k)
      const Acc m = v / Acc(counts[c] > 1 ? counts[c] : 1);
      mean[(b * kc + c) * s.dim + d] = m;
      sq[c * kUpdateThreads + tid] += m * m;
    }
  }
  not_finite = __syncthreads_or(not_finite);
  for (int stride = kUpdateThreads / 2; stride > 0; stride >>= 1) {  // fixed tree
    if (tid < stride) {
      for (int64_t c = 0; c < kc; ++c) {
        sq[c * kUpdateThreads + tid] += sq[c * kUpdateThreads + tid + stride];
      }
    }
    __syncthreads();
  }
  for (int c = tid; c < kc; c += kUpdateThreads) {
    const Acc n2 = sqrt(sq[c * kUpdateThreads]);
    norm[b * kc + c] = n2 > Acc(1e-12) ? n2 : Acc(1e-12);
  }
  if (tid == 0) bad[b] = not_finite;
  // Picks: per class the ppu lowest candidates (key, pixel) of all splits (candidates are
  // distinct). The class's candidates staged in shared memory, each thread ranks its own;
  // past kStage candidates, a thread per class takes repeated minima from global memory.
  const int64_t per_class = nsplit * s.ppu;
  if (per_class <= kStage) {
    for (int64_t c = 0; c < k; ++c) {
      __syncthreads();
      for (int64_t i = tid; i < per_class; i += kUpdateThreads) {
        const int64_t s2 = i / s.ppu, j = i % s.ppu;
        const int64_t n = __ldcg(&cnt[(b * nsplit + s2) * kc + c]);
        stage[i] = j < n ? __ldcg(&cand[((b * nsplit + s2) * k + c) * s.ppu + j]) : INT64_MAX;
      }
      __syncthreads();
      for (int64_t i = tid; i < per_class; i += kUpdateThreads) {
        const int64_t v = stage[i];
        if (v == INT64_MAX) continue;
        int64_t rank = 0;
        for (int64_t m = 0; m < per_class; ++m) rank += stage[m] < v;
        if (rank < s.ppu) pick[(b * k + c) * s.ppu + rank] = bank_candidate_pixel(v);
      }
    }
  }
  for (int64_t c = tid; c < k && per_class > kStage; c += kUpdateThreads) {
    int64_t previous = -1;
    for (int64_t r = 0; r < s.ppu; ++r) {
      int64_t best = INT64_MAX;
      for (int64_t s2 = 0; s2 < nsplit; ++s2) {
        const int64_t n = __ldcg(&cnt[(b * nsplit + s2) * kc + c]);
        const int64_t* list = cand + ((b * nsplit + s2) * k + c) * s.ppu;
        for (int64_t j = 0; j < (n < s.ppu ? n : s.ppu); ++j) {
          const int64_t v = __ldcg(&list[j]);
          if (v > previous && v < best) best = v;
        }
      }
      if (best == INT64_MAX) break;
      pick[(b * k + c) * s.ppu + r] = bank_candidate_pixel(best);
      previous = best;
    }
  }
  // 3. The last image: enqueue orders, totals, the pointers, ok.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    counters[b] = 0;
    flag = atomicAdd(&counters[s.batch], 1) == static_cast<int32_t>(s.batch - 1);
  }
  __syncthreads();
  if (!flag) return;
  __threadfence();
  int any_bad = 0;
  for (int64_t i = tid; i < s.batch; i += kUpdateThreads) any_bad |= __ldcg(&bad[i]);
  any_bad = __syncthreads_or(any_bad);
  for (int64_t c = tid; c < k; c += kUpdateThreads) {
    int64_t seg_total = 0, pix_total = 0;
    for (int64_t i = 0; i < s.batch; ++i) {
      const int64_t t = __ldcg(&tot[i * kc + c]);
      slot[i * kc + c] = seg_total;
      slot[(s.batch + i) * kc + c] = pix_total;
      seg_total += t > 0;
      pix_total += t < s.ppu ? t : s.ppu;
    }
    const int64_t seg_ptr = pointers[2 * c], pix_ptr = pointers[2 * c + 1];
    slot[(2 * s.batch) * kc + c] = seg_total;
    slot[(2 * s.batch + 1) * kc + c] = pix_total;
    slot[(2 * s.batch + 2) * kc + c] = seg_ptr;
    slot[(2 * s.batch + 3) * kc + c] = pix_ptr;
    if (!any_bad) {
      pointers[2 * c] = (seg_ptr + seg_total) % s.size;
      pointers[2 * c + 1] = (pix_ptr + pix_total) % s.size;
    }
  }
  if (tid == 0) {
    *ok = !any_bad;
    counters[s.batch] = 0;
  }
}

template <typename X, typename T, typename Acc>
__global__ void __launch_bounds__(kUpdateThreads)
    bank_entries_kernel(const X* __restrict__ x, int64_t sxb, int64_t sxd, int64_t sxp,
                        BankShape s, const void* ws, UpdateWorkspace off, const int32_t* ok,
                        T* __restrict__ features, int64_t* __restrict__ labels) {
  if (!*ok) return;
  const int64_t c = blockIdx.x, b = blockIdx.y;
  const int64_t k = s.classes, kc = k + 1;
  const auto* base = static_cast<const unsigned char*>(ws);
  const int32_t* tot = reinterpret_cast<const int32_t*>(base + off.tot);
  const Acc* mean = reinterpret_cast<const Acc*>(base + off.mean);
  const Acc* norm = reinterpret_cast<const Acc*>(base + off.norm);
  const int64_t* pick = reinterpret_cast<const int64_t*>(base + off.pick);
  const int64_t* slot = reinterpret_cast<const int64_t*>(base + off.slot);
  const int64_t t = tot[b * kc + c];
  const int64_t seg_total = slot[(2 * s.batch) * kc + c];
  const int64_t pix_total = slot[(2 * s.batch + 1) * kc + c];
  const int64_t seg_e = slot[b * kc + c], pix_e = slot[(s.batch + b) * kc + c];
  if (t > 0 && bank_entry_kept(seg_e, seg_total, s.size)) {
    const int64_t row = bank_entry_row(c, 0, slot[(2 * s.batch + 2) * kc + c], seg_e, s.size);
    const Acc inv = Acc(1) / norm[b * kc + c];
    for (int64_t d = threadIdx.x; d < s.dim; d += blockDim.x) {
      features[row * s.dim + d] = from_acc<T>(mean[(b * kc + c) * s.dim + d] * inv);
    }
    if (threadIdx.x == 0) labels[row] = c;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t n = t < s.ppu ? t : s.ppu;
  for (int64_t j = warp; j < n; j += warps) {  // a warp per pixel entry
    const int64_t e = pix_e + j;
    if (!bank_entry_kept(e, pix_total, s.size)) continue;
    const X* column = x + b * sxb + pick[(b * k + c) * s.ppu + j] * sxp;
    Acc sumsq = 0;
    for (int64_t d = lane; d < s.dim; d += 32) {
      const Acc v = to_acc(column[d * sxd], Acc(0));
      sumsq += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) sumsq += __shfl_xor_sync(0xffffffffu, sumsq, o);
    const Acc length = sqrt(sumsq);
    const Acc inv = Acc(1) / (length > Acc(1e-12) ? length : Acc(1e-12));
    const int64_t row = bank_entry_row(c, 1, slot[(2 * s.batch + 3) * kc + c], e, s.size);
    for (int64_t d = lane; d < s.dim; d += 32) {
      features[row * s.dim + d] = from_acc<T>(to_acc(column[d * sxd], Acc(0)) * inv);
    }
    if (lane == 0) labels[row] = c;
  }
}

template <typename T>
struct SumsOf {
  using type = float;
};
template <>
struct SumsOf<double> {
  using type = double;
};

}  // namespace

size_t bank_update_workspace(const BankShape& shape, bool double_sums) {
  return UpdateWorkspace(shape, double_sums).bytes;
}

template <typename X, typename T>
cudaError_t bank_update(const X* x, int64_t sxb, int64_t sxd, int64_t sxp, const int64_t* y,
                        const int64_t* keys, const BankShape& shape, T* features,
                        int64_t* labels, int64_t* pointers, int32_t* counters, void* workspace,
                        int32_t* ok, cudaStream_t stream) {
  using Acc = typename SumsOf<T>::type;
  if (shape.batch <= 0 || shape.hw <= 0 || shape.dim <= 0) {
    return cudaSuccess;
  }
  if (shape.classes < 1 || shape.classes > kBankMaxClasses || shape.ppu < 1 ||
      shape.size < 1 || shape.hw > (int64_t{1} << kBankPixelBits) ||
      shape.batch > kMaxGridYZ) {
    return cudaErrorInvalidValue;
  }
  const UpdateWorkspace off(shape, sizeof(Acc) == 8);
  const int64_t nsplit = ceil_div(shape.hw, kBankChunk);
  const size_t smem = sizeof(Acc) * (shape.classes + 1) * kUpdateThreads;
  auto* kernel = bank_update_kernel<X, Acc>;
  PIXCONTRAST_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<dim3(static_cast<unsigned int>(nsplit), static_cast<unsigned int>(shape.batch)),
           kUpdateThreads, smem, stream>>>(x, sxb, sxd, sxp, y, keys, shape, workspace, off,
                                            pointers, counters, ok);
  PIXCONTRAST_LAUNCH_CHECK();
  bank_entries_kernel<X, T, Acc>
      <<<dim3(static_cast<unsigned int>(shape.classes), static_cast<unsigned int>(shape.batch)),
         kUpdateThreads, 0, stream>>>(x, sxb, sxd, sxp, shape, workspace, off, ok, features,
                                      labels);
  PIXCONTRAST_LAUNCH_CHECK();
  return cudaSuccess;
}

#define PIXCONTRAST_BANK_UPDATE(X, T)                                                       \
  template cudaError_t bank_update<X, T>(const X*, int64_t, int64_t, int64_t, const int64_t*, \
                                         const int64_t*, const BankShape&, T*, int64_t*,     \
                                         int64_t*, int32_t*, void*, int32_t*, cudaStream_t);
#define PIXCONTRAST_BANK_UPDATE_ALL(X)   \
  PIXCONTRAST_BANK_UPDATE(X, float)      \
  PIXCONTRAST_BANK_UPDATE(X, double)     \
  PIXCONTRAST_BANK_UPDATE(X, __half)     \
  PIXCONTRAST_BANK_UPDATE(X, __nv_bfloat16)
PIXCONTRAST_BANK_UPDATE_ALL(float)
PIXCONTRAST_BANK_UPDATE_ALL(double)
PIXCONTRAST_BANK_UPDATE_ALL(__half)
PIXCONTRAST_BANK_UPDATE_ALL(__nv_bfloat16)
#undef PIXCONTRAST_BANK_UPDATE_ALL
#undef PIXCONTRAST_BANK_UPDATE

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
