// The neural-net primitives of ops/nn.h that have no PyTorch fixture: the int8 projection against the
// float64 product (its error is bounded by the quantisation steps of x and W, from the math); the training ops
// threaded and vectorised give the same bits at any thread count (and the plain loops' bits where the arithmetic
// is the same); the counter-based dropout mask.
#include <omp.h>

#include <atomic>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attn/attention.h"
#include "attn/blas.h"
#include "attn/error.h"
#include "attn/half.h"
#include "cpu/attention_fused.h"
#include "ops/blas_call.h"
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

// The int8 projection's integer sums are exact: against the levels recomputed here by the documented rule (x / (max|x|
// / 127) rounded half away from zero; W's levels as quantize_rows stored them) and their dot products in int64. The
// rows hold the extreme levels side by side (±127 activations against weights of the largest level, of both signs):
// where oneDNN's kernels pair u8·s8 products in int16 (below VNNI) a saturated pair or a wrong u8 shift shows here.
TEST(Nn, Int8LinearSumsTheLevelsExactly) {
  std::mt19937 rng(11);
  const int64_t M = 9, N = 23, K = 70;
  Tensor x = test::random_tensor({M, K}, rng, -1.0f, 1.0f), w = test::random_tensor({N, K}, rng, -0.5f, 0.5f);
  for (int64_t k = 0; k < K; ++k) {
    x.f32()[0 * K + k] = 1.0f;                  // every level +127 (u8 255)
    x.f32()[1 * K + k] = -1.0f;                 // every level −127 (u8 1)
    x.f32()[2 * K + k] = k % 2 ? 1.0f : -1.0f;  // alternating
    w.f32()[0 * K + k] = 0.5f;                  // every weight its row's largest level
    w.f32()[1 * K + k] = -0.5f;
    w.f32()[2 * K + k] = k % 4 < 2 ? 0.5f : -0.5f;  // pairs of equal sign
  }
  const ops::QuantizedMatrix q = ops::quantize_rows(w.f32(), N, K);
  Tensor y({M, N});
  ops::linear_forward_int8(y.f32(), x.f32(), q, nullptr, M);
  for (int64_t m = 0; m < M; ++m) {
    float xmax = 0.0f;
    for (int64_t k = 0; k < K; ++k) xmax = std::max(xmax, std::fabs(x.f32()[m * K + k]));
    const float xs = xmax / 127.0f, inv = 1.0f / xs;  // (x · (1 / scale), as documented: x / scale may differ by an
    for (int64_t n = 0; n < N; ++n) {                 // ulp, and a tie then round the other way)
      int64_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float v = x.f32()[m * K + k] * inv;
        const int64_t level = static_cast<int64_t>(v + (v >= 0.0f ? 0.5f : -0.5f));
        ASSERT_LE(std::abs(level), 127);
        sum += level * q.q[static_cast<size_t>(n * K + k)];
      }
      const double expected = static_cast<double>(xs) * q.scale[static_cast<size_t>(n)] * static_cast<double>(sum);
      ASSERT_NEAR(y.f32()[m * N + n], expected, 2e-6 * std::fabs(expected) + 1e-30) << m << ", " << n << ", " << sum;
    }
  }
}

// Non-finite values through the int8 projection, as through float32's: a NaN or an infinity in a row of x makes that
// row NaN (a NaN had been read as 0 and the row come out finite), a NaN weight its output column, and nothing else
// changes; a row of subnormals keeps a normal scale (it had divided by a scale of 0).
TEST(Nn, Int8LinearCarriesNonFiniteValuesAsFloat32) {
  std::mt19937 rng(5);
  const int64_t M = 4, N = 6, K = 33;
  Tensor x = test::random_tensor({M, K}, rng), w = test::random_tensor({N, K}, rng, -0.3f, 0.3f);
  const Tensor b = test::random_tensor({N}, rng);
  x.f32()[1 * K + 5] = std::nanf("");
  x.f32()[2 * K + 7] = INFINITY;
  for (int64_t k = 0; k < K; ++k) x.f32()[3 * K + k] = 1e-40f * static_cast<float>(k % 3);
  w.f32()[4 * K + 2] = std::nanf("");
  const ops::QuantizedMatrix q = ops::quantize_rows(w.f32(), N, K);
  Tensor y({M, N});
  ops::linear_forward_int8(y.f32(), x.f32(), q, b.f32(), M);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const float got = y.f32()[m * N + n];
      if (m == 1 || m == 2 || n == 4) {
        EXPECT_TRUE(std::isnan(got)) << m << ", " << n;
      } else if (m == 3) {
        EXPECT_NEAR(got, b.f32()[n], 1e-6) << n;  // (x · w ≈ 1e-39)
      } else {
        EXPECT_TRUE(std::isfinite(got)) << m << ", " << n;
      }
    }
}

// Expects y [M, N] to be the linear map of x [M, K] and w [N, K] (each element read through round, e.g. to
// bfloat16) with bias b and the epilogue (y0: y before, for accumulate), within float32's rounding of its sums.
template <class Round>
void expect_linear(const Tensor& y, const Tensor& y0, const Tensor& x, const Tensor& w, const Tensor& b,
                   ops::LinearEpilogue epilogue, Round round) {
  const int64_t M = x.dim(0), K = x.dim(1), N = w.dim(0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double exact = b.f32()[n] + (epilogue.accumulate ? y0.f32()[m * N + n] : 0.0), scale = std::fabs(exact);
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(round(x.f32()[m * K + k])) * round(w.f32()[n * K + k]);
        exact += p, scale += std::fabs(p);
      }
      if (epilogue.relu) exact = std::max(exact, 0.0);
      ASSERT_NEAR(y.f32()[m * N + n], exact, scale * (K + 2) * 6e-8 + 1e-30) << m << ", " << n;
    }
}

// The float32 small-GEMM form (Quantization::kFloat32: libxsmm's kernels, Wᵀ made on first use): within
// float32's rounding of the float64 product, for row counts below the kernels' threshold (OpenBLAS), one block,
// blocks and a remainder, every epilogue, 1 and 2 threads. A matrix too large for L2 gets none.
TEST(Nn, SmallGemmLinearMatchesTheFloat64Product) {
  std::mt19937 rng(5);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{3, 384, 128},
                         {5, 128, 256},
                         {8, 19, 128},
                         {9, 7, 33},
                         {31, 384, 128},
                         {37, 128, 256},
                         {64, 384, 128},
                         {70, 17, 5},
                         {256, 16, 16}}) {
    const Tensor x = test::random_tensor({M, K}, rng, -2.0f, 2.0f), w = test::random_tensor({N, K}, rng, -0.3f, 0.3f);
    const Tensor b = test::random_tensor({N}, rng), y0 = test::random_tensor({M, N}, rng);
    const ops::QuantizedMatrix small = ops::small_gemm_weights(w.f32(), N, K);
    ASSERT_EQ(small.N, N);
    for (int threads : {1, 2})
      for (int e = 0; e < 3; ++e) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) + " epilogue " +
                     std::to_string(e) + " threads " + std::to_string(threads));
        const ops::LinearEpilogue epilogue{.relu = e == 1, .accumulate = e == 2};
        Tensor y = y0.clone();
        omp_set_num_threads(threads);
        ops::linear_forward_small(y.f32(), x.f32(), small, b.f32(), M, epilogue);
        omp_set_num_threads(omp_get_num_procs());
        expect_linear(y, y0, x, w, b, epilogue, [](float v) { return v; });
      }
  }
  EXPECT_EQ(ops::small_gemm_weights(test::random_tensor({512, 512}, rng).f32(), 512, 512).N, 0);
}

// bfloat16 projections (Quantization::kBFloat16): oneDNN's matmul, and libxsmm's AVX512_BF16 kernels from 8 rows
// where the processor has them; both equal the float64 product of the bfloat16-rounded x and W to float32's
// rounding of the sums, for every epilogue.
TEST(Nn, Bf16LinearMatchesTheProductOfTheRoundedInputs) {
  std::mt19937 rng(7);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{3, 384, 128},
                         {8, 19, 128},
                         {37, 128, 256},
                         {64, 384, 128},
                         {70, 17, 6},
                         {9, 7, 33}}) {
    const Tensor x = test::random_tensor({M, K}, rng, -2.0f, 2.0f), w = test::random_tensor({N, K}, rng, -0.3f, 0.3f);
    const Tensor b = test::random_tensor({N}, rng), y0 = test::random_tensor({M, N}, rng);
    const ops::QuantizedMatrix q = ops::bf16_rows(w.f32(), N, K);
    for (int e = 0; e < 3; ++e) {
      SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) + " epilogue " +
                   std::to_string(e) + (q.small_bf16 ? " (libxsmm)" : ""));
      const ops::LinearEpilogue epilogue{.relu = e == 1, .accumulate = e == 2};
      Tensor y = y0.clone();
      ops::linear_forward_bf16(y.f32(), x.f32(), q, b.f32(), M, epilogue);
      expect_linear(y, y0, x, w, b, epilogue, [](float v) { return bf16_to_float(float_to_bf16(v)); });
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
  EXPECT_TRUE(std::isfinite(one) && one > 0.0) << one;  // GFLOP/s; how many is the benchmark's business, not a test's
  EXPECT_THROW(measure_fma_peak(-1, 0.02), ArgumentError);
  EXPECT_THROW(measure_fma_peak(1, 0.0), ArgumentError);
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// The training step's elementwise and row ops, run at 1, 2 and 3 threads on sizes above their parallel threshold:
// every output bit for bit the same, and equal to the plain loops they replaced where the arithmetic is the same.
struct TrainingOpsRun {
  std::vector<float> ln_dx, ln_dw, ln_db, db, act, dact, drop, keep_f, ddrop, ce_d;
  float loss = 0.0f;
  bool operator==(const TrainingOpsRun&) const = default;
};

TrainingOpsRun run_training_ops(int threads) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  const int64_t M = 300, C = 136, V = 37;  // C not a multiple of any vector width
  std::mt19937 rng(11);
  const Tensor x = test::random_tensor({M, C}, rng, -3.0f, 3.0f), dout = test::random_tensor({M, C}, rng);
  const Tensor w = test::random_tensor({C}, rng), b = test::random_tensor({C}, rng);
  const Tensor logits = test::random_tensor({M, V}, rng, -4.0f, 4.0f);
  std::vector<int32_t> targets(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) targets[static_cast<size_t>(i)] = i % 7 == 0 ? 0 : static_cast<int32_t>(i % V);
  TrainingOpsRun r;
  std::vector<float> y(static_cast<size_t>(M * C)), mean(static_cast<size_t>(M)), rstd(static_cast<size_t>(M));
  ops::layer_norm_forward(y.data(), mean.data(), rstd.data(), x.f32(), w.f32(), b.f32(), M, C);
  r.ln_dx.assign(static_cast<size_t>(M * C), 0.5f), r.ln_dw.assign(static_cast<size_t>(C), 0.25f);
  r.ln_db.assign(static_cast<size_t>(C), -0.25f);
  ops::layer_norm_backward(r.ln_dx.data(), r.ln_dw.data(), r.ln_db.data(), dout.f32(), x.f32(), w.f32(), mean.data(),
                           rstd.data(), M, C);
  // linear_backward's bias gradient (the GEMMs are OpenBLAS's)
  std::vector<float> dxl(static_cast<size_t>(M * 8), 0.0f), dwl(static_cast<size_t>(C * 8), 0.0f);
  r.db.assign(static_cast<size_t>(C), 1.0f);
  ops::linear_backward(dxl.data(), dwl.data(), r.db.data(), dout.f32(), x.f32(), x.f32(), M, C, 8);
  for (Activation a : {Activation::kRelu, Activation::kGelu}) {
    std::vector<float> o(static_cast<size_t>(M * C)), d(static_cast<size_t>(M * C), 0.125f);
    ops::activation_forward(o.data(), x.f32(), M * C, a);
    ops::activation_backward(d.data(), dout.f32(), x.f32(), M * C, a);
    r.act.insert(r.act.end(), o.begin(), o.end());
    r.dact.insert(r.dact.end(), d.begin(), d.end());
  }
  std::mt19937_64 drop_rng(5);
  std::vector<uint8_t> keep(static_cast<size_t>(M * C));
  r.drop.resize(static_cast<size_t>(M * C));
  ops::dropout_forward(r.drop.data(), keep.data(), x.f32(), M * C, 0.3f, drop_rng);
  r.keep_f.assign(keep.begin(), keep.end());
  r.ddrop.assign(static_cast<size_t>(M * C), 2.0f);
  ops::dropout_backward(r.ddrop.data(), dout.f32(), keep.data(), M * C, 0.3f);
  r.ce_d.resize(static_cast<size_t>(M * V));
  r.loss = ops::cross_entropy_forward_backward(r.ce_d.data(), logits.f32(), targets.data(), M, V, 0.1f, 0);
  omp_set_num_threads(saved);
  // the plain loops (the code before the ops were threaded and vectorised), where the arithmetic is unchanged
  {
    std::vector<float> dw(static_cast<size_t>(C), 0.25f), db(static_cast<size_t>(C), -0.25f);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (x.f32()[i * C + c] - mean[static_cast<size_t>(i)]) * rstd[static_cast<size_t>(i)];
        dw[static_cast<size_t>(c)] += dout.f32()[i * C + c] * xh;
        db[static_cast<size_t>(c)] += dout.f32()[i * C + c];
      }
    EXPECT_EQ(dw, r.ln_dw);
    EXPECT_EQ(db, r.ln_db);
    std::vector<float> dbl(static_cast<size_t>(C), 1.0f);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t c = 0; c < C; ++c) dbl[static_cast<size_t>(c)] += dout.f32()[i * C + c];
    EXPECT_EQ(dbl, r.db);
    int64_t bad = 0;
    for (int64_t i = 0; i < M * C; ++i) {
      const float xi = x.f32()[i], d = dout.f32()[i], s = 1.0f / 0.7f;
      const bool k = keep[static_cast<size_t>(i)];
      bad += r.act[static_cast<size_t>(i)] != (xi > 0.0f ? xi : 0.0f);
      bad += r.dact[static_cast<size_t>(i)] != 0.125f + (xi > 0.0f ? d : 0.0f);
      bad += r.drop[static_cast<size_t>(i)] != (k ? xi * s : 0.0f);
      bad += r.ddrop[static_cast<size_t>(i)] != 2.0f + (k ? d * s : 0.0f);
    }
    EXPECT_EQ(bad, 0) << "elements unlike the plain loops";
  }
  return r;
}

// The label-smoothed cross-entropy (float exponentials in vector lanes, sums in double) against its definition in
// double: loss = mean over counted rows of (1 − ε)(lse − z_y) + ε·mean_c(lse − z_c), dz = (softmax − (1 − ε)·onehot −
// ε/V) / n, each gradient entry within 1e-6 of the size of its terms ((p_c + ε/V + [c = y]) / n: float's rounding of
// the difference). A vocabulary of 32003 (no vector width divides it), logits spread over ±30, one ignored row, and a
// NaN logit whose row alone comes out NaN.
TEST(Nn, CrossEntropyMatchesItsDefinitionInDouble) {
  const int64_t M = 6, V = 32003;
  const double eps = 0.1;
  std::mt19937 rng(3);
  Tensor logits = test::random_tensor({M, V}, rng, -30.0f, 30.0f);
  std::vector<int32_t> targets = {5, 32002, -100, 0, 777, 9};
  logits.f32()[0] = 40.0f;  // row 0's target 5 far from its max
  std::vector<float> d(static_cast<size_t>(M * V), 7.0f);
  int64_t counted = 0;
  const float loss =
      ops::cross_entropy_forward_backward(d.data(), logits.f32(), targets.data(), M - 1, V, 0.1f, -100, &counted);
  ASSERT_EQ(counted, 4);
  double want_loss = 0.0, worst = 0.0;
  for (int64_t i = 0; i < M - 1; ++i) {
    const float* z = logits.f32() + i * V;
    const float* g = d.data() + i * V;
    if (targets[static_cast<size_t>(i)] == -100) {
      EXPECT_TRUE(std::all_of(g, g + V, [](float x) { return x == 0.0f; }));
      continue;
    }
    double m = -std::numeric_limits<double>::infinity(), s = 0.0, mean = 0.0;
    for (int64_t c = 0; c < V; ++c) m = std::max(m, static_cast<double>(z[c]));
    for (int64_t c = 0; c < V; ++c) s += std::exp(static_cast<double>(z[c]) - m);
    const double lse = m + std::log(s);
    for (int64_t c = 0; c < V; ++c) mean += (lse - z[c]) / static_cast<double>(V);
    const int32_t y = targets[static_cast<size_t>(i)];
    want_loss += (1.0 - eps) * (lse - z[y]) + eps * mean;
    for (int64_t c = 0; c < V; ++c) {
      const double p_c = std::exp(z[c] - lse), smooth = eps / static_cast<double>(V);
      const double want = (p_c - (c == y ? 1.0 - eps : 0.0) - smooth) / 4.0;
      worst = std::max(worst, std::fabs(g[c] - want) / ((p_c + smooth + (c == y ? 1.0 : 0.0)) / 4.0));
    }
  }
  EXPECT_NEAR(loss, want_loss / 4.0, 2e-6 * want_loss / 4.0);
  EXPECT_LT(worst, 1e-6) << "largest error of a gradient entry, relative to its terms";
  // a NaN logit: its row's loss and gradient are NaN, the other rows' gradients are untouched by it
  logits.f32()[4 * V + 100] = std::numeric_limits<float>::quiet_NaN();
  const float nan_loss =
      ops::cross_entropy_forward_backward(d.data(), logits.f32(), targets.data(), M - 1, V, 0.1f, -100, nullptr);
  EXPECT_TRUE(std::isnan(nan_loss));
  EXPECT_TRUE(std::isnan(d[4 * V + 3]));
  EXPECT_FALSE(std::isnan(d[3 * V + 3]));
  // short rows: V = 37 (a vector's tail) whose largest logit is its last, 200 above the others (a row max that missed
  // the tail would overflow the exponentials); V = 1 (loss 0, gradient 0); no smoothing with a −inf logit: a finite
  // loss (the smoothing term had been 0·inf), the −inf entry's gradient 0
  {
    std::vector<float> z(37, 1.0f), g(37);
    z[36] = 201.0f;
    const int32_t y = 3;
    const float l = ops::cross_entropy_forward_backward(g.data(), z.data(), &y, 1, 37, 0.1f, -100);
    const double lse = 201.0 + std::log1p(36.0 * std::exp(-200.0));
    EXPECT_NEAR(l, 0.9 * (lse - 1.0) + 0.1 * (lse - (36.0 + 201.0) / 37.0), 1e-4);
    EXPECT_NEAR(g[36], 1.0 - 0.1 / 37.0, 1e-6);
    EXPECT_NEAR(g[3], -0.9 - 0.1 / 37.0, 1e-6);
    const float one = 5.0f;
    float g1 = 7.0f;
    const int32_t y0 = 0;
    EXPECT_EQ(ops::cross_entropy_forward_backward(&g1, &one, &y0, 1, 1, 0.1f, -100), 0.0f);
    EXPECT_NEAR(g1, 0.0f, 1e-7f);
    z[5] = -std::numeric_limits<float>::infinity();
    const float l0 = ops::cross_entropy_forward_backward(g.data(), z.data(), &y, 1, 37, 0.0f, -100);
    EXPECT_NEAR(l0, lse - 1.0, 1e-4);
    EXPECT_EQ(g[5], 0.0f);
  }
}

// GELU's vectorised erf (Abramowitz & Stegun 7.1.26 over an exp in lane arithmetic) against the erf form in double.
TEST(Nn, GeluMatchesTheErfFormInDouble) {
  std::vector<float> x;
  for (double v = -12.0; v <= 12.0; v += 0.000731) x.push_back(static_cast<float>(v));
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, 40.0f, -40.0f, 1e30f, -1e30f}) x.push_back(v);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size()), dx(x.size(), 0.5f), dout(x.size());
  for (size_t i = 0; i < x.size(); ++i) dout[i] = 1.0f + 0.25f * static_cast<float>(i % 5);
  ops::activation_forward(y.data(), x.data(), n, Activation::kGelu);
  ops::activation_backward(dx.data(), dout.data(), x.data(), n, Activation::kGelu);
  double worst_y = 0.0, worst_dx = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xi = x[i], cdf = 0.5 * (1.0 + std::erf(xi / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * xi * xi) / std::sqrt(2.0 * 3.14159265358979323846);
    // errors relative to the value's scale: |x| for the output, 1 + |x| for the derivative (its terms' sizes)
    worst_y = std::max(worst_y, std::fabs(y[i] - xi * cdf) / std::max(1.0, std::fabs(xi)));
    worst_dx =
        std::max(worst_dx, std::fabs(dx[i] - (0.5 + dout[i] * (cdf + xi * pdf))) / (1.0 + std::fabs(xi)) / dout[i]);
  }
  EXPECT_LT(worst_y, 4e-7);
  EXPECT_LT(worst_dx, 4e-7);
  const float special[] = {NAN, INFINITY, -INFINITY};
  float out[3], d[3] = {0, 0, 0}, ones[3] = {1, 1, 1};
  ops::activation_forward(out, special, 3, Activation::kGelu);
  ops::activation_backward(d, ones, special, 3, Activation::kGelu);
  EXPECT_TRUE(std::isnan(out[0]));
  EXPECT_EQ(out[1], INFINITY);
  EXPECT_TRUE(std::isnan(out[2]));  // −inf · Φ(−inf) = −inf · 0, as the erf form gives
  EXPECT_TRUE(std::isnan(d[0]));
}

TEST(Nn, TrainingOpsGiveTheSameBitsAtAnyThreadCount) {
  const TrainingOpsRun one = run_training_ops(1);
  EXPECT_TRUE(one == run_training_ops(2));
  EXPECT_TRUE(one == run_training_ops(3));
}

// The dropout generator written out as a scalar loop: the kernel (whichever instruction set's copy runs) must give
// exactly its bits, so a checkpoint resumes with the same masks on any x86-64.
uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}

TEST(Nn, DropoutMaskIsTheDocumentedCounterBasedHash) {
  const int64_t n = 5000;
  const float p = 0.25f;
  std::vector<float> x(static_cast<size_t>(n), 3.0f), out(static_cast<size_t>(n));
  std::vector<uint8_t> keep(static_cast<size_t>(n));
  std::mt19937_64 rng(42), copy = rng;
  ops::dropout_forward(out.data(), keep.data(), x.data(), n, p, rng);
  const uint64_t key = copy();
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    bad += keep[static_cast<size_t>(i)] != (mix32(mix32(static_cast<uint32_t>(i) ^ k0) + k1) >= threshold);
  EXPECT_EQ(bad, 0);
}

TEST(Nn, DropoutMaskIsKeyedByTheGeneratorAndKeepsOneMinusP) {
  const int64_t n = 200000;
  std::vector<float> x(static_cast<size_t>(n), 1.0f), out(static_cast<size_t>(n));
  std::vector<uint8_t> keep(static_cast<size_t>(n)), keep2(static_cast<size_t>(n));
  for (float p : {0.1f, 0.5f, 0.9f}) {
    std::mt19937_64 rng(7), copy = rng;
    ops::dropout_forward(out.data(), keep.data(), x.data(), n, p, rng);
    int64_t kept = 0;
    for (uint8_t k : keep) kept += k;
    // binomial: 5 standard deviations
    EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 5.0 * std::sqrt(p * (1.0 - p) / n)) << p;
    std::vector<float> in_place = x;  // in place, from a copy of the generator: the same mask and values
    ops::dropout_forward(in_place.data(), keep2.data(), in_place.data(), n, p, copy);
    EXPECT_EQ(keep, keep2);
    EXPECT_EQ(out, in_place);
    ops::dropout_forward(out.data(), keep2.data(), x.data(), n, p, rng);  // the next call draws a new mask
    EXPECT_NE(keep, keep2);
  }
  // p = 0 keeps everything and draws nothing
  std::mt19937_64 rng(7), untouched(7);
  ops::dropout_forward(out.data(), keep.data(), x.data(), n, 0.0f, rng);
  EXPECT_EQ(rng, untouched);
  EXPECT_EQ(out, x);
}

// attn/blas.h: the family OpenBLAS runs, and the rule for whether it matches attn's own kernels.
TEST(Blas, KernelsAreNamedAndComparedWithTheProcessor) {
  const std::string name = blas_kernels();
  ASSERT_FALSE(name.empty());
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const bool avx512_family = lower == "skylakex" || lower == "cooperlake" || lower == "sapphirerapids";
  const detail::SimdLevel saved = detail::simd_level_active();
  if (detail::simd_level_supported() == detail::SimdLevel::kAvx512) {
    detail::force_simd_level(detail::SimdLevel::kAvx512);
    EXPECT_EQ(blas_kernels_match_cpu(), avx512_family) << name;
  }
  detail::force_simd_level(detail::SimdLevel::kAvx2);  // attn's kernels below AVX-512: any family matches
  EXPECT_TRUE(blas_kernels_match_cpu()) << name;
  detail::force_simd_level(saved);
}

// A size OpenBLAS's int cannot hold is a ShapeError naming the op (2^32 + 16 had been cast to 16: a short product, no
// error). The check comes before any operand is read, so tiny buffers stand in for the huge ones.
TEST(Blas, SizesPastIntAreRefusedNotTruncated) {
  float y = 0.0f, x = 1.0f, w = 1.0f;
  for (int64_t K : {int64_t{1} << 31, (int64_t{1} << 32) + 16}) {
    try {
      ops::linear_forward(&y, &x, &w, nullptr, 1, 1, K);
      ADD_FAILURE() << "K = " << K << " ran";
    } catch (const ShapeError& e) {
      EXPECT_NE(std::string(e.what()).find("linear_forward"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::to_string(K)), std::string::npos) << e.what();
    }
  }
}

// Products of 1-3 rows run as one sgemv per row (ops/blas.cc), the others as sgemm: both against the float64 product,
// for each operand stored either way, leading dimensions wider than the rows, alpha and beta (beta 0 over a NaN C:
// not read). K = 0 leaves beta · C, as sgemm does (sgemv would have returned without scaling).
TEST(Blas, FewRowsMatchTheFloat64ProductAsSgemmDoes) {
  std::mt19937 rng(13);
  const int64_t N = 37, K = 45, pad = 3;
  for (int64_t M : {1, 2, 3, 4, 6})
    for (CBLAS_TRANSPOSE ta : {CblasNoTrans, CblasTrans})
      for (CBLAS_TRANSPOSE tb : {CblasNoTrans, CblasTrans})
        for (auto [alpha, beta] : {std::pair{1.0f, 0.0f}, {2.5f, 1.0f}, {1.0f, -0.5f}}) {
          SCOPED_TRACE("M " + std::to_string(M) + (ta == CblasTrans ? " Aᵀ" : " A") +
                       (tb == CblasTrans ? " Bᵀ" : " B") + " beta " + std::to_string(beta));
          // A: [M, K] (lda K + pad) or stored [K, M] (lda M + pad); B: [K, N] (ldb N + pad) or [N, K] (ldb K + pad)
          const int64_t lda = (ta == CblasNoTrans ? K : M) + pad, ldb = (tb == CblasNoTrans ? N : K) + pad,
                        ldc = N + pad;
          const Tensor a = test::random_tensor({(ta == CblasNoTrans ? M : K) * lda}, rng),
                       b = test::random_tensor({(tb == CblasNoTrans ? K : N) * ldb}, rng);
          Tensor c = test::random_tensor({M * ldc}, rng);
          if (beta == 0.0f) std::fill(c.f32(), c.f32() + M * ldc, std::nanf(""));
          const Tensor c0 = c.clone();
          detail::blas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a.f32(), lda, b.f32(), ldb, beta, c.f32(), ldc,
                             "test");
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double sum = 0.0, scale = 0.0;
              for (int64_t k = 0; k < K; ++k) {
                const double p = static_cast<double>(ta == CblasNoTrans ? a.f32()[m * lda + k] : a.f32()[k * lda + m]) *
                                 (tb == CblasNoTrans ? b.f32()[k * ldb + n] : b.f32()[n * ldb + k]);
                sum += p, scale += std::fabs(p);
              }
              const double want = alpha * sum + (beta == 0.0f ? 0.0 : beta * c0.f32()[m * ldc + n]);
              ASSERT_NEAR(c.f32()[m * ldc + n], want, 1e-6 * (alpha * scale + 1.0)) << m << ", " << n;
            }
          for (int64_t m = 0; m < M; ++m)  // the padding between rows is not written
            for (int64_t n = N; n < ldc; ++n)
              ASSERT_EQ(std::bit_cast<uint32_t>(c.f32()[m * ldc + n]), std::bit_cast<uint32_t>(c0.f32()[m * ldc + n]));
        }
  for (int64_t M : {1, 5}) {
    std::vector<float> c(static_cast<size_t>(M * N), 2.0f);
    const float a = 1.0f, b = 1.0f;
    detail::blas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, 0, 1.0f, &a, 1, &b, 1, 0.5f, c.data(), N, "test");
    for (float v : c) ASSERT_EQ(v, 1.0f) << "M " << M;
  }
}

// OpenBLAS keeps one process-wide thread count and per-thread buffers sized by it (ops/blas_call.h): linear maps called
// from user threads at 2, 3 and 4 threads at once each give the bits they give alone (unguarded, the 4-thread caller's
// GEMMs had come out wrong, in 5-18 of 400).
TEST(Blas, CallersOfDifferentThreadCountsAtOnceGetTheirOwnBits) {
  constexpr int64_t M = 256, N = 256, K = 256;
  std::mt19937 rng(3);
  const Tensor x = test::random_tensor({M, K}, rng), w = test::random_tensor({N, K}, rng);
  const std::vector<int> counts = {2, 3, 4};
  std::vector<std::vector<float>> alone;
  for (int t : counts) {
    omp_set_num_threads(t);
    alone.emplace_back(static_cast<size_t>(M * N));
    ops::linear_forward(alone.back().data(), x.f32(), w.f32(), nullptr, M, N, K);
  }
  const int saved = omp_get_max_threads();
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (size_t c = 0; c < counts.size(); ++c)
    callers.emplace_back([&, c] {
      omp_set_num_threads(counts[c]);
      std::vector<float> y(static_cast<size_t>(M * N));
      for (int it = 0; it < test::test_volume(150, 30); ++it) {
        ops::linear_forward(y.data(), x.f32(), w.f32(), nullptr, M, N, K);
        wrong += y != alone[c];
      }
    });
  for (std::thread& t : callers) t.join();
  omp_set_num_threads(saved);
  EXPECT_EQ(wrong.load(), 0);
}

void check_overwritten_gradients(int64_t M, int64_t C) {
  std::mt19937 rng(3);
  const int64_t N = 11;
  const Tensor x = test::random_tensor({M, C}, rng);
  Tensor dout = test::random_tensor({M, C}, rng);
  dout.f32()[0] = -0.0f;
  const Tensor w = test::random_tensor({C}, rng), dy = test::random_tensor({M, N}, rng);
  const Tensor wl = test::random_tensor({N, C}, rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto fresh = [&](float v) { return std::vector<float>(static_cast<size_t>(M * C), v); };
  std::vector<float> mean(static_cast<size_t>(M)), rstd(static_cast<size_t>(M)), y = fresh(0.0f);
  ops::layer_norm_forward(y.data(), mean.data(), rstd.data(), x.f32(), w.f32(), w.f32(), M, C);
  {
    std::vector<float> zeros = fresh(0.0f), over = fresh(nan), dw1(C, 0.5f), db1(C, 0.5f), dw2(C, 0.5f), db2(C, 0.5f);
    ops::layer_norm_backward(zeros.data(), dw1.data(), db1.data(), dout.f32(), x.f32(), w.f32(), mean.data(),
                             rstd.data(), M, C);
    ops::layer_norm_backward(over.data(), dw2.data(), db2.data(), dout.f32(), x.f32(), w.f32(), mean.data(),
                             rstd.data(), M, C, ops::GradWrite::kOverwrite);
    EXPECT_EQ(std::memcmp(zeros.data(), over.data(), zeros.size() * 4), 0) << "layer_norm_backward";
    EXPECT_EQ(dw1, dw2);
    EXPECT_EQ(db1, db2);
  }
  {
    std::vector<float> zeros = fresh(0.0f), over = fresh(nan), dw1(N * C, 0.5f), dw2(N * C, 0.5f), db1(N, 1.0f),
                       db2(N, 1.0f);
    ops::linear_backward(zeros.data(), dw1.data(), db1.data(), dy.f32(), x.f32(), wl.f32(), M, N, C);
    ops::linear_backward(over.data(), dw2.data(), db2.data(), dy.f32(), x.f32(), wl.f32(), M, N, C,
                         ops::GradWrite::kOverwrite);
    EXPECT_EQ(std::memcmp(zeros.data(), over.data(), zeros.size() * 4), 0) << "linear_backward";
    EXPECT_EQ(dw1, dw2);
    EXPECT_EQ(db1, db2);
  }
  for (Activation a : {Activation::kRelu, Activation::kGelu}) {
    std::vector<float> zeros = fresh(0.0f), over = fresh(nan), in_place(dout.f32(), dout.f32() + M * C);
    ops::activation_backward(zeros.data(), dout.f32(), x.f32(), M * C, a);
    ops::activation_backward(over.data(), dout.f32(), x.f32(), M * C, a, ops::GradWrite::kOverwrite);
    ops::activation_backward(in_place.data(), in_place.data(), x.f32(), M * C, a, ops::GradWrite::kOverwrite);
    EXPECT_EQ(std::memcmp(zeros.data(), over.data(), zeros.size() * 4), 0) << activation_name(a);
    EXPECT_EQ(std::memcmp(zeros.data(), in_place.data(), zeros.size() * 4), 0) << activation_name(a) << " in place";
  }
  {
    std::vector<uint8_t> keep(static_cast<size_t>(M * C));
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = static_cast<uint8_t>(i % 3 != 0);
    std::vector<float> zeros = fresh(0.0f), over = fresh(nan), in_place(dout.f32(), dout.f32() + M * C);
    ops::dropout_backward(zeros.data(), dout.f32(), keep.data(), M * C, 0.3f);
    ops::dropout_backward(over.data(), dout.f32(), keep.data(), M * C, 0.3f, ops::GradWrite::kOverwrite);
    ops::dropout_backward(in_place.data(), in_place.data(), keep.data(), M * C, 0.3f, ops::GradWrite::kOverwrite);
    EXPECT_EQ(std::memcmp(zeros.data(), over.data(), zeros.size() * 4), 0) << "dropout_backward";
    EXPECT_EQ(std::memcmp(zeros.data(), in_place.data(), zeros.size() * 4), 0) << "dropout_backward in place";
  }
}

// GradWrite::kOverwrite writes dx as accumulating into zeros would, bit for bit, whatever dx held (NaN here), and the
// element-wise ops may write it over their dout (in place); dW, db and the layer norm's dw, db still accumulate.
// Shapes of 1 and 3 rows (the GEMM's sgemv path) and of 18300 elements (the threaded, vectorised loops), 1 and 2
// threads, a −0 in dout.
TEST(Nn, OverwrittenGradientsEqualThoseAccumulatedIntoZeros) {
  const int saved = omp_get_max_threads();
  for (const auto& [M, C] : std::vector<std::pair<int64_t, int64_t>>{{37, 29}, {1, 29}, {3, 29}, {300, 61}})
    for (int threads : {1, 2}) {
      SCOPED_TRACE("M " + std::to_string(M) + ", C " + std::to_string(C) + ", threads " + std::to_string(threads));
      omp_set_num_threads(threads);
      check_overwritten_gradients(M, C);
    }
  omp_set_num_threads(saved);
}

// zero_fill and zero_streaming clear exactly [p, p + n): every offset from a 16-byte boundary (the streaming stores'
// head and tail), sizes around the streaming and threading thresholds, 1 and 2 threads; the floats either side stay.
TEST(Nn, ZeroFillsClearExactlyTheirRange) {
  const int saved = omp_get_max_threads();
  const std::vector<int64_t> sizes = {0, 1, 3, 5, 1000, (int64_t{1} << 18) + 3, (int64_t{2} << 18) + 7};
  int wrong = 0;
  for (int threads : {1, 2})
    for (int64_t n : sizes)
      for (int offset = 0; offset < 4; ++offset)
        for (int streaming = 0; streaming < 2; ++streaming) {
          omp_set_num_threads(threads);
          std::vector<float> buf(static_cast<size_t>(n + 8), 7.0f);  // (vector storage: 16-byte aligned at least)
          float* p = buf.data() + 2 + offset;
          (streaming ? ops::zero_streaming : ops::zero_fill)(p, n);
          for (int64_t i = 0; i < static_cast<int64_t>(buf.size()); ++i) {
            const bool inside = buf.data() + i >= p && buf.data() + i < p + n;
            wrong += buf[static_cast<size_t>(i)] != (inside ? 0.0f : 7.0f);
          }
        }
  omp_set_num_threads(saved);
  EXPECT_EQ(wrong, 0);
}

}  // namespace
}  // namespace attn
