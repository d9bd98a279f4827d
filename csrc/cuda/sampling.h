// Framework-free launchers of the anchor-sampling kernels on CUDA (docs/design.md §2, "Anchor
// sampling rules"). They mirror the Triton kernels of kernels/sampling.py exactly; the
// driver is pixcontrast/sampling.py::_sample, which sorts the pixels of each image by
// (label, hard/easy, random key) in PyTorch and computes, per sorted position p of the
// n = B·h·w pixels:
//
//   run_key[p] = 2·label + easy     the run: (image, class, hard/easy), contiguous
//   rank[p]    position of p in its run (0-based)
//   cls[p]     class-group id ((image, label) order), in [0, n)
//   easy[p]    prediction == label;  valid[p]: label != ignore_index
//
// Only CUDA headers: csrc/cuda/sampling.cu compiles with plain nvcc; the torch glue is
// csrc/cuda/sampling_binding.cpp (ops `sampling_run_histogram`, `sampling_select_scatter`
// of csrc/ops.cpp). Neither launcher allocates nor synchronises the host; both are
// CUDA-graph capturable.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pixcontrast {
namespace cuda {

// Per class-group, the number of valid hard (column 0) and easy (column 1) pixels.
// `counts` [n, 2] int64 contiguous is overwritten (zeroed on `stream`, then filled).
// The runs are contiguous, so a run's count is rank + 1 at its last position (the end of
// the array, the end of an image row of `hw` pixels, or where run_key changes): one plain
// store per run, no atomics, deterministic. Equivalent PyTorch:
//
//   counts.zero_().view(-1).scatter_add_(0, cls * 2 + easy, valid.long())
cudaError_t sampling_run_histogram(const int64_t* run_key, const int64_t* rank,
                                   const int64_t* cls, const bool* easy, const bool* valid,
                                   int64_t n, int64_t hw, int64_t* counts, cudaStream_t stream);

// Selection and scatter of the sampled pixels into the fixed-capacity output, in place.
//
//   n-element inputs: cls, easy, rank, lab (the pixel's label), pix (its flat index into
//     B·h·w), pair_of_cls (class-group -> pair slot in [0, num_pairs]; num_pairs: not a
//     pair);
//   num_pairs-element inputs: kept (pair sampled), pair_hard / pair_easy (its hard / easy
//     pixel counts), offset (exclusive cumsum of V over the kept pairs before it);
//   views: ONE device int64, V (never read on the host);
//   out_idx / out_lab: [out_size] int64, written only at selected rows.
//
// Per pixel of a kept pair (label != ignore_index): the pair's quotas from the rule
// (docs/design.md §2, `sampling_quotas`), selected when rank < its set's quota, stored at row
// offset + (hard quota if easy) + rank. Selected rows are distinct by construction, so the
// stores never collide; rows outside [0, out_size) are dropped (they cannot occur for the
// driver's inputs; the guard keeps a bad input from writing out of bounds).
cudaError_t sampling_select_scatter(const int64_t* cls, const bool* easy, const int64_t* rank,
                                    const int64_t* lab, const int64_t* pix,
                                    const int64_t* pair_of_cls, int64_t n, const bool* kept,
                                    const int64_t* pair_hard, const int64_t* pair_easy,
                                    const int64_t* offset, int64_t num_pairs,
                                    const int64_t* views, int64_t ignore_index,
                                    int64_t* out_idx, int64_t* out_lab, int64_t out_size,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace pixcontrast
