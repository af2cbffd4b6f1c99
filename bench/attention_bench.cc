// Google Benchmark suite: scaled_dot_product_attention over lengths and head dimensions, each
// implementation; and the shared test case list (tests/attention_cases.h) through the fused path.
//   build/bench/attn_bench --benchmark_filter=Sdpa
#include <benchmark/benchmark.h>

#include <random>

#include "attention_cases.h"
#include "attn/attention.h"

namespace {

using namespace attn;

// args: L, D, causal, impl
void BM_Sdpa(benchmark::State& state) {
  const int64_t L = state.range(0), D = state.range(1);
  test::AttentionCase c;
  c.B = 1, c.H = 8, c.Hkv = 8, c.Lq = L, c.Lk = L, c.D = D, c.Dv = D;
  c.causal = state.range(2) ? CausalAlignment::kTopLeft : CausalAlignment::kNone;
  test::CaseInputs in = test::make_inputs(c, 1);
  in.options.impl = static_cast<AttentionImpl>(state.range(3));
  for (auto _ : state) benchmark::DoNotOptimize(scaled_dot_product_attention(in.q, in.k, in.v, in.options));
  const double flops = 4.0 * L * L * D * 8 / (state.range(2) ? 2.0 : 1.0);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Sdpa)
    ->ArgNames({"L", "D", "causal", "impl"})
    ->ArgsProduct({{256, 1024, 4096},
                   {64, 128},
                   {0, 1},
                   {static_cast<int64_t>(AttentionImpl::kFused), static_cast<int64_t>(AttentionImpl::kUnfused)}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The masked fused forward: key padding, a batch's last eighth of keys (a padded suffix: only the tiles that hold some
// of it need the masking pass) or every 7th key (every tile does), with a float mask [Lq, Lk] or ALiBi slopes beside
// the scattered padding. args: masks (0 suffix padding, 1 scattered, 2 scattered + float mask, 3 scattered + ALiBi),
// threads
void BM_SdpaMasked(benchmark::State& state) {
  const int64_t L = 1024, D = 64, H = 8;
  test::AttentionCase c;
  c.B = 1, c.H = H, c.Hkv = H, c.Lq = L, c.Lk = L, c.D = D, c.Dv = D;
  test::CaseInputs in = test::make_inputs(c, 3);
  in.options.key_padding_mask = Tensor({1, L}, DType::kBool);
  for (int64_t j = 0; j < L; ++j)
    in.options.key_padding_mask.b8()[j] = state.range(0) == 0 ? j >= L - L / 8 : j % 7 == 3;
  std::mt19937 rng(4);
  const auto uniform = [&](Shape shape) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    Tensor t(std::move(shape));
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = u(rng);
    return t;
  };
  if (state.range(0) == 2) in.options.mask = uniform({L, L});
  if (state.range(0) == 3) in.options.alibi_slopes = uniform({H});
  in.options.num_threads = static_cast<int>(state.range(1));
  for (auto _ : state) benchmark::DoNotOptimize(scaled_dot_product_attention(in.q, in.k, in.v, in.options));
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * L * L * D * H * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_SdpaMasked)
    ->ArgNames({"masks", "threads"})
    ->ArgsProduct({{0, 1, 2, 3}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Decode: one query against a long cache.
void BM_SdpaDecode(benchmark::State& state) {
  test::AttentionCase c;
  c.B = 1, c.H = 32, c.Hkv = 32, c.Lq = 1, c.Lk = state.range(0), c.D = 128, c.Dv = 128;
  c.causal = CausalAlignment::kBottomRight;
  test::CaseInputs in = test::make_inputs(c, 2);
  for (auto _ : state) benchmark::DoNotOptimize(scaled_dot_product_attention(in.q, in.k, in.v, in.options));
  state.counters["KV GB/s"] =
      benchmark::Counter(2.0 * 32 * c.Lk * 128 * 4 * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_SdpaDecode)->Arg(1024)->Arg(8192)->Unit(benchmark::kMicrosecond)->UseRealTime();

// The test case list, timed (the same cases the correctness tests run).
void BM_TestCases(benchmark::State& state) {
  const auto cases = test::attention_cases(0);
  std::vector<test::CaseInputs> inputs;
  for (size_t i = 0; i < cases.size(); ++i) inputs.push_back(test::make_inputs(cases[i], static_cast<uint32_t>(i)));
  for (auto _ : state)
    for (auto& in : inputs) benchmark::DoNotOptimize(scaled_dot_product_attention(in.q, in.k, in.v, in.options));
}
BENCHMARK(BM_TestCases)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
