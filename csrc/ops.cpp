// The one schema registry of pixcontrast: every op is declared here once, in the
// `pixcontrast` namespace, and each device registers its implementation under its own
// dispatch key (csrc/cpu/*.cpp: CPU, csrc/cuda/*_binding.cpp: CUDA).
//
// The schemas stay flat (tensors and scalars). Defaults, friendly errors and the
// reduction live in the Python wrapper (pixcontrast/infonce.py).
#include <Python.h>
#include <torch/library.h>

// `import pixcontrast._C` loads this library, whose static initialisers register the ops
// below; the module itself is empty (no pybind11 bindings: everything goes through
// torch.ops.pixcontrast.*).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(pixcontrast, m) {
  // Row pass of the per-positive InfoNCE (docs/design.md §1). Columns are the anchors
  // themselves (self pair excluded) when self_contrast, followed by `contrast` ([M, D],
  // M may be 0). Returns, per anchor row:
  //   row_loss [N] f32  (1/|P|) Σ_p softplus(lse − s_p); 0 without positives
  //   lse      [N] f32  log Σ_neg e^{s}; −inf without negatives
  //   pos_sig  [N] f32  Σ_p σ(lse − s_p)
  //   num_pos  [N] f32  |P(i)|
  //   row_grad [N, D] f32 ∂row_loss_i/∂anchors_i through the normalisation (row term
  //            only), or [0, D] when need_grad is false.
  // allow_tf32: fp32 inputs may use TF32 products (else strict fp32: IEEE SGEMM in the CUDA
  // kernels, 3xTF32 in the Triton ones); ignored by the
  // CPU kernels and for 16-bit inputs. An argument, not a global read inside the kernels,
  // so that backward recomputes with the mode forward used (saved with the op's inputs).
  // supcon: SupCon's L_out on the same passes (docs/design.md §1.5): lse is
  // L = log Σ_{valid j ≠ i} e^{s} (positives included), row_loss (1/|P|) Σ_p (L − s_p),
  // pos_sig = |P| (every positive weighs 1); the column pass takes the same switch.
  m.def(
      "infonce_forward(Tensor anchors, Tensor labels, Tensor contrast, "
      "Tensor contrast_labels, bool self_contrast, float inv_temperature, "
      "int ignore_index, bool normalize, bool need_grad, bool allow_tf32, "
      "bool supcon=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Column pass: gradient with respect to the contrast rows (and, in self-contrast,
  // the anchors seen as columns). row_coef [N] = dL/d row_loss / |P|.
  // Returns grad_contrast [M, D] f32 and grad_anchor_columns [N, D] f32 ([0, D] when
  // not self_contrast).
  m.def(
      "infonce_backward_columns(Tensor anchors, Tensor labels, Tensor contrast, "
      "Tensor contrast_labels, bool self_contrast, float inv_temperature, "
      "int ignore_index, bool normalize, Tensor lse, Tensor pos_sig, "
      "Tensor row_coef, bool allow_tf32, bool supcon=False) -> (Tensor, Tensor)");
  // The same two ops run on the CPU with the CUDA binding's chunk schedule (every row and
  // column in the caller's order, masks only, positives over everything or, normalised with
  // τ ≥ 0.03, the band of csrc/common/infonce_band.h; csrc/cpu/infonce.cpp):
  // the CPU tests of the loop the GPU runs. CPU kernels only; not a public API.
  m.def(
      "_infonce_forward_device_schedule(Tensor anchors, Tensor labels, Tensor contrast, "
      "Tensor contrast_labels, bool self_contrast, float inv_temperature, "
      "int ignore_index, bool normalize, bool need_grad, bool allow_tf32, "
      "bool supcon=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_infonce_backward_columns_device_schedule(Tensor anchors, Tensor labels, "
      "Tensor contrast, Tensor contrast_labels, bool self_contrast, float inv_temperature, "
      "int ignore_index, bool normalize, Tensor lse, Tensor pos_sig, "
      "Tensor row_coef, bool allow_tf32, bool supcon=False) -> (Tensor, Tensor)");

  // Anchor sampling: csrc/sampling_ops.cpp (sample_histogram, sample_select).
  // Memory-bank write (docs/design.md §2; driver pixcontrast/memory_bank.py): in place,
  // features[rows[k]] = values[k] and labels[rows[k]] = entry_labels[k] for every k with
  // keep[k]. features [R, D] float, labels [R] int64, values [E, D] features' dtype,
  // rows/entry_labels [E] int64, keep [E] bool.
  m.def(
      "bank_write(Tensor(a!) features, Tensor(b!) labels, Tensor values, Tensor rows, "
      "Tensor keep, Tensor entry_labels) -> ()");
}
