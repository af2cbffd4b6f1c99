// The float32 linear map of every forward pass, y = x·Wᵀ + b (ops/nn.h), through OpenBLAS's SGEMM (nn.Linear's
// layout: W is [N, K]), with the epilogue folded into the passes a BLAS call needs anyway: y starts as the bias
// (or y + bias when accumulating a residual) and the GEMM adds the product into it (beta = 1); ReLU is one pass
// over y while it is still in cache.
//
// Why not oneDNN's f32 matmul, which fuses all of this into the GEMM's store and measured 7-10% faster on the
// translation model's shapes: with the row count given at run time (decoding changes it every few steps) oneDNN
// 2.6 (Debian's) runs its generated f32 GEMM kernels, which point rsp into the heap while they run, so a signal
// delivered meanwhile (a profiler's SIGPROF, any handler) corrupts the heap (oneDNN issue #4845, fixed upstream
// in 2026 by PR #4855). A fixed row count selects brgemm kernels, which are safe, but a primitive per row count
// costs 0.2-0.7 ms to create. tests/task_test.cc translates with a profiling timer's signals arriving to keep this
// honest.
#include <algorithm>

#include "attn/error.h"
#include "ops/blas_call.h"
#include "ops/clones.h"
#include "ops/nn.h"

namespace attn::ops {

ATTN_VECTOR_CLONES void linear_prologue(float* y, int64_t ldy, const float* b, int64_t M, int64_t N, bool accumulate) {
  for (int64_t i = 0; i < M; ++i) {
    float* row = y + i * ldy;
    if (accumulate) {
      if (b) {
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) row[n] += b[n];
      }
    } else if (b) {
      std::copy(b, b + N, row);
    } else {
      std::fill(row, row + N, 0.0f);
    }
  }
}

ATTN_VECTOR_CLONES void relu_rows(float* y, int64_t ldy, int64_t M, int64_t N) {
  for (int64_t i = 0; i < M; ++i) {
    float* row = y + i * ldy;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) row[n] = row[n] > 0.0f ? row[n] : 0.0f;
  }
}

void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, const float* b, int64_t M,
                    int64_t N, int64_t K, LinearEpilogue epilogue) {
  if (epilogue.relu && epilogue.accumulate)
    throw ArgumentError("linear_forward: a ReLU epilogue does not accumulate (relu(x·Wᵀ + b) + y is not needed)");
  if (M == 0 || N == 0) return;
  linear_prologue(y, ldy, b, M, N, epilogue.accumulate);  // y = b (or y + b), then y += x·Wᵀ
  if (K > 0)
    detail::blas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, ldx, w, K, 1.0f, y, ldy,
                       "linear_forward");
  if (epilogue.relu) relu_rows(y, ldy, M, N);
}

void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K,
                    LinearEpilogue epilogue) {
  linear_forward(y, N, x, K, w, b, M, N, K, epilogue);
}

}  // namespace attn::ops
