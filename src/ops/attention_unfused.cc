// The unfused path: two BLAS GEMMs around a materialised [Lq, Lk] score matrix per (batch, head).
// Simple and fast for short sequences; its memory grows with Lq·Lk, which is what the fused kernel
// (cpu/attention_fused.cc) avoids. Also the "unfused" peer in the benchmarks.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attn/error.h"
#include "cpu/threads.h"
#include "ops/attention_problem.h"
#include "ops/blas_call.h"

namespace attn::detail {

// Softmax of one masked row in place; a row with every key hidden becomes all zeros. Non-finite scores
// follow attn/attention.h: a NaN (or +inf) visible score makes every visible weight NaN, hidden keys keep 0.
// Returns the row's log-sum-exp (−inf for an empty row, NaN for a poisoned one).
static float softmax_row(float* s, int64_t n) {
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  float m = kHidden;
  bool any_nan = false;
  for (int64_t j = 0; j < n; ++j) {
    m = s[j] > m ? s[j] : m;
    any_nan |= std::isnan(s[j]);
  }
  if (m == kHidden && !any_nan) {
    for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
    return kHidden;
  }
  if (any_nan || m == -kHidden) {  // Σ exp(s − m) is NaN: every visible weight is NaN
    for (int64_t j = 0; j < n; ++j) s[j] = s[j] == kHidden ? 0.0f : std::numeric_limits<float>::quiet_NaN();
    return std::numeric_limits<float>::quiet_NaN();
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = s[j] == kHidden ? 0.0f : std::exp(s[j] - m);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  return m + std::log(sum);
}

// A value is only ever multiplied by a nonzero weight (attn/attention.h): the GEMM also multiplies the
// zero weights of hidden keys, so a NaN or Inf value there would leak into the row. Such a row is the
// only one that comes out non-finite while its weights are finite; it is recomputed here, term by term.
static void recompute_nonfinite_rows(const AttentionProblem& p, const float* P, const float* v, float* o) {
  for (int64_t i = 0; i < p.Lq; ++i) {
    float* oi = o + i * p.o_sl;
    bool finite = true;
    for (int64_t d = 0; d < p.Dv; ++d) finite &= std::isfinite(oi[d]);
    if (finite) continue;
    const float* Pi = P + i * p.Lk;
    std::fill(oi, oi + p.Dv, 0.0f);
    for (int64_t j = 0; j < p.Lk; ++j) {
      if (Pi[j] == 0.0f) continue;
      for (int64_t d = 0; d < p.Dv; ++d) oi[d] += Pi[j] * v[j * p.v_sl + d];
    }
  }
}

void attention_unfused(const AttentionProblem& p) {
  // scores: [Lq, Lk], reused across heads and calls (first touch of fresh pages is expensive)
  thread_local std::vector<float> workspace;
  const size_t need = static_cast<size_t>(p.Lq * p.Lk);
  if (p.Lq == 0) return;
  // num_threads for the GEMMs too (OpenBLAS's OpenMP pool), not only the softmax loop: they had run on every core
  const ThreadScope threads(p.num_threads);
  // With dropout the GEMM reads the dropped weights and `weights` keeps the ones before dropout.
  const bool weights_in_place = p.weights != nullptr && !p.dropout.active();
  // A head's scores past 2^31 floats (8 GiB): refused, naming the sizes, rather than left to fail as an allocation
  // (q, k, v of 4 MB each at Lq = Lk = 2^20 had asked for 4 TiB: std::bad_alloc)
  constexpr int64_t kMaxScores = int64_t{1} << 31;
  if (!weights_in_place && p.Lq * p.Lk > kMaxScores)
    throw ArgumentError("scaled_dot_product_attention (impl = unfused): a head's scores [Lq, Lk] = [" +
                        std::to_string(p.Lq) + ", " + std::to_string(p.Lk) + "] would take " +
                        std::to_string(p.Lq * p.Lk / (int64_t{1} << 28)) +
                        " GiB; the unfused path materialises them (impl = fused needs memory O(Lq + Lk))");
  if (!weights_in_place && workspace.size() < need) workspace.resize(need);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      float* s = weights_in_place ? p.weights + (b * p.H + h) * p.Lq * p.Lk : workspace.data();
      const float* q = p.q + b * p.q_sb + h * p.q_sh;             // [Lq, D] rows q_sl apart
      const float* k = p.k + b * p.k_sb + p.kv_head(h) * p.k_sh;  // [Lk, D]
      const float* v = p.v + b * p.v_sb + p.kv_head(h) * p.v_sh;  // [Lk, Dv]
      float* o = p.o + b * p.o_sb + h * p.o_sh;                   // [Lq, Dv]
      if (p.Lk == 0 || p.D == 0) {
        for (int64_t i = 0; i < p.Lq * p.Lk; ++i) s[i] = 0.0f;
      } else {
        // s = scale · Q·Kᵀ : [Lq, Lk]
        blas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p.Lq, p.Lk, p.D, p.scale, q, p.q_sl, k, p.k_sl, 0.0f, s,
                   p.Lk, "scaled_dot_product_attention (unfused): Q·Kᵀ");
      }
      // s += M ; s = softmax(s) row by row
#pragma omp parallel for schedule(static) num_threads(resolve_threads(p.num_threads))
      for (int64_t i = 0; i < p.Lq; ++i) {
        float* row = s + i * p.Lk;
        mask_row_segment(p, b, h, i, 0, p.Lk, row);
        const float lse = softmax_row(row, p.Lk);
        if (p.lse) p.lse[(b * p.H + h) * p.Lq + i] = lse;
        if (p.dropout.active()) {
          if (p.weights) std::copy(row, row + p.Lk, p.weights + ((b * p.H + h) * p.Lq + i) * p.Lk);
          dropout_row_segment(p.dropout, b, h, i, 0, p.Lk, row);
        }
      }
      // o = P·V : [Lq, Dv]
      if (p.Lk == 0) {
        for (int64_t i = 0; i < p.Lq; ++i)
          for (int64_t d = 0; d < p.Dv; ++d) o[i * p.o_sl + d] = 0.0f;
      } else if (p.Lq > 0 && p.Dv > 0) {
        blas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p.Lq, p.Dv, p.Lk, 1.0f, s, p.Lk, v, p.v_sl, 0.0f, o,
                   p.o_sl, "scaled_dot_product_attention (unfused): P·V");
        recompute_nonfinite_rows(p, s, v, o);
      }
    }
}

}  // namespace attn::detail
