// Framework-free test of the CUDA sampling launchers (csrc/cuda/sampling.h) against
// straightforward CPU computations written here (the bank write: test_memory_bank_cuda.cu).
//
// Links only cudart and the launchers' .cu files. Exit codes: 0 pass, 1 mismatch (with a
// message), 77 no CUDA device (CTest SKIP_RETURN_CODE). Random inputs with a fresh seed
// per run, printed; pass a seed as argv[1] to reproduce.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/sampling.h"
#include "test_util.h"

namespace {

using namespace pixcontrast_test;

// The quota rule in the words of docs/design.md §2 (x >= V/2 as a real comparison).
void quota(int64_t hard, int64_t easy, int64_t v, int64_t* q_hard, int64_t* q_easy) {
  if (hard >= v / 2.0 && easy >= v / 2.0) {
    *q_hard = v / 2;
    *q_easy = v - v / 2;
  } else if (hard >= v / 2.0) {
    *q_hard = v - easy;
    *q_easy = easy;
  } else {
    *q_hard = hard;
    *q_easy = v - hard;
  }
}

// One sampling case: builds the driver's sorted arrays on the CPU (as
// pixcontrast/sampling.py::_sample does), runs both launchers, compares.
void sampling_case(std::mt19937_64& rng, int64_t images, int64_t hw, int64_t max_samples,
                   int64_t max_views, int64_t ignore_index) {
  const int64_t n = images * hw;
  const int64_t num_labels = 2 + static_cast<int64_t>(rng() % 6);
  std::vector<int64_t> classes(num_labels);
  for (auto& c : classes) {
    c = static_cast<int64_t>(rng() % 41) - 10;  // negative labels too
    if (c == ignore_index) c = 100;
  }
  // Per image: label and easy flag of each pixel, then a random order, then a stable sort
  // by run_key = 2·label + easy.
  std::vector<int64_t> run_key(n), rank(n), cls(n), lab(n), pix(n);
  Flags easy(n), valid(n);
  for (int64_t b = 0; b < images; ++b) {
    std::vector<int64_t> label(hw), is_easy(hw);
    for (int64_t j = 0; j < hw; ++j) {
      label[j] = rng() % 5 == 0 ? ignore_index : classes[rng() % num_labels];
      is_easy[j] = static_cast<int64_t>(rng() % 3 != 0);
    }
    std::vector<int64_t> order(hw);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      return 2 * label[x] + is_easy[x] < 2 * label[y] + is_easy[y];
    });
    for (int64_t j = 0; j < hw; ++j) {
      const int64_t i = b * hw + j, src = order[j];
      run_key[i] = 2 * label[src] + is_easy[src];
      lab[i] = label[src];
      easy[i] = static_cast<uint8_t>(is_easy[src]);
      valid[i] = static_cast<uint8_t>(label[src] != ignore_index);
      pix[i] = b * hw + src;
    }
  }
  int64_t group = -1;
  for (int64_t i = 0; i < n; ++i) {
    const bool row_start = i % hw == 0;
    const bool new_run = row_start || run_key[i] != run_key[i - 1];
    const bool new_class = row_start || lab[i] != lab[i - 1];
    rank[i] = new_run ? 0 : rank[i - 1] + 1;
    group += new_class ? 1 : 0;
    cls[i] = group;
  }

  // CPU histogram: counts[cls·2 + easy] += valid.
  std::vector<int64_t> want_counts(2 * n, 0);
  for (int64_t i = 0; i < n; ++i) {
    want_counts[cls[i] * 2 + easy[i]] += valid[i];
  }

  Device<int64_t> d_key(run_key), d_rank(rank), d_cls(cls), d_lab(lab), d_pix(pix);
  Device<uint8_t> d_easy(easy), d_valid(valid);
  Device<int64_t> d_counts(std::vector<int64_t>(2 * n, -7));  // garbage: must be zeroed
  CUDA_OK(pixcontrast::cuda::sampling_run_histogram(d_key.ptr, d_rank.ptr, d_cls.ptr,
                                                    as_bool(d_easy), as_bool(d_valid), n, hw,
                                                    d_counts.ptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  if (d_counts.to_host() != want_counts) fail("sampling_run_histogram counts");

  // Pairs: eligible class-groups compacted into p slots, a random max_samples subset kept.
  const int64_t p = std::max<int64_t>(n / (max_views + 1), 1);
  std::vector<int64_t> pair_of_cls(n, p), cls_of_pair;
  for (int64_t c = 0; c < n; ++c) {
    if (want_counts[2 * c] + want_counts[2 * c + 1] > max_views) {
      pair_of_cls[c] = static_cast<int64_t>(cls_of_pair.size());
      cls_of_pair.push_back(c);
    }
  }
  const int64_t num_pairs = static_cast<int64_t>(cls_of_pair.size());
  if (num_pairs > p) fail("more eligible pairs than n / (max_views + 1)");
  const int64_t views =
      std::max<int64_t>(std::min(max_samples / std::max<int64_t>(num_pairs, 1), max_views), 1);
  std::vector<int64_t> chosen(num_pairs);
  std::iota(chosen.begin(), chosen.end(), 0);
  std::shuffle(chosen.begin(), chosen.end(), rng);
  chosen.resize(std::min(num_pairs, max_samples));
  Flags kept(p, 0);
  for (int64_t q : chosen) kept[q] = 1;
  std::vector<int64_t> pair_hard(p, 0), pair_easy(p, 0), offset(p, 0);
  int64_t rows_before = 0;
  for (int64_t q = 0; q < num_pairs; ++q) {
    if (!kept[q]) continue;
    pair_hard[q] = want_counts[2 * cls_of_pair[q]];
    pair_easy[q] = want_counts[2 * cls_of_pair[q] + 1];
    offset[q] = rows_before;
    rows_before += views;
  }
  for (int64_t q = 0; q < num_pairs; ++q) {
    if (!kept[q]) offset[q] = rows_before;  // as the driver's exclusive cumsum
  }

  // CPU selection: per kept pair in order, its first q_hard hard pixels then its first
  // q_easy easy ones, in sorted order (the runs are in random order), appended.
  const int64_t out_size = max_samples + 1;
  std::vector<int64_t> want_idx(out_size, -1), want_lab(out_size, ignore_index);
  int64_t row = 0;
  for (int64_t q = 0; q < num_pairs; ++q) {
    if (!kept[q]) continue;
    int64_t q_hard, q_easy;
    quota(pair_hard[q], pair_easy[q], views, &q_hard, &q_easy);
    for (int pass = 0; pass < 2; ++pass) {
      int64_t taken = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (cls[i] != cls_of_pair[q] || easy[i] != pass) continue;
        if (taken == (pass ? q_easy : q_hard)) break;
        want_idx[row] = pix[i];
        want_lab[row] = lab[i];
        ++row;
        ++taken;
      }
    }
  }
  if (row != views * static_cast<int64_t>(chosen.size()) || row > max_samples) {
    fail("CPU reference: the rule's row count V * min(T, max_samples)");
  }

  Device<int64_t> d_pair_of_cls(pair_of_cls), d_pair_hard(pair_hard), d_pair_easy(pair_easy),
      d_offset(offset), d_views(std::vector<int64_t>{views});
  Device<uint8_t> d_kept(kept);
  Device<int64_t> d_out_idx(std::vector<int64_t>(out_size, -1)),
      d_out_lab(std::vector<int64_t>(out_size, ignore_index));
  CUDA_OK(pixcontrast::cuda::sampling_select_scatter(
      d_cls.ptr, as_bool(d_easy), d_rank.ptr, d_lab.ptr, d_pix.ptr, d_pair_of_cls.ptr, n,
      as_bool(d_kept), d_pair_hard.ptr, d_pair_easy.ptr, d_offset.ptr, p, d_views.ptr,
      ignore_index, d_out_idx.ptr, d_out_lab.ptr, out_size, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  if (d_out_idx.to_host() != want_idx) fail("sampling_select_scatter out_idx");
  if (d_out_lab.to_host() != want_lab) fail("sampling_select_scatter out_lab");
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = seed_or_skip("test_sampling_cuda", argc, argv);
  std::mt19937_64 rng(seed);

  // images, hw, max_samples, max_views, ignore_index
  const int64_t cases[][5] = {
      {3, 156, 64, 10, 255},  // V = max_samples // T
      {4, 99, 1000, 8, -1},   // V capped by max_views
      {2, 256, 5, 6, 255},    // T > max_samples: a random subset of pairs, V = 1
      {5, 35, 3, 2, -1},      // tiny max_views
      {1, 340, 1, 30, 255},   // max_samples = 1
      {2, 100, 37, 1, -1},    // max_views = 1
      {8, 4096, 1024, 100, 255},  // several blocks of threads
  };
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (const auto& c : cases) {
      sampling_case(rng, c[0], c[1], c[2], c[3], c[4]);
    }
  }
  // Empty inputs launch nothing and succeed, even with null pointers.
  CUDA_OK(pixcontrast::cuda::sampling_run_histogram(nullptr, nullptr, nullptr, nullptr,
                                                    nullptr, 0, 1, nullptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());

  return finish("test_sampling_cuda", seed);
}
