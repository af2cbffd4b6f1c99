// The readable spec of scaled dot-product attention: plain loops, double precision, one query row at a
// time. Every fast path is tested against this file; it is never deleted or optimised.
#include <cmath>
#include <limits>
#include <vector>

#include "ops/attention_problem.h"

namespace attn::detail {

// Score of key j for query i, or −inf when the masking rule in attn/attention.h hides it.
double reference_score(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const double kHidden = -std::numeric_limits<double>::infinity();
  int64_t lo, hi;
  p.key_range(i, &lo, &hi);
  if (j < lo || j >= hi) return kHidden;                             // causal / window
  if (p.key_padding && p.key_padding[b * p.Lk + j]) return kHidden;  // padding
  if (p.bool_mask && !p.bool_mask[p.mask_index(b, h, i, j)]) return kHidden;
  if (p.float_mask && p.float_mask[p.mask_index(b, h, i, j)] == kHidden) return kHidden;  // whatever q·k is
  // q_i · k_j, with K's head chosen by grouped-query attention
  const float* qi = p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl;
  const float* kj = p.k + b * p.k_sb + p.kv_head(h) * p.k_sh + j * p.k_sl;
  double dot = 0.0;
  for (int64_t d = 0; d < p.D; ++d) dot += static_cast<double>(qi[d]) * kj[d];
  double s = static_cast<double>(p.scale) * dot;
  if (p.float_mask) s += p.float_mask[p.mask_index(b, h, i, j)];
  if (p.alibi_slopes) s -= static_cast<double>(p.alibi_slopes[h]) * std::fabs(static_cast<double>(i + p.offset() - j));
  return s;
}

void attention_reference(const AttentionProblem& p) {
  std::vector<double> s(static_cast<size_t>(p.Lk)), e(static_cast<size_t>(p.Lk));  // scores, exp(s − m)
  std::vector<double> acc(static_cast<size_t>(p.Dv));
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t i = 0; i < p.Lq; ++i) {
        // s = scale · q_i·Kᵀ + M ; m = max_j s_j over the scores that are numbers
        double m = -std::numeric_limits<double>::infinity();
        bool any_nan = false;
        for (int64_t j = 0; j < p.Lk; ++j) {
          s[j] = reference_score(p, b, h, i, j);
          if (s[j] > m) m = s[j];
          any_nan |= std::isnan(s[j]);
        }
        // A row with no visible key (every score −inf, none NaN) attends to nothing: output and weights 0.
        // Otherwise IEEE arithmetic over the visible keys: w_j = exp(s_j − m) / Σ exp(s − m), so a NaN or
        // +inf visible score makes the sum NaN and every visible weight NaN; a hidden key (s_j = −inf)
        // has weight 0 whatever the row holds.
        const bool empty = m == -std::numeric_limits<double>::infinity() && !any_nan;
        double sum = 0.0;
        for (int64_t j = 0; j < p.Lk; ++j) {
          e[j] = empty || s[j] == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(s[j] - m);
          sum += e[j];
        }
        if (p.lse) p.lse[(b * p.H + h) * p.Lq + i] = static_cast<float>(empty ? m : m + std::log(sum));
        // out_i = Σ_j w_j v_j over the keys with w_j ≠ 0: a value is only ever multiplied by a nonzero
        // weight, so a NaN or Inf in a hidden key's value never reaches the output. With dropout, w_j is
        // zeroed where the weight is dropped and scaled by 1/(1 − p) where it survives (after `weights`).
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < p.Lk; ++j) {
          double w = empty || s[j] == -std::numeric_limits<double>::infinity() ? 0.0 : e[j] / sum;
          if (p.weights) p.weights[((b * p.H + h) * p.Lq + i) * p.Lk + j] = static_cast<float>(w);
          if (p.dropout.active()) w = dropout_keeps(p.dropout, b, h, i, j) ? w * p.dropout.scale : 0.0;
          if (w == 0.0) continue;
          const float* vj = p.v + b * p.v_sb + p.kv_head(h) * p.v_sh + j * p.v_sl;
          for (int64_t d = 0; d < p.Dv; ++d) acc[d] += w * vj[d];
        }
        float* oi = p.o + b * p.o_sb + h * p.o_sh + i * p.o_sl;
        for (int64_t d = 0; d < p.Dv; ++d) oi[d] = static_cast<float>(acc[d]);
      }
}

}  // namespace attn::detail
