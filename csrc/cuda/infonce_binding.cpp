// Torch glue of the CUDA InfoNCE (docs/design.md §6.5): argument checks that name the
// argument, the device guard and current stream, and the CUDA policy of the chunk loops of
// csrc/common/chunk_loop.h, the loops the CPU backend runs too. Per chunk of columns: the
// GEMMs through ATen (cuBLAS: bf16/fp16 operands with fp32 output, fp32 operands as TF32 or
// IEEE SGEMM per the op's allow_tf32), the row passes through the framework-free kernels of
// csrc/cuda/infonce.cu. Registered under the CUDA dispatch key of the schemas in
// csrc/ops.cpp. Built only against a CUDA build of torch (setup.py).
//
// No host synchronisation: the schedule reads no label on the host. Every row and column is
// visited in the caller's order, the row passes' masks exclude ignored labels and the self
// pair, and the positives pass runs over every chunk (a same-class schedule needs
// data-dependent GEMM shapes), except on the fast path (normalised, τ ≥ 0.03), where the
// band kernel of csrc/cuda/infonce_band.cu takes the same-class columns only (labels sorted
// and a work list built on the device; docs/notes/infonce-cuda.md, v2.2). Workspace: the
// logits chunk S (fp32) and the weights P (operand dtype) of at most kChunkBytes together,
// plus O(N·D); the band's workspace reuses the chunk buffers' memory.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "common/chunk_loop.h"
#include "common/infonce_rows.h"
#include "cuda/binding.h"
#include "cuda/infonce.h"
#include "cuda/infonce_band.h"

namespace pixcontrast {
namespace cuda {
namespace {

using at::Tensor;

// S [N, Mc] fp32 + P [N, Mc] + the column chunk [Mc, D]: at most this many bytes, so that a
// chunk's S and P stay in the H200's 50 MB L2 between the GEMM and the row pass.
constexpr int64_t kChunkBytes = 32 << 20;
constexpr int64_t kChunkAlign = 64;  // columns; keeps every chunk's operand 16-byte aligned

ScalarKind kind_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      return ScalarKind::kFloat32;
  }
}

void check_inputs(const char* op, const Tensor& anchors, const Tensor& labels,
                  const Tensor& contrast, const Tensor& contrast_labels, double inv_temperature) {
  PIXCONTRAST_CHECK_CUDA_TENSOR(op, anchors, "anchors");
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be 2-D [N, D], got shape ",
              anchors.sizes());
  const auto dt = anchors.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": anchors must be float32, bfloat16 or float16 on CUDA, got ", dt);
  TORCH_CHECK(contrast.dim() == 2 && contrast.size(1) == anchors.size(1), op,
              ": contrast must be 2-D [M, D] with D = anchors.size(1) = ", anchors.size(1),
              ", got shape ", contrast.sizes());
  TORCH_CHECK(contrast.scalar_type() == dt, op, ": contrast dtype ", contrast.scalar_type(),
              " must match anchors dtype ", dt);
  PIXCONTRAST_CHECK_SAME_DEVICE(op, contrast, anchors, "contrast", "anchors");
  PIXCONTRAST_CHECK_1D(op, labels, anchors.size(0), "labels", "N");
  PIXCONTRAST_CHECK_DTYPE(op, labels, at::kLong, "labels");
  PIXCONTRAST_CHECK_SAME_DEVICE(op, labels, anchors, "labels", "anchors");
  PIXCONTRAST_CHECK_1D(op, contrast_labels, contrast.size(0), "contrast_labels", "M");
  PIXCONTRAST_CHECK_DTYPE(op, contrast_labels, at::kLong, "contrast_labels");
  PIXCONTRAST_CHECK_SAME_DEVICE(op, contrast_labels, anchors, "contrast_labels", "anchors");
  TORCH_CHECK(std::isfinite(inv_temperature), op, ": inv_temperature must be finite, got ",
              inv_temperature);
}

// Columns per chunk: a function of N, D and the dtype only, so that the column backward cuts
// the columns exactly as the forward did (same GEMM shapes, hence the same logits bits)
// even when it sees no contrast rows.
int64_t columns_per_chunk(int64_t n, int64_t d, at::ScalarType dt) {
  const int64_t e = at::elementSize(dt);
  const int64_t p_bytes = dt == at::kFloat ? 0 : e;  // fp32 weights overwrite S in place
  const int64_t per_column = std::max<int64_t>(n, 1) * (4 + p_bytes) + d * e;
  const int64_t width = kChunkBytes / per_column / kChunkAlign * kChunkAlign;
  return std::max(width, kChunkAlign);
}

// Whether ATen's fp32 GEMMs use TF32 now. The legacy getter raises when a program set the
// new API (torch.backends.cuda.matmul.fp32_precision) to the other value than the legacy
// flag; the new one is what cuBLAS follows, and it is then the legacy one's negation.
bool matmul_allows_tf32() {
  auto& ctx = at::globalContext();
  try {
    return ctx.allowTF32CuBLAS();
  } catch (const c10::Error&) {
    return ctx.float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST;
  }
}

// Runs fp32 GEMMs as TF32 or IEEE per the op's argument (the Python wrapper read torch's
// setting at forward time; backward may run under another). Process-wide state of ATen,
// set and restored around the products only when it differs (the legacy setter writes the
// new API's value too, so a restored mixed setting comes back consistent, same effect).
class MatmulMode {
 public:
  explicit MatmulMode(bool allow_tf32) : old_(matmul_allows_tf32()), changed_(old_ != allow_tf32) {
    if (changed_) at::globalContext().setAllowTF32CuBLAS(allow_tf32);
  }
  ~MatmulMode() {
    if (changed_) at::globalContext().setAllowTF32CuBLAS(old_);
  }
  MatmulMode(const MatmulMode&) = delete;
  MatmulMode& operator=(const MatmulMode&) = delete;

 private:
  bool old_, changed_;
};

// out (fp32) = a·b, operands in their dtype.
void product(Tensor& out, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat)
    at::mm_out(out, a, b);
  else
    at::mm_out(out, a, b, at::kFloat);
}

Tensor front(const Tensor& buf, int64_t rows, int64_t cols) {
  return buf.narrow(0, 0, rows * cols).view({rows, cols});
}

// What forward and backward share: the inputs, the normalised anchors Â (operand dtype,
// the rows of every product and the self columns) and the chunk buffers.
struct Common {
  Common(const Tensor& anchors_, const Tensor& labels, const Tensor& contrast_,
         const Tensor& contrast_labels, bool self_contrast_, bool normalize_, bool allow_tf32_,
         double inv_temperature, int64_t ignore_index, bool supcon_)
      : anchors(anchors_), contrast(contrast_), y(labels.contiguous()),
        z(contrast_labels.contiguous()), self_contrast(self_contrast_), normalize(normalize_),
        allow_tf32(allow_tf32_), supcon(supcon_), inv_t(static_cast<float>(inv_temperature)),
        ignore(ignore_index) {}

  const Tensor& anchors;
  const Tensor& contrast;
  Tensor y, z;  // contiguous labels
  bool self_contrast, normalize, allow_tf32, supcon;
  float inv_t;
  int64_t ignore;
  int64_t n = 0, d = 0, T = 1;
  ScalarKind kind = ScalarKind::kFloat32;
  cudaStream_t stream = nullptr;
  Tensor a_hat, inv_a, c_buf, s_buf, p_buf;
  Tensor inv_c;  // [M] the contrast rows' inverse norms, for the band (v2.2); else undefined
  bool supcon_split = false;  // SupCon with the band (InfonceChunk::supcon_split)

  struct Chunk {
    Tensor op;           // [count, D] normalised columns, operand dtype
    const int64_t* z;    // [count] their labels
    bool is_self;        // the anchors as columns (self pairs excluded)
    int64_t start;       // the index of its first column in its segment
  };

  int num_segments() const { return self_contrast ? 2 : 1; }
  bool segment_is_self(int seg) const { return self_contrast && seg == 0; }
  int64_t segment_size(int seg) const { return segment_is_self(seg) ? n : contrast.size(0); }
  int64_t chunk_width() const { return T; }
  Tensor rows() const { return a_hat; }

  void setup(int64_t max_columns) {
    n = anchors.size(0);
    d = anchors.size(1);
    kind = kind_of(anchors.scalar_type());
    stream = c10::cuda::getCurrentCUDAStream();
    T = columns_per_chunk(n, d, anchors.scalar_type());
    const int64_t width = std::max<int64_t>(1, std::min(T, max_columns));
    const auto op_opts = anchors.options();
    const auto f32 = op_opts.dtype(at::kFloat);
    a_hat = at::empty({n, d}, op_opts);
    inv_a = at::empty({n}, f32);
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_normalize_rows(anchors.data_ptr(), kind, anchors.stride(0), anchors.stride(1),
                               0, n, d, normalize, a_hat.data_ptr(), inv_a.data_ptr<float>(),
                               stream),
        "infonce_normalize_rows (anchors)");
    c_buf = at::empty({width * d}, op_opts);
    s_buf = at::empty({n * width}, f32);
    if (kind != ScalarKind::kFloat32) p_buf = at::empty({n * width}, op_opts);
  }

  // Every chunk, self columns included, is normalised into c_buf by the kernel that made Â:
  // a row has the same operand bits as anchor and as column, and forward and backward hand
  // cuBLAS the same shapes, strides and alignment (hence the same logits bits, §2.3).
  Chunk columns(int seg, int64_t start, int64_t count) {
    const bool self = segment_is_self(seg);
    const Tensor& src = self ? anchors : contrast;
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_normalize_rows(src.data_ptr(), kind, src.stride(0), src.stride(1), start,
                               count, d, normalize, c_buf.data_ptr(),
                               !self && inv_c.defined() ? inv_c.data_ptr<float>() + start : nullptr,
                               stream),
        "infonce_normalize_rows (columns)");
    return {front(c_buf, count, d), (self ? y : z).data_ptr<int64_t>() + start, self, start};
  }

  Tensor logits(const Tensor& rows_op, const Chunk& c) {
    Tensor S = front(s_buf, rows_op.size(0), c.op.size(0));
    const MatmulMode mode(allow_tf32);
    product(S, rows_op, c.op.t());
    return S;
  }

  // The weights' buffer for a logits chunk: S itself for fp32, p_buf otherwise.
  Tensor weights_for(const Tensor& S) const {
    return kind == ScalarKind::kFloat32 ? S : front(p_buf, S.size(0), S.size(1));
  }

  InfonceChunk chunk_args(const Tensor& S, const Tensor& P, const Chunk& c,
                          int64_t row_begin) const {
    InfonceChunk a{};
    a.S = S.data_ptr<float>();
    a.P = P.data_ptr();
    a.kind = kind;
    a.rows = S.size(0);
    a.count = S.size(1);
    a.z = c.z;
    a.y = y.data_ptr<int64_t>() + row_begin;
    a.has_self = c.is_self;
    a.self_start = c.start - row_begin;  // local row k's own column: k − (start − row_begin)
    a.inv_t = inv_t;
    a.ignore = ignore;
    a.supcon = supcon;
    a.supcon_split = supcon_split;
    return a;
  }
};

struct ForwardPolicy : Common {
  using Common::Common;
  bool need_grad_ = false;
  bool fixed_ = false;  // the fixed-shift fast path (rows::fixed_shift): m = 1/τ throughout
  int band_cols_ = 0;   // > 0: the positives as a band (v2.2), columns per tile
  Tensor m, l, lse, loss, sig, cnt, U_, V_;
  Tensor row_loss, lse_out, pos_sig, num_pos, row_grad;

  bool need_grad() const { return need_grad_; }
  Tensor& U() { return U_; }
  Tensor& V() { return V_; }

  Tensor negatives(const Tensor& S, const Chunk& c) {
    Tensor P = weights_for(S);
    if (fixed_) {
      PIXCONTRAST_CHECK_LAUNCH(
          infonce_negatives_fixed(chunk_args(S, P, c, 0), l.data_ptr<float>(), stream),
          "infonce_negatives_fixed");
      return P;
    }
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_negatives(chunk_args(S, P, c, 0), m.data_ptr<float>(), l.data_ptr<float>(),
                          need_grad_ ? U_.data_ptr<float>() : nullptr, d, stream),
        "infonce_negatives");
    return P;
  }

  // acc += P·Ĉ, one cuBLAS GEMM with β = 1 into the fp32 accumulator: addmm_ for fp32
  // operands, the fp32-output overload (aten::addmm.dtype_out, out = self) for 16-bit ones.
  // That overload takes an fp32 `self` from torch 2.10 on (pytorch PR 167931; out = self
  // is then what addmm_ does: the copy of self into out is skipped); older torch goes
  // through a temporary and an add_, one launch more per chunk.
  void accumulate(Tensor& acc, const Tensor& P, const Chunk& c) {
    const MatmulMode mode(allow_tf32);
    if (kind == ScalarKind::kFloat32) {
      acc.addmm_(P, c.op);
    } else {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
      at::addmm_out(acc, acc, P, c.op, at::kFloat);
#else
      acc.add_(at::mm(P, c.op, at::kFloat));
#endif
    }
  }

  void finish_negatives() {
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_lse(m.data_ptr<float>(), l.data_ptr<float>(), lse.data_ptr<float>(), n, stream),
        "infonce_lse");
    if (band_cols_ > 0) band_positives();
  }

  // v2.2: the same-class positives as a band kernel (csrc/common/infonce_band.h,
  // docs/notes/infonce-cuda.md) instead of the chunked sweep over every column: rows and
  // each segment's columns sorted by label on the device, a device-built work list with
  // host-known bounds, one persistent kernel, a merge in item order; it writes loss, sig,
  // cnt and V. The negatives sweep's chunk buffers are released first, so the band's
  // workspace reuses their memory.
  void band_positives() {
    c_buf = s_buf = p_buf = Tensor();
    const auto [ys, perm] = at::sort(y, /*stable=*/true, 0, false);
    band::BandProblem pb{};
    pb.n = n;
    pb.d = d;
    pb.rows = a_hat.data_ptr();
    pb.perm = perm.data_ptr<int64_t>();
    pb.ys = ys.data_ptr<int64_t>();
    pb.lse = lse.data_ptr<float>();
    Tensor zs, cperm;
    int s = 0;
    if (self_contrast) pb.seg[s++] = {n, a_hat.data_ptr(), d, 1, pb.perm, pb.ys, nullptr, true};
    if (contrast.size(0) > 0) {
      std::tie(zs, cperm) = at::sort(z, /*stable=*/true, 0, false);
      pb.seg[s++] = {contrast.size(0), contrast.data_ptr(), contrast.stride(0),
                     contrast.stride(1), cperm.data_ptr<int64_t>(), zs.data_ptr<int64_t>(),
                     inv_c.data_ptr<float>(), false};
    }
    pb.num_segments = s;
    pb.self_first = self_contrast;
    pb.inv_t = inv_t;
    pb.ignore = ignore;
    pb.supcon = supcon;
    pb.supcon_split = supcon_split;
    pb.scale = weight_scale(kind);
    pb.block_cols = band_cols_;
    pb.block_rows = band::band_rows_block(n, band_cols_);
    int sms = 0;
    TORCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount,
                                       anchors.get_device()) == cudaSuccess,
                "infonce_forward: cannot read the device's SM count");
    pb.target = 3 * static_cast<int64_t>(sms);  // items: about 3 per CTA, one CTA per SM
    pb.loss = loss.data_ptr<float>();
    pb.sig = sig.data_ptr<float>();
    pb.count = cnt.data_ptr<float>();
    pb.V = need_grad_ ? V_.data_ptr<float>() : nullptr;
    const Tensor ws = at::empty({band::band_layout(pb, nullptr, nullptr, nullptr, nullptr)},
                                anchors.options().dtype(at::kByte));
    PIXCONTRAST_CHECK_LAUNCH(infonce_band(pb, ws.data_ptr(), kind, allow_tf32, sms, stream),
                             "infonce_band");
  }

  // Without reading labels on the host, every segment is one block of all rows.
  std::vector<chunks::PositiveBlock> positive_blocks() const {
    if (band_cols_ > 0) return {};  // the band did the positives (finish_negatives)
    std::vector<chunks::PositiveBlock> blocks;
    for (int seg = 0; seg < num_segments(); ++seg)
      blocks.push_back({0, n, seg, 0, segment_size(seg)});
    return blocks;
  }

  Tensor positives(const Tensor& S, const Chunk& c, int64_t row_begin) {
    Tensor P = weights_for(S);
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_positives(chunk_args(S, P, c, row_begin), lse.data_ptr<float>() + row_begin,
                          loss.data_ptr<float>() + row_begin, sig.data_ptr<float>() + row_begin,
                          cnt.data_ptr<float>() + row_begin, stream),
        "infonce_positives");
    return P;
  }

  void finalize() {
    InfonceFinalize f{};
    f.n = n;
    f.d = d;
    f.m = m.data_ptr<float>();
    f.l = l.data_ptr<float>();
    f.lse = lse.data_ptr<float>();
    f.loss = loss.data_ptr<float>();
    f.sig = sig.data_ptr<float>();
    f.count = cnt.data_ptr<float>();
    f.U = need_grad_ ? U_.data_ptr<float>() : nullptr;
    f.V = need_grad_ ? V_.data_ptr<float>() : nullptr;
    f.anchors = anchors.data_ptr();
    f.kind = kind;
    f.stride_row = anchors.stride(0);
    f.stride_dim = anchors.stride(1);
    f.inv_norm = inv_a.data_ptr<float>();
    f.normalize = normalize;
    f.inv_t = inv_t;
    f.weight_scale = weight_scale(kind);
    f.row_loss = row_loss.data_ptr<float>();
    f.lse_out = lse_out.data_ptr<float>();
    f.pos_sig = pos_sig.data_ptr<float>();
    f.num_pos = num_pos.data_ptr<float>();
    f.row_grad = need_grad_ ? row_grad.data_ptr<float>() : nullptr;
    PIXCONTRAST_CHECK_LAUNCH(infonce_finalize(f, stream), "infonce_finalize");
  }
};

struct BackwardPolicy : Common {
  using Common::Common;
  Tensor lse, sig, coef, scale, grad_contrast, grad_anchor_cols;

  Tensor weights(const Tensor& S, const Chunk& c) {
    Tensor G = weights_for(S);
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_weights(chunk_args(S, G, c, 0), lse.data_ptr<float>(), sig.data_ptr<float>(),
                        coef.data_ptr<float>(),
                        scale.defined() ? scale.data_ptr<float>() : nullptr, stream),
        "infonce_weights");
    return G;
  }

  void column_gradient(int seg, int64_t start, const Tensor& G, const Chunk&) {
    const int64_t count = G.size(1);
    Tensor dc = (segment_is_self(seg) ? grad_anchor_cols : grad_contrast).narrow(0, start, count);
    {
      const MatmulMode mode(allow_tf32);
      product(dc, G.t(), a_hat);
    }
    const Tensor& src = segment_is_self(seg) ? anchors : contrast;
    PIXCONTRAST_CHECK_LAUNCH(
        infonce_columns_backward(dc.data_ptr<float>(),
                                 scale.defined() ? scale.data_ptr<float>() : nullptr,
                                 src.data_ptr(), kind, src.stride(0), src.stride(1), start,
                                 count, d, normalize, stream),
        "infonce_columns_backward");
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> infonce_forward_cuda(
    const Tensor& anchors, const Tensor& labels, const Tensor& contrast,
    const Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, bool need_grad, bool allow_tf32, bool supcon) {
  constexpr const char* op = "infonce_forward";
  check_inputs(op, anchors, labels, contrast, contrast_labels, inv_temperature);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  const auto f32 = anchors.options().dtype(at::kFloat);
  if (n == 0 || (m == 0 && !self_contrast)) {  // nothing to contrast against
    return {at::zeros({n}, f32), at::full({n}, -INFINITY, f32), at::zeros({n}, f32),
            at::zeros({n}, f32), at::zeros({need_grad ? n : 0, d}, f32)};
  }
  ForwardPolicy pol(anchors, labels, contrast, contrast_labels, self_contrast, normalize,
                    allow_tf32, inv_temperature, ignore_index, supcon);
  pol.need_grad_ = need_grad;
  pol.fixed_ = rows::fixed_shift(normalize, inv_temperature, anchors.scalar_type() == at::kHalf);
  // PIXCONTRAST_CUDA_BAND=0 keeps the chunked positives sweep (a GPU-session triage switch:
  // the band kernel has not run on a GPU yet; benchmarks/gpu_session.sh reruns failed cuda
  // tests with it). Read once per process.
  static const bool band_enabled = [] {
    const char* v = std::getenv("PIXCONTRAST_CUDA_BAND");
    return v == nullptr || std::string(v) != "0";
  }();
  if (band_enabled && band::band_applies(normalize, inv_temperature))
    pol.band_cols_ = infonce_band_block(kind_of(anchors.scalar_type()), d, anchors.get_device());
  if (pol.band_cols_ > 0 && m > 0) pol.inv_c = at::empty({m}, f32);
  pol.supcon_split = supcon && pol.band_cols_ > 0;
  pol.setup(std::max(self_contrast ? n : 0, m));
  // The running max starts at −inf; the fast path's shift is 1/τ from the start and stays.
  pol.m = at::full({n}, pol.fixed_ ? pol.inv_t : -INFINITY, f32);
  pol.l = at::zeros({n}, f32);
  pol.lse = at::empty({n}, f32);
  pol.loss = at::zeros({n}, f32);
  pol.sig = at::zeros({n}, f32);
  pol.cnt = at::zeros({n}, f32);
  if (need_grad) {
    pol.U_ = at::zeros({n, d}, f32);
    pol.V_ = at::zeros({n, d}, f32);
  }
  pol.row_loss = at::empty({n}, f32);
  pol.lse_out = at::empty({n}, f32);
  pol.pos_sig = at::empty({n}, f32);
  pol.num_pos = at::empty({n}, f32);
  pol.row_grad = at::empty({need_grad ? n : 0, d}, f32);
  chunks::forward(pol);
  return {pol.row_loss, pol.lse_out, pol.pos_sig, pol.num_pos, pol.row_grad};
}

std::tuple<Tensor, Tensor> infonce_backward_columns_cuda(
    const Tensor& anchors, const Tensor& labels, const Tensor& contrast,
    const Tensor& contrast_labels, bool self_contrast, double inv_temperature,
    int64_t ignore_index, bool normalize, const Tensor& lse, const Tensor& pos_sig,
    const Tensor& row_coef, bool allow_tf32, bool supcon) {
  constexpr const char* op = "infonce_backward_columns";
  check_inputs(op, anchors, labels, contrast, contrast_labels, inv_temperature);
  const int64_t n = anchors.size(0), d = anchors.size(1), m = contrast.size(0);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{lse, "lse"},
                                {pos_sig, "pos_sig"},
                                {row_coef, "row_coef"}}) {
    PIXCONTRAST_CHECK_1D(op, t, n, name, "N");
    TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating point, got ",
                t.scalar_type());
    PIXCONTRAST_CHECK_SAME_DEVICE(op, t, anchors, name, "anchors");
  }
  const c10::cuda::CUDAGuard guard(anchors.device());
  const auto f32 = anchors.options().dtype(at::kFloat);
  BackwardPolicy pol(anchors, labels, contrast, contrast_labels, self_contrast, normalize,
                     allow_tf32, inv_temperature, ignore_index, supcon);
  pol.grad_contrast = at::zeros({m, d}, f32);
  pol.grad_anchor_cols = at::zeros({self_contrast ? n : 0, d}, f32);
  if (n == 0 || (m == 0 && !self_contrast)) return {pol.grad_contrast, pol.grad_anchor_cols};
  pol.lse = lse.to(at::kFloat).contiguous();
  pol.sig = pos_sig.to(at::kFloat).contiguous();
  pol.coef = row_coef.to(at::kFloat).contiguous();
  if (anchors.scalar_type() == at::kHalf) {
    // fp16 weights: G/scale with scale the power of two at or above the largest row
    // coefficient (max |coef|·max(g, 1)/τ), so G/scale stays within fp16's range; the
    // column kernel multiplies scale back in. On the device: no synchronisation.
    const Tensor top = (pol.coef.abs() * pol.sig.clamp_min(1.0)).amax() *
                       static_cast<double>(inv_temperature);
    pol.scale = at::exp2(at::ceil(at::log2(top.clamp_min(1e-30)))).reshape({1});
  }
  pol.setup(std::max(self_contrast ? n : 0, m));
  chunks::backward_columns(pol);
  return {pol.grad_contrast, pol.grad_anchor_cols};
}

}  // namespace
}  // namespace cuda
}  // namespace pixcontrast

TORCH_LIBRARY_IMPL(pixcontrast, CUDA, m) {
  m.impl("infonce_forward", &pixcontrast::cuda::infonce_forward_cuda);
  m.impl("infonce_backward_columns", &pixcontrast::cuda::infonce_backward_columns_cuda);
}
