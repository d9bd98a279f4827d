// Framework-free launchers of the fused per-positive InfoNCE on CUDA (docs/design.md §1).
//
// Only CUDA headers: csrc/cuda/infonce.cu compiles with plain nvcc; the torch glue is
// csrc/cuda/infonce_binding.cpp. The contract of the two ops is the one of csrc/ops.cpp
// (`infonce_forward`, `infonce_backward_columns`); the algorithm mirrors the Triton
// kernels of kernels/infonce.py:
//
// * Anchor rows are visited in label-sorted order (`perm`, `sorted_labels`, computed by
//   the caller on the device); the columns are one or two segments (the anchors
//   themselves in self-contrast, then the contrast set), each its own launch.
// * Forward, per (row block, column split): negatives pass with an online log-sum-exp and
//   U = Σ_neg e^{s-m} ĉ; positives pass over the tiles that hold a positive pair only;
//   finalise merges the split partials in a fixed order (deterministic, no float atomics).
// * Column backward: one CTA per column tile recomputes the logits against every row
//   block (bit-identical to the forward's) and accumulates Gᵀ·Â.
//
// Tile products run on the tensor cores (WMMA): fp16 and bf16 operands as they are, fp32
// operands as TF32 when `allow_tf32`, else as three TF32 products of a hi/lo split of each
// operand (~2^-21 relative error per product; the tensor cores truncate each fp32
// accumulation step, so the error is biased and grows with D: docs/design.md §2.3).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pixcontrast {
namespace cuda {

enum class ScalarKind { kFloat32, kBFloat16, kFloat16 };

constexpr int64_t kInfonceMaxDim = 512;

// Tile shape the kernels use for (dtype, allow_tf32, d): rows per block and columns per tile.
struct InfonceTiles {
  int64_t block_rows;
  int64_t block_cols;
};
InfonceTiles infonce_tiles(ScalarKind kind, bool allow_tf32, int64_t d);

// One column segment: rows of `data` ([num, d], element strides) with `labels`.
struct InfonceSegment {
  const void* data;
  int64_t stride_row;
  int64_t stride_dim;
  const int64_t* labels;
  int64_t stride_labels;
  int64_t num;
  bool is_self;  // the anchors themselves (self pair excluded; rows in `perm` order)
  // Split plan (infonce_plan_splits): slots [slot_offset, slot_offset + splits).
  int64_t tiles;
  int64_t splits;
  int64_t tiles_per_split;
  int64_t slot_offset;
};

// Shared by both passes: the anchors and their label-sorted order.
struct InfonceRows {
  const void* anchors;  // [n, d]
  int64_t stride_row;
  int64_t stride_dim;
  const int64_t* perm;           // [n] sorted position r -> anchor row perm[r]
  const int64_t* sorted_labels;  // [n] labels[perm[r]]
  int64_t n;
  int64_t d;
  ScalarKind kind;
  bool allow_tf32;
  bool normalize;
  float inv_temperature;
  int64_t ignore_index;
};

// Splits each segment into contiguous ranges of whole column tiles so that about
// `target_ctas` CTAs run per row block (the caller passes ~2 × SMs / row blocks), with the
// forward workspace capped at `max_workspace_bytes`. Returns the total number of slots.
int64_t infonce_plan_splits(InfonceSegment* segments, int num_segments, const InfonceRows& rows,
                            bool need_grad, int64_t target_ctas, int64_t max_workspace_bytes);

// Forward workspace: fp32 [5, slots, n] (m, l, loss, sig, npos), and when need_grad
// fp32 [2, slots, n, d] (U, V). Sizes in floats.
inline int64_t infonce_workspace_scalars(int64_t slots, int64_t n) { return 5 * slots * n; }
inline int64_t infonce_workspace_vectors(int64_t slots, int64_t n, int64_t d) {
  return 2 * slots * n * d;
}

struct InfonceForwardOutputs {
  float* row_loss;  // [n]
  float* lse;       // [n]
  float* pos_sig;   // [n]
  float* num_pos;   // [n]
  float* row_grad;  // [n, d] contiguous, or nullptr when !need_grad
};

// Row pass. `segments` planned by infonce_plan_splits; `ws_scalars`/`ws_vectors` sized by
// the functions above (`ws_vectors` unused when !need_grad). Writes every output.
cudaError_t infonce_forward(const InfonceRows& rows, const InfonceSegment* segments,
                            int num_segments, int64_t slots, bool need_grad, float* ws_scalars,
                            float* ws_vectors, const InfonceForwardOutputs& out,
                            cudaStream_t stream);

// Column pass for one segment: grad [segment.num, d] fp32 contiguous, fully written.
// lse, pos_sig, row_coef: fp32 [n] contiguous in the caller's row order.
cudaError_t infonce_backward_columns(const InfonceRows& rows, const InfonceSegment& segment,
                                     const float* lse, const float* pos_sig,
                                     const float* row_coef, float* grad, cudaStream_t stream);

}  // namespace cuda
}  // namespace pixcontrast
