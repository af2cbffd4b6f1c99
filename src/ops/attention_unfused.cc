// The unfused path: two BLAS GEMMs around a materialised [Lq, Lk] score matrix per (batch, head).
// Simple and fast for short sequences; its memory grows with Lq·Lk, which is what the fused kernel
// (cpu/attention_fused.cc) avoids. Also the "unfused" peer in the benchmarks.
#include <cblas.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/threads.h"
#include "ops/attention_problem.h"

namespace attn::detail {

// Softmax of one masked row in place; a row with every key hidden becomes all zeros.
static void softmax_row(float* s, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  if (m == -std::numeric_limits<float>::infinity()) {
    for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
    return;
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - m);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

void attention_unfused(const AttentionProblem& p) {
  // scores: [Lq, Lk], reused across heads and calls (first touch of fresh pages is expensive)
  thread_local std::vector<float> workspace;
  const size_t need = static_cast<size_t>(p.Lq * p.Lk);
  if (p.Lq == 0) return;
  if (p.weights == nullptr && workspace.size() < need) workspace.resize(need);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      float* s = p.weights ? p.weights + (b * p.H + h) * p.Lq * p.Lk : workspace.data();
      const float* q = p.q + b * p.q_sb + h * p.q_sh;              // [Lq, D] rows q_sl apart
      const float* k = p.k + b * p.k_sb + p.kv_head(h) * p.k_sh;   // [Lk, D]
      const float* v = p.v + b * p.v_sb + p.kv_head(h) * p.v_sh;   // [Lk, Dv]
      float* o = p.o + b * p.o_sb + h * p.o_sh;                    // [Lq, Dv]
      if (p.Lk == 0 || p.D == 0) {
        for (int64_t i = 0; i < p.Lq * p.Lk; ++i) s[i] = 0.0f;
      } else {
        // s = scale · Q·Kᵀ : [Lq, Lk]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(p.Lq), static_cast<int>(p.Lk),
                    static_cast<int>(p.D), p.scale, q, static_cast<int>(p.q_sl), k, static_cast<int>(p.k_sl), 0.0f, s,
                    static_cast<int>(p.Lk));
      }
      // s += M ; s = softmax(s) row by row
#pragma omp parallel for schedule(static) num_threads(resolve_threads(p.num_threads))
      for (int64_t i = 0; i < p.Lq; ++i) {
        float* row = s + i * p.Lk;
        mask_row_segment(p, b, h, i, 0, p.Lk, row);
        softmax_row(row, p.Lk);
      }
      // o = P·V : [Lq, Dv]
      if (p.Lk == 0) {
        for (int64_t i = 0; i < p.Lq; ++i)
          for (int64_t d = 0; d < p.Dv; ++d) o[i * p.o_sl + d] = 0.0f;
      } else if (p.Lq > 0 && p.Dv > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(p.Lq), static_cast<int>(p.Dv),
                    static_cast<int>(p.Lk), 1.0f, s, static_cast<int>(p.Lk), v, static_cast<int>(p.v_sl), 0.0f, o,
                    static_cast<int>(p.o_sl));
      }
    }
}

}  // namespace attn::detail
