// Framework-free launchers of the CUDA row passes of the per-positive InfoNCE
// (docs/design.md §1, §6.5).
//
// Only CUDA headers: csrc/cuda/infonce.cu compiles with plain nvcc; the torch glue, the
// GEMMs (ATen → cuBLAS) and the chunk loop (csrc/common/chunk_loop.h, the one the CPU
// backend runs too) are in csrc/cuda/infonce_binding.cpp. Per chunk of Mc columns the
// binding runs S = Â·Ĉᵀ (cuBLAS, fp32 out), ONE of the row passes below, then the second
// product (U += P·Ĉ, V += σ·Ĉ or dĈ = Gᵀ·Â) through cuBLAS again.
//
// Every row pass runs one CTA per row of the chunk (kRowThreads threads), reads the row's
// fp32 logits chunk S [rows, count] (leading dimension `count`) and writes its weights in the
// operand dtype (bf16/fp16 into a separate buffer, fp32 in place over S). The kernels'
// bodies are csrc/common/infonce_row_pass.h's (on csrc/common/infonce_rows.h's math), which
// the CPU backend's device schedule runs too, one thread per row. Reductions are a fixed
// shuffle tree plus a fixed order across warps: deterministic, no atomics.
//
// Launcher conventions (csrc/cuda/common.h): raw device pointers, sizes, a cudaStream_t;
// early cudaSuccess on empty inputs; the error of the last launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pixcontrast {
namespace cuda {

enum class ScalarKind { kFloat32, kBFloat16, kFloat16 };

constexpr int kRowThreads = 256;

// fp16 weights are stored times this power of two (e^{s−m} and σ are ≤ 1; fp16 normals
// start at 2^-14, so unscaled weights below ~6e-5 would lose bits or vanish); the
// accumulators U and V carry the factor and the finalize kernel divides it out.
constexpr float kHalfWeightScale = 32768.f;

inline float weight_scale(ScalarKind kind) {
  return kind == ScalarKind::kFloat16 ? kHalfWeightScale : 1.f;
}

// out[k, :] = x̂_r in the operand dtype (`kind`, the input's), contiguous [count, d], for
// rows r = first + k of src (element strides); x̂ = x / max(‖x‖, eps) when normalize,
// else x. inv_norm[k] = 1/max(‖x‖, eps) (1 without normalize) when not null.
cudaError_t infonce_normalize_rows(const void* src, ScalarKind kind, int64_t stride_row,
                                   int64_t stride_dim, int64_t first, int64_t count, int64_t d,
                                   bool normalize, void* out, float* inv_norm,
                                   cudaStream_t stream);

// The logits chunk of `rows` rows against `count` columns, and the columns' labels.
struct InfonceChunk {
  const float* S;            // [rows, count] dot products â·ĉ (ld = count)
  void* P;                   // [rows, count] weights, operand dtype (may alias S for fp32)
  ScalarKind kind;
  int64_t rows;
  int64_t count;
  const int64_t* z;          // [count] column labels (contiguous)
  const int64_t* y;          // [rows] row labels
  bool has_self;             // the columns are anchors: row r's own column is r − self_start
  int64_t self_start;
  float inv_t;
  int64_t ignore;
  bool supcon;               // SupCon's switches (csrc/common/infonce_rows.h): the launchers
                             // run the kernels' supcon instantiation
  bool supcon_split;         // SupCon with the band's positives: the negatives passes leave
                             // positives out of P (rows::RowChunk::exclude_positives)
};

// Negatives, general path (supcon: every valid column but the row itself): online max m,
// sum l (fp32 [rows]); P = e^{s−m_new}·weight_scale for negatives, 0 elsewhere; U [rows, d]
// (fp32, or null) rescaled by α = e^{m_old − m_new}.
cudaError_t infonce_negatives(const InfonceChunk& chunk, float* m, float* l, float* U,
                              int64_t d, cudaStream_t stream);

// The fast path's negatives (rows::fixed_shift: normalised rows, τ ≥ 0.03, fp32 or bf16
// weights; cudaErrorInvalidValue for fp16): l += Σ e^{s − 1/τ} and P = e^{s − 1/τ} (0
// elsewhere) in one read of S; nothing to rescale, so no m and no U. The caller starts m at
// 1/τ for infonce_lse.
cudaError_t infonce_negatives_fixed(const InfonceChunk& chunk, float* l, cudaStream_t stream);

// λ = m + log l per row (−inf without a negative), fp32 [n].
cudaError_t infonce_lse(const float* m, const float* l, float* lse, int64_t n,
                        cudaStream_t stream);

// Positives: adds Σ softplus(λ − s), Σ σ(λ − s) and |P| over the row's positives in the chunk
// to loss, sig, count (fp32 [rows]); P = σ·weight_scale for positives, 0 elsewhere (supcon:
// λ − s, 1 and 1·weight_scale).
cudaError_t infonce_positives(const InfonceChunk& chunk, const float* lse, float* loss,
                              float* sig, float* count, cudaStream_t stream);

struct InfonceFinalize {
  int64_t n, d;
  const float* m;
  const float* l;
  const float* lse;
  const float* loss;   // Σ softplus
  const float* sig;    // Σ σ
  const float* count;  // |P|
  const float* U;      // [n, d] or null (no gradient)
  const float* V;
  const void* anchors;  // raw rows (for the normalisation backprop)
  ScalarKind kind;
  int64_t stride_row, stride_dim;
  const float* inv_norm;  // [n]
  bool normalize;
  float inv_t;
  float weight_scale;
  // outputs
  float* row_loss;
  float* lse_out;
  float* pos_sig;
  float* num_pos;
  float* row_grad;  // [n, d] or null
};

// Per row: the op's outputs (csrc/ops.cpp) and row_grad = (a·U − b·V)/weight_scale through
// the normalisation (rows::row_grad_coefs).
cudaError_t infonce_finalize(const InfonceFinalize& f, cudaStream_t stream);

// Column-gradient weights: G = column_weight(...)/scale (scale: device fp32 [1], a power of
// two that keeps fp16 weights in range; null → 1) for row coefficients
// c_neg = coef·g·inv_t, c_pos = −coef·inv_t. lse, pos_sig, row_coef: fp32 [rows].
cudaError_t infonce_weights(const InfonceChunk& chunk, const float* lse, const float* pos_sig,
                            const float* row_coef, const float* scale, cudaStream_t stream);

// In place on grad [count, d] (fp32, = Gᵀ·Â of the chunk): times scale (device [1], or null),
// then through the normalisation of columns first .. first + count − 1 of src.
cudaError_t infonce_columns_backward(float* grad, const float* scale, const void* src,
                                     ScalarKind kind, int64_t stride_row, int64_t stride_dim,
                                     int64_t first, int64_t count, int64_t d, bool normalize,
                                     cudaStream_t stream);

}  // namespace cuda
}  // namespace pixcontrast
