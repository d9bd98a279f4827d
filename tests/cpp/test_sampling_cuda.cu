// Framework-free test of the CUDA sampling launchers (csrc/cuda/sampling.h) against a
// straightforward CPU computation of the rule written here (the bank write:
// test_memory_bank_cuda.cu).
//
// The __host__ __device__ helpers are checked on the CPU first, on every machine; then,
// with a GPU, the two launchers (histogram, a host stable sort, select) against the CPU
// reference, bit for bit. Exit codes: 0 pass, 1 mismatch (with a message), 77 no CUDA
// device after the host checks (CTest SKIP_RETURN_CODE). Random inputs with a fresh seed
// per run, printed; pass a seed as argv[1] to reproduce.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/sampling.h"
#include "test_util.h"

namespace {

using namespace pixcontrast_test;
namespace pc = pixcontrast::cuda;

// The quota rule in the words of docs/design.md §2.5 (x >= V/2 as a real comparison).
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

// The helpers shared by the kernels, on the CPU.
void host_helpers(std::mt19937_64& rng) {
  for (int i = 0; i < 2000; ++i) {
    const int64_t v = 1 + static_cast<int64_t>(rng() % 300);
    const int64_t hard = static_cast<int64_t>(rng() % 400);
    const int64_t easy = static_cast<int64_t>(rng() % 400);
    int64_t a, b, c, d;
    quota(hard, easy, v, &a, &b);
    pc::sampling_quotas(hard, easy, v, &c, &d);
    if (a != c || b != d) fail("sampling_quotas differs from the rule");
  }
  const int64_t big = INT64_MAX, small = INT64_MIN;
  if (pc::sampling_window_bin(small, small, 255) != 0) fail("window bin at INT64_MIN");
  if (pc::sampling_window_bin(big, small, 255) != -1) fail("window bin: wrap past 2^63");
  if (pc::sampling_window_bin(small, big, 255) != -1) fail("window bin: below lo");
  if (pc::sampling_window_bin(big, big - 3, 255) != 3) fail("window bin near INT64_MAX");
  if (pc::sampling_window_bin(300, 46, 255) != 254 || pc::sampling_window_bin(301, 46, 255) != -1)
    fail("window bin at the window's end");
  // rand bits: set << R | key fits 63 bits for the largest set id 2·pimg.
  for (int64_t hw : {1, 7, 100, 32768, 1 << 20}) {
    for (int64_t mv : {1, 2, 100, 5000}) {
      const int r = pc::sampling_rand_bits(hw, mv);
      const int64_t top = 2 * pc::sampling_pairs_per_image(hw, mv);
      if (r < 1 || r > 62 || (r < 62 && (top >> (63 - r)) != 0)) fail("sampling_rand_bits");
    }
  }
  if (!pc::sampling_pair_kept(4, 5, 99, 0) || pc::sampling_pair_kept(5, 5, 1, 1) ||
      !pc::sampling_pair_kept(5, 5, 0, 1) || pc::sampling_pair_kept(6, 5, 0, 9))
    fail("sampling_pair_kept");
  // A pair with start 10, 4 hard, first row 7, quotas 2 hard / 3 easy.
  if (pc::sampling_row(11, false, 10, 4, 7, 2, 3, 100) != 8) fail("row of a hard pixel");
  if (pc::sampling_row(12, false, 10, 4, 7, 2, 3, 100) != -1) fail("hard quota");
  if (pc::sampling_row(16, true, 10, 4, 7, 2, 3, 100) != 11) fail("row of an easy pixel");
  if (pc::sampling_row(17, true, 10, 4, 7, 2, 3, 100) != -1) fail("easy quota");
  if (pc::sampling_row(11, false, 10, 4, -1, 2, 3, 100) != -1) fail("pair not kept");
  if (pc::sampling_row(11, false, 10, 4, 7, 2, 3, 8) != -1) fail("row past the output");
}

// One case on the GPU against the CPU reference of the rule with the same keys.
void sampling_case(std::mt19937_64& rng, int64_t images, int64_t hw, int64_t max_samples,
                   int64_t max_views, int64_t ignore_index, bool wide_labels) {
  const int64_t n = images * hw;
  const int64_t slots = std::max<int64_t>(n / (max_views + 1), 1);
  const int r = pc::sampling_rand_bits(hw, max_views);
  const int64_t num_keys = n + (max_samples < slots ? slots : 0);
  std::vector<int64_t> classes(2 + rng() % 6);
  for (auto& c : classes) {
    c = wide_labels ? static_cast<int64_t>(rng()) : static_cast<int64_t>(rng() % 41) - 10;
    if (c == ignore_index) c = 100;
  }
  std::vector<int64_t> labels(n), preds(n), keys(num_keys);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = rng() % 5 == 0 ? ignore_index : classes[rng() % classes.size()];
    preds[i] = rng() % 3 ? labels[i] : classes[rng() % classes.size()];
  }
  for (auto& k : keys) k = static_cast<int64_t>(rng() >> (64 - r));

  // CPU reference: pairs in (image, label) order; the max_samples of lowest (key, index);
  // per set the q lowest (key, pixel) pixels.
  struct Pair { int64_t b, c; std::vector<std::pair<int64_t, int64_t>> hard, easy; };
  std::vector<Pair> pairs;
  for (int64_t b = 0; b < images; ++b) {
    std::map<int64_t, Pair> by_class;
    for (int64_t p = 0; p < hw; ++p) {
      const int64_t i = b * hw + p;
      if (labels[i] == ignore_index) continue;
      Pair& q = by_class[labels[i]];
      q.b = b;
      q.c = labels[i];
      (preds[i] == labels[i] ? q.easy : q.hard).push_back({keys[i], p});
    }
    for (auto& [c, q] : by_class) {
      if (static_cast<int64_t>(q.hard.size() + q.easy.size()) > max_views) pairs.push_back(q);
    }
  }
  const int64_t t = static_cast<int64_t>(pairs.size());
  const int64_t views =
      std::max<int64_t>(std::min(max_samples / std::max<int64_t>(t, 1), max_views), 1);
  std::vector<int64_t> order(t);
  std::iota(order.begin(), order.end(), 0);
  if (t > max_samples) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return keys[n + x] < keys[n + y]; });
    order.resize(max_samples);
    std::sort(order.begin(), order.end());
  }
  std::vector<int64_t> want_idx(max_samples, -1), want_lab(max_samples, ignore_index);
  int64_t row = 0;
  for (int64_t g : order) {
    Pair& q = pairs[g];
    int64_t q_hard, q_easy;
    quota(q.hard.size(), q.easy.size(), views, &q_hard, &q_easy);
    std::sort(q.hard.begin(), q.hard.end());
    std::sort(q.easy.begin(), q.easy.end());
    for (int64_t j = 0; j < q_hard; ++j, ++row) {
      want_idx[row] = q.b * hw + q.hard[j].second;
      want_lab[row] = q.c;
    }
    for (int64_t j = 0; j < q_easy; ++j, ++row) {
      want_idx[row] = q.b * hw + q.easy[j].second;
      want_lab[row] = q.c;
    }
  }

  // GPU: histogram, the sort (here on the host), select.
  const int64_t pimg = pc::sampling_pairs_per_image(hw, max_views);
  Device<int64_t> d_lab(labels), d_pred(preds), d_keys(keys);
  Device<int64_t> d_sort(std::vector<int64_t>(n, -7)),
      d_ws(std::vector<int64_t>(7 * images * pimg, -7)),
      d_npairs(std::vector<int64_t>(images, -7)), d_idx(std::vector<int64_t>(max_samples, -7)),
      d_out_lab(std::vector<int64_t>(max_samples, -7));
  Device<int32_t> d_counter(std::vector<int32_t>{0});
  const pc::SamplingShape shape{images, hw, max_samples, max_views, ignore_index};
  CUDA_OK(pc::sampling_histogram(d_lab.ptr, d_pred.ptr, d_keys.ptr, shape, d_sort.ptr, d_ws.ptr,
                                 d_npairs.ptr, d_counter.ptr, d_idx.ptr, d_out_lab.ptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  if (d_counter.to_host()[0] != 0) fail("the counter is left at zero");
  std::vector<int64_t> sort_keys = d_sort.to_host(), sorted(n), perm(n);
  for (int64_t b = 0; b < images; ++b) {
    std::vector<int64_t> idx(hw);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t x, int64_t y) {
      return sort_keys[b * hw + x] < sort_keys[b * hw + y];
    });
    for (int64_t p = 0; p < hw; ++p) {
      perm[b * hw + p] = idx[p];
      sorted[b * hw + p] = sort_keys[b * hw + idx[p]];
    }
  }
  Device<int64_t> d_sorted(sorted), d_perm(perm);
  CUDA_OK(pc::sampling_select(d_sorted.ptr, d_perm.ptr, d_ws.ptr, shape, d_idx.ptr,
                              d_out_lab.ptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  if (d_idx.to_host() != want_idx) fail("sampled indices");
  if (d_out_lab.to_host() != want_lab) fail("sampled labels");
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937_64 host_rng(std::random_device{}());
  host_helpers(host_rng);
  if (g_failures) return finish("test_sampling_cuda (host helpers)", 0);
  const uint64_t seed = seed_or_skip("test_sampling_cuda", argc, argv);
  std::mt19937_64 rng(seed);
  // images, hw, max_samples, max_views, ignore_index
  const int64_t cases[][5] = {
      {3, 156, 64, 10, 255},      // V = max_samples // T
      {4, 99, 1000, 8, -1},       // V capped by max_views
      {2, 256, 5, 6, 255},        // T > max_samples: a subset of pairs, V = 1
      {5, 35, 3, 2, -1},          // tiny max_views
      {1, 340, 1, 30, 255},       // max_samples = 1
      {2, 100, 37, 1, -1},        // max_views = 1
      {8, 4096, 1024, 100, 255},  // several passes of the CTA
  };
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (const auto& c : cases) {
      sampling_case(rng, c[0], c[1], c[2], c[3], c[4], /*wide_labels=*/repeat == 2);
    }
  }
  // Empty inputs launch nothing and succeed, even with null pointers.
  CUDA_OK(pc::sampling_histogram(nullptr, nullptr, nullptr, pc::SamplingShape{0, 5, 1, 1, -1},
                                 nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  return finish("test_sampling_cuda", seed);
}
