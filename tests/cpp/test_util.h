// Shared by the framework-free CUDA kernel tests of tests/cpp/ (header only: CMake builds
// every tests/cpp/*.cu as its own test program).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace pixcontrast_test {

inline int g_failures = 0;

#define CUDA_OK(expr)                                                                   \
  do {                                                                                  \
    cudaError_t err_ = (expr);                                                          \
    if (err_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,         \
                   cudaGetErrorString(err_));                                           \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

inline void fail(const char* what) {
  std::fprintf(stderr, "MISMATCH: %s\n", what);
  ++g_failures;
}
// A device copy of a host vector, freed at scope exit.
template <typename T>
struct Device {
  T* ptr = nullptr;
  size_t count = 0;
  explicit Device(const std::vector<T>& host) : count(host.size()) {
    CUDA_OK(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(T)));
    if (count) {
      CUDA_OK(cudaMemcpy(ptr, host.data(), count * sizeof(T), cudaMemcpyHostToDevice));
    }
  }
  ~Device() { cudaFree(ptr); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  std::vector<T> to_host() const {
    std::vector<T> host(count);
    if (count) {
      CUDA_OK(cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return host;
  }
};

// bool vectors are bit-packed in std::vector<bool>: store them as uint8 (same bytes as
// the launchers' bool) and hand the pointer over as bool*.
using Flags = std::vector<uint8_t>;
inline const bool* as_bool(const Device<uint8_t>& d) { return reinterpret_cast<const bool*>(d.ptr); }


// The start of every test program: exit 77 (CTest's skip) without a CUDA device, else a
// generator seeded from argv[1] or at random, the seed printed to reproduce a failure.
inline uint64_t seed_or_skip(const char* name, int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("%s: no CUDA device, skipping\n", name);
    std::exit(77);
  }
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : std::random_device{}();
  std::printf("%s: seed %llu\n", name, static_cast<unsigned long long>(seed));
  return seed;
}

// The end of every test program: 0 when nothing mismatched, else 1 with the seed.
inline int finish(const char* name, uint64_t seed) {
  if (g_failures) {
    std::fprintf(stderr, "%s: %d mismatch(es), seed %llu\n", name, g_failures,
                 static_cast<unsigned long long>(seed));
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

}  // namespace pixcontrast_test
