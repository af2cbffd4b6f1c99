// Internal: y = x·Wᵀ + b through BLAS, the projection every layer uses (PyTorch's nn.Linear layout).
#pragma once

#include <cstdint>

namespace attn::detail {

// y: [M, N] (rows ldy apart)   x: [M, K] (rows ldx apart)   w: [N, K]   b: [N] or nullptr
void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, const float* b, int64_t M,
                    int64_t N, int64_t K);

// A per-thread scratch buffer that only grows: slot s holds at least n floats, reused across calls and
// layers so the hot path touches no fresh pages.
float* scratch(int slot, int64_t n);

}  // namespace attn::detail
