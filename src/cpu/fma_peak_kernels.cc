// The machine's FMA ceiling, measured: independent chains of vector FMAs on registers, nothing from
// memory, at the widest vectors of the instruction set this file is compiled for (-DATTN_TARGET=...).
// Every benchmark states its share of this figure (attn bench peak, attn bench sdpa). Also the tests' probes of this
// target's vector exponentials (simd.h: exp, exp2, exp2_finite).
#include <omp.h>

#include <algorithm>
#include <chrono>

#include "cpu/attention_fused.h"
#include "cpu/simd.h"
#include "cpu/threads.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512|avx2|scalar"
#endif

namespace attn::detail::ATTN_TARGET {

double fma_peak_gflops(int threads, double seconds) {
  using simd::Vec;
  // 12 chains hide a 4-cycle FMA latency on 2 FMA ports (and leave AVX2's 16 registers room for a, b)
  constexpr int kChains = 12;
  constexpr int64_t kInner = 1 << 14;
  const int t = resolve_threads(threads);
  double total_flops = 0.0;
  float sink = 0.0f;
#pragma omp parallel num_threads(t) reduction(+ : total_flops) reduction(+ : sink)
  {
    Vec acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = Vec::set1(static_cast<float>(c) * 1e-3f);
    const Vec a = Vec::set1(0.999999f), b = Vec::set1(1e-7f);
#pragma omp barrier
    const auto t0 = std::chrono::steady_clock::now();
    int64_t rounds = 0;
    do {
      for (int64_t i = 0; i < kInner; ++i)
        for (int c = 0; c < kChains; ++c) acc[c] = Vec::fmadd(acc[c], a, b);
      ++rounds;
    } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    total_flops += 2.0 * Vec::W * kChains * static_cast<double>(kInner * rounds) / s;  // this thread's FLOP/s
    float keep[Vec::W];
    for (int c = 1; c < kChains; ++c) acc[0] = acc[0] + acc[c];
    acc[0].store(keep);
    for (float v : keep) sink += v;
  }
  // every lane of every chain feeds `sink`, whose value decides the result: no FMA can be optimised away
  return sink == 12345.0f ? 0.0 : total_flops / 1e9;
}

namespace {
// x in every lane of one vector through f (an exponential of simd.h), lane 0 out.
template <class F>
float lane0_of(float x, F f) {
  using simd::Vec;
  float buf[Vec::W];
  std::fill(buf, buf + Vec::W, x);
  f(Vec::load(buf)).store(buf);
  return buf[0];
}
}  // namespace

float exp_for_test(float x) {
  return lane0_of(x, [](simd::Vec v) { return simd::exp(v); });
}
float exp2_for_test(float x) {
  return lane0_of(x, [](simd::Vec v) { return simd::exp2(v); });
}
float exp2_finite_for_test(float x) {
  return lane0_of(x, [](simd::Vec v) { return simd::exp2_finite(v); });
}

}  // namespace attn::detail::ATTN_TARGET
