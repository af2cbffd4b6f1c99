// The backward on bfloat16/float16 tensors: the bfloat16 kernel (vdpbf16ps, where the processor has AVX512_BF16) and
// the float32 backward on the widened tensors (every other case), against the double-precision reference on the
// same rounded inputs, on the shared case list (every mask, GQA, odd sizes, fully masked rows, dropout), with 1 and
// 2 threads. Bound: the bfloat16 kernel rounds P̃ and dS to bfloat16 before three of its products (relative 2^-9
// each, in sums of |terms| up to the gradient's own scale) and the gradients once at the end; the widened path
// only rounds at the end.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "attn/attention.h"
#include "attn/error.h"

#include "attention_cases.h"
#include "cpu/attention_fused.h"
#include "cpu/attention_lowp.h"
#include "test_util.h"

namespace attn {
namespace {

using test::max_abs;

Tensor wide(const Tensor& t) { return to_dtype(t, DType::kFloat32); }

// Forces the bfloat16 dot path on or off for its scope.
class DotGuard {
 public:
  explicit DotGuard(bool on) : saved_(detail::force_bf16_dot(on)) {}
  ~DotGuard() { detail::force_bf16_dot(saved_); }  // as it was (ATTN_BF16_DOT=0 stays off)

 private:
  bool saved_;
};

TEST(LowpBackward, MatchesTheReferenceOnTheCaseList) {
  int checked = 0, kernel = 0;
  const auto cases = test::attention_cases(40, 7);
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    const auto [in, d_out32] = test::make_backward_inputs(c, n);
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      const double u = dt == DType::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
      const Tensor q = to_dtype(in.q, dt), k = to_dtype(in.k, dt), v = to_dtype(in.v, dt);
      const Tensor d_out = to_dtype(d_out32, dt);
      AttentionOptions o = in.options;
      o.impl = AttentionImpl::kFused;
      o.return_lse = true;
      const AttentionResult fwd = scaled_dot_product_attention(q, k, v, o);
      // the reference: the same rounded inputs and the same rounded output, in double precision
      o.impl = AttentionImpl::kReference;
      const AttentionGrads ref =
          scaled_dot_product_attention_backward(wide(q), wide(k), wide(v), wide(fwd.output), fwd.lse, wide(d_out), o);
      // against the largest of the three gradients (no longer at least 1: small gradients had been held to an absolute
      // 0.008). Not each against its own: where one key is visible dQ and dK are exactly 0 and hold the rounding of Δ
      // summed over the rows, about u times dV's size (up to 1.2u at 65 queries), which no per-tensor bound allows.
      const double scale = std::max({max_abs(ref.dq), max_abs(ref.dk), max_abs(ref.dv), 1e-4});
      for (bool dot : {true, false})
        for (int threads : {1, 2}) {
          if (dot && (dt != DType::kBFloat16 || !detail::bf16_dot_supported())) continue;
          SCOPED_TRACE(c.name() + (test::backward_dropout(n) ? " dropout " : " ") + dtype_name(dt) +
                       (dot ? " dot" : " widened") + " threads=" + std::to_string(threads));
          DotGuard guard(dot);
          o.impl = AttentionImpl::kFused;
          o.num_threads = threads;
          const uint64_t runs = detail::bf16_backward_runs();
          const AttentionGrads g = scaled_dot_product_attention_backward(q, k, v, fwd.output, fwd.lse, d_out, o);
          ASSERT_EQ(g.dq.dtype(), dt);
          kernel += detail::bf16_backward_runs() > runs;  // the vdpbf16ps kernel itself ran (it may decline)
          // both round each gradient once and take Δ from the rounded output (as PyTorch does): up to ~u of the
          // largest gradient measured; the dot path also rounds P̃ and dS before their products
          const double tol = ((dot ? 2.0 : 1.5) * u + 3e-5) * scale;
          EXPECT_LE(test::max_abs_diff(wide(g.dq), ref.dq), tol);
          EXPECT_LE(test::max_abs_diff(wide(g.dk), ref.dk), tol);
          EXPECT_LE(test::max_abs_diff(wide(g.dv), ref.dv), tol);
          ++checked;
        }
    }
  }
  EXPECT_GT(checked, 150);
  if (detail::bf16_dot_supported()) {
    EXPECT_GT(kernel, 50);
  }
}

// Bitwise the same gradients from run to run for a thread count, also with the keys split into chunks.
TEST(LowpBackward, DeterministicForAThreadCount) {
  test::AttentionCase c;
  c.Lq = 200, c.Lk = 700, c.D = 32, c.Dv = 32, c.causal = CausalAlignment::kBottomRight;
  test::CaseInputs in = test::make_inputs(c, 3);
  const Tensor q = to_dtype(in.q, DType::kBFloat16), k = to_dtype(in.k, DType::kBFloat16),
               v = to_dtype(in.v, DType::kBFloat16);
  std::mt19937 rng(4);
  const Tensor d_out = to_dtype(test::random_tensor({1, 1, 200, 32}, rng), DType::kBFloat16);
  in.options.dropout_p = 0.1f;
  for (int threads : {2, 3}) {
    in.options.num_threads = threads;
    const AttentionGrads a = scaled_dot_product_attention_backward(q, k, v, d_out, in.options);
    const AttentionGrads b = scaled_dot_product_attention_backward(q, k, v, d_out, in.options);
    for (auto [x, y] : {std::pair{&a.dq, &b.dq}, {&a.dk, &b.dk}, {&a.dv, &b.dv}})
      EXPECT_EQ(std::memcmp(x->raw(), y->raw(), x->nbytes()), 0) << "threads " << threads;
  }
}

// Several key blocks per pass over the query tiles (long sequences; forced here: detail::force_backward_span) give the
// bits of one block per pass, on the bfloat16 kernel (the float32 backward's own test covers the widened path).
TEST(LowpBackward, KeyBlocksPerPassGiveTheSameBits) {
  if (!detail::bf16_dot_supported()) GTEST_SKIP() << "no AVX512_BF16: the bfloat16 kernel is not built here";
  int compared = 0;
  for (const test::AttentionCase& c : test::attention_cases(40, 7)) {
    if (c.Lk <= 128) continue;  // one key block
    const auto [in, d_out32] = test::make_backward_inputs(c, 13);
    const Tensor q = to_dtype(in.q, DType::kBFloat16), k = to_dtype(in.k, DType::kBFloat16),
                 v = to_dtype(in.v, DType::kBFloat16), d_out = to_dtype(d_out32, DType::kBFloat16);
    AttentionOptions o = in.options;
    o.impl = AttentionImpl::kFused;
    for (int threads : {1, 2}) {
      o.num_threads = threads;
      detail::force_backward_span(1);
      const AttentionGrads one = scaled_dot_product_attention_backward(q, k, v, d_out, o);
      detail::force_backward_span(3);
      const AttentionGrads many = scaled_dot_product_attention_backward(q, k, v, d_out, o);
      detail::force_backward_span(0);
      for (auto [x, y] : {std::pair{&one.dq, &many.dq}, {&one.dk, &many.dk}, {&one.dv, &many.dv}})
        EXPECT_EQ(std::memcmp(x->raw(), y->raw(), x->nbytes()), 0) << c.name() << " threads " << threads;
      ++compared;
    }
  }
  EXPECT_GT(compared, 10);
}

// A NaN in a padded key's value reaches no gradient (the kernel leaves non-finite inputs to the widened path, which
// keeps the rule); one in a visible value reaches dQ of every row that sees it. Mixed dtypes are refused by name.
TEST(LowpBackward, NonFiniteRuleAndDTypeChecks) {
  std::mt19937 rng(2);
  const Tensor q = to_dtype(test::random_tensor({1, 2, 4, 8}, rng), DType::kBFloat16);
  const Tensor k = to_dtype(test::random_tensor({1, 2, 6, 8}, rng), DType::kBFloat16);
  Tensor v = to_dtype(test::random_tensor({1, 2, 6, 8}, rng), DType::kBFloat16);
  const Tensor d_out = to_dtype(test::random_tensor({1, 2, 4, 8}, rng), DType::kBFloat16);
  AttentionOptions o;
  o.key_padding_mask = Tensor({1, 6}, DType::kBool);
  o.key_padding_mask.b8()[5] = 1;
  auto* vb = static_cast<uint16_t*>(v.raw());
  vb[(0 * 6 + 5) * 8 + 2] = 0x7fc0;  // head 0, key 5 (padding): NaN
  AttentionGrads g = scaled_dot_product_attention_backward(q, k, v, d_out, o);
  EXPECT_TRUE(test::all_finite(wide(g.dq)) && test::all_finite(wide(g.dk)) && test::all_finite(wide(g.dv)));
  vb[(0 * 6 + 1) * 8 + 2] = 0x7fc0;  // head 0, key 1 (visible): NaN
  g = scaled_dot_product_attention_backward(q, k, v, d_out, o);
  const Tensor dq = wide(g.dq);
  for (int64_t i = 0; i < 4 * 8; ++i) EXPECT_TRUE(std::isnan(dq.f32()[i])) << i;         // head 0
  for (int64_t i = 4 * 8; i < 8 * 8; ++i) EXPECT_TRUE(std::isfinite(dq.f32()[i])) << i;  // head 1
  EXPECT_THROW(scaled_dot_product_attention_backward(q, k, wide(v), d_out, o), DTypeError);
  EXPECT_THROW(scaled_dot_product_attention_backward(q, k, v, to_dtype(wide(d_out), DType::kFloat16), o), DTypeError);
  AttentionOptions with_lse = o;
  with_lse.return_lse = true;
  const AttentionResult fwd = scaled_dot_product_attention(q, k, v, with_lse);
  EXPECT_THROW(
      scaled_dot_product_attention_backward(q, k, v, fwd.output, to_dtype(fwd.lse, DType::kBFloat16), d_out, o),
      DTypeError);
  EXPECT_THROW(scaled_dot_product_attention_backward(q, k, v, fwd.output, fwd.lse, Tensor(), o), ShapeError);
}

// A NaN that a hidden score keeps from every gradient: in a padded key's K or V, or in the Q, dO or output row of a
// query that sees no key. The bfloat16 kernel would multiply some of them by a zero weight (0 · NaN = NaN), so an input
// holding one takes the widened float32 path, which keeps the rule. (A scan that skips q, k or d_out fails here; NaNs
// in v or out under zero weights come out finite from the kernel too, so those two checks do not depend on the scan.)
TEST(LowpBackward, NaNsThatNoVisibleScoreReachesStayOutOfEveryGradient) {
  std::mt19937 rng(3);
  const auto bf16 = [&](std::vector<int64_t> shape) {
    return to_dtype(test::random_tensor(shape, rng), DType::kBFloat16);
  };
  AttentionOptions o;
  o.key_padding_mask = Tensor({1, 40}, DType::kBool);
  o.key_padding_mask.b8()[37] = 1;  // key 37 is padding
  o.mask = Tensor({24, 40}, DType::kBool);
  std::fill(o.mask.b8(), o.mask.b8() + 24 * 40, uint8_t{1});
  std::fill(o.mask.b8() + 5 * 40, o.mask.b8() + 6 * 40, uint8_t{0});  // query 5 sees no key
  o.return_lse = true;
  const char* names[] = {"q", "k", "v", "d_out", "out"};
  for (int which = 0; which < 5; ++which) {
    SCOPED_TRACE(names[which]);
    Tensor q = bf16({1, 2, 24, 32}), k = bf16({1, 2, 40, 32}), v = bf16({1, 2, 40, 32}), d_out = bf16({1, 2, 24, 32});
    const AttentionResult fwd = scaled_dot_product_attention(q, k, v, o);
    Tensor out = fwd.output;
    Tensor* target[] = {&q, &k, &v, &d_out, &out};
    const int64_t row = which == 1 || which == 2 ? 37 : 5;  // the padded key, or the query that sees none (head 1)
    static_cast<uint16_t*>(target[which]->raw())[(1 * (which == 1 || which == 2 ? 40 : 24) + row) * 32 + 7] = 0x7fc0;
    const AttentionGrads g = scaled_dot_product_attention_backward(q, k, v, out, fwd.lse, d_out, o);
    EXPECT_TRUE(test::all_finite(wide(g.dq)));
    EXPECT_TRUE(test::all_finite(wide(g.dk)));
    EXPECT_TRUE(test::all_finite(wide(g.dv)));
  }
}

// Heads of size 0 (D = 0 with an explicit scale, or Dv = 0): no pairs to multiply, so the float32 backward runs;
// the gradients are its, exactly, as on float32 inputs.
TEST(LowpBackward, EmptyHeadSizesTakeTheFloat32Path) {
  std::mt19937 rng(6);
  for (auto [D, Dv] : {std::pair<int64_t, int64_t>{0, 4}, {4, 0}}) {
    const Tensor q = test::random_tensor({1, 2, 3, D}, rng), k = test::random_tensor({1, 2, 5, D}, rng),
                 v = test::random_tensor({1, 2, 5, Dv}, rng), d_out = test::random_tensor({1, 2, 3, Dv}, rng);
    AttentionOptions o;
    o.scale = 1.0f;
    const auto bf = [](const Tensor& t) { return to_dtype(t, DType::kBFloat16); };
    const AttentionGrads want =
        scaled_dot_product_attention_backward(wide(bf(q)), wide(bf(k)), wide(bf(v)), wide(bf(d_out)), o);
    const AttentionGrads got = scaled_dot_product_attention_backward(bf(q), bf(k), bf(v), bf(d_out), o);
    EXPECT_EQ(test::max_abs_diff(wide(got.dq), wide(bf(want.dq))), 0.0) << D << " " << Dv;
    EXPECT_EQ(test::max_abs_diff(wide(got.dk), wide(bf(want.dk))), 0.0) << D << " " << Dv;
    EXPECT_EQ(test::max_abs_diff(wide(got.dv), wide(bf(want.dv))), 0.0) << D << " " << Dv;
  }
}

}  // namespace
}  // namespace attn
