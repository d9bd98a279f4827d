// Framework-free test of the CUDA memory-bank write (csrc/cuda/memory_bank.h) against a
// CPU computation written here: kept entries copied bit for bit, everything else untouched.
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

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = seed_or_skip("test_memory_bank_cuda", argc, argv);
  std::mt19937_64 rng(seed);
  for (int64_t dim : {1, 7, 128, 300}) {
    bank_case<float>(rng, 50, dim, 40, "float");
    bank_case<double>(rng, 13, dim, 30, "double");
    bank_case<__half>(rng, 64, dim, 64, "half");
    bank_case<__nv_bfloat16>(rng, 90, dim, 200, "bfloat16");
  }
  // Empty inputs launch nothing and succeed, even with null pointers.
  CUDA_OK(pixcontrast::cuda::bank_write<float>(nullptr, 4, nullptr, 10, nullptr, 4, nullptr,
                                               nullptr, nullptr, 0, 4, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  return finish("test_memory_bank_cuda", seed);
}
