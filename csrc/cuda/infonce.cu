// Fused per-positive InfoNCE on CUDA: forward (row pass) and column backward.
// Contract and algorithm: csrc/cuda/infonce.h, docs/design.md §1. Only CUDA headers.
//
// Block structure (every kernel: 256 threads = 8 warps):
// * Shared memory holds one row tile [BN, DP] and one column tile [BM, DP] in the operand
//   dtype T (DP: D padded to 64/128/256/512), the logits tile S [BN, BM] fp32 and a
//   weights tile P [BN, BM] in T. Rows are L2-normalised on the way into shared memory
//   (fp32 norm, one warp per row, round-to-nearest intrinsics only), so a row gets the same
//   operand values in every kernel and the logits recomputed by the column backward are
//   bit-identical to the forward's.
// * Tile products on the tensor cores through WMMA 16×16 fragments: S = Â·Ĉᵀ, then
//   U += P·Ĉ (forward) or acc += Gᵀ·Â (column backward) into fp32 accumulator fragments
//   that stay in registers for the whole column (or row) loop.
// * The elementwise work between the products runs on S in shared memory, TPR threads per
//   row (a row's threads are adjacent lanes of one warp; reductions are xor shuffles).
// * The running log-sum-exp uses a lazily updated reference max per row: the reference
//   only moves (and U is rescaled, through a per-warp 16×16 scratch, since the accumulator
//   fragment layout is opaque) when a tile's max exceeds it by more than 8 (natural-log
//   units), so e^{s-m} <= e^8 and, after the first tiles, U is never touched between
//   products.
#include "cuda/infonce.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "cuda/common.h"

namespace pixcontrast {
namespace cuda {
namespace {

using namespace nvcuda;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLazyRescale = 8.0f;  // e^8 ≈ 2981: fits every operand dtype
constexpr float kNormEps = 1e-12f;    // F.normalize's clamp

// --- operand modes ----------------------------------------------------------------------

struct ModeF16 {
  using T = __half;
  using Frag = __half;
  static constexpr int K = 16;
  static constexpr bool kTf32 = false;
  // fp16's narrow exponent: the backward weights (~1e-7) are scaled per tile before the cast.
  static constexpr bool kScaleWeights = true;
};
struct ModeBF16 {
  using T = __nv_bfloat16;
  using Frag = __nv_bfloat16;
  static constexpr int K = 16;
  static constexpr bool kTf32 = false;
  static constexpr bool kScaleWeights = false;
};
struct ModeTF32 {  // fp32 inputs, allow_tf32
  using T = float;
  using Frag = wmma::precision::tf32;
  static constexpr int K = 8;
  static constexpr bool kTf32 = true;
  static constexpr bool kSplit = false;
  static constexpr bool kScaleWeights = false;
};
struct ModeF32 {  // fp32 inputs without TF32: three TF32 products of a hi/lo split
  using T = float;
  using Frag = wmma::precision::tf32;
  static constexpr int K = 8;
  static constexpr bool kTf32 = true;
  static constexpr bool kSplit = true;
  static constexpr bool kScaleWeights = false;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

constexpr int align128(int bytes) { return (bytes + 127) / 128 * 128; }
constexpr int cmax(int a, int b) { return a > b ? a : b; }

// --- tile configuration: the one place tile shapes are chosen ---------------------------

template <class Mode, int DP>
struct Cfg {
  using T = typename Mode::T;
  static constexpr int kElem = static_cast<int>(sizeof(T));
  static constexpr int kPad = 16 / kElem;  // 16-byte skew per shared-memory row
  // The U accumulator [BN, DP] fp32 lives in registers: BN·DP/256 floats a thread (≤ 64).
  static constexpr int BN = DP <= 256 ? 64 : 32;
  // Shared memory stays under ~150 KB (A100: 163 KB a block) for fp32 operands.
  static constexpr int BM = kElem == 2 ? (DP <= 256 ? 64 : 32) : (DP <= 128 ? 64 : 32);
  static constexpr int LDX = DP + kPad;  // row and column tiles, elements
  static constexpr int LDS = BM + 4;     // logits tile, floats
  static constexpr int LDP = BM + kPad;  // weights tile, elements
  static constexpr int TPR = kThreads / BN;  // threads per row in the elementwise phase
  static constexpr int CPT = BM / TPR;       // columns per thread

  static constexpr int kRowTile = align128(BN * LDX * kElem);
  static constexpr int kColTile = align128(BM * LDX * kElem);
  // S doubles as the per-warp 16×16 fp32 scratch once a tile's logits have been consumed.
  static constexpr int kLogits = align128(cmax(BN * LDS * 4, kWarps * 256 * 4));
  static constexpr int kWeights = align128(BN * LDP * kElem);
  static constexpr int kColLabels = align128(BM * 8);
  static constexpr int kRowFloats = align128(BN * 4);

  static constexpr int kOffRow = 0;
  static constexpr int kOffCol = kOffRow + kRowTile;
  static constexpr int kOffLogits = kOffCol + kColTile;
  static constexpr int kOffWeights = kOffLogits + kLogits;
  static constexpr int kOffColLabels = kOffWeights + kWeights;
  static constexpr int kOffRowA = kOffColLabels + kColLabels;  // per-row floats (alpha, lse)
  static constexpr int kOffReduce = kOffRowA + kRowFloats;     // kWarps floats
  static constexpr int kSmemBytes = kOffReduce + 128;

  static_assert(BN % 16 == 0 && BM % 16 == 0 && DP % 32 == 0, "tile shape");
  static_assert(kThreads % BN == 0 && BM % TPR == 0 && 32 % TPR == 0, "row mapping");
  static_assert(BM % Mode::K == 0 && BN % Mode::K == 0, "k steps");
};

// Accumulator fragments of a [ROWS, DP] fp32 block spread over the 8 warps: warp w owns
// row fragment w % RF and FPW consecutive column fragments.
template <int ROWS, int DP>
struct AccLayout {
  static constexpr int RF = ROWS / 16;
  static constexpr int WPR = kWarps / RF;  // warps per row fragment
  static constexpr int FPW = (DP / 16) / WPR;
  static_assert(kWarps % RF == 0 && (DP / 16) % WPR == 0, "accumulator layout");
  __device__ static int row_frag(int warp) { return warp % RF; }
  __device__ static int col_frag(int warp, int k) { return (warp / RF) * FPW + k; }
};

template <class Mode>
using Acc = wmma::fragment<wmma::accumulator, 16, 16, Mode::K, float>;

// --- small device helpers ----------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

template <int WIDTH>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

template <int WIDTH>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// softplus(x) and σ(x), stable for any x including -inf (both 0 there).
__device__ __forceinline__ void softplus_sigmoid(float x, float& softplus, float& sigmoid) {
  if (x == -INFINITY) {
    softplus = 0.f;
    sigmoid = 0.f;
    return;
  }
  const float e = __expf(-fabsf(x));  // in (0, 1]
  softplus = fmaxf(x, 0.f) + log1pf(e);
  const float inv = __frcp_rn(1.f + e);
  sigmoid = x >= 0.f ? inv : e * inv;
}

// Loads rows first..first+ROWS of a [count, d] matrix (through `index` when given) into
// shared memory as T, L2-normalised when `normalize`, zero-padded to DP columns and for
// rows past `count`. One warp per row; the same arithmetic (round-to-nearest intrinsics,
// fixed reduction order) in every kernel, so a row always gets the same operand values.
template <class T, int DP, int ROWS>
__device__ __forceinline__ void load_rows(T* dst, int ld, const T* __restrict__ src,
                                          int64_t stride_row, int64_t stride_dim,
                                          const int64_t* __restrict__ index, int64_t first,
                                          int64_t count, int64_t d, bool normalize) {
  constexpr int kPer = DP / 32;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int r = warp; r < ROWS; r += kWarps) {
    const int64_t g = first + r;
    const bool valid = g < count;
    int64_t row = 0;
    if (valid) row = index != nullptr ? index[g] : g;
    const T* p = src + row * stride_row;
    float x[kPer];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t j = lane + 32 * k;
      x[k] = (valid && j < d) ? to_float(p[j * stride_dim]) : 0.f;
      ss = __fmaf_rn(x[k], x[k], ss);
    }
    float inv = 1.f;
    if (normalize) inv = __frcp_rn(fmaxf(__fsqrt_rn(warp_sum(ss)), kNormEps));
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      dst[r * ld + lane + 32 * k] = from_float<T>(normalize ? __fmul_rn(x[k], inv) : x[k]);
    }
  }
}

template <class T, int BM>
__device__ __forceinline__ void load_col_labels(int64_t* dst, const int64_t* __restrict__ labels,
                                                int64_t stride, int64_t first, int64_t count,
                                                int64_t ignore_index) {
  for (int c = threadIdx.x; c < BM; c += kThreads) {
    const int64_t g = first + c;
    dst[c] = g < count ? labels[g * stride] : ignore_index;
  }
}

// acc += A·B on one 16×16 output fragment (k = Mode::K), A and B in shared memory.
template <class Mode, class LayoutA, class LayoutB>
__device__ __forceinline__ void mma_step(Acc<Mode>& acc, const typename Mode::T* a, unsigned lda,
                                         const typename Mode::T* b, unsigned ldb) {
  wmma::fragment<wmma::matrix_a, 16, 16, Mode::K, typename Mode::Frag, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, Mode::K, typename Mode::Frag, LayoutB> fb;
  wmma::load_matrix_sync(fa, a, lda);
  wmma::load_matrix_sync(fb, b, ldb);
  if constexpr (Mode::kTf32) {
    if constexpr (Mode::kSplit) {
      // x = hi + lo with hi, lo TF32: A·B ≈ lo_a·hi_b + hi_a·lo_b + hi_a·hi_b (small first).
      decltype(fa) fa_lo;
      decltype(fb) fb_lo;
#pragma unroll
      for (int i = 0; i < fa.num_elements; ++i) {
        const float x = fa.x[i];
        const float hi = wmma::__float_to_tf32(x);
        fa_lo.x[i] = wmma::__float_to_tf32(__fsub_rn(x, hi));
        fa.x[i] = hi;
      }
#pragma unroll
      for (int i = 0; i < fb.num_elements; ++i) {
        const float x = fb.x[i];
        const float hi = wmma::__float_to_tf32(x);
        fb_lo.x[i] = wmma::__float_to_tf32(__fsub_rn(x, hi));
        fb.x[i] = hi;
      }
      wmma::mma_sync(acc, fa_lo, fb, acc);
      wmma::mma_sync(acc, fa, fb_lo, acc);
    } else {
#pragma unroll
      for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
#pragma unroll
      for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    }
  }
  wmma::mma_sync(acc, fa, fb, acc);
}

// S[BN, BM] (fp32, shared) = rows · colsᵀ over the first round_up(d, K) dims.
template <class Mode, int DP>
__device__ __forceinline__ void compute_logits(const typename Mode::T* rows,
                                               const typename Mode::T* cols, float* s,
                                               int64_t d) {
  using C = Cfg<Mode, DP>;
  constexpr int kColFrags = C::BM / 16;
  constexpr int kFrags = (C::BN / 16) * kColFrags;
  const int warp = threadIdx.x / 32;
  const int dk = static_cast<int>((d + Mode::K - 1) / Mode::K * Mode::K);
  for (int f = warp; f < kFrags; f += kWarps) {
    const int rf = f / kColFrags;
    const int cf = f % kColFrags;
    Acc<Mode> acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k0 = 0; k0 < dk; k0 += Mode::K) {
      mma_step<Mode, wmma::row_major, wmma::col_major>(acc, rows + rf * 16 * C::LDX + k0, C::LDX,
                                                       cols + cf * 16 * C::LDX + k0, C::LDX);
    }
    wmma::store_matrix_sync(s + rf * 16 * C::LDS + cf * 16, acc, C::LDS, wmma::mem_row_major);
  }
}

// acc[k] += P[rows of this warp's fragment, :BM] · cols[:BM, its column fragments].
template <class Mode, int DP>
__device__ __forceinline__ void accumulate_weighted_cols(
    Acc<Mode> (&acc)[AccLayout<Cfg<Mode, DP>::BN, DP>::FPW], const typename Mode::T* p,
    const typename Mode::T* cols, int64_t d) {
  using C = Cfg<Mode, DP>;
  using L = AccLayout<C::BN, DP>;
  const int warp = threadIdx.x / 32;
  const int rf = L::row_frag(warp);
#pragma unroll
  for (int k = 0; k < L::FPW; ++k) {
    const int cf = L::col_frag(warp, k);
    if (cf * 16 >= d) continue;  // padding columns: nothing to accumulate
#pragma unroll
    for (int k0 = 0; k0 < C::BM; k0 += Mode::K) {
      mma_step<Mode, wmma::row_major, wmma::row_major>(acc[k], p + rf * 16 * C::LDP + k0, C::LDP,
                                                       cols + k0 * C::LDX + cf * 16, C::LDX);
    }
  }
}

// Writes a warp's [16, 16] accumulator fragment at (row0, col0) of a row-major fp32 [rows, d]
// global matrix (masked to row < rows, col < d) through its 16×16 shared scratch.
template <class Mode>
__device__ __forceinline__ void store_fragment(const Acc<Mode>& acc, float* scratch, float* out,
                                               int64_t row0, int64_t rows, int64_t col0,
                                               int64_t d) {
  const int lane = threadIdx.x % 32;
  wmma::store_matrix_sync(scratch, acc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int i = lane; i < 256; i += 32) {
    const int64_t r = row0 + i / 16;
    const int64_t c = col0 + i % 16;
    if (r < rows && c < d) out[r * d + c] = scratch[i];
  }
  __syncwarp();
}

// lse = log Σ_slots l_s e^{m_s - m} (fixed slot order): the same expression wherever the
// merged lse is needed. m_safe: the merged max, 0 when no slot saw a negative.
__device__ __forceinline__ void merge_lse(const float* __restrict__ ws_m,
                                          const float* __restrict__ ws_l, int64_t slots,
                                          int64_t n, int64_t row, float& m_safe, float& l,
                                          float& lse) {
  float m = -INFINITY;
  for (int64_t s = 0; s < slots; ++s) m = fmaxf(m, ws_m[s * n + row]);
  m_safe = m == -INFINITY ? 0.f : m;
  l = 0.f;
  for (int64_t s = 0; s < slots; ++s) {
    l = __fmaf_rn(ws_l[s * n + row], __expf(__fsub_rn(ws_m[s * n + row], m_safe)), l);
  }
  lse = l > 0.f ? __fadd_rn(m_safe, logf(l)) : -INFINITY;
}

// ∂/∂x of x/max(‖x‖, eps) applied to g, for one row held by a warp (x, g: kPer values a
// lane, lane + 32k ordering). (g - x̂(x̂·g))/‖x‖, or g/eps when ‖x‖ <= eps.
template <int kPer>
__device__ __forceinline__ void normalize_backprop_row(float (&g)[kPer], const float (&x)[kPer]) {
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) ss = __fmaf_rn(x[k], x[k], ss);
  const float norm = __fsqrt_rn(warp_sum(ss));
  const float inv = __frcp_rn(fmaxf(norm, kNormEps));
  float proj = 0.f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) proj = __fmaf_rn(x[k] * inv, g[k], proj);
  proj = warp_sum(proj);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    g[k] = norm > kNormEps ? (g[k] - x[k] * inv * proj) * inv : g[k] * (1.f / kNormEps);
  }
}

// Views of a kernel's dynamic shared memory (layout: Cfg).
template <class Mode, int DP>
struct SmemTiles {
  using C = Cfg<Mode, DP>;
  using T = typename Mode::T;
  T* row_tile;
  T* col_tile;
  float* logits;  // also the per-warp 16×16 scratch once a tile's logits are consumed
  T* weights;
  int64_t* col_labels;
  float* row_floats;
  float* reduce;
  __device__ explicit SmemTiles(unsigned char* base)
      : row_tile(reinterpret_cast<T*>(base + C::kOffRow)),
        col_tile(reinterpret_cast<T*>(base + C::kOffCol)),
        logits(reinterpret_cast<float*>(base + C::kOffLogits)),
        weights(reinterpret_cast<T*>(base + C::kOffWeights)),
        col_labels(reinterpret_cast<int64_t*>(base + C::kOffColLabels)),
        row_floats(reinterpret_cast<float*>(base + C::kOffRowA)),
        reduce(reinterpret_cast<float*>(base + C::kOffReduce)) {}
  __device__ float* scratch() const { return logits + (threadIdx.x / 32) * 256; }
};

// Writes the [BN, DP] accumulator of a row block (rows row0.., this warp's fragments) into
// the fp32 workspace slot `out` ([n, d] row-major). Call after a block-wide barrier: the
// logits tile becomes scratch.
template <class Mode, int DP>
__device__ __forceinline__ void store_row_block(
    const Acc<Mode> (&acc)[AccLayout<Cfg<Mode, DP>::BN, DP>::FPW], float* scratch, float* out,
    int64_t row0, int64_t n, int64_t d) {
  using L = AccLayout<Cfg<Mode, DP>::BN, DP>;
  const int rf = L::row_frag(threadIdx.x / 32);
#pragma unroll
  for (int k = 0; k < L::FPW; ++k) {
    const int cf = L::col_frag(threadIdx.x / 32, k);
    if (cf * 16 >= d) continue;
    store_fragment<Mode>(acc[k], scratch, out, row0 + rf * 16, n, cf * 16, d);
  }
}

// --- kernel arguments --------------------------------------------------------------------

struct ColumnSource {
  const void* data;
  int64_t stride_row;
  int64_t stride_dim;
  const int64_t* index;  // column position -> row of data (nullptr: identity)
  const int64_t* labels;
  int64_t stride_labels;
  int64_t num;
};

struct PassArgs {
  InfonceRows rows;
  ColumnSource cols;
  bool exclude_self;  // positives: drop position r == column position j
  bool need_grad;
  int64_t slots;
  int64_t tiles_per_split;
  int64_t slot_offset;
  float* ws_m;
  float* ws_l;
  float* ws_loss;
  float* ws_sig;
  float* ws_npos;
  float* ws_u;
  float* ws_v;
};

// A forward CTA's row block (its anchor rows, label-sorted, loaded into the row tile) and
// its split's range of column tiles; r/sub: this thread's row and place in the row's group.
template <class Mode, int DP>
struct PassBlock {
  using C = Cfg<Mode, DP>;
  int64_t row0, grow, y, t_begin, t_end, slot;
  int r, sub;
  bool row_ok;
  __device__ PassBlock(const PassArgs& args, typename Mode::T* row_tile) {
    const InfonceRows& R = args.rows;
    row0 = static_cast<int64_t>(blockIdx.y) * C::BN;
    r = threadIdx.x / C::TPR;
    sub = threadIdx.x % C::TPR;
    load_rows<typename Mode::T, DP, C::BN>(row_tile, C::LDX,
                                           static_cast<const typename Mode::T*>(R.anchors),
                                           R.stride_row, R.stride_dim, R.perm, row0, R.n, R.d,
                                           R.normalize);
    grow = row0 + r;
    y = grow < R.n ? R.sorted_labels[grow] : R.ignore_index;
    row_ok = grow < R.n && y != R.ignore_index;
    const int64_t num_tiles = (args.cols.num + C::BM - 1) / C::BM;
    t_begin = static_cast<int64_t>(blockIdx.x) * args.tiles_per_split;
    t_end = min(t_begin + args.tiles_per_split, num_tiles);
    slot = args.slot_offset + blockIdx.x;
  }
};

// --- forward: negatives pass ---------------------------------------------------------------

template <class Mode, int DP>
__global__ void __launch_bounds__(kThreads, 1) negatives_kernel(const PassArgs args) {
  using C = Cfg<Mode, DP>;
  using T = typename Mode::T;
  using L = AccLayout<C::BN, DP>;
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemTiles<Mode, DP> sm(smem);
  T* row_tile = sm.row_tile;
  T* col_tile = sm.col_tile;
  float* logits = sm.logits;
  T* weights = sm.weights;
  int64_t* col_labels = sm.col_labels;
  float* alpha_s = sm.row_floats;

  const InfonceRows& R = args.rows;
  const int64_t n = R.n, d = R.d;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const PassBlock<Mode, DP> B(args, row_tile);
  const int r = B.r, sub = B.sub;
  const int64_t y = B.y;
  const bool row_ok = B.row_ok;

  float m_ref = -INFINITY;  // this row's reference max (identical in its TPR threads)
  float l_part = 0.f;       // this thread's share of Σ e^{s - m_ref}
  Acc<Mode> u[L::FPW];
#pragma unroll
  for (int k = 0; k < L::FPW; ++k) wmma::fill_fragment(u[k], 0.f);

  const ColumnSource& S = args.cols;
  for (int64_t t = B.t_begin; t < B.t_end; ++t) {
    const int64_t col0 = t * C::BM;
    __syncthreads();  // the previous tile's operands are consumed
    load_rows<T, DP, C::BM>(col_tile, C::LDX, static_cast<const T*>(S.data), S.stride_row,
                            S.stride_dim, S.index, col0, S.num, d, R.normalize);
    load_col_labels<T, C::BM>(col_labels, S.labels, S.stride_labels, col0, S.num,
                              R.ignore_index);
    __syncthreads();
    compute_logits<Mode, DP>(row_tile, col_tile, logits, d);
    __syncthreads();

    float s_reg[C::CPT];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < C::CPT; ++j) {
      const int c = sub + j * C::TPR;
      const int64_t z = col_labels[c];
      // The self pair has equal labels, so it is never a negative.
      const bool neg = row_ok && z != R.ignore_index && z != y;
      const float s = __fmul_rn(logits[r * C::LDS + c], R.inv_temperature);
      s_reg[j] = neg ? s : -INFINITY;
      tile_max = fmaxf(tile_max, s_reg[j]);
    }
    tile_max = group_max<C::TPR>(tile_max);
    float alpha = 1.f;
    if (tile_max > m_ref + kLazyRescale) {
      // Before the first negative U and l are 0: no rescale needed.
      if (m_ref != -INFINITY) alpha = __expf(__fsub_rn(m_ref, tile_max));
      m_ref = tile_max;
      l_part *= alpha;
    }
    const float m_safe = m_ref == -INFINITY ? 0.f : m_ref;
#pragma unroll
    for (int j = 0; j < C::CPT; ++j) {
      const int c = sub + j * C::TPR;
      const float p = __expf(__fsub_rn(s_reg[j], m_safe));  // -inf -> 0
      l_part += p;
      if (args.need_grad) weights[r * C::LDP + c] = from_float<T>(p);
    }
    if (sub == 0) alpha_s[r] = alpha;
    __syncthreads();

    if (args.need_grad) {
      const int rf = L::row_frag(warp);
      const float my_alpha = alpha_s[rf * 16 + (lane & 15)];
      if (__any_sync(kFullMask, my_alpha != 1.f)) {  // rare: a reference max moved
        float* scratch = sm.scratch();                 // S is consumed: reuse it
#pragma unroll
        for (int k = 0; k < L::FPW; ++k) {
          wmma::store_matrix_sync(scratch, u[k], 16, wmma::mem_row_major);
          __syncwarp();
          for (int i = lane; i < 256; i += 32) scratch[i] *= alpha_s[rf * 16 + i / 16];
          __syncwarp();
          wmma::load_matrix_sync(u[k], scratch, 16, wmma::mem_row_major);
          __syncwarp();
        }
      }
      accumulate_weighted_cols<Mode, DP>(u, weights, col_tile, d);
    }
  }

  const float l_row = group_sum<C::TPR>(l_part);
  if (sub == 0 && B.grow < n) {
    args.ws_m[B.slot * n + B.grow] = m_ref;
    args.ws_l[B.slot * n + B.grow] = l_row;
  }
  if (args.need_grad) {
    __syncthreads();  // every warp is done with S before it becomes scratch
    store_row_block<Mode, DP>(u, sm.scratch(), args.ws_u + B.slot * n * d, B.row0, n, d);
  }
}

// --- forward: positives pass ---------------------------------------------------------------

template <class Mode, int DP>
__global__ void __launch_bounds__(kThreads, 1) positives_kernel(const PassArgs args) {
  using C = Cfg<Mode, DP>;
  using T = typename Mode::T;
  using L = AccLayout<C::BN, DP>;
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemTiles<Mode, DP> sm(smem);
  T* row_tile = sm.row_tile;
  T* col_tile = sm.col_tile;
  float* logits = sm.logits;
  T* weights = sm.weights;
  int64_t* col_labels = sm.col_labels;
  float* lse_s = sm.row_floats;

  const InfonceRows& R = args.rows;
  const int64_t n = R.n, d = R.d;
  const PassBlock<Mode, DP> B(args, row_tile);
  const int r = B.r, sub = B.sub;
  const int64_t y = B.y, grow = B.grow;
  const bool row_ok = B.row_ok;
  for (int i = threadIdx.x; i < C::BN; i += kThreads) {
    float m_safe, l, lse = -INFINITY;
    if (B.row0 + i < n) {
      merge_lse(args.ws_m, args.ws_l, args.slots, n, B.row0 + i, m_safe, l, lse);
    }
    lse_s[i] = lse;
  }
  __syncthreads();
  const float lse = lse_s[r];

  float loss_part = 0.f, sig_part = 0.f, npos_part = 0.f;
  Acc<Mode> v[L::FPW];
#pragma unroll
  for (int k = 0; k < L::FPW; ++k) wmma::fill_fragment(v[k], 0.f);

  const ColumnSource& S = args.cols;
  for (int64_t t = B.t_begin; t < B.t_end; ++t) {
    const int64_t col0 = t * C::BM;
    __syncthreads();  // the previous tile's operands and labels are consumed
    load_col_labels<T, C::BM>(col_labels, S.labels, S.stride_labels, col0, S.num,
                              R.ignore_index);
    __syncthreads();
    bool pos[C::CPT];
    bool any = false;
#pragma unroll
    for (int j = 0; j < C::CPT; ++j) {
      const int c = sub + j * C::TPR;
      const int64_t z = col_labels[c];
      pos[j] = row_ok && z != R.ignore_index && z == y && !(args.exclude_self && grow == col0 + c);
      any = any || pos[j];
    }
    // Rows are sorted by label and the bank is class-sorted: most tiles hold no positive
    // pair and are skipped before their data is read.
    if (!__syncthreads_or(any)) continue;
    load_rows<T, DP, C::BM>(col_tile, C::LDX, static_cast<const T*>(S.data), S.stride_row,
                            S.stride_dim, S.index, col0, S.num, d, R.normalize);
    __syncthreads();
    compute_logits<Mode, DP>(row_tile, col_tile, logits, d);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < C::CPT; ++j) {
      const int c = sub + j * C::TPR;
      float softplus = 0.f, sigmoid = 0.f;
      if (pos[j]) {
        const float s = __fmul_rn(logits[r * C::LDS + c], R.inv_temperature);
        softplus_sigmoid(__fsub_rn(lse, s), softplus, sigmoid);
        loss_part += softplus;
        sig_part += sigmoid;
        npos_part += 1.f;
      }
      if (args.need_grad) weights[r * C::LDP + c] = from_float<T>(sigmoid);
    }
    if (args.need_grad) {
      __syncthreads();
      accumulate_weighted_cols<Mode, DP>(v, weights, col_tile, d);
    }
  }

  loss_part = group_sum<C::TPR>(loss_part);
  sig_part = group_sum<C::TPR>(sig_part);
  npos_part = group_sum<C::TPR>(npos_part);
  if (sub == 0 && grow < n) {
    args.ws_loss[B.slot * n + grow] = loss_part;
    args.ws_sig[B.slot * n + grow] = sig_part;
    args.ws_npos[B.slot * n + grow] = npos_part;
  }
  if (args.need_grad) {
    __syncthreads();  // every warp is done with S before it becomes scratch
    store_row_block<Mode, DP>(v, sm.scratch(), args.ws_v + B.slot * n * d, B.row0, n, d);
  }
}

// --- forward: merge the splits, write the outputs in the caller's row order --------------

struct FinalizeArgs {
  InfonceRows rows;
  int64_t slots;
  bool need_grad;
  const float* ws_m;
  const float* ws_l;
  const float* ws_loss;
  const float* ws_sig;
  const float* ws_npos;
  const float* ws_u;
  const float* ws_v;
  InfonceForwardOutputs out;
};

template <class T, int DP>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const FinalizeArgs args) {
  constexpr int kPer = DP / 32;
  const InfonceRows& R = args.rows;
  const int64_t n = R.n, d = R.d;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;  // warp-uniform; this kernel has no block-wide barrier

  float m_safe, l, lse;
  merge_lse(args.ws_m, args.ws_l, args.slots, n, row, m_safe, l, lse);
  float loss = 0.f, sig = 0.f, npos = 0.f;
  for (int64_t s = 0; s < args.slots; ++s) {  // fixed order: deterministic
    loss += args.ws_loss[s * n + row];
    sig += args.ws_sig[s * n + row];
    npos += args.ws_npos[s * n + row];
  }
  const float inv_npos = 1.f / fmaxf(npos, 1.f);
  const int64_t dst = R.perm[row];
  if (lane == 0) {
    args.out.row_loss[dst] = loss * inv_npos;
    args.out.lse[dst] = lse;
    args.out.pos_sig[dst] = sig;
    args.out.num_pos[dst] = npos;
  }
  if (!args.need_grad) return;

  // gh = (τ⁻¹/|P|) [pos_sig · Σ_neg softmax ĉ − Σ_p σ_p ĉ_p]; 0 without positives (sig = 0,
  // V = 0) and without negatives (U = 0, σ(-inf) = 0).
  const float inv_l = l > 0.f ? 1.f / l : 0.f;
  const float scale = R.inv_temperature * inv_npos;
  float g[kPer], x[kPer];
  const T* a = static_cast<const T*>(R.anchors) + dst * R.stride_row;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + 32 * k;
    float u = 0.f, v = 0.f;
    if (j < d) {
      for (int64_t s = 0; s < args.slots; ++s) {
        const float w = __expf(__fsub_rn(args.ws_m[s * n + row], m_safe));
        u = __fmaf_rn(args.ws_u[(s * n + row) * d + j], w, u);
        v += args.ws_v[(s * n + row) * d + j];
      }
    }
    g[k] = (sig * u * inv_l - v) * scale;
    x[k] = j < d ? to_float(a[j * R.stride_dim]) : 0.f;
  }
  if (R.normalize) normalize_backprop_row<kPer>(g, x);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + 32 * k;
    if (j < d) args.out.row_grad[dst * d + j] = g[k];
  }
}

// --- column backward ---------------------------------------------------------------------

struct ColumnsArgs {
  InfonceRows rows;
  ColumnSource cols;  // in the caller's column order (index == nullptr)
  bool is_self;
  const float* lse;
  const float* pos_sig;
  const float* row_coef;
  float* grad;  // [cols.num, d]
};

template <class Mode, int DP>
__global__ void __launch_bounds__(kThreads, 1) columns_backward_kernel(const ColumnsArgs args) {
  using C = Cfg<Mode, DP>;
  using T = typename Mode::T;
  using L = AccLayout<C::BM, DP>;  // accumulator: [BM columns, DP]
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemTiles<Mode, DP> sm(smem);
  T* row_tile = sm.row_tile;
  T* col_tile = sm.col_tile;
  float* logits = sm.logits;
  T* weights = sm.weights;
  int64_t* col_labels = sm.col_labels;
  float* reduce = sm.reduce;

  const InfonceRows& R = args.rows;
  const ColumnSource& S = args.cols;
  const int64_t n = R.n, d = R.d;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * C::BM;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int r = threadIdx.x / C::TPR;
  const int sub = threadIdx.x % C::TPR;

  // Same loader, tile shape and column order as the negatives pass: same operands.
  load_rows<T, DP, C::BM>(col_tile, C::LDX, static_cast<const T*>(S.data), S.stride_row,
                          S.stride_dim, nullptr, col0, S.num, d, R.normalize);
  load_col_labels<T, C::BM>(col_labels, S.labels, S.stride_labels, col0, S.num, R.ignore_index);

  Acc<Mode> acc[L::FPW];
#pragma unroll
  for (int k = 0; k < L::FPW; ++k) wmma::fill_fragment(acc[k], 0.f);

  const int64_t row_blocks = (n + C::BN - 1) / C::BN;
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    const int64_t row0 = rb * C::BN;
    const int64_t grow = row0 + r;
    int64_t y = R.ignore_index, src = -1;
    float coef = 0.f, lse = 0.f, pos_sig = 0.f;
    if (grow < n) {
      y = R.sorted_labels[grow];
      src = R.perm[grow];
      coef = args.row_coef[src];
      lse = args.lse[src];
      pos_sig = args.pos_sig[src];
    }
    // Rows with coef = 0 (ignored, no positive, zero upstream gradient) add nothing.
    const bool row_ok = grow < n && y != R.ignore_index && coef != 0.f;
    // Barrier: the previous block's operands are consumed (and, on the first pass, the
    // column tile and labels are loaded).
    if (!__syncthreads_or(row_ok)) continue;
    load_rows<T, DP, C::BN>(row_tile, C::LDX, static_cast<const T*>(R.anchors), R.stride_row,
                            R.stride_dim, R.perm, row0, n, d, R.normalize);
    __syncthreads();
    compute_logits<Mode, DP>(row_tile, col_tile, logits, d);
    __syncthreads();

    float g[C::CPT];
    float g_max = 0.f;
#pragma unroll
    for (int j = 0; j < C::CPT; ++j) {
      const int c = sub + j * C::TPR;
      const int64_t z = col_labels[c];
      const bool pair = row_ok && z != R.ignore_index && !(args.is_self && src == col0 + c);
      float gj = 0.f;
      if (pair) {
        const float s = __fmul_rn(logits[r * C::LDS + c], R.inv_temperature);
        const float e = __expf(__fsub_rn(s, lse));  // inf when the row has no negative
        if (z == y) {
          // positive: -coef σ(lse - s) = -coef / (1 + e^{s - lse})
          gj = e < 3.0e38f ? -coef / (1.f + e) : 0.f;
        } else {
          // negative: coef · pos_sig · e^{s - lse} (<= 1; the clamp guards the last ulp)
          gj = coef * pos_sig * fminf(e, 1.f);
        }
        gj *= R.inv_temperature;  // dĉ_j = τ⁻¹ Σ_i G_ij â_i
      }
      g[j] = gj;
      g_max = fmaxf(g_max, fabsf(gj));
    }
    float scale = 1.f;
    if constexpr (Mode::kScaleWeights) {
      // One scale per tile keeps the fp16 weights out of the subnormal range.
      g_max = group_max<32>(g_max);
      if (lane == 0) reduce[warp] = g_max;
      __syncthreads();
      float m = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, reduce[w]);
      scale = m > 0.f ? m : 1.f;
    }
    const float inv_scale = 1.f / scale;
#pragma unroll
    for (int j = 0; j < C::CPT; ++j) {
      const int c = sub + j * C::TPR;
      weights[r * C::LDP + c] = from_float<T>(g[j] * inv_scale);
    }
    __syncthreads();

    // acc[c, :] += Σ_r G[r, c] Â[r, :]: Gᵀ is the weights tile read column-major.
    const int cf_row = L::row_frag(warp);
#pragma unroll
    for (int k = 0; k < L::FPW; ++k) {
      const int cf = L::col_frag(warp, k);
      if (cf * 16 >= d) continue;
      if constexpr (Mode::kScaleWeights) {
        Acc<Mode> tmp;
        wmma::fill_fragment(tmp, 0.f);
#pragma unroll
        for (int k0 = 0; k0 < C::BN; k0 += Mode::K) {
          mma_step<Mode, wmma::col_major, wmma::row_major>(
              tmp, weights + k0 * C::LDP + cf_row * 16, C::LDP, row_tile + k0 * C::LDX + cf * 16,
              C::LDX);
        }
#pragma unroll
        for (int i = 0; i < tmp.num_elements; ++i) acc[k].x[i] += scale * tmp.x[i];
      } else {
#pragma unroll
        for (int k0 = 0; k0 < C::BN; k0 += Mode::K) {
          mma_step<Mode, wmma::col_major, wmma::row_major>(
              acc[k], weights + k0 * C::LDP + cf_row * 16, C::LDP,
              row_tile + k0 * C::LDX + cf * 16, C::LDX);
        }
      }
    }
  }

  __syncthreads();  // S becomes per-warp scratch
  float* scratch = sm.scratch();
  const int cf_row = L::row_frag(warp);
#pragma unroll
  for (int k = 0; k < L::FPW; ++k) {
    const int cf = L::col_frag(warp, k);
    if (cf * 16 >= d) continue;
    store_fragment<Mode>(acc[k], scratch, args.grad, col0 + cf_row * 16, S.num, cf * 16, d);
  }
}

// grad[j] <- ∂/∂c_j of the normalisation applied to grad[j] (in place), one warp per row.
template <class T, int DP>
__global__ void __launch_bounds__(kThreads) normalize_backprop_kernel(
    float* grad, const T* __restrict__ data, int64_t stride_row, int64_t stride_dim,
    int64_t num, int64_t d) {
  constexpr int kPer = DP / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= num) return;
  float g[kPer], x[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + 32 * k;
    g[k] = j < d ? grad[row * d + j] : 0.f;
    x[k] = j < d ? to_float(data[row * stride_row + j * stride_dim]) : 0.f;
  }
  normalize_backprop_row<kPer>(g, x);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + 32 * k;
    if (j < d) grad[row * d + j] = g[k];
  }
}

// --- dispatch ----------------------------------------------------------------------------

template <int V>
using IntTag = std::integral_constant<int, V>;

template <class Mode, class F>
auto dispatch_dim(int64_t d, F&& f) {
  if (d <= 64) return f(Mode{}, IntTag<64>{});
  if (d <= 128) return f(Mode{}, IntTag<128>{});
  if (d <= 256) return f(Mode{}, IntTag<256>{});
  return f(Mode{}, IntTag<512>{});
}

template <class F>
auto dispatch(ScalarKind kind, bool allow_tf32, int64_t d, F&& f) {
  switch (kind) {
    case ScalarKind::kFloat16:
      return dispatch_dim<ModeF16>(d, std::forward<F>(f));
    case ScalarKind::kBFloat16:
      return dispatch_dim<ModeBF16>(d, std::forward<F>(f));
    case ScalarKind::kFloat32:
    default:
      if (allow_tf32) return dispatch_dim<ModeTF32>(d, std::forward<F>(f));
      return dispatch_dim<ModeF32>(d, std::forward<F>(f));
  }
}

template <class Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

ColumnSource negatives_source(const InfonceSegment& seg) {
  return ColumnSource{seg.data, seg.stride_row, seg.stride_dim, nullptr,
                      seg.labels, seg.stride_labels, seg.num};
}

// Positives of the self segment walk the columns in the rows' (label-sorted) order, so
// same-class columns are contiguous too; the bank is used in its stored order.
ColumnSource positives_source(const InfonceSegment& seg, const InfonceRows& rows) {
  if (!seg.is_self) return negatives_source(seg);
  return ColumnSource{seg.data, seg.stride_row, seg.stride_dim, rows.perm,
                      rows.sorted_labels, 1, seg.num};
}

}  // namespace

InfonceTiles infonce_tiles(ScalarKind kind, bool allow_tf32, int64_t d) {
  return dispatch(kind, allow_tf32, d, [](auto mode, auto dp) {
    using C = Cfg<decltype(mode), decltype(dp)::value>;
    return InfonceTiles{C::BN, C::BM};
  });
}

int64_t infonce_plan_splits(InfonceSegment* segments, int num_segments, const InfonceRows& rows,
                            bool need_grad, int64_t target_ctas, int64_t max_workspace_bytes) {
  const InfonceTiles tiles = infonce_tiles(rows.kind, rows.allow_tf32, rows.d);
  int64_t total = 0;
  for (int i = 0; i < num_segments; ++i) {
    segments[i].tiles = ceil_div(segments[i].num, tiles.block_cols);
    total += segments[i].tiles;
  }
  const int64_t bytes_per_slot = 4 * rows.n * (5 + (need_grad ? 2 * rows.d : 0));
  int64_t target = std::max<int64_t>(1, target_ctas);
  target = std::max<int64_t>(1, std::min(target, max_workspace_bytes /
                                                     std::max<int64_t>(bytes_per_slot, 1)));
  int64_t offset = 0;
  for (int i = 0; i < num_segments; ++i) {
    InfonceSegment& s = segments[i];
    if (s.tiles == 0) {
      s.splits = s.tiles_per_split = 0;
      s.slot_offset = offset;
      continue;
    }
    const double share = static_cast<double>(target) * s.tiles / std::max<int64_t>(total, 1);
    const int64_t want = std::min(s.tiles, std::max<int64_t>(1, std::llround(share)));
    s.tiles_per_split = ceil_div(s.tiles, want);
    s.splits = ceil_div(s.tiles, s.tiles_per_split);  // no empty split
    s.slot_offset = offset;
    offset += s.splits;
  }
  return offset;
}

cudaError_t infonce_forward(const InfonceRows& rows, const InfonceSegment* segments,
                            int num_segments, int64_t slots, bool need_grad, float* ws_scalars,
                            float* ws_vectors, const InfonceForwardOutputs& out,
                            cudaStream_t stream) {
  if (rows.n == 0) return cudaSuccess;
  return dispatch(rows.kind, rows.allow_tf32, rows.d, [&](auto mode, auto dp) -> cudaError_t {
    using Mode = decltype(mode);
    constexpr int DP = decltype(dp)::value;
    using C = Cfg<Mode, DP>;
    const int64_t n = rows.n;
    const int64_t row_blocks = ceil_div(n, C::BN);
    if (row_blocks > kMaxGridYZ) return cudaErrorInvalidConfiguration;
    PassArgs args{};
    args.rows = rows;
    args.need_grad = need_grad;
    args.slots = slots;
    args.ws_m = ws_scalars;
    args.ws_l = ws_scalars + slots * n;
    args.ws_loss = ws_scalars + 2 * slots * n;
    args.ws_sig = ws_scalars + 3 * slots * n;
    args.ws_npos = ws_scalars + 4 * slots * n;
    args.ws_u = need_grad ? ws_vectors : nullptr;
    args.ws_v = need_grad ? ws_vectors + slots * n * rows.d : nullptr;

    PIXCONTRAST_RETURN_IF_ERROR(allow_smem(negatives_kernel<Mode, DP>, C::kSmemBytes));
    PIXCONTRAST_RETURN_IF_ERROR(allow_smem(positives_kernel<Mode, DP>, C::kSmemBytes));
    // Every slot's partials are written for every row: slots of empty segments do not exist.
    for (int i = 0; i < num_segments; ++i) {
      const InfonceSegment& seg = segments[i];
      if (seg.splits == 0) continue;
      args.cols = negatives_source(seg);
      args.exclude_self = false;
      args.tiles_per_split = seg.tiles_per_split;
      args.slot_offset = seg.slot_offset;
      const dim3 grid(static_cast<unsigned>(seg.splits), static_cast<unsigned>(row_blocks));
      negatives_kernel<Mode, DP><<<grid, kThreads, C::kSmemBytes, stream>>>(args);
      PIXCONTRAST_LAUNCH_CHECK();
    }
    for (int i = 0; i < num_segments; ++i) {
      const InfonceSegment& seg = segments[i];
      if (seg.splits == 0) continue;
      args.cols = positives_source(seg, rows);
      args.exclude_self = seg.is_self;
      args.tiles_per_split = seg.tiles_per_split;
      args.slot_offset = seg.slot_offset;
      const dim3 grid(static_cast<unsigned>(seg.splits), static_cast<unsigned>(row_blocks));
      positives_kernel<Mode, DP><<<grid, kThreads, C::kSmemBytes, stream>>>(args);
      PIXCONTRAST_LAUNCH_CHECK();
    }
    FinalizeArgs fin{};
    fin.rows = rows;
    fin.slots = slots;
    fin.need_grad = need_grad;
    fin.ws_m = args.ws_m;
    fin.ws_l = args.ws_l;
    fin.ws_loss = args.ws_loss;
    fin.ws_sig = args.ws_sig;
    fin.ws_npos = args.ws_npos;
    fin.ws_u = args.ws_u;
    fin.ws_v = args.ws_v;
    fin.out = out;
    finalize_kernel<typename Mode::T, DP>
        <<<static_cast<unsigned>(ceil_div(n, kWarps)), kThreads, 0, stream>>>(fin);
    PIXCONTRAST_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t infonce_backward_columns(const InfonceRows& rows, const InfonceSegment& segment,
                                     const float* lse, const float* pos_sig,
                                     const float* row_coef, float* grad, cudaStream_t stream) {
  if (segment.num == 0 || rows.d == 0) return cudaSuccess;
  return dispatch(rows.kind, rows.allow_tf32, rows.d, [&](auto mode, auto dp) -> cudaError_t {
    using Mode = decltype(mode);
    constexpr int DP = decltype(dp)::value;
    using C = Cfg<Mode, DP>;
    using T = typename Mode::T;
    const int64_t tiles = ceil_div(segment.num, C::BM);
    if (tiles > kMaxGridX) return cudaErrorInvalidConfiguration;
    ColumnsArgs args{};
    args.rows = rows;
    args.cols = negatives_source(segment);  // the negatives pass's column order
    args.is_self = segment.is_self;
    args.lse = lse;
    args.pos_sig = pos_sig;
    args.row_coef = row_coef;
    args.grad = grad;
    PIXCONTRAST_RETURN_IF_ERROR(allow_smem(columns_backward_kernel<Mode, DP>, C::kSmemBytes));
    columns_backward_kernel<Mode, DP>
        <<<static_cast<unsigned>(tiles), kThreads, C::kSmemBytes, stream>>>(args);
    PIXCONTRAST_LAUNCH_CHECK();
    if (rows.normalize) {
      normalize_backprop_kernel<T, DP>
          <<<static_cast<unsigned>(ceil_div(segment.num, kWarps)), kThreads, 0, stream>>>(
              grad, static_cast<const T*>(segment.data), segment.stride_row, segment.stride_dim,
              segment.num, rows.d);
      PIXCONTRAST_LAUNCH_CHECK();
    }
    return cudaSuccess;
  });
}

}  // namespace cuda
}  // namespace pixcontrast
