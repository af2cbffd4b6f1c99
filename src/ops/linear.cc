#include "ops/linear.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <vector>

namespace attn::detail {

void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, const float* b, int64_t M,
                    int64_t N, int64_t K) {
  if (M == 0 || N == 0) return;
  // y = b (broadcast over rows), then y += x·Wᵀ
  for (int64_t i = 0; i < M; ++i) {
    float* row = y + i * ldy;
    if (b) std::copy(b, b + N, row);
    else std::fill(row, row + N, 0.0f);
  }
  if (K == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.0f,
              x, static_cast<int>(ldx), w, static_cast<int>(K), 1.0f, y, static_cast<int>(ldy));
}

float* scratch(int slot, int64_t n) {
  thread_local std::array<std::vector<float>, 8> buffers;
  std::vector<float>& b = buffers.at(static_cast<size_t>(slot));
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

}  // namespace attn::detail
