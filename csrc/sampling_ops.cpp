// Schemas of the fused anchor-sampling and bank-update ops (docs/design.md §2.5, §2.6;
// drivers pixcontrast/sampling.py `_sample_fused` and pixcontrast/memory_bank.py
// `_update_fused`, CUDA kernels csrc/cuda/sampling.cu and memory_bank.cu, Triton twins in
// kernels/ as pixcontrast::*_triton). Declared here, next to the registry of csrc/ops.cpp,
// with TORCH_LIBRARY_FRAGMENT; CUDA implementations only.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pixcontrast, m) {
  // labels, predictions [B, hw] int64; keys [B·hw (+ P)] int64 (P = B·hw // (max_views + 1),
  // present when max_samples < P); counter: one int32, zero between calls (the last CTA's
  // counter). Returns sort_keys [B, hw], ws [7, B·pimg], out_idx, out_lab [max_samples]
  // (their unused rows filled; sample_select writes the rest).
  m.def(
      "sample_histogram(Tensor labels, Tensor predictions, Tensor keys, Tensor(a!) counter, "
      "int max_samples, int max_views, int ignore_index) -> (Tensor, Tensor, Tensor, Tensor)");
  // sorted_keys, perm [B, hw]: torch.sort(sort_keys, dim=1, stable=True); writes the
  // selected rows of out_idx / out_lab in place.
  m.def(
      "sample_select(Tensor sorted_keys, Tensor perm, Tensor ws, Tensor(a!) out_idx, "
      "Tensor(b!) out_lab, int max_views) -> ()");
  // One batch into the bank, in place: features [K, 2, size, D], labels [K, 2, size],
  // pointers [K, 2], counters [>= B + 1] int32 zeros (left zero); x [B, D, HW] float,
  // y [B, HW] int64, keys [B, HW] int64 (40 random bits). Returns ok [1] int32: 0 when x
  // held NaN/Inf (then nothing was written).
  m.def(
      "bank_update(Tensor(a!) features, Tensor(b!) labels, Tensor(c!) pointers, "
      "Tensor(d!) counters, Tensor x, Tensor y, Tensor keys, int pixels_per_update) -> Tensor");
}
