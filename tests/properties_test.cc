// The properties the mechanisms are defined by, checked on random inputs through the public API.
#include <algorithm>
#include <cmath>

#include "attn/attention.h"
#include "attn/layers/multi_head_attention.h"
#include "simd_levels.h"
#include "test_util.h"

namespace attn {
namespace {

const AttentionImpl kImpls[] = {AttentionImpl::kReference, AttentionImpl::kUnfused, AttentionImpl::kFused};

MultiHeadAttention make_mha(int64_t E, int64_t H, uint64_t seed, int64_t Hkv = 0) {
  MultiHeadAttentionConfig c;
  c.embed_dim = E, c.num_heads = H, c.num_kv_heads = Hkv;
  MultiHeadAttention m(c, seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (Tensor* b : {&m.b_q, &m.b_k, &m.b_v, &m.b_o}) *b = test::random_tensor(b->shape(), rng);
  return m;
}

TEST(Properties, SelfAttentionIsPermutationEquivariant) {
  std::mt19937 rng(1);
  const MultiHeadAttention mha = make_mha(16, 4, 3);
  const int64_t L = 9;
  const Tensor x = test::random_tensor({1, L, 16}, rng);
  std::vector<int64_t> perm(L);
  for (int64_t i = 0; i < L; ++i) perm[static_cast<size_t>(i)] = (i * 4 + 3) % L;
  Tensor xp({1, L, 16});
  for (int64_t i = 0; i < L; ++i) std::copy_n(x.f32() + perm[static_cast<size_t>(i)] * 16, 16, xp.f32() + i * 16);
  for (AttentionImpl impl : kImpls) {
    MhaOptions o;
    o.impl = impl;
    const Tensor y = mha.self_attention(x, o).output, yp = mha.self_attention(xp, o).output;
    double worst = 0.0;
    for (int64_t i = 0; i < L; ++i)
      for (int64_t d = 0; d < 16; ++d)
        worst = std::max(worst, static_cast<double>(
                                    std::fabs(yp.f32()[i * 16 + d] - y.f32()[perm[static_cast<size_t>(i)] * 16 + d])));
    EXPECT_LE(worst, 1e-5) << impl_name(impl);
  }
}

TEST(Properties, MaskedSelfAttentionIgnoresTheFuture) {
  std::mt19937 rng(2);
  const MultiHeadAttention mha = make_mha(16, 2, 5);
  const int64_t L = 70, t = 41;
  const Tensor x = test::random_tensor({2, L, 16}, rng);
  Tensor x2 = x.clone();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = t; i < L; ++i)
      for (int64_t d = 0; d < 16; ++d) x2.f32()[(b * L + i) * 16 + d] = 5.0f;
  for (AttentionImpl impl : kImpls) {
    MhaOptions o;
    o.impl = impl;
    const Tensor y = mha.masked_self_attention(x, o).output, y2 = mha.masked_self_attention(x2, o).output;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < t; ++i)
        for (int64_t d = 0; d < 16; ++d)
          ASSERT_EQ(y.f32()[(b * L + i) * 16 + d], y2.f32()[(b * L + i) * 16 + d]) << impl_name(impl) << " i=" << i;
    double moved = 0.0;  // and the future itself did change
    for (int64_t d = 0; d < 16; ++d) moved += std::fabs(y.f32()[(L - 1) * 16 + d] - y2.f32()[(L - 1) * 16 + d]);
    EXPECT_GT(moved, 1e-3);
  }
}

TEST(Properties, WeightRowsSumToOneAndMaskedWeightsAreZero) {
  std::mt19937 rng(3);
  const Tensor q = test::random_tensor({2, 3, 20, 8}, rng), k = test::random_tensor({2, 3, 30, 8}, rng),
               v = test::random_tensor({2, 3, 30, 8}, rng);
  AttentionOptions o;
  o.mask = test::random_bool({20, 30}, rng, 0.6);
  for (int64_t j = 0; j < 30; ++j) o.mask.b8()[j] = j == 7;  // row 0 sees only key 7
  o.return_weights = true;
  for (AttentionImpl impl : kImpls) {
    o.impl = impl;
    const AttentionResult r = scaled_dot_product_attention(q, k, v, o);
    for (int64_t row = 0; row < 2 * 3 * 20; ++row) {
      double sum = 0.0;
      for (int64_t j = 0; j < 30; ++j) {
        const float w = r.weights.f32()[row * 30 + j];
        if (!o.mask.b8()[(row % 20) * 30 + j]) {
          ASSERT_EQ(w, 0.0f) << impl_name(impl);
        }
        sum += w;
      }
      EXPECT_NEAR(sum, 1.0, 1e-5) << impl_name(impl);
    }
    // a row with one visible key copies that key's value
    for (int64_t d = 0; d < 8; ++d) EXPECT_NEAR(r.output.f32()[d], v.f32()[7 * 8 + d], 1e-6) << impl_name(impl);
  }
}

// Where the scores run into the hundreds, a float32 lse is an ulp of several hundred away from the truth, and weights
// taken as exp(S − lse) had each row summing to 1 ± 2·10⁻⁵ (a learned mask's gradient, P ∘ (dP − Σ P dP), takes
// that error times |dP|); from the row's max and log2 of its sum they sum to 1 within float32 rounding. Every SIMD
// level, the few-query path (key splits) and the packed one, causal or not.
TEST(Properties, WeightRowsSumToOneWhereTheScoresAreLarge) {
  for (int64_t Lq : {64, 2})
    for (CausalAlignment causal : {CausalAlignment::kNone, CausalAlignment::kBottomRight})
      for (auto level : test::simd_levels()) {
        SCOPED_TRACE("Lq " + std::to_string(Lq) + " simd=" + detail::simd_level_name(level));
        test::SimdGuard guard(level);
        std::mt19937 rng(19);
        const int64_t Lk = Lq == 2 ? 3000 : 200, D = 128;
        const Tensor q = test::random_tensor({1, 2, Lq, D}, rng, -10.0f, 10.0f);
        const Tensor k = test::random_tensor({1, 2, Lk, D}, rng), v = test::random_tensor({1, 2, Lk, 8}, rng);
        AttentionOptions o;
        o.impl = AttentionImpl::kFused;
        o.scale = 2.0f;
        o.causal = causal;
        o.return_weights = true;
        const AttentionResult r = scaled_dot_product_attention(q, k, v, o);
        double worst = 0.0;
        for (int64_t row = 0; row < 2 * Lq; ++row) {
          double sum = 0.0;
          for (int64_t j = 0; j < Lk; ++j) sum += r.weights.f32()[row * Lk + j];
          worst = std::max(worst, std::abs(sum - 1.0));
        }
        EXPECT_LE(worst, 3e-6);  // from the lse: up to 2e-5
      }
}

TEST(Properties, FullyMaskedRowsGiveZeroNotNaN) {
  std::mt19937 rng(4);
  const Tensor q = test::random_tensor({2, 2, 5, 8}, rng), k = test::random_tensor({2, 2, 6, 8}, rng),
               v = test::random_tensor({2, 2, 6, 8}, rng);
  AttentionOptions bool_all_false;
  bool_all_false.mask = Tensor({5, 6}, DType::kBool);  // all false: nothing may attend
  bool_all_false.return_weights = true;
  AttentionOptions float_all_inf;
  float_all_inf.mask = Tensor::from_floats({1, 6}, std::vector<float>(6, -INFINITY));
  float_all_inf.return_weights = true;
  AttentionOptions padded;
  padded.key_padding_mask = Tensor::from_bools({2, 6}, {1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0});
  padded.return_weights = true;
  for (AttentionOptions o : {bool_all_false, float_all_inf, padded})
    for (AttentionImpl impl : kImpls) {
      o.impl = impl;
      const AttentionResult r = scaled_dot_product_attention(q, k, v, o);
      ASSERT_TRUE(test::all_finite(r.output)) << impl_name(impl);
      const int64_t zero_part =
          o.key_padding_mask.defined() ? 2 * 5 * 8 : r.output.numel();  // batch 0 only when padded
      for (int64_t i = 0; i < zero_part; ++i) ASSERT_EQ(r.output.f32()[i], 0.0f) << impl_name(impl);
      for (int64_t i = 0; i < (o.key_padding_mask.defined() ? 2 * 5 * 6 : r.weights.numel()); ++i)
        ASSERT_EQ(r.weights.f32()[i], 0.0f) << impl_name(impl);
    }
}

// Cross-attention: the output has the query's length whatever the memory's, and query rows are
// independent: each row computed alone gives the same output and weights; each weight row sums to 1.
TEST(Properties, CrossAttentionLengthFollowsTheQuery) {
  std::mt19937 rng(5);
  const MultiHeadAttention mha = make_mha(8, 2, 6);
  MhaOptions o;
  o.need_weights = true;
  for (int64_t Lq : {1, 3, 17})
    for (int64_t Lk : {1, 5, 40}) {
      SCOPED_TRACE("Lq " + std::to_string(Lq) + " Lk " + std::to_string(Lk));
      const Tensor x = test::random_tensor({2, Lq, 8}, rng), mem = test::random_tensor({2, Lk, 8}, rng);
      const MhaOutput r = mha.cross_attention(x, mem, o);
      ASSERT_EQ(r.output.shape(), (Shape{2, Lq, 8}));
      ASSERT_EQ(r.weights.shape(), (Shape{2, Lq, Lk}));
      for (int64_t i = 0; i < Lq; ++i) {
        Tensor xi({2, 1, 8});  // query row i of both batches
        for (int64_t b = 0; b < 2; ++b) std::copy_n(x.f32() + (b * Lq + i) * 8, 8, xi.f32() + b * 8);
        const MhaOutput ri = mha.cross_attention(xi, mem, o);
        for (int64_t b = 0; b < 2; ++b) {
          for (int64_t e = 0; e < 8; ++e)
            EXPECT_NEAR(r.output.f32()[(b * Lq + i) * 8 + e], ri.output.f32()[b * 8 + e], 1e-6);
          double sum = 0.0;
          for (int64_t j = 0; j < Lk; ++j) {
            EXPECT_NEAR(r.weights.f32()[(b * Lq + i) * Lk + j], ri.weights.f32()[b * Lk + j], 1e-6);
            sum += r.weights.f32()[(b * Lq + i) * Lk + j];
          }
          EXPECT_NEAR(sum, 1.0, 1e-5);
        }
      }
    }
}

// y = x·Wᵀ + b by plain loops.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const int64_t M = x.numel() / x.dim(-1), K = x.dim(-1), N = w.dim(0);
  Tensor y({M, N});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      double s = b.f32()[n];
      for (int64_t kk = 0; kk < K; ++kk) s += static_cast<double>(x.f32()[i * K + kk]) * w.f32()[n * K + kk];
      y.f32()[i * N + n] = static_cast<float>(s);
    }
  return y;
}

TEST(Properties, OneHeadMultiHeadAttentionIsSingleHeadAttention) {
  std::mt19937 rng(6);
  const MultiHeadAttention mha = make_mha(12, 1, 8);
  const int64_t L = 7;
  const Tensor x = test::random_tensor({1, L, 12}, rng);
  const Tensor q = linear(x, mha.w_q, mha.b_q).reshape({1, 1, L, 12});
  const Tensor k = linear(x, mha.w_k, mha.b_k).reshape({1, 1, L, 12});
  const Tensor v = linear(x, mha.w_v, mha.b_v).reshape({1, 1, L, 12});
  AttentionOptions o;
  o.impl = AttentionImpl::kReference;
  const Tensor heads = scaled_dot_product_attention(q, k, v, o).output;
  const Tensor want = linear(heads, mha.w_o, mha.b_o).reshape({1, L, 12});
  for (AttentionImpl impl : kImpls) {
    MhaOptions mo;
    mo.impl = impl;
    EXPECT_LE(test::max_abs_diff(mha.self_attention(x, mo).output, want), 1e-5) << impl_name(impl);
  }
}

TEST(Properties, GroupedQueryAttentionEqualsRepeatedKeysAndValues) {
  std::mt19937 rng(7);
  const int64_t H = 6, Hkv = 2;
  const Tensor q = test::random_tensor({2, H, 9, 8}, rng), k = test::random_tensor({2, Hkv, 11, 8}, rng),
               v = test::random_tensor({2, Hkv, 11, 4}, rng);
  auto repeat = [&](const Tensor& t) {  // repeat_interleave over heads, as PyTorch's enable_gqa
    const int64_t per = t.numel() / (2 * Hkv);
    Tensor r({2, H, t.dim(2), t.dim(3)});
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < H; ++h)
        std::copy_n(t.f32() + (b * Hkv + h / (H / Hkv)) * per, per, r.f32() + (b * H + h) * per);
    return r;
  };
  for (AttentionImpl impl : kImpls) {
    AttentionOptions o;
    o.impl = impl;
    o.causal = CausalAlignment::kBottomRight;
    EXPECT_LE(test::max_abs_diff(scaled_dot_product_attention(q, k, v, o).output,
                                 scaled_dot_product_attention(q, repeat(k), repeat(v), o).output),
              1e-6)
        << impl_name(impl);
  }
}

}  // namespace
}  // namespace attn
