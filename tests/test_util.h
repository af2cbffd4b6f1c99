// Helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "attn/tensor.h"

namespace attn::test {

// A path of this process's own under the temp directory, whatever an aborted run left there removed (not created):
// two test runs at once (two build trees) never share it.
inline std::filesystem::path fresh_temp_path(const std::string& name) {
  const auto path = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(path);
  return path;
}

// appended in place: GCC 12's -Warray-bounds misreads the inlined temporary of `std::string(dir) + "/" + name`
inline std::string fixture(const std::string& name) {
  std::string path = ATTN_FIXTURE_DIR;
  path += '/';
  path += name;
  return path;
}

// Under AddressSanitizer (scripts/sanitize.sh) every operation costs several times as much, and that run is there to
// check memory, which needs every path and option reached, not volume: the heaviest tests take fewer random cases and
// sentences there (their structured cases, every option and target, all stay). ATTN_TEST_VOLUME=small asks for the
// same in any build, to check the smaller counts' thresholds.
inline bool small_test_volume() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return true;
#endif
#endif
  const char* v = std::getenv("ATTN_TEST_VOLUME");
  return v != nullptr && std::string(v) == "small";
}
// `full` in the normal runs, `small` under the sanitizers.
inline int test_volume(int full, int small) { return small_test_volume() ? small : full; }
// Under the sanitizers a test that runs each case through many configurations (SIMD targets, thread counts, forced
// tiles) runs case `case_index` through every `stride`-th of them, from an offset hashed from the case: each case some,
// each configuration ~1/stride of the cases, and no pairing of a configuration with the case list's periodic
// structure (its blocks vary options in periods of 2 and 3, which an offset of case_index itself followed). Every
// configuration in a normal run.
inline bool config_sampled(size_t case_index, size_t config_index, size_t stride) {
  if (!small_test_volume() || stride <= 1) return true;
  uint64_t h = case_index + 0x9E3779B97F4A7C15ull;  // splitmix64's finaliser
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  h ^= h >> 31;
  return (h + config_index) % stride == 0;
}

inline Tensor random_tensor(Shape shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(std::move(shape));
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

// q [1, 1, Lq, 8], k and v [1, 1, Lk, 8] whose scores (scale 1) rise and fall across 128-key tiles by less and by
// more than the kernels' lazy-rescaling threshold (a row keeps its max while its scores stay within 8 of it in
// base 2, its weights ≤ 2^8): score(i, j) ≈ a_i · t_j, t_j = 12 · (j / 128) + 0.03 · (j % 128), a_i from −1 to 1
// (rising, falling, flat rows). Lk = 597 ends on a partial vector on every target.
struct QKV {
  Tensor q, k, v;
};
inline QKV row_maxima_across_tiles(int64_t Lq = 33, int64_t Lk = 597) {
  const int64_t D = 8;
  std::mt19937 rng(17);
  QKV x{random_tensor({1, 1, Lq, D}, rng), random_tensor({1, 1, Lk, D}, rng), random_tensor({1, 1, Lk, D}, rng)};
  for (int64_t i = 0; i < Lq; ++i)
    x.q.f32()[i * D] = -1.0f + 2.0f * static_cast<float>(i) / std::max<int64_t>(Lq - 1, 1);
  for (int64_t j = 0; j < Lk; ++j) x.k.f32()[j * D] = 12.0f * static_cast<float>(j / 128) + 0.03f * (j % 128);
  return x;
}

inline Tensor random_bool(Shape shape, std::mt19937& rng, double p_true) {
  Tensor t(std::move(shape), DType::kBool);
  std::bernoulli_distribution dist(p_true);
  for (int64_t i = 0; i < t.numel(); ++i) t.b8()[i] = dist(rng) ? 1 : 0;
  return t;
}

// max |a − b|; +inf if a shape differs or a value is NaN.
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  double m = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(a.f32()[i]) - b.f32()[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// The largest |element| of a float32 tensor.
inline double max_abs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(static_cast<double>(t.f32()[i])));
  return m;
}

inline bool all_finite(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.f32()[i])) return false;
  return true;
}

}  // namespace attn::test
