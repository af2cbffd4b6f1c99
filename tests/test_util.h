// Helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "attn/tensor.h"

namespace attn::test {

inline std::string fixture(const std::string& name) { return std::string(ATTN_FIXTURE_DIR) + "/" + name; }

inline Tensor random_tensor(Shape shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(std::move(shape));
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
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

inline bool all_finite(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.f32()[i])) return false;
  return true;
}

}  // namespace attn::test
