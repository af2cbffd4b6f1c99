// The SIMD levels a test runs the fast paths on (the library's internals: tests with src/ on their path).
#pragma once

#include <vector>

#include "cpu/attention_fused.h"

namespace attn::test {
// The SIMD levels this machine runs, lowest first: the fast paths are tested on each.
inline std::vector<detail::SimdLevel> simd_levels() {
  std::vector<detail::SimdLevel> out;
  for (auto l : {detail::SimdLevel::kScalar, detail::SimdLevel::kAvx2, detail::SimdLevel::kAvx512})
    if (static_cast<int>(l) <= static_cast<int>(detail::simd_level_supported())) out.push_back(l);
  return out;
}

// Forces a SIMD level for its scope.
class SimdGuard {
 public:
  explicit SimdGuard(detail::SimdLevel level) : saved_(detail::simd_level_active()) { detail::force_simd_level(level); }
  ~SimdGuard() { detail::force_simd_level(saved_); }
  SimdGuard(const SimdGuard&) = delete;
  SimdGuard& operator=(const SimdGuard&) = delete;

 private:
  detail::SimdLevel saved_;
};

}  // namespace attn::test
