// CUDA row passes of the per-positive InfoNCE (launchers in csrc/cuda/infonce.h; the chunk
// loop, the GEMMs and the torch glue in csrc/cuda/infonce_binding.cpp; docs/design.md §6.5,
// predictions in docs/notes/infonce-cuda.md).
//
// One CTA of kRowThreads threads per row of a logits chunk: thread j reads columns
// j, j + kRowThreads, … (coalesced) and writes the weights of the next product. The kernel
// bodies are csrc/common/infonce_row_pass.h's, written for a group of threads: here the CTA,
// on the CPU (the device schedule of csrc/cpu/infonce.cpp, tests/test_infonce_rows.py) a
// single thread. Row reductions are a xor-shuffle tree per warp, then the warps' partials in
// warp order: a fixed order, so two runs give the same bits (no atomics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/infonce_row_pass.h"
#include "common/infonce_rows.h"
#include "cuda/common.h"
#include "cuda/infonce.h"

// Weights stored in the 16-bit operand dtypes, round to nearest.
namespace pixcontrast::rows {
template <>
struct Cast<__half> {
  template <typename T>
  __host__ __device__ static __half to(T v) {
    return __float2half_rn(v);
  }
};
template <>
struct Cast<__nv_bfloat16> {
  template <typename T>
  __host__ __device__ static __nv_bfloat16 to(T v) {
    return __float2bfloat16_rn(v);
  }
};
}  // namespace pixcontrast::rows

namespace pixcontrast {
namespace cuda {
namespace {

namespace r = ::pixcontrast::rows;

constexpr int kWarps = kRowThreads / 32;

// Loads of the input rows (any operand dtype) as float.
template <typename T>
struct Operand;
template <>
struct Operand<float> {
  __device__ static float load(const float* p) { return *p; }
};
template <>
struct Operand<__nv_bfloat16> {
  __device__ static float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
};
template <>
struct Operand<__half> {
  __device__ static float load(const __half* p) { return __half2float(*p); }
};

// Block-wide reductions in a fixed order. `scratch`: kWarps floats of shared memory.
// Every thread gets the result.
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = scratch[0];
  for (int w = 1; w < kWarps; ++w) total = op(total, scratch[w]);
  return total;
}

struct Max {
  __device__ float operator()(float a, float b) const { return r::max_of(a, b); }
};
struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Row i's own column within the chunk (self-contrast), −1 if none.
__device__ int64_t self_column(const InfonceChunk& c, int64_t row) {
  if (!c.has_self) return -1;
  const int64_t q = row - c.self_start;
  return q >= 0 && q < c.count ? q : -1;
}

// The thread groups of infonce_row_pass.h: a CTA (one row) and a warp (one column).
struct CtaGroup {
  float* scratch;  // kWarps floats of shared memory
  __device__ int64_t rank() const { return threadIdx.x; }
  __device__ int64_t size() const { return kRowThreads; }
  __device__ float max(float v) const { return block_reduce(v, scratch, Max()); }
  __device__ float sum(float v) const { return block_reduce(v, scratch, Sum()); }
  // The lanes of a warp still in a column loop run its steps together (only the last step
  // can leave some out): a vote among the active ones.
  __device__ bool any(bool pred) const { return __any_sync(__activemask(), pred); }
};

struct WarpGroup {
  __device__ int64_t rank() const { return threadIdx.x % 32; }
  __device__ int64_t size() const { return 32; }
  __device__ float sum(float v) const {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
  }
};

// kSupcon: the SupCon switch as a compile-time constant (the launchers pick the kernel from
// InfonceChunk::supcon), so the InfoNCE kernels' loops carry no trace of it.
template <typename P, bool kSupcon>
__device__ r::RowChunk<float, P> row_chunk(const InfonceChunk& c, int64_t row) {
  return {c.S + row * c.count, static_cast<P*>(c.P) + row * c.count, c.z, c.count, c.y[row],
          self_column(c, row), c.inv_t, c.ignore, kSupcon, kSupcon && c.supcon_split};
}

// ---------------------------------------------------------------------------------------
// Row normalisation (operands of the GEMMs): one warp per row.

template <typename T>
__global__ void normalize_rows_kernel(const T* src, int64_t stride_row, int64_t stride_dim,
                                      int64_t first, int64_t count, int64_t d, bool normalize,
                                      T* out, float* inv_norm) {
  const int lane = threadIdx.x % 32;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (k >= count) return;
  const T* row = src + (first + k) * stride_row;
  float ss = 0.f;
  for (int64_t e = lane; e < d; e += 32) {
    const float x = Operand<T>::load(row + e * stride_dim);
    ss = __fmaf_rn(x, x, ss);
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float inv = normalize ? r::inv_norm(ss) : 1.f;
  for (int64_t e = lane; e < d; e += 32)
    out[k * d + e] = r::Cast<T>::to(__fmul_rn(Operand<T>::load(row + e * stride_dim), inv));
  if (inv_norm != nullptr && lane == 0) inv_norm[k] = inv;
}

// ---------------------------------------------------------------------------------------
// Row passes: one CTA per row of the chunk.

template <typename P, bool kSupcon>
__global__ void __launch_bounds__(kRowThreads) negatives_kernel(InfonceChunk c, float* m,
                                                                 float* l, float* U, int64_t d,
                                                                 float scale) {
  __shared__ float scratch[kWarps];
  CtaGroup g{scratch};
  const int64_t row = blockIdx.x;
  r::negatives_pass(g, row_chunk<P, kSupcon>(c, row), scale, m + row, l + row,
                    U != nullptr ? U + row * d : nullptr, d);
}

// The fast path (fp32 and bf16 weights: weight_scale 1).
template <typename P, bool kSupcon>
__global__ void __launch_bounds__(kRowThreads) negatives_fixed_kernel(InfonceChunk c, float* l) {
  __shared__ float scratch[kWarps];
  CtaGroup g{scratch};
  const int64_t row = blockIdx.x;
  r::negatives_pass_fixed(g, row_chunk<P, kSupcon>(c, row), 1.f, l + row);
}

__global__ void lse_kernel(const float* m, const float* l, float* lse, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) lse[i] = r::lse_of(m[i], l[i]);
}

template <typename P, bool kSupcon>
__global__ void __launch_bounds__(kRowThreads) positives_kernel(InfonceChunk c,
                                                                 const float* lse, float* loss,
                                                                 float* sig, float* count,
                                                                 float scale) {
  __shared__ float scratch[kWarps];
  CtaGroup g{scratch};
  const int64_t row = blockIdx.x;
  r::positives_pass(g, row_chunk<P, kSupcon>(c, row), lse[row], scale, loss + row, sig + row,
                    count + row);
}

template <typename P, bool kSupcon>
__global__ void __launch_bounds__(kRowThreads) weights_kernel(InfonceChunk c, const float* lse,
                                                               const float* pos_sig,
                                                               const float* row_coef,
                                                               const float* scale) {
  const int64_t row = blockIdx.x;
  const float inv_scale = scale != nullptr ? 1.f / *scale : 1.f;
  r::weights_pass(CtaGroup{nullptr}, row_chunk<P, kSupcon>(c, row), lse[row], pos_sig[row],
                  row_coef[row], inv_scale);
}

// Finalize: one CTA per row.
template <typename T>
__global__ void __launch_bounds__(kRowThreads) finalize_kernel(InfonceFinalize f) {
  __shared__ float scratch[kWarps];
  CtaGroup g{scratch};
  const int64_t i = blockIdx.x;
  const r::RowTerms<float> t = r::row_terms(f.loss[i], f.sig[i], f.count[i]);
  if (threadIdx.x == 0) {
    f.lse_out[i] = f.lse[i];
    f.num_pos[i] = t.num_pos;
    f.row_loss[i] = t.row_loss;
    f.pos_sig[i] = t.pos_sig;
  }
  if (f.row_grad == nullptr) return;
  const T* x = static_cast<const T*>(f.anchors) + i * f.stride_row;
  const float inv = f.inv_norm[i];
  const int64_t stride = f.stride_dim;
  auto xhat = [&](int64_t e) { return __fmul_rn(Operand<T>::load(x + e * stride), inv); };
  r::row_gradient(g, f.inv_t, f.sig[i], f.l[i], t.num_pos, f.U + i * f.d, f.V + i * f.d,
                  f.weight_scale, f.normalize, inv, xhat, f.row_grad + i * f.d, f.d);
}

// Column backprop: one warp per column.
template <typename T>
__global__ void columns_backward_kernel(float* grad, const float* scale, const T* src,
                                        int64_t stride_row, int64_t stride_dim, int64_t first,
                                        int64_t count, int64_t d, bool normalize) {
  const int lane = threadIdx.x % 32;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (q >= count) return;
  WarpGroup g;
  const T* x = src + (first + q) * stride_row;
  float ss = 0.f;
  for (int64_t e = lane; e < d; e += 32) {
    const float v = Operand<T>::load(x + e * stride_dim);
    ss = __fmaf_rn(v, v, ss);
  }
  ss = g.sum(ss);
  const float inv = normalize ? r::inv_norm(ss) : 1.f;
  auto xhat = [&](int64_t e) { return __fmul_rn(Operand<T>::load(x + e * stride_dim), inv); };
  r::column_gradient(g, grad + q * d, scale != nullptr ? *scale : 1.f, normalize, inv, xhat, d);
}

// Calls fn(T{}) with the device type of `kind`.
template <typename Fn>
cudaError_t dispatch(ScalarKind kind, Fn&& fn) {
  switch (kind) {
    case ScalarKind::kBFloat16:
      return fn(__nv_bfloat16{});
    case ScalarKind::kFloat16:
      return fn(__half{});
    default:
      return fn(float{});
  }
}

constexpr int kWarpsPerBlock = 8;

}  // namespace

cudaError_t infonce_normalize_rows(const void* src, ScalarKind kind, int64_t stride_row,
                                   int64_t stride_dim, int64_t first, int64_t count, int64_t d,
                                   bool normalize, void* out, float* inv_norm,
                                   cudaStream_t stream) {
  if (count <= 0 || d <= 0) return cudaSuccess;
  const int64_t blocks = ceil_div(count, kWarpsPerBlock);
  if (blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(kind, [&](auto t) {
    using T = decltype(t);
    normalize_rows_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
        static_cast<const T*>(src), stride_row, stride_dim, first, count, d, normalize,
        static_cast<T*>(out), inv_norm);
    return cudaGetLastError();
  });
}

// The row-pass kernels, one CTA per row of a chunk: `pick(T{}, supcon)` gives the kernel's
// instantiation for operand type T; `types(kind, fn)` calls fn for the chunk's dtype
// (kAnyType: all three).
constexpr auto kAnyType = [](ScalarKind kind, auto&& fn) { return dispatch(kind, fn); };

template <class Types, class Pick, class... Args>
cudaError_t launch_rows(const InfonceChunk& chunk, cudaStream_t stream, Types types, Pick pick,
                        Args... args) {
  if (chunk.rows <= 0 || chunk.count <= 0) return cudaSuccess;
  if (chunk.rows > kMaxGridX) return cudaErrorInvalidConfiguration;
  return types(chunk.kind, [&](auto t) {
    auto* kernel = pick(t, chunk.supcon);
    kernel<<<static_cast<unsigned>(chunk.rows), kRowThreads, 0, stream>>>(chunk, args...);
    return cudaGetLastError();
  });
}

cudaError_t infonce_negatives(const InfonceChunk& chunk, float* m, float* l, float* U,
                              int64_t d, cudaStream_t stream) {
  auto pick = [](auto t, bool supcon) {
    using T = decltype(t);
    return supcon ? negatives_kernel<T, true> : negatives_kernel<T, false>;
  };
  return launch_rows(chunk, stream, kAnyType, pick, m, l, U, d, weight_scale(chunk.kind));
}

cudaError_t infonce_negatives_fixed(const InfonceChunk& chunk, float* l, cudaStream_t stream) {
  // fp16 weights cannot hold e^{s − 1/τ} (rows::fixed_shift): no fp16 instantiation.
  if (chunk.kind == ScalarKind::kFloat16) return cudaErrorInvalidValue;
  auto bf16_or_fp32 = [](ScalarKind kind, auto&& fn) {
    return kind == ScalarKind::kBFloat16 ? fn(__nv_bfloat16{}) : fn(float{});
  };
  auto pick = [](auto t, bool supcon) {
    using T = decltype(t);
    return supcon ? negatives_fixed_kernel<T, true> : negatives_fixed_kernel<T, false>;
  };
  return launch_rows(chunk, stream, bf16_or_fp32, pick, l);
}

cudaError_t infonce_lse(const float* m, const float* l, float* lse, int64_t n,
                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  lse_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, stream>>>(m, l, lse, n);
  return cudaGetLastError();
}

cudaError_t infonce_positives(const InfonceChunk& chunk, const float* lse, float* loss,
                              float* sig, float* count, cudaStream_t stream) {
  auto pick = [](auto t, bool supcon) {
    using T = decltype(t);
    return supcon ? positives_kernel<T, true> : positives_kernel<T, false>;
  };
  return launch_rows(chunk, stream, kAnyType, pick, lse, loss, sig, count,
                     weight_scale(chunk.kind));
}

cudaError_t infonce_finalize(const InfonceFinalize& f, cudaStream_t stream) {
  if (f.n <= 0) return cudaSuccess;
  if (f.n > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(f.kind, [&](auto t) {
    using T = decltype(t);
    finalize_kernel<T><<<static_cast<unsigned>(f.n), kRowThreads, 0, stream>>>(f);
    return cudaGetLastError();
  });
}

cudaError_t infonce_weights(const InfonceChunk& chunk, const float* lse, const float* pos_sig,
                            const float* row_coef, const float* scale, cudaStream_t stream) {
  auto pick = [](auto t, bool supcon) {
    using T = decltype(t);
    return supcon ? weights_kernel<T, true> : weights_kernel<T, false>;
  };
  return launch_rows(chunk, stream, kAnyType, pick, lse, pos_sig, row_coef, scale);
}

cudaError_t infonce_columns_backward(float* grad, const float* scale, const void* src,
                                     ScalarKind kind, int64_t stride_row, int64_t stride_dim,
                                     int64_t first, int64_t count, int64_t d, bool normalize,
                                     cudaStream_t stream) {
  if (count <= 0 || d <= 0) return cudaSuccess;
  const int64_t blocks = ceil_div(count, kWarpsPerBlock);
  if (blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(kind, [&](auto t) {
    using T = decltype(t);
    columns_backward_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0,
                                 stream>>>(grad, scale, static_cast<const T*>(src), stride_row,
                                           stride_dim, first, count, d, normalize);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace pixcontrast
