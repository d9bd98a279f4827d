// The same-class positives of the per-positive InfoNCE as a band (docs/notes/infonce-cuda.md,
// "v2.2"): rows sorted by label, each segment's columns sorted by label (a class-sorted bank
// keeps its order), so a row's positives are one contiguous range of sorted columns, found
// by binary search. A work list of items, each (a block of at most bm rows of one class, a
// chunk of that class's column tiles), is built on the device (band_plan, one CTA) with
// host-known bounds on its size, so nothing synchronises. A persistent kernel runs the items
// (band_item): per column tile S = Â·Ĉᵀ, the positives' terms (softplus and σ of λ − s,
// rows::positive_terms), V += σ·Ĉ, then writes the item's partial rows; band_merge_row adds
// a row's partials in item order (deterministic, no float atomics).
//
// The schedule, the row math and the merge are `__host__ __device__` and written for a group
// of cooperating threads (one CTA on the GPU, csrc/cuda/infonce_band.cu; one thread on the
// CPU, csrc/cpu/infonce_band.cpp, whose private op tests/test_infonce_band.py checks against
// the float64 oracle). Only the two tile products differ by device: a `Products` class with
//   static void logits(const Group&, const BandTiles<T>&);      // S = A·Cᵀ   (fp32)
//   static void accumulate(const Group&, const BandTiles<T>&);  // V += P·C   (fp32)
// (tensor cores or FMA on the GPU, plain loops on the CPU).
//
// A Group provides rank(), size(), sync() (a barrier), lanes(w) (how many consecutive ranks
// share a row: min(w, size()), w a power of two ≤ 32), lane_sum(v, L) (the sum over the L
// ranks of the caller's row, every one of them gets it), sum(int64) and
// exclusive_scan(int64, int64* total) over the whole group, in rank order.
#pragma once

#include <cstdint>

#include "common/infonce_rows.h"

namespace pixcontrast::band {

using rows::keep_if;

// Conversions of the operand dtype (specialised by the .cu for __half and __nv_bfloat16,
// which have no implicit conversions there).
template <typename T>
struct Operand {
  PIXCONTRAST_HD static float load(T v) { return static_cast<float>(v); }
  PIXCONTRAST_HD static T store(float v) { return static_cast<T>(v); }
};

PIXCONTRAST_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
PIXCONTRAST_HD int64_t min_of(int64_t a, int64_t b) { return a < b ? a : b; }
PIXCONTRAST_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// [first index with v[i] >= q, first index with v[i] > q) in v[0, n), v ascending: the two
// binary searches in one loop, so each step's two loads are in flight together.
PIXCONTRAST_HD void equal_range(const int64_t* v, int64_t n, int64_t q, int64_t* begin,
                                int64_t* end) {
  int64_t lo = 0, hi = n, lo2 = 0, hi2 = n;
  while (lo < hi || lo2 < hi2) {
    if (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      const bool right = v[mid] < q;
      lo = right ? mid + 1 : lo;
      hi = right ? hi : mid;
    }
    if (lo2 < hi2) {
      const int64_t mid = lo2 + (hi2 - lo2) / 2;
      const bool right = v[mid] <= q;
      lo2 = right ? mid + 1 : lo2;
      hi2 = right ? hi2 : mid;
    }
  }
  *begin = lo;
  *end = lo2;
}

constexpr int kMaxSegments = 2;  // the anchors as columns (self-contrast), the contrast rows

// ---------------------------------------------------------------------------------------
// The work list.

// Bounds on the work list, host-known: with `target` items wanted, a block of T tiles has
// ceil(T / tiles_per_item) ≤ T / tiles_per_item + 1 items, tiles_per_item ≥ total / target,
// and there are at most n blocks per segment; an item holds its block's ≤ bm rows.
PIXCONTRAST_HD int64_t max_items(int64_t target, int num_segments, int64_t n) {
  return target + num_segments * n;
}
PIXCONTRAST_HD int64_t max_partial_rows(int64_t target, int num_segments, int64_t n, int bm) {
  return bm * target + num_segments * n;
}

struct BandPlan {
  int64_t n;               // rows
  const int64_t* ys;       // [n] row labels, sorted (stable)
  int num_segments;
  const int64_t* zs[kMaxSegments];  // per segment: its column labels, sorted (stable)
  int64_t m[kMaxSegments];          // per segment: its column count
  bool self_first;         // segment 0 is the anchors: a row's own column is no positive
  int64_t ignore;
  int bm, bn;              // rows per block, columns per tile
  int64_t target;          // items wanted (about one per resident CTA)
  // outputs, sorted row order; [S, n] arrays are segment-major
  int64_t* col_begin;      // [S, n] the row's class range in the segment's sorted columns
  int64_t* col_end;        // [S, n]
  int64_t* block_end;      // [n] at a block's first row: the block's end
  int64_t* pos_off;        // [n] the row's offset in its block (0 for ignored rows)
  int64_t* pos_first;      // [S, n] the row's block's first item in the segment
  int64_t* pos_count;      // [S, n] and its item count (0 for ignored rows)
  float* num_pos;          // [n] |P|
  int64_t* item_row;       // [max_items] segment·n + the block's first row
  int64_t* item_chunk;     // [max_items] which chunk of the block's column tiles
  int64_t* item_base;      // [max_items] first partial row of the item
  int64_t* tiles_per_item; // [1]
  int64_t* num_items;      // [1]
};

// Builds the list in three passes over the rows (one group: a CTA on the GPU). Pass 1: each
// row's class range in every segment and |P|; class blocks start at a class's first row and
// every bm rows after. Pass 2: per segment, the blocks' items numbered in row order (two
// scans). Pass 3: every row gets its block's items.
template <class Group>
PIXCONTRAST_HD void band_plan(const Group& g, const BandPlan& p) {
  const int64_t n = p.n;
  int64_t tiles = 0;
  for (int64_t r = g.rank(); r < n; r += g.size()) {
    const int64_t y = p.ys[r];
    const bool valid = y != p.ignore;
    int64_t class_begin, class_end;
    equal_range(p.ys, n, y, &class_begin, &class_end);
    const int64_t off = valid ? (r - class_begin) % p.bm : 0;
    const bool start = valid && off == 0;
    p.pos_off[r] = off;
    p.block_end[r] = min_of(r + p.bm, class_end);
    int64_t npos = 0;
    for (int s = 0; s < p.num_segments; ++s) {
      int64_t c0 = 0, c1 = 0;
      if (valid) equal_range(p.zs[s], p.m[s], y, &c0, &c1);
      p.col_begin[s * n + r] = c0;
      p.col_end[s * n + r] = c1;
      npos += c1 - c0;
      if (start) tiles += ceil_div(c1 - c0, p.bn);
    }
    if (p.self_first && valid) npos -= 1;  // the row itself
    p.num_pos[r] = static_cast<float>(npos);
  }
  const int64_t total = g.sum(tiles);  // also the barrier after pass 1
  const int64_t per_item = total > p.target ? ceil_div(total, p.target) : 1;
  if (g.rank() == 0) *p.tiles_per_item = per_item;
  int64_t items = 0, partial_rows = 0;
  for (int s = 0; s < p.num_segments; ++s)
    for (int64_t r0 = 0; r0 < n; r0 += g.size()) {  // every member runs every step
      const int64_t r = r0 + g.rank();
      int64_t q = 0, rows = 0;
      const bool start = r < n && p.ys[r] != p.ignore && p.pos_off[r] == 0;
      if (start) {
        q = ceil_div(ceil_div(p.col_end[s * n + r] - p.col_begin[s * n + r], p.bn), per_item);
        rows = p.block_end[r] - r;
      }
      int64_t q_total, w_total;
      const int64_t first = items + g.exclusive_scan(q, &q_total);
      const int64_t base = partial_rows + g.exclusive_scan(q * rows, &w_total);
      if (start) {
        p.pos_first[s * n + r] = first;
        p.pos_count[s * n + r] = q;
      }
      for (int64_t e = 0; e < q; ++e) {
        p.item_row[first + e] = s * n + r;
        p.item_chunk[first + e] = e;
        p.item_base[first + e] = base + e * rows;
      }
      items += q_total;
      partial_rows += w_total;
    }
  if (g.rank() == 0) *p.num_items = items;
  g.sync();
  for (int64_t r = g.rank(); r < n; r += g.size()) {
    const bool valid = p.ys[r] != p.ignore;
    if (valid && p.pos_off[r] == 0) continue;  // a block's first row: written above
    const int64_t b = r - p.pos_off[r];
    for (int s = 0; s < p.num_segments; ++s) {
      p.pos_first[s * n + r] = valid ? p.pos_first[s * n + b] : 0;
      p.pos_count[s * n + r] = valid ? p.pos_count[s * n + b] : 0;
    }
  }
}

// ---------------------------------------------------------------------------------------
// The items.

struct BandSegment {
  int64_t m;               // columns
  const void* cols;        // column rows (operand dtype), row r at cols + r·stride_row
  int64_t stride_row, stride_dim;
  const int64_t* perm;     // [m] sorted position → column row
  const int64_t* zs;       // [m] sorted labels
  const float* inv_norm;   // [column rows] 1/max(‖x‖, eps) per column row, or null: the
                           // rows are Ĉ already (the self segment reads Â)
  bool is_self;            // the columns are the anchors: perm[p] == row's perm → self pair
};

struct BandArgs {
  int64_t n, d;
  const void* rows;        // Â [n, d] contiguous, operand dtype, caller's row order
  const int64_t* perm;     // [n] sorted position → caller's row
  const int64_t* ys;       // [n] sorted labels
  const float* lse;        // [n] λ, caller's order
  BandSegment seg[kMaxSegments];
  float inv_t;
  int64_t ignore;
  bool supcon;
  bool supcon_split;       // BandProblem::supcon_split
  const float* num_pos;    // [n] |P| per sorted row (the plan's)
  float scale;             // weights stored times this (fp16 range; V carries it)
  int bm, bn;
  // the plan (BandPlan's outputs)
  const int64_t* item_row;
  const int64_t* item_chunk;
  const int64_t* item_base;
  const int64_t* tiles_per_item;
  const int64_t* num_items;
  const int64_t* block_end;
  const int64_t* col_begin;
  const int64_t* col_end;
  // partial rows: [max_partial_rows] and [max_partial_rows, d] (v null: no gradient)
  float* loss_ws;
  float* sig_ws;
  float* v_ws;
};

// The tiles of one CTA (shared memory on the GPU), carved from one buffer by band_tiles.
// A [bm, lda] and C [bn, lda] operand dtype (zero padding past d and past the valid
// rows/columns), S [bm, lds] fp32, P [bm, ldp] operand dtype (aliases S for fp32),
// V [bm, ldv] fp32.
template <typename T>
struct BandTiles {
  T* A;
  T* C;
  float* S;
  T* P;
  float* V;
  int lda, lds, ldp, ldv, dp;  // dp: d rounded up to the products' k step (16)
  int bm, bn;
  int64_t* row_y;
  int64_t* row_src;
  float* row_lse;
  float* row_shift;  // supcon_split: λ − ln|P| (the V weight is 1 − e^{s − shift})
  float* row_loss;
  float* row_sig;
  int64_t* col_z;
  int64_t* col_src;
  float* col_inv;
};

// Leading dimensions padded so that rows do not all start on the same shared-memory bank,
// and so that every 16×16 fragment starts 32-byte aligned (WMMA).
template <typename T>
PIXCONTRAST_HD int64_t op_pad() {
  return sizeof(T) == 2 ? 8 : 4;
}

PIXCONTRAST_HD int64_t align_bytes(int64_t b) { return round_up(b, 128); }

// Carves the tiles out of `buf` (128-byte aligned); returns the bytes used (buf may be null).
template <typename T>
PIXCONTRAST_HD int64_t band_tiles(char* buf, int bm, int bn, int64_t d, BandTiles<T>* t) {
  BandTiles<T> x{};
  x.bm = bm;
  x.bn = bn;
  x.dp = static_cast<int>(round_up(d, 16));
  x.lda = x.dp + static_cast<int>(op_pad<T>());
  x.lds = bn + 4;
  x.ldp = sizeof(T) == 4 ? x.lds : bn + static_cast<int>(op_pad<T>());
  x.ldv = x.dp + 4;
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    char* q = buf == nullptr ? nullptr : buf + off;
    off += align_bytes(bytes);
    return q;
  };
  x.A = reinterpret_cast<T*>(take(bm * x.lda * sizeof(T)));
  x.C = reinterpret_cast<T*>(take(bn * x.lda * sizeof(T)));
  x.S = reinterpret_cast<float*>(take(bm * x.lds * sizeof(float)));
  x.P = sizeof(T) == 4 ? reinterpret_cast<T*>(x.S)
                       : reinterpret_cast<T*>(take(bm * x.ldp * sizeof(T)));
  x.V = reinterpret_cast<float*>(take(bm * x.ldv * sizeof(float)));
  x.row_y = reinterpret_cast<int64_t*>(take(bm * sizeof(int64_t)));
  x.row_src = reinterpret_cast<int64_t*>(take(bm * sizeof(int64_t)));
  x.row_lse = reinterpret_cast<float*>(take(bm * sizeof(float)));
  x.row_shift = reinterpret_cast<float*>(take(bm * sizeof(float)));
  x.row_loss = reinterpret_cast<float*>(take(bm * sizeof(float)));
  x.row_sig = reinterpret_cast<float*>(take(bm * sizeof(float)));
  x.col_z = reinterpret_cast<int64_t*>(take(bn * sizeof(int64_t)));
  x.col_src = reinterpret_cast<int64_t*>(take(bn * sizeof(int64_t)));
  x.col_inv = reinterpret_cast<float*>(take(bn * sizeof(float)));
  if (t != nullptr) *t = x;
  return off;
}

// Columns per tile for a d and an operand size: the largest square tile (64, 32 or 16)
// whose buffer fits `budget` bytes; 0 if none does. Rows per block: the same, or 16 for a
// small batch (n ≤ 256: classes of a few rows, which 64-row blocks would mostly pad).
template <typename T>
PIXCONTRAST_HD int band_block(int64_t d, int64_t budget) {
  for (int b = 64; b >= 16; b /= 2)
    if (band_tiles<T>(nullptr, b, b, d, nullptr) <= budget) return b;
  return 0;
}

PIXCONTRAST_HD int band_rows_block(int64_t n, int cols_block) {
  return n <= 256 && cols_block > 16 ? 16 : cols_block;
}

// 16 bytes of operands: one vector load or store where the rows allow it.
template <typename T>
struct alignas(16) Pack {
  T v[16 / sizeof(T)];
};

// Whether a row source allows 16-byte accesses: unit element stride, row starts and d
// multiples of 16 bytes.
template <typename T>
PIXCONTRAST_HD bool packable(const void* base, int64_t stride_row, int64_t stride_dim, int64_t d) {
  constexpr int64_t W = 16 / sizeof(T);
  return stride_dim == 1 && stride_row % W == 0 && d % W == 0 &&
         reinterpret_cast<uintptr_t>(base) % 16 == 0;
}

#if defined(__CUDA_ARCH__)
#define PIXCONTRAST_UNROLL4 _Pragma("unroll 4")
#else
#define PIXCONTRAST_UNROLL4
#endif

// One run of W elements (W = 16/sizeof(T) packed, else 1) of tile row `out`, from element
// e of source row x times f (rounded to the operand dtype); zeros when !in or e ≥ d.
template <typename T>
PIXCONTRAST_HD void copy_run(const T* x, int64_t stride_dim, bool packed, bool in, int64_t e,
                             int64_t d, float f, T* out) {
  constexpr int W = 16 / sizeof(T);
  if (packed) {
    Pack<T> v{};
    if (in && e < d) {
      v = *reinterpret_cast<const Pack<T>*>(x + e);
      if (f != 1.f)
        for (int k = 0; k < W; ++k) v.v[k] = Operand<T>::store(Operand<T>::load(v.v[k]) * f);
    }
    *reinterpret_cast<Pack<T>*>(out + e) = v;
  } else {
    out[e] = Operand<T>::store(in && e < d ? Operand<T>::load(x[e * stride_dim]) * f : 0.f);
  }
}

// Gathers a tile of `rows` rows: tile row q = source row src[q] of x (src < 0: zeros)
// times f[q] (null: 1), dp elements (zeros past d). The sources are in shared memory
// already, so the rows' loads do not wait on each other: with one run per lane and row
// (d ≤ 32 runs, the common case) the row loop has no inner loop and unrolls.
template <typename T, class Group>
PIXCONTRAST_HD void gather_tile(const Group& g, const T* x, int64_t stride_row, int64_t stride_dim,
                                int64_t d, const int64_t* src, const float* f, int rows,
                                T* out, int ld, int dp) {
  const bool packed = packable<T>(x, stride_row, stride_dim, d);
  const int W = packed ? static_cast<int>(16 / sizeof(T)) : 1;
  const int L = static_cast<int>(g.lanes(32));
  const int lane = static_cast<int>(g.rank()) % L, step = static_cast<int>(g.size()) / L;
  const int first = static_cast<int>(g.rank()) / L;
  if (dp <= L * W) {
    const int e = lane * W;
    if (e >= dp) return;
    PIXCONTRAST_UNROLL4
    for (int q = first; q < rows; q += step) {
      const int64_t r = src[q];
      copy_run(x + (r >= 0 ? r : 0) * stride_row, stride_dim, packed, r >= 0, e, d,
               f != nullptr ? f[q] : 1.f, out + q * ld);
    }
    return;
  }
  for (int q = first; q < rows; q += step) {
    const int64_t r = src[q];
    for (int e = lane * W; e < dp; e += L * W)
      copy_run(x + (r >= 0 ? r : 0) * stride_row, stride_dim, packed, r >= 0, e, d,
               f != nullptr ? f[q] : 1.f, out + q * ld);
  }
}

// Loads the item's rows: their labels, sources and λ, then A (Â rows, already normalised).
template <typename T, class Group>
PIXCONTRAST_HD void load_rows(const Group& g, const BandArgs& a, const BandTiles<T>& t, int64_t r0,
                              int64_t nrows) {
  for (int q = static_cast<int>(g.rank()); q < t.bm; q += static_cast<int>(g.size())) {
    const bool in = q < nrows;
    const int64_t src = in ? a.perm[r0 + q] : -1;
    t.row_y[q] = in ? a.ys[r0 + q] : a.ignore;
    t.row_src[q] = src;
    t.row_lse[q] = in ? a.lse[src] : 0.f;
    const float npos = in && a.supcon_split ? a.num_pos[r0 + q] : 0.f;
    t.row_shift[q] = npos > 0.f ? t.row_lse[q] - rows::log_acc(npos) : 0.f;
    t.row_loss[q] = 0.f;
    t.row_sig[q] = 0.f;
  }
  for (int o = static_cast<int>(g.rank()); o < t.bm * t.ldv; o += static_cast<int>(g.size()))
    t.V[o] = 0.f;
  g.sync();
  gather_tile(g, static_cast<const T*>(a.rows), a.d, 1, a.d, t.row_src, nullptr, t.bm, t.A,
              t.lda, t.dp);
}

// Loads a column tile: sorted positions p0 .. p0 + nc − 1 of the segment, gathered through
// its permutation and normalised, x·(1/max(‖x‖, eps)) rounded to the operand dtype with the
// inverse norms the negatives sweep's normalise kernel computed (the operand bits of the
// chunked GEMMs); zeros past nc.
template <typename T, class Group>
PIXCONTRAST_HD void load_columns(const Group& g, const BandArgs& a, const BandSegment& sg,
                                 const BandTiles<T>& t, int64_t p0, int64_t nc) {
  for (int q = static_cast<int>(g.rank()); q < t.bn; q += static_cast<int>(g.size())) {
    const bool in = q < nc;
    const int64_t src = in ? sg.perm[p0 + q] : -2;
    t.col_src[q] = src;
    t.col_z[q] = in ? sg.zs[p0 + q] : a.ignore;
    t.col_inv[q] = in && sg.inv_norm != nullptr ? sg.inv_norm[src] : 1.f;
  }
  g.sync();
  gather_tile(g, static_cast<const T*>(sg.cols), sg.stride_row, sg.stride_dim, a.d, t.col_src,
              t.col_inv, t.bn, t.C, t.lda, t.dp);
}

// The positives' terms of one tile: P = σ(λ − s)·scale on positive pairs, 0 elsewhere (padding,
// the self pair); the rows' Σ softplus and Σ σ added to row_loss, row_sig. SupCon: λ − s and
// weight 1 (rows::positive_terms). Each row is handled by L consecutive ranks.
template <typename T, class Group>
PIXCONTRAST_HD void tile_terms(const Group& g, const BandArgs& a, bool is_self,
                               const BandTiles<T>& t) {
  const int rank = static_cast<int>(g.rank()), size = static_cast<int>(g.size());
  const int per_row = size / t.bm;  // a power of two on the GPU (256 / bm)
  const int L = static_cast<int>(g.lanes(per_row < 1 ? 1 : per_row > 32 ? 32 : per_row));
  for (int r = rank / L; r < t.bm; r += size / L) {
    const int64_t y = t.row_y[r];
    const int64_t self = is_self ? t.row_src[r] : -3;  // no column's source is -3
    const float lse = t.row_lse[r];
    float sp_sum = 0.f, sg_sum = 0.f;
    if (y == a.ignore) {  // a padding row (whole warps of them when a class has few rows)
      for (int j = rank % L; j < t.bn; j += L) t.P[r * t.ldp + j] = Operand<T>::store(0.f);
    } else {
      for (int j = rank % L; j < t.bn; j += L) {
        const bool pos = rows::is_positive(t.col_z[j], y, a.ignore, t.col_src[j] == self);
        float sp, sg;
        rows::positive_terms(lse - rows::logit(t.S[r * t.lds + j], a.inv_t), a.supcon, &sp,
                             &sg);
        sg = keep_if(pos, sg);
        sp_sum += keep_if(pos, sp);
        sg_sum += sg;
        // SupCon split: the positive's whole row-gradient weight, softmax part included.
        const float w = a.supcon_split
                            ? keep_if(pos, 1.f - rows::exp_acc(
                                                     rows::logit(t.S[r * t.lds + j], a.inv_t) -
                                                     t.row_shift[r]))
                            : sg;
        t.P[r * t.ldp + j] = Operand<T>::store(w * a.scale);
      }
    }
    sp_sum = g.lane_sum(sp_sum, L);
    sg_sum = g.lane_sum(sg_sum, L);
    if (rank % L == 0) {
      t.row_loss[r] += sp_sum;
      t.row_sig[r] += sg_sum;
    }
  }
}

// One item: its rows against its chunk of column tiles, then its partial rows.
template <typename T, class Products, class Group>
PIXCONTRAST_HD void band_item(const Group& g, const BandArgs& a, const BandTiles<T>& t,
                              int64_t item) {
  const int64_t owner = a.item_row[item];
  const int s = static_cast<int>(owner / a.n);
  const int64_t r0 = owner - s * a.n;
  const int64_t nrows = a.block_end[r0] - r0;
  const int64_t span = *a.tiles_per_item * t.bn;
  const int64_t p_begin = a.col_begin[owner] + a.item_chunk[item] * span;
  const int64_t p_end = min_of(p_begin + span, a.col_end[owner]);
  const BandSegment& sg = a.seg[s];
  load_rows(g, a, t, r0, nrows);
  for (int64_t p0 = p_begin; p0 < p_end; p0 += t.bn) {
    load_columns(g, a, sg, t, p0, min_of(t.bn, p_end - p0));
    g.sync();
    Products::logits(g, t);
    g.sync();
    tile_terms(g, a, sg.is_self, t);
    g.sync();
    if (a.v_ws != nullptr) Products::accumulate(g, t);
    g.sync();
  }
  const int64_t base = a.item_base[item];
  const int64_t L = g.lanes(32);
  for (int64_t q = g.rank() / L; q < nrows; q += g.size() / L) {
    if (g.rank() % L == 0) {
      a.loss_ws[base + q] = t.row_loss[q];
      a.sig_ws[base + q] = t.row_sig[q];
    }
    if (a.v_ws != nullptr)
      for (int64_t e = g.rank() % L; e < a.d; e += L)
        a.v_ws[(base + q) * a.d + e] = t.V[q * t.ldv + e];
  }
  g.sync();  // the next item reloads the tiles
}

// ---------------------------------------------------------------------------------------
// The merge: one sorted row's partials, its items in item order, written to the caller's row.

struct BandMerge {
  int64_t n, d;
  int num_segments;
  const int64_t* perm;      // [n]
  const int64_t* pos_first; // [S, n]
  const int64_t* pos_count; // [S, n]
  const int64_t* pos_off;   // [n]
  const int64_t* item_base;
  const float* num_pos;     // [n] sorted order
  const float* loss_ws;
  const float* sig_ws;
  const float* v_ws;        // null: no gradient
  // outputs, caller's order
  float* loss;              // [n] Σ softplus
  float* sig;               // [n] Σ σ
  float* count;             // [n] |P|
  float* V;                 // [n, d] Σ σ·ĉ (times the weight scale), or null
};

template <class Group>
PIXCONTRAST_HD void band_merge_row(const Group& g, const BandMerge& mg, int64_t r) {
  const int64_t dst = mg.perm[r];
  const int64_t off = mg.pos_off[r];
  if (g.rank() == 0) {
    float loss = 0.f, sig = 0.f;
    for (int s = 0; s < mg.num_segments; ++s)
      for (int64_t k = 0; k < mg.pos_count[s * mg.n + r]; ++k) {
        const int64_t idx = mg.item_base[mg.pos_first[s * mg.n + r] + k] + off;
        loss += mg.loss_ws[idx];
        sig += mg.sig_ws[idx];
      }
    mg.loss[dst] = loss;
    mg.sig[dst] = sig;
    mg.count[dst] = mg.num_pos[r];
  }
  if (mg.V == nullptr) return;
  for (int64_t e = g.rank(); e < mg.d; e += g.size()) {
    float v = 0.f;
    for (int s = 0; s < mg.num_segments; ++s)
      for (int64_t k = 0; k < mg.pos_count[s * mg.n + r]; ++k)
        v += mg.v_ws[(mg.item_base[mg.pos_first[s * mg.n + r] + k] + off) * mg.d + e];
    mg.V[dst * mg.d + e] = v;
  }
}

// ---------------------------------------------------------------------------------------
// One call: what the caller provides, and the carving of one workspace into the plan's
// arrays and the partial rows (host-known sizes: no synchronisation).

// Where the band replaces the chunked positives sweep: normalised rows and
// τ ≥ rows::kFastMinTemperature (kernels/infonce.py's _FAST_MIN_TEMPERATURE), so |s| ≤ 1/τ
// and the band's logits need not be the chunked GEMMs' bit for bit (the column backward
// recomputes them with cuBLAS; unnormalised logits of ~1e5 would amplify an ulp into
// e^{s−λ}). Any operand dtype: the band's weights σ ≤ 1 fit fp16 (×2¹⁵) too.
inline bool band_applies(bool normalize, double inv_temperature) {
  return normalize && inv_temperature <= 1.0 / rows::kFastMinTemperature;
}

struct BandProblem {
  int64_t n, d;
  const void* rows;         // Â [n, d] contiguous, operand dtype, caller's order
  const int64_t* perm;      // [n] the rows' stable label sort: sorted position → row
  const int64_t* ys;        // [n] sorted labels
  const float* lse;         // [n] λ, caller's order
  int num_segments;
  BandSegment seg[kMaxSegments];
  bool self_first;          // segment 0 is the anchors
  float inv_t;
  int64_t ignore;
  bool supcon;
  bool supcon_split;        // SupCon: V weights 1 − |P|·e^{s−λ} (the negatives pass left the
                            // positives out of U: rows::RowChunk::exclude_positives)
  float scale;              // weight scale (V carries it)
  int block_rows;           // rows per block (band_rows_block)
  int block_cols;           // columns per tile (band_block)
  int64_t target;           // items wanted
  // outputs, caller's order, overwritten: Σ softplus, Σ σ, |P| [n] and V [n, d] (or null)
  float* loss;
  float* sig;
  float* count;
  float* V;
};

// Carves `ws` (null: only sizes) into the plan's arrays and the partial rows; fills the three
// launch descriptions (when not null) and returns the bytes used (8-byte aligned pieces).
PIXCONTRAST_HD int64_t band_layout(const BandProblem& pb, char* ws, BandPlan* plan,
                                   BandArgs* args, BandMerge* merge) {
  const int S = pb.num_segments;
  const int64_t n = pb.n, items = max_items(pb.target, S, n);
  const int64_t rows = max_partial_rows(pb.target, S, n, pb.block_rows);
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    char* q = ws == nullptr ? nullptr : ws + off;
    off += round_up(bytes, 16);
    return q;
  };
  auto i64 = [&](int64_t count) { return reinterpret_cast<int64_t*>(take(count * 8)); };
  auto f32 = [&](int64_t count) { return reinterpret_cast<float*>(take(count * 4)); };
  BandPlan p{};
  p.n = n;
  p.ys = pb.ys;
  p.num_segments = S;
  for (int s = 0; s < S; ++s) {
    p.zs[s] = pb.seg[s].zs;
    p.m[s] = pb.seg[s].m;
  }
  p.self_first = pb.self_first;
  p.ignore = pb.ignore;
  p.bm = pb.block_rows;
  p.bn = pb.block_cols;
  p.target = pb.target;
  p.col_begin = i64(S * n);
  p.col_end = i64(S * n);
  p.block_end = i64(n);
  p.pos_off = i64(n);
  p.pos_first = i64(S * n);
  p.pos_count = i64(S * n);
  p.num_pos = f32(n);
  p.item_row = i64(items);
  p.item_chunk = i64(items);
  p.item_base = i64(items);
  p.tiles_per_item = i64(1);
  p.num_items = i64(1);
  float* loss_ws = f32(rows);
  float* sig_ws = f32(rows);
  float* v_ws = pb.V != nullptr ? f32(rows * pb.d) : nullptr;
  if (plan != nullptr) *plan = p;
  if (args != nullptr) {
    BandArgs a{};
    a.n = n;
    a.d = pb.d;
    a.rows = pb.rows;
    a.perm = pb.perm;
    a.ys = pb.ys;
    a.lse = pb.lse;
    for (int s = 0; s < S; ++s) a.seg[s] = pb.seg[s];
    a.inv_t = pb.inv_t;
    a.ignore = pb.ignore;
    a.supcon = pb.supcon;
    a.supcon_split = pb.supcon_split;
    a.num_pos = p.num_pos;
    a.scale = pb.scale;
    a.bm = pb.block_rows;
    a.bn = pb.block_cols;
    a.item_row = p.item_row;
    a.item_chunk = p.item_chunk;
    a.item_base = p.item_base;
    a.tiles_per_item = p.tiles_per_item;
    a.num_items = p.num_items;
    a.block_end = p.block_end;
    a.col_begin = p.col_begin;
    a.col_end = p.col_end;
    a.loss_ws = loss_ws;
    a.sig_ws = sig_ws;
    a.v_ws = v_ws;
    *args = a;
  }
  if (merge != nullptr) {
    BandMerge mg{};
    mg.n = n;
    mg.d = pb.d;
    mg.num_segments = S;
    mg.perm = pb.perm;
    mg.pos_first = p.pos_first;
    mg.pos_count = p.pos_count;
    mg.pos_off = p.pos_off;
    mg.item_base = p.item_base;
    mg.num_pos = p.num_pos;
    mg.loss_ws = loss_ws;
    mg.sig_ws = sig_ws;
    mg.v_ws = v_ws;
    mg.loss = pb.loss;
    mg.sig = pb.sig;
    mg.count = pb.count;
    mg.V = pb.V;
    *merge = mg;
  }
  return off;
}

// ---------------------------------------------------------------------------------------
// The CPU's group (one thread) and tile products (plain loops, fp32 accumulation).

struct SerialGroup {
  PIXCONTRAST_HD int64_t rank() const { return 0; }
  PIXCONTRAST_HD int64_t size() const { return 1; }
  PIXCONTRAST_HD void sync() const {}
  PIXCONTRAST_HD int64_t lanes(int64_t) const { return 1; }
  PIXCONTRAST_HD float lane_sum(float v, int64_t) const { return v; }
  PIXCONTRAST_HD int64_t sum(int64_t v) const { return v; }
  PIXCONTRAST_HD int64_t exclusive_scan(int64_t v, int64_t* total) const {
    *total = v;
    return 0;
  }
};

struct LoopProducts {
  template <typename T, class Group>
  static void logits(const Group&, const BandTiles<T>& t) {
    for (int i = 0; i < t.bm; ++i)
      for (int j = 0; j < t.bn; ++j) {
        float acc = 0.f;
        for (int64_t e = 0; e < t.dp; ++e)
          acc += Operand<T>::load(t.A[i * t.lda + e]) * Operand<T>::load(t.C[j * t.lda + e]);
        t.S[i * t.lds + j] = acc;
      }
  }
  template <typename T, class Group>
  static void accumulate(const Group&, const BandTiles<T>& t) {
    for (int i = 0; i < t.bm; ++i)
      for (int j = 0; j < t.bn; ++j) {
        const float w = Operand<T>::load(t.P[i * t.ldp + j]);
        for (int64_t e = 0; e < t.dp; ++e)
          t.V[i * t.ldv + e] += w * Operand<T>::load(t.C[j * t.lda + e]);
      }
  }
};

}  // namespace pixcontrast::band
