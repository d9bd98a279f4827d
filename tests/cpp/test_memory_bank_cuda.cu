// Framework-free test of the CUDA memory-bank kernels (csrc/cuda/memory_bank.h) against CPU
// computations written here: the write (kept entries copied bit for bit, everything else
// untouched) and the fused update (the rings' entries, labels and pointers against a plain
// loop over images and classes in double). The __host__ __device__ helpers are checked on
// the CPU first, on every machine.
//
// Links only cudart and the launchers' .cu files. Exit codes: 0 pass, 1 mismatch (with a
// message), 77 no CUDA device (CTest SKIP_RETURN_CODE). Random inputs with a fresh seed
// per run, printed; pass a seed as argv[1] to reproduce.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/memory_bank.h"
#include "test_util.h"

namespace {

using namespace pixcontrast_test;

// One bank-write case for element type T (compared as raw bytes).
template <typename T>
void bank_case(std::mt19937_64& rng, int64_t num_rows, int64_t dim, int64_t num_entries,
               const char* name) {
  const int64_t f_stride = dim + static_cast<int64_t>(rng() % 3);  // padded rows
  const int64_t v_stride = dim + static_cast<int64_t>(rng() % 3);
  auto random_bytes = [&](size_t count) {
    std::vector<T> out(count);
    auto* bytes = reinterpret_cast<unsigned char*>(out.data());
    for (size_t i = 0; i < count * sizeof(T); ++i) bytes[i] = static_cast<unsigned char>(rng());
    return out;
  };
  std::vector<T> features = random_bytes(static_cast<size_t>(num_rows * f_stride));
  std::vector<T> values = random_bytes(static_cast<size_t>(num_entries * v_stride));
  std::vector<int64_t> labels(num_rows, -1), rows(num_entries), entry_labels(num_entries);
  Flags keep(num_entries);
  // Kept entries go to distinct rows; dropped ones anywhere (often onto a kept row).
  std::vector<int64_t> perm(num_rows);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t e = 0; e < num_entries; ++e) {
    keep[e] = static_cast<uint8_t>(e < num_rows && rng() % 3 != 0);
    rows[e] = keep[e] ? perm[e] : static_cast<int64_t>(rng() % num_rows);
    entry_labels[e] = static_cast<int64_t>(rng() % 1000);
  }
  std::vector<T> want = features;
  std::vector<int64_t> want_labels = labels;
  for (int64_t e = 0; e < num_entries; ++e) {
    if (!keep[e]) continue;
    std::memcpy(&want[rows[e] * f_stride], &values[e * v_stride], dim * sizeof(T));
    want_labels[rows[e]] = entry_labels[e];
  }
  Device<T> d_features(features), d_values(values);
  Device<int64_t> d_labels(labels), d_rows(rows), d_entry_labels(entry_labels);
  Device<uint8_t> d_keep(keep);
  CUDA_OK(pixcontrast::cuda::bank_write<T>(d_features.ptr, f_stride, d_labels.ptr, num_rows,
                                           d_values.ptr, v_stride, d_rows.ptr, as_bool(d_keep),
                                           d_entry_labels.ptr, num_entries, dim, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<T> got = d_features.to_host();
  if (std::memcmp(got.data(), want.data(), want.size() * sizeof(T)) != 0) {
    std::fprintf(stderr, "bank_write<%s> rows=%lld dim=%lld entries=%lld\n", name,
                 static_cast<long long>(num_rows), static_cast<long long>(dim),
                 static_cast<long long>(num_entries));
    fail("bank_write features (kept rows copied bit for bit, everything else untouched)");
  }
  if (d_labels.to_host() != want_labels) fail("bank_write labels");
}

namespace pc = pixcontrast::cuda;

void host_helpers() {
  // A ring of 5 rows; 7 entries this update: the first 2 are pushed out.
  if (pc::bank_entry_kept(1, 7, 5) || !pc::bank_entry_kept(2, 7, 5)) fail("bank_entry_kept");
  if (pc::bank_entry_row(3, 1, 4, 2, 5) != (2 * 3 + 1) * 5 + 1) fail("bank_entry_row wraps");
  const int64_t key = (int64_t{1} << 40) - 1, pixel = (int64_t{1} << 23) - 1;
  if (pc::bank_candidate_pixel(pc::bank_candidate(key, pixel)) != pixel ||
      pc::bank_candidate(key, pixel) < 0) {
    fail("bank_candidate packs 40 + 23 bits");
  }
  if (!(pc::bank_candidate(5, 9) < pc::bank_candidate(6, 0) &&
        pc::bank_candidate(5, 1) < pc::bank_candidate(5, 2))) {
    fail("candidates order by (key, pixel)");
  }
}

// The fused update (fp32) against a loop: per image in order, per class present, the mean
// (normalised) and the ppu pixels of lowest (key, pixel), normalised, pushed into rings.
void update_case(std::mt19937_64& rng, int64_t images, int64_t hw, int64_t dim, int64_t k,
                 int64_t size, int64_t ppu) {
  std::normal_distribution<float> normal(0.5f, 1.0f);
  std::vector<float> x(images * dim * hw);
  for (auto& v : x) v = normal(rng);
  std::vector<int64_t> y(images * hw), keys(images * hw);
  for (int64_t i = 0; i < images * hw; ++i) {
    const uint64_t r = rng() % 100;
    y[i] = r < 5 ? -1
                 : (r < 8 ? k + 2 : (r < 9 ? k - 1 : static_cast<int64_t>(rng() % (k - 1))));
    keys[i] = static_cast<int64_t>(rng() >> 24);
  }
  std::vector<float> feat(k * 2 * size * dim, 0.f);
  std::vector<int64_t> lab(k * 2 * size, -1), ptr(k * 2);
  for (auto& p : ptr) p = static_cast<int64_t>(rng() % size);
  std::vector<float> want = feat;
  std::vector<int64_t> want_lab = lab, want_ptr = ptr;
  auto push = [&](int64_t c, int q, const std::vector<double>& v) {
    const int64_t row = (2 * c + q) * size + want_ptr[2 * c + q];
    double n2 = 0;
    for (double e : v) n2 += e * e;
    const double inv = 1.0 / std::max(std::sqrt(n2), 1e-12);
    for (int64_t d = 0; d < dim; ++d) want[row * dim + d] = static_cast<float>(v[d] * inv);
    want_lab[row] = c;
    want_ptr[2 * c + q] = (want_ptr[2 * c + q] + 1) % size;
  };
  for (int64_t b = 0; b < images; ++b) {
    for (int64_t c = 0; c < k; ++c) {
      std::vector<std::pair<int64_t, int64_t>> members;
      std::vector<double> mean(dim, 0.0);
      for (int64_t p = 0; p < hw; ++p) {
        if (y[b * hw + p] != c) continue;
        members.push_back({keys[b * hw + p], p});
        for (int64_t d = 0; d < dim; ++d) mean[d] += x[(b * dim + d) * hw + p];
      }
      if (members.empty()) continue;
      for (auto& m : mean) m /= static_cast<double>(members.size());
      push(c, 0, mean);
      std::sort(members.begin(), members.end());
      for (int64_t j = 0; j < std::min<int64_t>(ppu, members.size()); ++j) {
        std::vector<double> v(dim);
        for (int64_t d = 0; d < dim; ++d) v[d] = x[(b * dim + d) * hw + members[j].second];
        push(c, 1, v);
      }
    }
  }
  const pc::BankShape shape{images, dim, hw, k, size, ppu};
  Device<float> d_x(x), d_feat(feat);
  Device<int64_t> d_y(y), d_keys(keys), d_lab(lab), d_ptr(ptr);
  Device<int32_t> d_counters(std::vector<int32_t>(images + 1, 0));
  Device<int32_t> d_ok(std::vector<int32_t>{7});
  Device<uint8_t> d_ws(std::vector<uint8_t>(pc::bank_update_workspace(shape, false), 0xAB));
  const cudaError_t err = pc::bank_update<float, float>(
      d_x.ptr, dim * hw, hw, 1, d_y.ptr, d_keys.ptr, shape, d_feat.ptr, d_lab.ptr, d_ptr.ptr,
      d_counters.ptr, d_ws.ptr, d_ok.ptr, nullptr);
  CUDA_OK(err);
  CUDA_OK(cudaDeviceSynchronize());
  if (d_ok.to_host()[0] != 1) fail("bank_update: ok");
  if (d_counters.to_host() != std::vector<int32_t>(images + 1, 0)) fail("counters left at 0");
  if (d_ptr.to_host() != want_ptr) fail("bank_update pointers");
  if (d_lab.to_host() != want_lab) fail("bank_update labels");
  const std::vector<float> got = d_feat.to_host();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::fabs(got[i] - want[i]) > 2e-5f) {
      fail("bank_update features (normalised means and picks, 2e-5)");
      break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  host_helpers();
  if (g_failures) return finish("test_memory_bank_cuda (host helpers)", 0);
  const uint64_t seed = seed_or_skip("test_memory_bank_cuda", argc, argv);
  std::mt19937_64 rng(seed);
  for (int64_t dim : {1, 7, 128, 300}) {
    bank_case<float>(rng, 50, dim, 40, "float");
    bank_case<double>(rng, 13, dim, 30, "double");
    bank_case<__half>(rng, 64, dim, 64, "half");
    bank_case<__nv_bfloat16>(rng, 90, dim, 200, "bfloat16");
  }
  // images, hw (several CTAs when > 2048), D, K, ring size (small: entries pushed out), ppu
  const int64_t updates[][6] = {{3, 100, 7, 5, 50, 3}, {2, 5000, 33, 19, 8, 10},
                                {4, 2048, 300, 4, 1000, 2}};
  for (const auto& u : updates) update_case(rng, u[0], u[1], u[2], u[3], u[4], u[5]);
  // Empty inputs launch nothing and succeed, even with null pointers.
  CUDA_OK(pixcontrast::cuda::bank_write<float>(nullptr, 4, nullptr, 10, nullptr, 4, nullptr,
                                               nullptr, nullptr, 0, 4, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  return finish("test_memory_bank_cuda", seed);
}
