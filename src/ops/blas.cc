// Which OpenBLAS kernels run (attn/blas.h).
#include "attn/blas.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "attn/error.h"
#include "cpu/attention_fused.h"
#include "ops/blas_call.h"

namespace attn {

std::string blas_kernels() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "";
}

bool blas_kernels_match_cpu() {
  if (detail::simd_level_active() != detail::SimdLevel::kAvx512) return true;
  std::string name = blas_kernels();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  // OpenBLAS 0.3.21's AVX-512 families on x86-64 (Sapphire Rapids adds AMX bf16 kernels to Cooper Lake's)
  return name == "skylakex" || name == "cooperlake" || name == "sapphirerapids";
}

}  // namespace attn

namespace attn::detail {

void blas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                int64_t ldc, const char* who) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (std::max({M, N, K, lda, ldb, ldc}) > kMax)
    throw ShapeError(std::string(who) + ": a GEMM of [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
                     std::to_string(K) + ", " + std::to_string(N) + "] (leading dimensions " + std::to_string(lda) +
                     ", " + std::to_string(ldb) + ", " + std::to_string(ldc) +
                     "): OpenBLAS takes sizes up to 2^31 - 1");
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  // Fewer rows than OpenBLAS's micro-kernel holds (4 on Haswell/Zen, 1–3 of them wasted) run as one matrix-vector
  // product per row: OpenBLAS 0.3.21 packs the whole of op(B) for every GEMM call, so one row ran at 6 GFLOP/s against
  // sgemv's 28–36 (N 128–2048, K 128–512, 1 thread, Zen 3): one sentence's decoding step. Two or three rows only while
  // op(B) stays in cache (each sgemv reads all of it: at most 16 MB, half of a Zen 3's L3); one row always.
  // Not for K = 0 (sgemv returns without applying beta) nor for leading dimensions sgemm would refuse (sgemv reads
  // strided rows without that check); C's row is zeroed first where beta = 0, which OpenBLAS builds since 0.3.27
  // pass to a scaling that keeps a NaN in y.
  constexpr int64_t kGemvCachedFloats = int64_t{4} << 20;
  const bool by_rows = order == CblasRowMajor && M < kBlasGemvRows && N > 0 && K > 0 &&
                       (M == 1 || N * K <= kGemvCachedFloats) && lda >= (trans_a == CblasNoTrans ? K : M) &&
                       ldb >= (trans_b == CblasNoTrans ? N : K) && ldc >= N;
  const auto call = [&] {
    if (!by_rows) {
      cblas_sgemm(order, trans_a, trans_b, i(M), i(N), i(K), alpha, a, i(lda), b, i(ldb), beta, c, i(ldc));
      return;
    }
    for (int64_t m = 0; m < M; ++m) {
      if (beta == 0.0f) std::fill(c + m * ldc, c + m * ldc + N, 0.0f);
      // row m of op(A): a row of A, or a column of a stored transposed
      const float* x = trans_a == CblasNoTrans ? a + m * lda : a + m;
      const int incx = trans_a == CblasNoTrans ? 1 : i(lda);
      if (trans_b == CblasNoTrans)  // B: [K, N], c_m = Bᵀ·x
        cblas_sgemv(CblasRowMajor, CblasTrans, i(K), i(N), alpha, b, i(ldb), x, incx, beta, c + m * ldc, 1);
      else  // B: [N, K], c_m = B·x
        cblas_sgemv(CblasRowMajor, CblasNoTrans, i(N), i(K), alpha, b, i(ldb), x, incx, beta, c + m * ldc, 1);
    }
  };
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads <= 1) return call();
  static std::shared_mutex count_in_force;  // (ops/blas_call.h)
  {
    const std::shared_lock lock(count_in_force);
    if (openblas_get_num_threads() == threads) return call();
  }
  const std::unique_lock lock(count_in_force);
  call();
}

}  // namespace attn::detail
