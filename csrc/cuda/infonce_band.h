// Framework-free launchers of the band kernel of the same-class positives
// (csrc/common/infonce_band.h; docs/notes/infonce-cuda.md, "v2.2"). Only CUDA headers and
// the shared framework-free code: csrc/cuda/infonce_band.cu compiles with plain nvcc.
//
// The caller (the CUDA binding) sorts the row labels and each segment's column labels on
// the device (a stable sort: deterministic), fills a band::BandProblem and allocates
// band::band_layout(problem, nullptr, ...) bytes of workspace (host-known sizes: nothing
// synchronises); infonce_band then launches, in stream order:
//   the plan   one CTA of kBandPlanThreads: the work list (band::band_plan);
//   the items  a persistent grid of `programs` CTAs (one per SM: the tiles take most of its
//              shared memory) over the items (band::band_item): tensor cores for bf16/fp16
//              (mma.sync m16n8k16, ldmatrix) and TF32 (WMMA m16n16k8), FMA for strict fp32;
//   the merge  one warp per row: a row's partials in item order (band::band_merge_row),
//              written to the problem's loss, sig, count, V (caller's order, overwritten).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/infonce_band.h"
#include "cuda/infonce.h"

namespace pixcontrast {
namespace cuda {

constexpr int kBandThreads = 256;       // per item CTA
constexpr int kBandPlanThreads = 1024;  // the plan's single CTA
// Shared memory for the tiles of one item CTA, at most (the H100/H200 allow 227 KiB per
// block, the A100 163 KiB, sm_86/89 99 KiB: the device's opt-in limit applies below it).
constexpr int64_t kBandSmemBytes = 220 << 10;

// Columns per tile for this dtype and D on `device` (rows per block:
// band::band_rows_block(n, it)); 0 when the tiles do not fit in its shared memory (the caller
// then keeps the all-chunks positives sweep). A host query of the device's attributes.
int infonce_band_block(ScalarKind kind, int64_t d, int device);

// allow_tf32 picks TF32 tensor cores or FMA for fp32 operands (ignored for 16-bit ones).
cudaError_t infonce_band(const band::BandProblem& problem, void* workspace, ScalarKind kind,
                         bool allow_tf32, int64_t programs, cudaStream_t stream);

}  // namespace cuda
}  // namespace pixcontrast
