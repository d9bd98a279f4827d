// The band kernel of the same-class positives (launchers in csrc/cuda/infonce_band.h; the
// schedule, row math and merge are csrc/common/infonce_band.h's, which the CPU twin
// csrc/cpu/infonce_band.cpp runs too). Here: the CTA as the shared code's thread group, and
// the two tile products on the tensor cores (WMMA: bf16/fp16 m16n16k16, TF32 m16n16k8) or
// as FMA (strict fp32). All tiles live in shared memory; every reduction has a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "common/infonce_band.h"
#include "cuda/common.h"
#include "cuda/infonce_band.h"

namespace pixcontrast::band {
template <>
struct Operand<__half> {
  __host__ __device__ static float load(__half v) { return __half2float(v); }
  __host__ __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Operand<__nv_bfloat16> {
  __host__ __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __host__ __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
}  // namespace pixcontrast::band

namespace pixcontrast {
namespace cuda {
namespace {

namespace b = ::pixcontrast::band;
namespace w = ::nvcuda::wmma;

constexpr unsigned kFull = 0xffffffffu;

// A CTA as the shared code's group. `scratch` (one int64 per warp, shared memory) is needed
// by sum and exclusive_scan only (the plan); lane_sum shuffles within a warp (L ≤ 32
// consecutive ranks, every lane of the warp calls it).
struct CtaGroup {
  int64_t* scratch;
  __device__ int64_t rank() const { return threadIdx.x; }
  __device__ int64_t size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  __device__ int64_t lanes(int64_t want) const { return want < size() ? want : size(); }
  __device__ float lane_sum(float v, int64_t L) const {
    for (int o = static_cast<int>(L) / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
  }
  __device__ int64_t sum(int64_t v) const {
    int64_t total;
    exclusive_scan(v, &total);
    return total;
  }
  __device__ int64_t exclusive_scan(int64_t v, int64_t* total) const {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    int64_t x = v;
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t up = __shfl_up_sync(kFull, x, o);
      if (lane >= o) x += up;
    }
    __syncthreads();  // scratch may still be read by the previous scan
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    int64_t before = 0, all = 0;
    for (int k = 0; k < warps; ++k) {
      before += k < warp ? scratch[k] : 0;
      all += scratch[k];
    }
    *total = all;
    return before + x - v;
  }
};

struct WarpGroup {
  __device__ int64_t rank() const { return threadIdx.x % 32; }
  __device__ int64_t size() const { return 32; }
};

// ---------------------------------------------------------------------------------------
// Tile products. S [bm, bn] = A [bm, dp] · C [bn, dp]ᵀ; V [bm, dp] += P [bm, bn] · C [bn, dp].
// Each warp owns whole 16×16 output fragments; the fragments' operands come from shared
// memory at every k step (no register reuse: the band is 1/K of the pairs).

// bf16 / fp16: mma.sync m16n8k16 (fp32 accumulation), operands by ldmatrix from shared
// memory (the tiles' rows are padded by 16 bytes: 8 consecutive rows on distinct banks).
// A warp owns 16×16 output blocks (two m16n8 accumulators of 4 floats per thread).
__device__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

__device__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

template <typename T>
__device__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                  uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The accumulator layout of m16n8: thread (lane) holds rows lane/4 and lane/4 + 8, columns
// 2·(lane%4) and + 1, of each n8 half of a 16×16 block.
template <int NB>
__device__ void load_blocks(float (&acc)[NB][2][4], const float* p, int ld) {
  const int lane = threadIdx.x % 32;
  for (int b = 0; b < NB; ++b)
    for (int h = 0; h < 2; ++h) {
      const float* q = p + (lane / 4) * ld + b * 16 + h * 8 + (lane % 4) * 2;
      const float2 lo = *reinterpret_cast<const float2*>(q);
      const float2 hi = *reinterpret_cast<const float2*>(q + 8 * ld);
      acc[b][h][0] = lo.x;
      acc[b][h][1] = lo.y;
      acc[b][h][2] = hi.x;
      acc[b][h][3] = hi.y;
    }
}

template <int NB>
__device__ void store_blocks(const float (&acc)[NB][2][4], float* p, int ld) {
  const int lane = threadIdx.x % 32;
  for (int b = 0; b < NB; ++b)
    for (int h = 0; h < 2; ++h) {
      float* q = p + (lane / 4) * ld + b * 16 + h * 8 + (lane % 4) * 2;
      *reinterpret_cast<float2*>(q) = make_float2(acc[b][h][0], acc[b][h][1]);
      *reinterpret_cast<float2*>(q + 8 * ld) = make_float2(acc[b][h][2], acc[b][h][3]);
    }
}

// A warp's unit is 16 rows × NB 16-column blocks: the A fragment of a k-step serves NB
// blocks (2·NB mma per ldmatrix of A).
struct TensorCoreProducts {
  // S blocks (i, j..j+NB) = A rows 16i.. · (C rows 16j..)ᵀ: C's rows are B's columns, so B
  // comes from ldmatrix without transposition.
  template <int NB, typename T>
  __device__ static void logits_units(const b::BandTiles<T>& t) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int fn = t.bn / (16 * NB);
    const T* a_lane = t.A + (lane % 16) * t.lda + (lane / 16) * 8;
    const T* c_lane = t.C + ((lane & 7) + ((lane >> 4) << 3)) * t.lda + ((lane >> 3) & 1) * 8;
    for (int f = warp; f < (t.bm / 16) * fn; f += warps) {
      const int i = f / fn, j = (f % fn) * NB;
      float acc[NB][2][4] = {};
      for (int k = 0; k < t.dp; k += 16) {
        uint32_t fa[4];
        ldmatrix_x4(fa, a_lane + i * 16 * t.lda + k);
        for (int b = 0; b < NB; ++b) {
          uint32_t fb[4];
          ldmatrix_x4(fb, c_lane + (j + b) * 16 * t.lda + k);
          mma_16816<T>(acc[b][0], fa, fb[0], fb[1]);
          mma_16816<T>(acc[b][1], fa, fb[2], fb[3]);
        }
      }
      store_blocks(acc, t.S + i * 16 * t.lds + j * 16, t.lds);
    }
  }
  template <typename T, class Group>
  __device__ static void logits(const Group&, const b::BandTiles<T>& t) {
    if (t.bn % 32 == 0 && (t.bm / 16) * (t.bn / 32) >= static_cast<int>(blockDim.x / 32))
      logits_units<2>(t);
    else
      logits_units<1>(t);
  }
  // V blocks (i, e..e+NB) += P rows 16i.. · C[:, 16e..]: C is [k, n] row-major, transposed
  // by ldmatrix.
  template <int NB, typename T>
  __device__ static void accumulate_units(const b::BandTiles<T>& t) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int fd = t.dp / (16 * NB);
    const T* p_lane = t.P + (lane % 16) * t.ldp + (lane / 16) * 8;
    const T* c_lane = t.C + (lane & 15) * t.lda + (lane >> 4) * 8;
    for (int f = warp; f < (t.bm / 16) * fd; f += warps) {
      const int i = f / fd, e = (f % fd) * NB;
      float* v = t.V + i * 16 * t.ldv + e * 16;
      float acc[NB][2][4];
      load_blocks(acc, v, t.ldv);
      for (int k = 0; k < t.bn; k += 16) {
        uint32_t fa[4];
        ldmatrix_x4(fa, p_lane + i * 16 * t.ldp + k);
        for (int b = 0; b < NB; ++b) {
          uint32_t fb[4];
          ldmatrix_x4_trans(fb, c_lane + k * t.lda + (e + b) * 16);
          mma_16816<T>(acc[b][0], fa, fb[0], fb[1]);
          mma_16816<T>(acc[b][1], fa, fb[2], fb[3]);
        }
      }
      store_blocks(acc, v, t.ldv);
    }
  }
  template <typename T, class Group>
  __device__ static void accumulate(const Group&, const b::BandTiles<T>& t) {
    if (t.dp % 64 == 0 && (t.bm / 16) * (t.dp / 64) >= static_cast<int>(blockDim.x / 32))
      accumulate_units<4>(t);
    else
      accumulate_units<1>(t);
  }
};

// fp32 operands on TF32 tensor cores: m16n16k8, elements rounded to TF32 after the load.
template <typename Frag>
__device__ void to_tf32(Frag& f) {
  for (int k = 0; k < f.num_elements; ++k) f.x[k] = w::__float_to_tf32(f.x[k]);
}

struct Tf32Products {
  template <class Group>
  __device__ static void logits(const Group&, const b::BandTiles<float>& t) {
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int fn = t.bn / 16;
    for (int f = warp; f < (t.bm / 16) * fn; f += warps) {
      const int i = f / fn, j = f % fn;
      w::fragment<w::accumulator, 16, 16, 8, float> acc;
      w::fill_fragment(acc, 0.f);
      for (int k = 0; k < t.dp; k += 8) {
        w::fragment<w::matrix_a, 16, 16, 8, w::precision::tf32, w::row_major> fa;
        w::fragment<w::matrix_b, 16, 16, 8, w::precision::tf32, w::col_major> fb;
        w::load_matrix_sync(fa, t.A + i * 16 * t.lda + k, t.lda);
        w::load_matrix_sync(fb, t.C + j * 16 * t.lda + k, t.lda);
        to_tf32(fa);
        to_tf32(fb);
        w::mma_sync(acc, fa, fb, acc);
      }
      w::store_matrix_sync(t.S + i * 16 * t.lds + j * 16, acc, t.lds, w::mem_row_major);
    }
  }
  template <class Group>
  __device__ static void accumulate(const Group&, const b::BandTiles<float>& t) {
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int fd = t.dp / 16;
    for (int f = warp; f < (t.bm / 16) * fd; f += warps) {
      const int i = f / fd, e = f % fd;
      float* v = t.V + i * 16 * t.ldv + e * 16;
      w::fragment<w::accumulator, 16, 16, 8, float> acc;
      w::load_matrix_sync(acc, v, t.ldv, w::mem_row_major);
      for (int k = 0; k < t.bn; k += 8) {
        w::fragment<w::matrix_a, 16, 16, 8, w::precision::tf32, w::row_major> fa;
        w::fragment<w::matrix_b, 16, 16, 8, w::precision::tf32, w::row_major> fb;
        w::load_matrix_sync(fa, t.P + i * 16 * t.ldp + k, t.ldp);
        w::load_matrix_sync(fb, t.C + k * t.lda + e * 16, t.lda);
        to_tf32(fa);
        to_tf32(fb);
        w::mma_sync(acc, fa, fb, acc);
      }
      w::store_matrix_sync(v, acc, t.ldv, w::mem_row_major);
    }
  }
};

// Strict fp32: one output (S) or one float4 of V per thread and step, 128-bit shared loads
// (the rows' 16-byte padding keeps 8 consecutive rows on distinct banks).
struct FmaProducts {
  template <class Group>
  __device__ static void logits(const Group&, const b::BandTiles<float>& t) {
    for (int o = threadIdx.x; o < t.bm * t.bn; o += blockDim.x) {
      const int i = o / t.bn, j = o % t.bn;
      const float4* a = reinterpret_cast<const float4*>(t.A + i * t.lda);
      const float4* c = reinterpret_cast<const float4*>(t.C + j * t.lda);
      float acc = 0.f;
      for (int k = 0; k < t.dp / 4; ++k) {
        const float4 x = a[k], y = c[k];
        acc = __fmaf_rn(x.x, y.x, acc);
        acc = __fmaf_rn(x.y, y.y, acc);
        acc = __fmaf_rn(x.z, y.z, acc);
        acc = __fmaf_rn(x.w, y.w, acc);
      }
      t.S[i * t.lds + j] = acc;
    }
  }
  template <class Group>
  __device__ static void accumulate(const Group&, const b::BandTiles<float>& t) {
    const int quads = t.dp / 4;
    for (int o = threadIdx.x; o < t.bm * quads; o += blockDim.x) {
      const int i = o / quads, e = o % quads;
      float4* v = reinterpret_cast<float4*>(t.V + i * t.ldv) + e;
      float4 acc = *v;
      for (int j = 0; j < t.bn; ++j) {
        const float p = t.P[i * t.ldp + j];
        const float4 c = reinterpret_cast<const float4*>(t.C + j * t.lda)[e];
        acc.x = __fmaf_rn(p, c.x, acc.x);
        acc.y = __fmaf_rn(p, c.y, acc.y);
        acc.z = __fmaf_rn(p, c.z, acc.z);
        acc.w = __fmaf_rn(p, c.w, acc.w);
      }
      *v = acc;
    }
  }
};

// ---------------------------------------------------------------------------------------
// Kernels.

__global__ void __launch_bounds__(kBandPlanThreads) band_plan_kernel(b::BandPlan p) {
  __shared__ int64_t scratch[kBandPlanThreads / 32];
  b::band_plan(CtaGroup{scratch}, p);
}

template <typename T, class Products>
__global__ void __launch_bounds__(kBandThreads, 1) band_items_kernel(b::BandArgs a) {
  extern __shared__ __align__(128) char smem[];
  b::BandTiles<T> t;
  b::band_tiles<T>(smem, a.bm, a.bn, a.d, &t);
  const CtaGroup g{nullptr};
  const int64_t count = *a.num_items;
  for (int64_t item = blockIdx.x; item < count; item += gridDim.x)
    b::band_item<T, Products>(g, a, t, item);
}

// One warp per row.
__global__ void band_merge_kernel(b::BandMerge mg) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r < mg.n) b::band_merge_row(WarpGroup{}, mg, r);
}

template <typename T, class Products>
cudaError_t launch_items(const b::BandArgs& a, int64_t programs, cudaStream_t stream) {
  const int64_t bytes = b::band_tiles<T>(nullptr, a.bm, a.bn, a.d, nullptr);
  if (bytes > kBandSmemBytes) return cudaErrorInvalidValue;
  auto* kernel = band_items_kernel<T, Products>;
  PIXCONTRAST_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(programs), kBandThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

int infonce_band_block(ScalarKind kind, int64_t d, int device) {
  int optin = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
      cudaSuccess)
    return 0;
  const int64_t budget = optin < kBandSmemBytes ? optin : kBandSmemBytes;
  switch (kind) {
    case ScalarKind::kBFloat16:
      return b::band_block<__nv_bfloat16>(d, budget);
    case ScalarKind::kFloat16:
      return b::band_block<__half>(d, budget);
    default:
      return b::band_block<float>(d, budget);
  }
}

cudaError_t infonce_band(const b::BandProblem& problem, void* workspace, ScalarKind kind,
                         bool allow_tf32, int64_t programs, cudaStream_t stream) {
  if (problem.n <= 0 || problem.num_segments <= 0) return cudaSuccess;
  if (programs <= 0 || programs > kMaxGridX || problem.block_rows <= 0 || problem.block_cols <= 0)
    return cudaErrorInvalidConfiguration;
  b::BandPlan plan;
  b::BandArgs args;
  b::BandMerge merge;
  b::band_layout(problem, static_cast<char*>(workspace), &plan, &args, &merge);
  band_plan_kernel<<<1, kBandPlanThreads, 0, stream>>>(plan);
  PIXCONTRAST_LAUNCH_CHECK();
  cudaError_t err;
  switch (kind) {
    case ScalarKind::kBFloat16:
      err = launch_items<__nv_bfloat16, TensorCoreProducts>(args, programs, stream);
      break;
    case ScalarKind::kFloat16:
      err = launch_items<__half, TensorCoreProducts>(args, programs, stream);
      break;
    default:
      err = allow_tf32 ? launch_items<float, Tf32Products>(args, programs, stream)
                       : launch_items<float, FmaProducts>(args, programs, stream);
  }
  PIXCONTRAST_RETURN_IF_ERROR(err);
  constexpr int kRowsPerBlock = 8;
  const int64_t blocks = ceil_div(problem.n, kRowsPerBlock);
  if (blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
  band_merge_kernel<<<static_cast<unsigned>(blocks), kRowsPerBlock * 32, 0, stream>>>(merge);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pixcontrast
