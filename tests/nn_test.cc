// The neural-net primitives of ops/nn.h that have no PyTorch fixture: the int8 projection against the
// float64 product (its error is bounded by the quantisation steps of x and W, from the math).
#include <cmath>
#include <random>

#include "attn/attention.h"
#include "attn/error.h"
#include "ops/nn.h"
#include "test_util.h"

namespace attn {
namespace {

TEST(Nn, Int8LinearIsWithinItsQuantisationError) {
  std::mt19937 rng(3);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 19, 33}, {64, 128, 128}, {3, 384, 256}}) {
    SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
    const Tensor x = test::random_tensor({M, K}, rng, -2.0f, 2.0f), w = test::random_tensor({N, K}, rng, -0.3f, 0.3f);
    const Tensor b = test::random_tensor({N}, rng);
    Tensor xz = x.clone();
    for (int64_t k = 0; k < K; ++k) xz.f32()[k] = 0.0f;  // an all-zero row gives exactly the bias
    const ops::QuantizedMatrix q = ops::quantize_rows(w.f32(), N, K);
    for (int64_t i = 0; i < N * K; ++i)  // each weight within half a step of its row's scale
      ASSERT_LE(std::fabs(q.scale[static_cast<size_t>(i / K)] * q.q[static_cast<size_t>(i)] - w.f32()[i]),
                0.5001f * q.scale[static_cast<size_t>(i / K)]);
    Tensor y({M, N});
    ops::linear_forward_int8(y.f32(), xz.f32(), q, b.f32(), M);
    for (int64_t n = 0; n < N; ++n) EXPECT_EQ(y.f32()[n], b.f32()[n]);
    for (int64_t m = 1; m < M; ++m) {
      double xmax = 0.0;
      for (int64_t k = 0; k < K; ++k) xmax = std::max(xmax, std::fabs(static_cast<double>(x.f32()[m * K + k])));
      for (int64_t n = 0; n < N; ++n) {
        double exact = b.f32()[n], bound = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          const double xv = x.f32()[m * K + k], wv = w.f32()[n * K + k];
          exact += xv * wv;
          // |x·w − x̂·ŵ| ≤ |x|·|w − ŵ| + |ŵ|·|x − x̂|, each error at most half a step
          bound += std::fabs(xv) * 0.5 * q.scale[static_cast<size_t>(n)] +
                   (std::fabs(wv) + 0.5 * q.scale[static_cast<size_t>(n)]) * 0.5 * xmax / 127.0;
        }
        ASSERT_LE(std::fabs(y.f32()[m * N + n] - exact), bound * 1.001 + 1e-5) << m << ", " << n;
      }
    }
  }
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// attn bench peak's measurement: positive, larger with more threads only up to the cores, bad input rejected.
TEST(Nn, FmaPeakIsMeasured) {
  const double one = measure_fma_peak(1, 0.02);
  EXPECT_GT(one, 0.5);  // GFLOP/s: even the portable target does better
  EXPECT_THROW(measure_fma_peak(-1, 0.02), ArgumentError);
  EXPECT_THROW(measure_fma_peak(1, 0.0), ArgumentError);
}

}  // namespace
}  // namespace attn
