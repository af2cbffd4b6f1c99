// The non-finite rule of attn/attention.h on every path and SIMD target, forward and backward, and in
// MultiHeadAttention. Truth comes from two places that do not share the fast paths' code:
//   - the math: a NaN planted where a mask hides it changes nothing (against the clean run),
//     and a NaN planted in a visible key makes exactly the rows that see it NaN;
//   - the float64 reference (the readable spec), whose non-finite pattern every path must reproduce:
//     NaN where it is NaN, the same infinity where it is infinite, within 2e-5 elsewhere.
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>

#include "attention_cases.h"
#include "attn/attention.h"
#include "attn/layers/multi_head_attention.h"
#include "cpu/attention_fused.h"
#include "simd_levels.h"
#include "test_util.h"

namespace attn {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// "" when a matches the reference's pattern: NaN where ref is NaN, the same infinity, else within tol.
std::string pattern_mismatch(const Tensor& a, const Tensor& ref, double tol) {
  if (a.shape() != ref.shape()) return "shape " + shape_str(a.shape()) + " vs " + shape_str(ref.shape());
  for (int64_t i = 0; i < a.numel(); ++i) {
    const float x = a.f32()[i], r = ref.f32()[i];
    const bool ok = std::isnan(r) ? std::isnan(x) : std::isinf(r) ? x == r : std::fabs(x - r) <= tol;
    if (!ok) return "element " + std::to_string(i) + ": " + std::to_string(x) + " vs reference " + std::to_string(r);
  }
  return "";
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Runs `check(result, options description)` for the unfused path and the fused kernel at every SIMD
// level with 1 and 2 threads. With `sample` (the case list's test): under the sanitizers, each level with one of the
// two (test::config_sampled); every one in a normal run, and in every call without it.
template <class F>
void for_every_fast_path(test::CaseInputs& in, F&& check, std::optional<size_t> sample = std::nullopt) {
  const detail::SimdLevel saved = detail::simd_level_active();
  check(AttentionImpl::kUnfused, std::string("unfused"));
  size_t config = 0;
  for (auto level : test::simd_levels())
    for (int threads : {1, 2}) {
      if (sample && !test::config_sampled(*sample, config++, 2)) continue;
      detail::force_simd_level(level);
      in.options.num_threads = threads;
      check(AttentionImpl::kFused,
            std::string("fused simd=") + detail::simd_level_name(level) + " threads=" + std::to_string(threads));
    }
  detail::force_simd_level(saved);
  in.options.num_threads = 0;
}

TEST(NonFinite, EveryPathFollowsTheReferenceWithNaNAndInfPlanted) {
  const auto cases = test::attention_cases(test::test_volume(60, 15));
  std::mt19937 rng(11);
  int checked = 0, nonfinite_outputs = 0;
  size_t calls = 0;  // for_every_fast_path's sample, by turns
  // a third of the cases, every residue mod 3 in turn (the options block comes in threes: n += 3 had taken the
  // middle one of each three only)
  for (size_t k = 0, n = 0; n < cases.size(); ++k, n = 3 * k + k % 3) {
    const test::AttentionCase& c = cases[n];
    for (int what = 0; what < 4; ++what) {  // q, k, v, float mask
      if (what == 3 && c.mask != test::MaskKind::kFloat) continue;
      for (float value : {kNaN, kInf, -kInf}) {
        test::CaseInputs in = test::make_inputs(c, static_cast<uint32_t>(n));
        Tensor& t = what == 0 ? in.q : what == 1 ? in.k : what == 2 ? in.v : in.options.mask;
        for (int planted = 0; planted < 2; ++planted) t.f32()[rng() % t.numel()] = value;
        in.options.impl = AttentionImpl::kReference;
        const AttentionResult ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
        nonfinite_outputs += !test::all_finite(ref.output);
        for_every_fast_path(
            in,
            [&](AttentionImpl impl, const std::string& path) {
              in.options.impl = impl;
              const AttentionResult r = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
              const char* names[] = {"q", "k", "v", "mask"};
              SCOPED_TRACE(c.name() + " planted " + std::to_string(value) + " in " + names[what] + " " + path);
              EXPECT_EQ(pattern_mismatch(r.output, ref.output, 2e-5), "");
              if (c.weights) {
                EXPECT_EQ(pattern_mismatch(r.weights, ref.weights, 2e-5), "");
              }
              ++checked;
            },
            calls++);
      }
    }
  }
  EXPECT_GT(checked, test::small_test_volume() ? 500 : 1000);
  EXPECT_GT(nonfinite_outputs, 100);  // the planted values did reach outputs: the test is not vacuous
}

// A key hidden by padding, causality or a −inf float-mask entry may hold anything: the output is the
// clean run's (to rounding: such a row may take the term-by-term path) on every path; NaN in a visible key makes
// exactly its rows NaN.
TEST(NonFinite, HiddenKeysNeverInfluenceAndVisibleNaNPoisonsExactlyItsRows) {
  std::mt19937 rng(5);
  for (int64_t Lk : {7, 100, 1000}) {
    test::AttentionCase c;
    c.B = 2, c.H = 2, c.Hkv = 1, c.Lq = Lk == 1000 ? 1 : 5, c.Lk = Lk, c.D = 16, c.Dv = 16;
    c.causal = CausalAlignment::kBottomRight, c.key_padding = true;
    test::CaseInputs clean = test::make_inputs(c, 3);
    // batch 0 pads its last key, batch 1 every key (its output is 0 whatever K/V hold)
    for (int64_t j = 0; j < Lk; ++j) {
      clean.options.key_padding_mask.b8()[j] = j == Lk - 1;
      clean.options.key_padding_mask.b8()[Lk + j] = 1;
    }
    test::CaseInputs dirty = clean;
    dirty.k = clean.k.clone(), dirty.v = clean.v.clone();
    const int64_t D = c.D, last = Lk - 1;
    for (int64_t d = 0; d < D; ++d) {
      dirty.k.f32()[last * D + d] = kNaN;
      dirty.v.f32()[last * D + d] = kNaN;
      dirty.v.f32()[(Lk + 3 % Lk) * D + d] = kInf;
    }
    for_every_fast_path(dirty, [&](AttentionImpl impl, const std::string& path) {
      SCOPED_TRACE("Lk " + std::to_string(Lk) + " " + path);
      dirty.options.impl = clean.options.impl = impl;
      clean.options.num_threads = dirty.options.num_threads;
      const Tensor a = scaled_dot_product_attention(clean.q, clean.k, clean.v, clean.options).output;
      const Tensor b = scaled_dot_product_attention(dirty.q, dirty.k, dirty.v, dirty.options).output;
      // equal up to summation order (a row a hidden NaN touched may take the term-by-term path)
      EXPECT_LE(test::max_abs_diff(a, b), 1e-6);
    });
    // A NaN in key 0 of batch 0 (visible to every row of batch 0, bottom-right causal): those rows NaN.
    test::CaseInputs visible = clean;
    visible.k = clean.k.clone();
    visible.k.f32()[rng() % D] = kNaN;
    for_every_fast_path(visible, [&](AttentionImpl impl, const std::string& path) {
      SCOPED_TRACE("visible NaN, Lk " + std::to_string(Lk) + " " + path);
      visible.options.impl = impl;
      const Tensor o = scaled_dot_product_attention(visible.q, visible.k, visible.v, visible.options).output;
      const int64_t per_batch = c.H * c.Lq * c.Dv;
      for (int64_t i = 0; i < per_batch; ++i) ASSERT_TRUE(std::isnan(o.f32()[i])) << i;
      for (int64_t i = per_batch; i < 2 * per_batch; ++i) ASSERT_EQ(o.f32()[i], 0.0f) << i;  // all padding
    });
  }
}

// A float mask of −inf hides its key even when the score is NaN; a NaN query or scale poisons its rows.
// On the causal diagonal the fast P·V multiplies a block of rows by the values its last row sees, the earlier rows'
// hidden ones with weight 0: a NaN or Inf value there must still reach exactly the rows that see its key (whichever
// way the kernel gets there: the zero-skipping update, or the term-by-term redo of a row that came out non-finite).
TEST(NonFinite, ValueOnTheCausalDiagonalPoisonsExactlyTheRowsThatSeeIt) {
  struct Alignment {
    CausalAlignment causal;
    int64_t Lq;  // Lk = 200; bottom-right with more queries than keys: the first 30 rows see no key
  };
  for (const Alignment al : {Alignment{CausalAlignment::kTopLeft, 200}, Alignment{CausalAlignment::kBottomRight, 230}})
    for (int64_t D : {64, 128}) {  // the fast P·V's two register tiles (4 and 8 rows)
      test::AttentionCase c;
      c.Lq = al.Lq, c.Lk = 200, c.D = c.Dv = D, c.causal = al.causal;
      const int64_t offset = c.Lk - c.Lq;  // row i's last key: i + offset (top-left: Lq = Lk)
      const test::CaseInputs clean = test::make_inputs(c, 7);
      for (int64_t j : {5, 70, 133, 199})
        for (float value : {kNaN, kInf}) {
          test::CaseInputs dirty = clean;
          dirty.v = clean.v.clone();
          for (int64_t d = 0; d < D; ++d) dirty.v.f32()[j * D + d] = value;
          for_every_fast_path(dirty, [&](AttentionImpl impl, const std::string& path) {
            SCOPED_TRACE("Lq " + std::to_string(c.Lq) + " D " + std::to_string(D) + " key " + std::to_string(j) + " " +
                         std::to_string(value) + " " + path);
            dirty.options.impl = impl;
            test::CaseInputs same = clean;
            same.options.impl = impl, same.options.num_threads = dirty.options.num_threads;
            const Tensor a = scaled_dot_product_attention(same.q, same.k, same.v, same.options).output;
            const Tensor b = scaled_dot_product_attention(dirty.q, dirty.k, dirty.v, dirty.options).output;
            for (int64_t i = 0; i < c.Lq; ++i)  // row i sees keys 0 … i + offset
              for (int64_t d = 0; d < D; ++d) {
                const float x = b.f32()[i * D + d];
                if (i + offset < j)
                  ASSERT_NEAR(x, a.f32()[i * D + d], 1e-6) << "row " << i;
                else
                  ASSERT_FALSE(std::isfinite(x)) << "row " << i;
              }
          });
        }
    }
}

TEST(NonFinite, MinusInfMaskHidesANaNScoreAndANaNScalePoisons) {
  std::mt19937 rng(9);
  Tensor q = test::random_tensor({1, 1, 3, 8}, rng), k = test::random_tensor({1, 1, 5, 8}, rng);
  Tensor v = test::random_tensor({1, 1, 5, 8}, rng);
  Tensor mask({3, 5});
  for (int64_t i = 0; i < 15; ++i) mask.f32()[i] = 0.0f;
  for (int64_t i = 0; i < 3; ++i) mask.f32()[i * 5 + 2] = -kInf;  // key 2 hidden from every row
  AttentionOptions o;
  o.mask = mask;
  for (AttentionImpl impl : {AttentionImpl::kReference, AttentionImpl::kUnfused, AttentionImpl::kFused})
    for (auto level : test::simd_levels()) {
      if (impl != AttentionImpl::kFused && level != detail::simd_level_supported()) continue;
      SCOPED_TRACE(std::string(impl_name(impl)) + " simd=" + detail::simd_level_name(level));
      test::SimdGuard guard(level);
      o.impl = impl;
      const Tensor clean = scaled_dot_product_attention(q, k, v, o).output;
      Tensor kn = k.clone();
      kn.f32()[2 * 8 + 1] = kNaN;
      EXPECT_TRUE(bitwise_equal(scaled_dot_product_attention(q, kn, v, o).output, clean));
      AttentionOptions nan_scale = o;
      nan_scale.scale = kNaN;
      const Tensor poisoned = scaled_dot_product_attention(q, k, v, nan_scale).output;
      for (int64_t i = 0; i < poisoned.numel(); ++i) EXPECT_TRUE(std::isnan(poisoned.f32()[i]));
    }
}

// A score of −inf (an infinite k) is not a hidden key: a NaN or +inf float mask (or ALiBi term) there makes the row
// NaN, as −inf + NaN and −inf + inf are in IEEE arithmetic (the reference); a finite mask leaves it −inf (weight 0);
// padding hides the key from every mask value. The fast paths had taken any −inf score for hidden and given those rows
// finite outputs.
TEST(NonFinite, MinusInfScoreMeetsANaNOrInfiniteMaskOrSlopeAsIEEESays) {
  std::mt19937 rng(13);
  Tensor q = test::random_tensor({1, 1, 3, 8}, rng), k = test::random_tensor({1, 1, 5, 8}, rng);
  Tensor v = test::random_tensor({1, 1, 5, 8}, rng);
  for (int64_t i = 0; i < 3; ++i) q.f32()[i * 8] = 1.0f;  // every row's score for key 2 is −inf
  k.f32()[2 * 8] = -kInf;
  Tensor mask({3, 5});
  for (int64_t i = 0; i < 15; ++i) mask.f32()[i] = 0.0f;
  mask.f32()[0 * 5 + 2] = kNaN, mask.f32()[1 * 5 + 2] = kInf, mask.f32()[2 * 5 + 2] = -1.0f;
  Tensor padding({1, 5}, DType::kBool);
  for (int64_t j = 0; j < 5; ++j) padding.b8()[j] = j == 2;
  for (bool padded : {false, true})
    for (AttentionImpl impl : {AttentionImpl::kReference, AttentionImpl::kUnfused, AttentionImpl::kFused})
      for (auto level : test::simd_levels()) {
        if (impl != AttentionImpl::kFused && level != detail::simd_level_supported()) continue;
        SCOPED_TRACE(std::string(impl_name(impl)) + " simd=" + detail::simd_level_name(level) +
                     (padded ? " key 2 padded" : ""));
        test::SimdGuard guard(level);
        AttentionOptions o;
        o.mask = mask, o.impl = impl, o.return_weights = true;
        if (padded) o.key_padding_mask = padding;
        const AttentionResult r = scaled_dot_product_attention(q, k, v, o);
        for (int64_t i = 0; i < 3; ++i) {
          const bool poisoned = !padded && i < 2;
          for (int64_t d = 0; d < 8; ++d) {
            const float x = r.output.f32()[i * 8 + d];
            EXPECT_TRUE(poisoned ? std::isnan(x) : std::isfinite(x)) << i << " " << d;
          }
          if (!poisoned) {
            EXPECT_EQ(r.weights.f32()[i * 5 + 2], 0.0f) << i;
          }
        }
      }
  // The same for ALiBi: a +inf slope at distance 0 (inf · 0 = NaN) on that −inf score makes row 0 NaN in the
  // reference (ALiBi's positions are bottom-right: row 0 sits at key Lk − Lq = 2); the fast paths had skipped the key
  // as hidden and given the row 0 (its other keys all −inf).
  AttentionOptions alibi;
  alibi.alibi_slopes = Tensor::from_floats({1}, {kInf});
  alibi.impl = AttentionImpl::kReference;
  const Tensor ref = scaled_dot_product_attention(q, k, v, alibi).output;
  for (int64_t d = 0; d < 8; ++d) ASSERT_TRUE(std::isnan(ref.f32()[d])) << "the reference's row 0";
  for (AttentionImpl impl : {AttentionImpl::kUnfused, AttentionImpl::kFused})
    for (auto level : test::simd_levels()) {
      if (impl != AttentionImpl::kFused && level != detail::simd_level_supported()) continue;
      SCOPED_TRACE(std::string(impl_name(impl)) + " simd=" + detail::simd_level_name(level) + " ALiBi");
      test::SimdGuard guard(level);
      alibi.impl = impl;
      EXPECT_EQ(pattern_mismatch(scaled_dot_product_attention(q, k, v, alibi).output, ref, 2e-5), "");
    }
}

// Backward: a NaN in a key and value that padding hides reaches no gradient; a NaN in a visible value
// reaches dQ of every row that sees it.
TEST(NonFinite, BackwardKeepsTheRule) {
  std::mt19937 rng(2);
  Tensor q = test::random_tensor({1, 2, 4, 8}, rng), k = test::random_tensor({1, 2, 6, 8}, rng);
  Tensor v = test::random_tensor({1, 2, 6, 8}, rng), d_out = test::random_tensor({1, 2, 4, 8}, rng);
  AttentionOptions o;
  o.key_padding_mask = Tensor({1, 6}, DType::kBool);
  for (int64_t j = 0; j < 6; ++j) o.key_padding_mask.b8()[j] = j == 5;
  for (auto level : test::simd_levels()) {  // (the fused backward, the default, on every level)
    SCOPED_TRACE(std::string("simd=") + detail::simd_level_name(level));
    test::SimdGuard guard(level);
    const AttentionGrads clean = scaled_dot_product_attention_backward(q, k, v, d_out, o);
    Tensor kn = k.clone(), vn = v.clone();
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < 8; ++d) kn.f32()[(h * 6 + 5) * 8 + d] = vn.f32()[(h * 6 + 5) * 8 + d] = kNaN;
    const AttentionGrads dirty = scaled_dot_product_attention_backward(q, kn, vn, d_out, o);
    EXPECT_TRUE(bitwise_equal(clean.dq, dirty.dq));
    EXPECT_TRUE(bitwise_equal(clean.dk, dirty.dk));
    EXPECT_TRUE(bitwise_equal(clean.dv, dirty.dv));
    Tensor vv = v.clone();
    vv.f32()[0] = kNaN;  // head 0, key 0, visible to every row of head 0
    const AttentionGrads g = scaled_dot_product_attention_backward(q, k, vv, d_out, o);
    for (int64_t i = 0; i < 4 * 8; ++i) EXPECT_TRUE(std::isnan(g.dq.f32()[i])) << i;         // head 0
    for (int64_t i = 4 * 8; i < 8 * 8; ++i) EXPECT_TRUE(std::isfinite(g.dq.f32()[i])) << i;  // head 1
  }
}

// Finite inputs near the float range whose products stay moderate: with scale·log2(e) > 1, elements of 3e38
// overflow once multiplied by it (the fused kernel scales the packed keys, or the few-query path its queries),
// while every true score is finite (4 · 3e38 · 1e-38 = 12). Output, weights, lse and gradients must still be the
// reference's, on every path: huge keys with 40 queries (packed keys), huge queries with 3 (the few-query path),
// with scale 1 and −1.
TEST(NonFinite, ElementsNearTheFloatRangeWithModerateScores) {
  const auto largest = [](const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(static_cast<double>(t.f32()[i])));
    return m;
  };
  for (bool huge_queries : {false, true}) {
    std::mt19937 rng(5);
    const int64_t Lq = huge_queries ? 3 : 40, Lk = 37, D = 4;
    Tensor q = test::random_tensor({1, 2, Lq, D}, rng), k = test::random_tensor({1, 2, Lk, D}, rng);
    Tensor v = test::random_tensor({1, 2, Lk, D}, rng), d_out = test::random_tensor({1, 2, Lq, D}, rng);
    Tensor& tiny = huge_queries ? k : q;
    Tensor& huge = huge_queries ? q : k;
    const int64_t L = huge_queries ? Lq : Lk, row = huge_queries ? 1 : 3;  // that row of each head is huge
    for (int64_t i = 0; i < tiny.numel(); ++i) tiny.f32()[i] *= 1e-38f;
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < D; ++d) huge.f32()[(h * L + row) * D + d] = d % 2 ? -3e38f : 3e38f;
    for (int variant = 0; variant < 3; ++variant) {  // scale 1; causal; scale −1 (|scale·log2 e| > 1 too)
      const bool causal = variant == 1;
      test::CaseInputs in;
      in.q = q, in.k = k, in.v = v;
      in.options.scale = variant == 2 ? -1.0f : 1.0f;
      in.options.return_weights = true;
      in.options.return_lse = true;
      if (causal) in.options.causal = CausalAlignment::kBottomRight;
      in.options.impl = AttentionImpl::kReference;
      const AttentionResult ref = scaled_dot_product_attention(q, k, v, in.options);
      const AttentionGrads ref_grads = scaled_dot_product_attention_backward(q, k, v, d_out, in.options);
      ASSERT_TRUE(test::all_finite(ref.weights));
      for_every_fast_path(in, [&](AttentionImpl impl, const std::string& path) {
        SCOPED_TRACE(path + (huge_queries ? " huge queries" : " huge keys") + (causal ? " causal" : "") +
                     (variant == 2 ? " scale -1" : ""));
        in.options.impl = impl;
        const AttentionResult r = scaled_dot_product_attention(q, k, v, in.options);
        EXPECT_EQ(pattern_mismatch(r.output, ref.output, 2e-5), "");
        EXPECT_EQ(pattern_mismatch(r.weights, ref.weights, 2e-5), "");
        if (impl != AttentionImpl::kFused) return;
        EXPECT_EQ(pattern_mismatch(r.lse, ref.lse, 2e-5), "");
        const AttentionGrads g = scaled_dot_product_attention_backward(q, k, v, r.output, r.lse, d_out, in.options);
        // dQ = scale·dS·K is ~1e35 where K is huge and ~1e-38 where it is tiny (dK = scale·dSᵀ·Q the same with
        // Q): within 1e-4 of the tensor's largest element (float's rounding of dS times 3e38), plus a few
        // subnormal ulps for the tiny side
        EXPECT_EQ(pattern_mismatch(g.dq, ref_grads.dq, 1e-4 * largest(ref_grads.dq) + 1e-43), "");
        EXPECT_EQ(pattern_mismatch(g.dk, ref_grads.dk, 1e-4 * largest(ref_grads.dk) + 1e-43), "");
        EXPECT_EQ(pattern_mismatch(g.dv, ref_grads.dv, 1e-4), "");
      });
    }
  }
}

// A float mask of torch.finfo(float32).min (what much PyTorch code adds for "masked") leaves its keys visible, as
// PyTorch does: a row of nothing but that value weighs its keys equally (the mean of V, from the math), a row where
// other keys score finitely gives it weight 0 (the reference). The fused paths' base-2 scores had overflowed to −inf
// there and output 0. Rows 1-3 keep the reference's lse and gradients; row 0, whose every score lies beyond the
// float range in base 2, keeps finite ones (its d_out 0: nothing flows from it).
// A row redone term by term (an infinite value) scores as the fast path does: q·k = 4e38 overflows float before the
// scale 0.5 brings it back to 2e38, which the fast path never meets (it scales an operand first); the redone row had
// taken the overflowed dot, inf − inf = NaN, where the reference gives +inf. (The unfused path's BLAS applies the
// scale after its float sums: it still overflows there; the ± inf inputs' rule is the reference's, float for float.)
TEST(NonFinite, RedoneRowsScoreAsTheFastPathDoes) {
  for (int64_t Lq : {5, 3}) {  // the tiled path and the few-query path
    Tensor q({1, 1, Lq, 2}), k({1, 1, 2, 2}), v({1, 1, 2, 1});
    std::fill(q.f32(), q.f32() + q.numel(), 2e38f);
    std::fill(k.f32(), k.f32() + k.numel(), 1.0f);
    v.f32()[0] = 1.0f, v.f32()[1] = INFINITY;
    AttentionOptions o;
    o.scale = 0.5f;
    o.impl = AttentionImpl::kReference;
    const Tensor ref = scaled_dot_product_attention(q, k, v, o).output;
    ASSERT_TRUE(std::isinf(ref.f32()[0]) && ref.f32()[0] > 0) << ref.f32()[0];
    o.impl = AttentionImpl::kFused;
    for (auto level : test::simd_levels()) {
      test::SimdGuard guard(level);
      EXPECT_EQ(pattern_mismatch(scaled_dot_product_attention(q, k, v, o).output, ref, 0.0), "")
          << "Lq " << Lq << " " << detail::simd_level_name(level);
    }
  }
}

TEST(NonFinite, FloatMinimumMaskValuesWeighAsPyTorchs) {
  constexpr float kMin = -std::numeric_limits<float>::max();
  std::mt19937 rng(4);
  const int64_t Lq = 40, Lk = 6, D = 8;  // (more queries than the few-query path takes: the packed keys' path)
  Tensor q = test::random_tensor({1, 2, Lq, D}, rng), k = test::random_tensor({1, 2, Lk, D}, rng);
  Tensor v = test::random_tensor({1, 2, Lk, D}, rng), d_out = test::random_tensor({1, 2, Lq, D}, rng);
  // row i's kind i % 4: 0 every key kMin (its d_out 0), 1 keys 0-2 kMin, 2 key 5 −3e38, 3 key 1 +0.5
  const auto kind = [](int64_t i) { return i % 4; };
  Tensor mask({Lq, Lk});
  for (int64_t i = 0; i < Lq; ++i)
    for (int64_t j = 0; j < Lk; ++j) {
      const bool set = kind(i) == 0 || (kind(i) == 1 && j < 3) || (kind(i) == 2 && j == 5) || (kind(i) == 3 && j == 1);
      mask.f32()[i * Lk + j] = !set ? 0.0f : kind(i) == 2 ? -3e38f : kind(i) == 3 ? 0.5f : kMin;
    }
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < Lq; i += 4)
      for (int64_t d = 0; d < D; ++d) d_out.f32()[(h * Lq + i) * D + d] = 0.0f;
  test::CaseInputs in;
  in.q = q, in.k = k, in.v = v;
  in.options.mask = mask;
  in.options.return_weights = true;
  in.options.return_lse = true;
  in.options.impl = AttentionImpl::kReference;
  const AttentionResult ref = scaled_dot_product_attention(q, k, v, in.options);
  const AttentionGrads ref_grads = scaled_dot_product_attention_backward(q, k, v, d_out, in.options);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t d = 0; d < D; ++d) {
      double mean = 0.0;
      for (int64_t j = 0; j < Lk; ++j) mean += v.f32()[(h * Lk + j) * D + d] / static_cast<double>(Lk);
      EXPECT_NEAR(ref.output.f32()[(h * Lq + 4) * D + d], mean, 1e-6) << "the reference, head " << h;
    }
  const auto finite_rows = [&](const Tensor& lse) {  // lse [1, 2, Lq] of the rows of kinds 1-3
    std::vector<float> out;
    for (int64_t r = 0; r < 2 * Lq; ++r)
      if (kind(r % Lq) != 0) out.push_back(lse.f32()[r]);
    return Tensor::borrow({static_cast<int64_t>(out.size())}, DType::kFloat32, out.data()).clone();
  };
  for_every_fast_path(in, [&](AttentionImpl impl, const std::string& path) {
    SCOPED_TRACE(path);
    in.options.impl = impl;  // every path returns the weights too (the fused kernel in a pass of its own)
    in.options.return_weights = true;
    const AttentionResult rw = scaled_dot_product_attention(q, k, v, in.options);
    EXPECT_EQ(pattern_mismatch(rw.output, ref.output, 2e-5), "");
    EXPECT_EQ(pattern_mismatch(rw.weights, ref.weights, 2e-5), "");
    if (impl != AttentionImpl::kFused) return;
    in.options.return_weights = false;  // and without: weights change the fused kernel's plan (task keys, barriers)
    const AttentionResult r = scaled_dot_product_attention(q, k, v, in.options);
    EXPECT_EQ(pattern_mismatch(r.output, ref.output, 2e-5), "");
    EXPECT_EQ(pattern_mismatch(finite_rows(r.lse), finite_rows(ref.lse), 2e-5), "");
    EXPECT_TRUE(test::all_finite(r.lse));
    const AttentionGrads g = scaled_dot_product_attention_backward(q, k, v, r.output, r.lse, d_out, in.options);
    EXPECT_EQ(pattern_mismatch(g.dq, ref_grads.dq, 1e-4), "");
    EXPECT_EQ(pattern_mismatch(g.dk, ref_grads.dk, 1e-4), "");
    EXPECT_EQ(pattern_mismatch(g.dv, ref_grads.dv, 1e-4), "");
  });
}

// ALiBi slopes reach visible keys only: with a NaN or infinite slope a row whose keys the mask hides stays 0 (−inf
// minus NaN had made it NaN on the fast paths), as the reference's; rows that see keys follow the reference (NaN).
// 3 and 40 queries: the few-query path and the packed keys'.
TEST(NonFinite, NonFiniteAlibiSlopesNeverReachHiddenKeys) {
  for (const int64_t Lq : {3, 40}) {
    std::mt19937 rng(6);
    test::CaseInputs in;
    in.q = test::random_tensor({1, 1, Lq, 4}, rng), in.k = test::random_tensor({1, 1, 5, 4}, rng);
    in.v = test::random_tensor({1, 1, 5, 4}, rng);
    in.options.mask = Tensor({Lq, 5}, DType::kBool);  // rows 1, 4, 7, ... see nothing
    for (int64_t i = 0; i < Lq; ++i)
      for (int64_t j = 0; j < 5; ++j) in.options.mask.b8()[i * 5 + j] = i % 3 != 1;
    for (const float slope : {kNaN, kInf}) {
      in.options.alibi_slopes = Tensor({1});
      in.options.alibi_slopes.f32()[0] = slope;
      in.options.impl = AttentionImpl::kReference;
      const Tensor ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options).output;
      for (int64_t d = 0; d < 4; ++d) ASSERT_EQ(ref.f32()[1 * 4 + d], 0.0f) << "the reference, row 1";
      for_every_fast_path(in, [&](AttentionImpl impl, const std::string& path) {
        in.options.impl = impl;
        const Tensor out = scaled_dot_product_attention(in.q, in.k, in.v, in.options).output;
        EXPECT_EQ(pattern_mismatch(out, ref, 2e-5), "") << path << " slope " << slope << " Lq " << Lq;
      });
    }
  }
}

// MultiHeadAttention: NaN and Inf in the padded positions of the key/value input change no output.
TEST(NonFinite, MultiHeadAttentionIgnoresNaNAtPaddedPositions) {
  std::mt19937 rng(4);
  MultiHeadAttentionConfig cfg;
  cfg.embed_dim = 16, cfg.num_heads = 4;
  const MultiHeadAttention mha(cfg, 1);
  Tensor x = test::random_tensor({2, 5, 16}, rng), mem = test::random_tensor({2, 9, 16}, rng);
  MhaOptions o;
  o.key_padding_mask = Tensor({2, 9}, DType::kBool);
  for (int64_t j = 0; j < 18; ++j) o.key_padding_mask.b8()[j] = j % 9 >= 6;  // last 3 keys of each batch
  for (AttentionImpl impl : {AttentionImpl::kReference, AttentionImpl::kUnfused, AttentionImpl::kFused}) {
    o.impl = impl;
    const Tensor clean = mha.cross_attention(x, mem, o).output;
    Tensor dirty = mem.clone();
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t d = 0; d < 16; ++d) dirty.f32()[(b * 9 + 7) * 16 + d] = d % 2 ? kNaN : kInf;
    EXPECT_LE(test::max_abs_diff(mha.cross_attention(x, dirty, o).output, clean), 1e-6) << impl_name(impl);
  }
}

}  // namespace
}  // namespace attn
