// The chunk loops of the per-positive InfoNCE, written once for every device
// (docs/design.md §6.3, §6.5): the CPU backend (csrc/cpu/infonce.cpp) and the CUDA binding
// (csrc/cuda/infonce_binding.cpp) instantiate them with their own policy, so the CPU tests
// run the schedule the GPU runs.
//
// The columns are one or two segments (the anchors themselves in self-contrast, then the
// contrast rows), cut into chunks of at most `chunk_width()` columns. Per chunk:
//
//   forward, negatives:  S = Â·Ĉᵀ (GEMM, fp32 out)  →  row pass (masks, running max and
//                        sum per row, α rescale of U, weights P)  →  U += P·Ĉ (GEMM)
//   forward, positives:  over the policy's positive blocks (row range × column range):
//                        S = Â_b·Ĉᵀ  →  row pass (softplus, σ, |P|)  →  V_b += σ·Ĉ
//   column backward:     S = Â·Ĉᵀ  →  row pass (weights G)  →  dĈ = Gᵀ·Â (GEMM)  →
//                        column pass (normalisation backprop)
//
// A policy provides (T: its operand tensor type, at::Tensor for both devices today):
//   int64_t chunk_width();  int num_segments();  int64_t segment_size(int seg);
//   Chunk columns(int seg, int64_t start, int64_t count);   // operand [count, D] + labels
//   at::Tensor rows();                                      // Â, the row operand [R, D]
//   at::Tensor logits(const at::Tensor& rows, const Chunk&);          // S fp32 [r, count]
//   bool need_grad();
// forward:
//   at::Tensor negatives(const at::Tensor& S, const Chunk&);  // returns P (may alias S)
//   void accumulate(at::Tensor& acc, const at::Tensor& P, const Chunk&);  // acc += P·Ĉ
//   at::Tensor& U();  at::Tensor& V();
//   void finish_negatives();                                 // λ = m + log l
//   std::vector<PositiveBlock> positive_blocks();
//   at::Tensor positives(const at::Tensor& S, const Chunk&, int64_t row_begin);
//   void finalize();
// column backward:
//   at::Tensor weights(const at::Tensor& S, const Chunk&);   // returns G (may alias S)
//   void column_gradient(int seg, int64_t start, const at::Tensor& G, const Chunk&);
//
// No host synchronisation happens here: every size is a shape; a policy whose schedule is
// data-dependent (the CPU's class blocks) computes it from host data it already has.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pixcontrast::chunks {

// Rows [row_begin, row_end) against columns [col_begin, col_end) of one segment: a
// rectangle that holds every positive pair of those rows in that segment.
struct PositiveBlock {
  int64_t row_begin, row_end;
  int segment;
  int64_t col_begin, col_end;
};

template <class Policy, class Fn>
void for_each_chunk(Policy& pol, int seg, int64_t begin, int64_t end, Fn&& fn) {
  const int64_t width = pol.chunk_width();
  for (int64_t start = begin; start < end; start += width) {
    const int64_t count = std::min(width, end - start);
    fn(start, pol.columns(seg, start, count));
  }
}

template <class Policy>
void forward(Policy& pol) {
  const at::Tensor rows = pol.rows();
  // Pass 1, negatives: every column once.
  for (int seg = 0; seg < pol.num_segments(); ++seg)
    for_each_chunk(pol, seg, 0, pol.segment_size(seg), [&](int64_t, const auto& chunk) {
      const at::Tensor S = pol.logits(rows, chunk);
      const at::Tensor P = pol.negatives(S, chunk);
      if (pol.need_grad()) pol.accumulate(pol.U(), P, chunk);
    });
  pol.finish_negatives();
  // Pass 2, positives: with the final λ, over the blocks that hold the positive pairs.
  for (const PositiveBlock& b : pol.positive_blocks()) {
    const int64_t nb = b.row_end - b.row_begin;
    if (nb <= 0) continue;
    const at::Tensor rows_b = rows.narrow(0, b.row_begin, nb);
    for_each_chunk(pol, b.segment, b.col_begin, b.col_end, [&](int64_t, const auto& chunk) {
      const at::Tensor S = pol.logits(rows_b, chunk);
      const at::Tensor P = pol.positives(S, chunk, b.row_begin);
      if (pol.need_grad()) {
        at::Tensor v = pol.V().narrow(0, b.row_begin, nb);
        pol.accumulate(v, P, chunk);
      }
    });
  }
  pol.finalize();
}

template <class Policy>
void backward_columns(Policy& pol) {
  const at::Tensor rows = pol.rows();
  for (int seg = 0; seg < pol.num_segments(); ++seg)
    for_each_chunk(pol, seg, 0, pol.segment_size(seg), [&](int64_t start, const auto& chunk) {
      const at::Tensor S = pol.logits(rows, chunk);
      const at::Tensor G = pol.weights(S, chunk);
      pol.column_gradient(seg, start, G, chunk);
    });
}

}  // namespace pixcontrast::chunks
