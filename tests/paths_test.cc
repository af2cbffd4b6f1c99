// Every fast path against the reference (the spec) on the shared case list: the unfused BLAS path,
// and the fused kernel at every SIMD level the machine has, with one and two threads. Also: the fused
// kernel is deterministic for a given thread count, and the vectorised exp is accurate.
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "attention_cases.h"
#include "attn/attention.h"
#include "cpu/attention_fused.h"
#include "simd_levels.h"
#include "test_util.h"

namespace attn {
namespace {

constexpr double kTol = 2e-5;  // float32 kernels vs the double reference, inputs in [-1, 1]

// "" when lse matches the reference's: −inf exactly where a row sees no key, else within a few float ulps of the
// row's value (it reaches ~60 with ALiBi)
std::string lse_mismatch(const Tensor& lse, const Tensor& ref) {
  if (lse.shape() != ref.shape()) return "shape " + shape_str(lse.shape()) + " vs " + shape_str(ref.shape());
  for (int64_t i = 0; i < lse.numel(); ++i) {
    const float x = lse.f32()[i], r = ref.f32()[i];
    if (std::isinf(r) ? x != r : !(std::fabs(x - r) <= 1e-5 * std::max(1.0f, std::fabs(r))))
      return "row " + std::to_string(i) + ": " + std::to_string(x) + " vs reference " + std::to_string(r);
  }
  return "";
}

TEST(Paths, EveryPathMatchesTheReference) {
  const auto cases = test::attention_cases(test::test_volume(150, 40));
  ASSERT_GT(cases.size(), test::small_test_volume() ? 150u : 200u);
  const detail::SimdLevel saved = detail::simd_level_active();
  int checked = 0;
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    test::CaseInputs in = test::make_inputs(c, static_cast<uint32_t>(n));
    in.options.impl = AttentionImpl::kReference;
    in.options.return_lse = true;
    const AttentionResult ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
    ASSERT_TRUE(test::all_finite(ref.output)) << c.name();
    struct Run {
      AttentionImpl impl;
      detail::SimdLevel simd;
      int threads;
      int64_t query_tile = 0;  // > 0: the fused forward's query rows forced (detail::force_fused_query_tile)
      bool task_keys = false;  // each task packs its own head's keys (detail::force_task_keys)
      bool by_tasks = false;   // no packing pass: the tasks pack the shared keys (detail::force_packing_by_tasks)
    };
    std::vector<Run> runs = {{AttentionImpl::kUnfused, saved, 2}};
    // The fused kernel as each call chooses its tiles, and with long query tiles forced (as for long K and V,
    // TileTraits::kBqLong), 160 rows: run 64 rows at a time, they put a task's second and third (partial) sub-tile to
    // work on the case list's lengths (up to 300), and its decode cases (key splits) keep 160 rows of partial state
    // per task. Each with the tasks packing their own head's keys too (as for many short heads), and, on 2 threads,
    // with the shared keys packed by the tasks alone, no packing pass first (as a late thread leaves them).
    // Under the sanitizers each case takes a third of each target's ten runs (test::config_sampled).
    for (auto level : test::simd_levels()) {
      size_t config = 0;
      const auto add = [&](const Run& run) {
        if (test::config_sampled(n, config++, 3)) runs.push_back(run);
      };
      for (int threads : {1, 2})
        for (int64_t query_tile : {0, 160}) {
          for (bool task_keys : {false, true}) add({AttentionImpl::kFused, level, threads, query_tile, task_keys});
          if (threads == 2) add({AttentionImpl::kFused, level, threads, query_tile, false, true});
        }
    }
    // Keys of the same shape but other values: a call on them leaves its packed keys in the call's shared buffer, so a
    // by_tasks run that failed to pack a tile would read them.
    Tensor other_k = in.k.clone();
    for (int64_t i = 0; i < other_k.numel(); ++i) other_k.f32()[i] = -other_k.f32()[i];
    for (const Run& run : runs) {
      SCOPED_TRACE(c.name() + " impl=" + impl_name(run.impl) + " simd=" + detail::simd_level_name(run.simd) +
                   " threads=" + std::to_string(run.threads) + " query_tile=" + std::to_string(run.query_tile) +
                   " task_keys=" + std::to_string(run.task_keys) + " by_tasks=" + std::to_string(run.by_tasks));
      detail::force_simd_level(run.simd);
      detail::force_fused_query_tile(run.query_tile);
      detail::force_task_keys(run.task_keys);
      in.options.impl = run.impl;
      in.options.num_threads = run.threads;
      // weights only where the run's packing is the default: a call that returns weights packs the shared keys and
      // waits between phases, so with them the task_keys and by_tasks runs had fallen back to the default path
      const bool weights = c.weights && !run.task_keys && !run.by_tasks;
      in.options.return_weights = weights;
      if (run.by_tasks) scaled_dot_product_attention(in.q, other_k, in.v, in.options);
      detail::force_packing_by_tasks(run.by_tasks);
      const AttentionResult r = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
      detail::force_fused_query_tile(0);
      detail::force_task_keys(false);
      detail::force_packing_by_tasks(false);
      EXPECT_LE(test::max_abs_diff(r.output, ref.output), kTol);
      EXPECT_EQ(lse_mismatch(r.lse, ref.lse), "");
      if (weights) {
        EXPECT_LE(test::max_abs_diff(r.weights, ref.weights), kTol);
      }
      ++checked;
    }
  }
  detail::force_simd_level(saved);
  // (per SIMD level: ~600 runs of the sampled case list, ~1300 of the whole one)
  EXPECT_GT(checked, static_cast<int>(test::simd_levels().size()) * (test::small_test_volume() ? 500 : 1300));
}

TEST(Paths, FusedIsDeterministicForAThreadCount) {
  for (const test::AttentionCase& c : test::attention_cases(20)) {
    test::CaseInputs in = test::make_inputs(c, 99);
    in.options.impl = AttentionImpl::kFused;
    in.options.num_threads = 2;
    const AttentionResult a = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
    const AttentionResult b = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
    EXPECT_EQ(std::memcmp(a.output.raw(), b.output.raw(), a.output.nbytes()), 0) << c.name();
  }
}

// A weight is 0 exactly where a mask hides the key: causal ranges, windows, key padding, boolean masks, the float
// masks' −inf entries, rows with nothing visible. Those are the places where the double-precision reference's weight is
// exactly 0 (a visible key's weight cannot underflow there: inputs in [-1, 1], finite float-mask entries of moderate
// size). On every path and SIMD level.
TEST(Paths, MaskedWeightsAreExactlyZero) {
  int zeros = 0;
  for (const test::AttentionCase& c : test::attention_cases(40)) {
    if (!c.weights) continue;
    test::CaseInputs in = test::make_inputs(c, 5);
    in.options.impl = AttentionImpl::kReference;
    const Tensor ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options).weights;
    for (int64_t i = 0; i < ref.numel(); ++i) zeros += ref.f32()[i] == 0.0f;
    // the reference itself, against an independent rule for causal ranges and key padding
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t i = 0; i < c.Lq; ++i)
          for (int64_t j = 0; j < c.Lk; ++j) {
            const int64_t off = c.causal == CausalAlignment::kTopLeft ? 0 : c.Lk - c.Lq;
            const bool hidden_by_causal = c.causal != CausalAlignment::kNone && j > i + off;
            const bool padded = c.key_padding && in.options.key_padding_mask.b8()[b * c.Lk + j];
            if (hidden_by_causal || padded) {
              ASSERT_EQ(ref.f32()[((b * c.H + h) * c.Lq + i) * c.Lk + j], 0.0f) << c.name();
            }
          }
    for (AttentionImpl impl : {AttentionImpl::kUnfused, AttentionImpl::kFused})
      for (auto level : test::simd_levels()) {
        if (impl != AttentionImpl::kFused && level != detail::simd_level_supported()) continue;
        test::SimdGuard guard(level);
        in.options.impl = impl;
        const Tensor w = scaled_dot_product_attention(in.q, in.k, in.v, in.options).weights;
        for (int64_t i = 0; i < ref.numel(); ++i)
          if (ref.f32()[i] == 0.0f) {
            ASSERT_EQ(w.f32()[i], 0.0f) << c.name() << " " << impl_name(impl) << " " << detail::simd_level_name(level)
                                        << " element " << i;
          }
      }
  }
  EXPECT_GT(zeros, 10000);
}

// Rows whose maximum rises (or falls) across key tiles by less and by more than the fused kernel's lazy-rescaling
// threshold (test::row_maxima_across_tiles): plain, causal, with dropout, and with 3 queries (the few-query path,
// whose key splits merge their rows' states), on every target with 1 and 2 threads.
TEST(Paths, RowMaximaThatMoveAcrossKeyTilesMatchTheReference) {
  struct Variant {
    int64_t Lq;
    CausalAlignment causal;
    float dropout_p;
  };
  const detail::SimdLevel saved = detail::simd_level_active();
  for (const Variant& c : {Variant{33, CausalAlignment::kNone, 0.0f}, Variant{33, CausalAlignment::kBottomRight, 0.0f},
                           Variant{33, CausalAlignment::kNone, 0.2f}, Variant{3, CausalAlignment::kNone, 0.0f}}) {
    const auto [q, k, v] = test::row_maxima_across_tiles(c.Lq);
    AttentionOptions o;
    o.scale = 1.0f;
    o.return_lse = true;
    o.causal = c.causal;
    o.dropout_p = c.dropout_p;
    o.dropout_seed = 3;
    o.impl = AttentionImpl::kReference;
    const AttentionResult ref = scaled_dot_product_attention(q, k, v, o);
    o.impl = AttentionImpl::kFused;
    for (auto level : test::simd_levels())
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string("simd=") + detail::simd_level_name(level) + " threads=" + std::to_string(threads) +
                     " Lq=" + std::to_string(c.Lq) + " causal=" + causal_name(c.causal) +
                     " dropout=" + std::to_string(c.dropout_p));
        detail::force_simd_level(level);
        o.num_threads = threads;
        const AttentionResult r = scaled_dot_product_attention(q, k, v, o);
        EXPECT_LE(test::max_abs_diff(r.output, ref.output), kTol);
        EXPECT_LE(test::max_abs_diff(r.lse, ref.lse), 1e-4);  // lse reaches ~60: a few float ulps
      }
  }
  detail::force_simd_level(saved);
}

// The exponentials of each compiled target, in the order of SimdLevel; those this processor can run.
using ExpFn = float (*)(float);
std::vector<std::pair<detail::SimdLevel, ExpFn>> runnable(ExpFn scalar, ExpFn avx2, ExpFn avx512) {
  std::vector<std::pair<detail::SimdLevel, ExpFn>> fns = {
      {detail::SimdLevel::kScalar, scalar}, {detail::SimdLevel::kAvx2, avx2}, {detail::SimdLevel::kAvx512, avx512}};
  std::erase_if(
      fns, [](const auto& f) { return static_cast<int>(f.first) > static_cast<int>(detail::simd_level_supported()); });
  return fns;
}

// The largest |fn(x) − want(x)| / want(x) over x = lo, lo + step, ... <= hi, each x rounded to float first.
double worst_relative_error(ExpFn fn, double (*want)(double), double lo, double hi, double step) {
  double worst = 0.0;
  for (double x = lo; x <= hi; x += step) {
    const double w = want(static_cast<double>(static_cast<float>(x)));
    worst = std::max(worst, std::fabs(fn(static_cast<float>(x)) - w) / w);
  }
  return worst;
}

TEST(Simd, ExpIsAccurateOnEveryTarget) {
  for (const auto& [level, fn] :
       runnable(detail::scalar::exp_for_test, detail::avx2::exp_for_test, detail::avx512::exp_for_test)) {
    SCOPED_TRACE(detail::simd_level_name(level));
    EXPECT_LT(worst_relative_error(
                  fn, [](double x) { return std::exp(x); }, -87.0, 88.0, 0.0137),
              2e-7);
    EXPECT_EQ(fn(-INFINITY), 0.0f);
    EXPECT_EQ(fn(-100.0f), 0.0f);
    EXPECT_EQ(fn(0.0f), 1.0f);
  }
}

// The fused kernel's softmax exponential: scores in base 2 (log2(e) folded into the scale).
TEST(Simd, Exp2IsAccurateOnEveryTarget) {
  for (const auto& [level, fn] :
       runnable(detail::scalar::exp2_for_test, detail::avx2::exp2_for_test, detail::avx512::exp2_for_test)) {
    SCOPED_TRACE(detail::simd_level_name(level));
    EXPECT_LT(worst_relative_error(
                  fn, [](double x) { return std::exp2(x); }, -125.0, 127.0, 0.00731),
              2e-7);
    EXPECT_EQ(fn(-INFINITY), 0.0f);
    EXPECT_EQ(fn(-200.0f), 0.0f);
    EXPECT_EQ(fn(0.0f), 1.0f);
    EXPECT_EQ(fn(-3.0f), 0.125f);
    EXPECT_TRUE(std::isnan(fn(NAN)));
  }
}

// Its variant for tiles without hidden keys, whose arguments s − max are finite and <= 0.
TEST(Simd, Exp2FiniteIsAccurateOnEveryTarget) {
  for (const auto& [level, fn] : runnable(detail::scalar::exp2_finite_for_test, detail::avx2::exp2_finite_for_test,
                                          detail::avx512::exp2_finite_for_test)) {
    SCOPED_TRACE(detail::simd_level_name(level));
    EXPECT_LT(worst_relative_error(
                  fn, [](double x) { return std::exp2(x); }, -125.0, 0.0, 0.00731),
              2e-7);
    EXPECT_EQ(fn(-200.0f), 0.0f);
    EXPECT_EQ(fn(-1000.0f), 0.0f);
    EXPECT_EQ(fn(0.0f), 1.0f);
    EXPECT_TRUE(std::isnan(fn(NAN)));
  }
}

}  // namespace
}  // namespace attn
