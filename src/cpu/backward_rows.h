// Internal: what the float32 fused backward (attention_backward_kernels.cc) and the bfloat16 one
// (attention_lowp_backward_kernels.cc) share: the work division's key chunks and key blocks per pass, the query rows a
// key block meets,
// and the row passes from S and dP to P, P̃ and dS (float32, on either path). Included by kernel files compiled
// with ATTN_TARGET.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/attention_fused.h"
#include "cpu/attention_problem.h"
#include "cpu/dropout.h"
#include "cpu/simd.h"
#include "cpu/tile_kernels.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512|avx2|scalar|avx512bf16"
#endif

namespace attn::detail::ATTN_TARGET {

// Key blocks per pass over the query tiles (both backwards): a pass reads every query tile's Q, dO, lse and Δ and
// reads and writes its dQ rows; span key blocks per pass divide that traffic by span. At most kMaxSpan blocks, their
// buffers (packed K and V, dK, dV) within kSpanBytes, and only where a pass's query side takes kSpanFromBytes: below,
// it stays in the caches between passes and spans cost 1–3% (L 1024–2048). Zen 5 (session 15), same-built A/Bs,
// float32 backward alone, 1 thread, against one block per pass: H 1, L 16384, D 128: a 512 KB budget (2 blocks) +13%,
// 1 MB +21%, 2 MB +26%, 4 MB +29%, 16 MB −15% (the blocks' buffers leave the L3; chained A/Bs); 2 MB: D 64 +17%,
// 2 threads +26%; bfloat16 +23% (D 128), +9% (D 64). H 2, L 4096: 0 to +15%, depending on how busy the machine's other
// tenants kept the L3. 16 threads share one L3: unmeasured on the Xeon (A/B ATTN_SWEEP_BWD_SPAN_KB and _FROM_KB there
// with bench/cpu_tile_sweep.sh, which rebuilds the float32 kernel only).
#ifndef ATTN_SWEEP_BWD_SPAN  // bench/cpu_tile_sweep.sh variants
#define ATTN_SWEEP_BWD_SPAN 16
#endif
#ifndef ATTN_SWEEP_BWD_SPAN_KB
#define ATTN_SWEEP_BWD_SPAN_KB 2048
#endif
#ifndef ATTN_SWEEP_BWD_SPAN_FROM_KB
#define ATTN_SWEEP_BWD_SPAN_FROM_KB 8192
#endif
inline constexpr int64_t kMaxSpan = ATTN_SWEEP_BWD_SPAN;
inline constexpr int64_t kSpanBytes = int64_t{ATTN_SWEEP_BWD_SPAN_KB} << 10;
inline constexpr int64_t kSpanFromBytes = int64_t{ATTN_SWEEP_BWD_SPAN_FROM_KB} << 10;

// The span of a call whose key blocks need block_bytes of buffers each and whose passes read and write pass_bytes
// of query side; detail::force_backward_span (tests) overrides it.
inline int64_t backward_span(int64_t block_bytes, int64_t pass_bytes) {
  if (const int64_t forced = forced_backward_span(); forced > 0) return std::min(forced, kMaxSpan);
  if (pass_bytes < kSpanFromBytes) return 1;
  return std::clamp<int64_t>(kSpanBytes / std::max<int64_t>(block_bytes, 1), 1, kMaxSpan);
}

// Key chunks per (batch, kv head), on more than one thread: with fewer (batch, kv head) pairs than 2 per thread the
// keys split into chunks so every thread works; and while the tasks (pairs · chunks, about equal) would leave the
// threads' last round part empty, more chunks: the fewest that keep the threads at least 95% busy, else the busiest,
// up to one chunk a key block. 5 pairs on 2 threads took 3 rounds for 2.5 rounds of work, as long as 6 pairs did
// (Zen 5, H 5, L 1024, D 64: 72% of the peak against 85–89% at H 3, 4, 6). The chunks' dQ buffers (dq_floats each)
// stay under 512 MB.
inline int64_t key_chunks(const AttentionProblem& p, int threads, int64_t key_blocks, int64_t dq_floats) {
  const int64_t pairs = p.B * p.Hkv;
  if (pairs <= 0 || key_blocks <= 1 || threads <= 1) return 1;
  int64_t chunks = pairs < 2 * threads ? std::min<int64_t>((2 * threads + pairs - 1) / pairs, key_blocks) : 1;
  const auto busy = [&](int64_t c) {  // the threads' busy share with pairs · c equal tasks
    const int64_t tasks = pairs * c, rounds = (tasks + threads - 1) / threads;
    return static_cast<double>(tasks) / static_cast<double>(rounds * threads);
  };
  for (int64_t c = chunks + 1; c <= key_blocks && busy(chunks) < 0.95; ++c)
    if (busy(c) > busy(chunks)) chunks = c;
  const int64_t chunk_bytes = dq_floats * static_cast<int64_t>(sizeof(float));
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, (int64_t{512} << 20) / std::max<int64_t>(chunk_bytes, 1)));
  return std::max<int64_t>(chunks, 1);
}

// The query rows [*lo, *hi) that may see some key of [j0, j0 + n) under the causal range and the window.
inline void query_range(const AttentionProblem& p, int64_t j0, int64_t n, int64_t* lo, int64_t* hi) {
  *lo = 0, *hi = p.Lq;
  if (p.causal == CausalAlignment::kNone) return;
  const int64_t off = p.offset();  // query i sees keys j <= i + off (and j > i + off − window)
  *lo = std::clamp<int64_t>(j0 - off, 0, p.Lq);
  if (p.window > 0) *hi = std::clamp<int64_t>(j0 + n + p.window - 1 - off, 0, p.Lq);
}

// Both backwards' tasks, one per (batch · kv head pair, key chunk), in the order the dynamic schedule hands them out:
// the chunks that meet the most query rows first, every pair's before any pair's next chunk. Under a causal mask the
// first keys' chunk meets every row and the last one few (7 : 5 : 3 : 1 with 4 chunks), so in pair-by-pair order a
// thread could take a costly chunk last while the others idle: 16 threads, H 8, causal, 4 chunks each, modelled at 67%
// of the threads' time busy against 100% costliest first. Which thread runs a task never changes its sums, so the
// gradients stay bitwise those of any order.
#ifndef ATTN_SWEEP_BWD_PAIR_ORDER
#define ATTN_SWEEP_BWD_PAIR_ORDER 0
#endif
struct BackwardTasks {
  int64_t pairs = 0;                 // B · Hkv
  std::vector<int64_t> chunk_order;  // [chunks] the chunks, the most query rows met first (ties in key order)
  // every chunk meets as many rows (no causal range or window): pair by pair, each pair's chunks in key order, so that
  // consecutive tasks share a pair's Q and dO
  bool by_pair = false;
  int64_t count() const { return pairs * static_cast<int64_t>(chunk_order.size()); }
  // task's (batch · kv head pair, chunk)
  void at(int64_t task, int64_t* pair, int64_t* chunk) const {
    const auto chunks = static_cast<int64_t>(chunk_order.size());
    if (by_pair || ATTN_SWEEP_BWD_PAIR_ORDER) {  // the sweep variant: the order before session 17, pair by pair
      *pair = task / chunks;
      *chunk = task % chunks;
    } else {
      *pair = task % pairs;
      *chunk = chunk_order[static_cast<size_t>(task / pairs)];
    }
  }
};

// The tasks of a call whose key_blocks blocks of kBk keys divide into `chunks` chunks (key_chunks), chunk c taking
// blocks [key_blocks·c / chunks, key_blocks·(c + 1) / chunks).
inline BackwardTasks backward_tasks(const AttentionProblem& p, int64_t key_blocks, int64_t kBk, int64_t chunks) {
  BackwardTasks tasks;
  tasks.pairs = p.B * p.Hkv;
  std::vector<int64_t> rows_met(static_cast<size_t>(chunks), 0);  // [chunks] Σ over its blocks of the rows they meet
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t kb = key_blocks * c / chunks; kb < key_blocks * (c + 1) / chunks; ++kb) {
      int64_t lo, hi;
      query_range(p, kb * kBk, std::min(kBk, p.Lk - kb * kBk), &lo, &hi);
      rows_met[static_cast<size_t>(c)] += std::max<int64_t>(hi - lo, 0);
    }
  tasks.chunk_order.resize(static_cast<size_t>(chunks));
  for (int64_t c = 0; c < chunks; ++c) tasks.chunk_order[static_cast<size_t>(c)] = c;
  std::stable_sort(tasks.chunk_order.begin(), tasks.chunk_order.end(), [&](int64_t a, int64_t b) {
    return rows_met[static_cast<size_t>(a)] > rows_met[static_cast<size_t>(b)];
  });
  tasks.by_pair = std::all_of(rows_met.begin(), rows_met.end(), [&](int64_t r) { return r == rows_met[0]; });
  return tasks;
}

// A finite lse in base 2, saturated as the forward saturates a huge float mask (mask_row_segment): a row whose
// every score lies beyond −FLT_MAX / log2 e has lse ≈ −FLT_MAX · ln 2, whose product with log2 e may round past
// −FLT_MAX, and −inf there had made P = 2^(+inf).
inline float base2_lse(float lse) {
  constexpr float kMax = std::numeric_limits<float>::max();
  const float lse2 = lse * kLog2e;
  return lse2 < -kMax ? -kMax : lse2 > kMax ? kMax : lse2;
}

// P = 2^(scale₂·s − lse₂) over n keys of one row, in place, with scale₂ = scale·log2(e) and lse₂ = lse·log2(e)
// (the forward's base; simd::exp2 is about half of exp's instructions): exactly 0 for a hidden key
// (s = −inf), whatever lse holds; a row with no visible key (lse = −inf) is all 0; a poisoned row (lse NaN)
// is NaN where visible.
inline void probabilities_row(float* s, int64_t n, float scale2, float lse) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  if (lse == kNegInf) {
    std::fill(s, s + n, 0.0f);
    return;
  }
  if (!std::isfinite(lse)) {
    for (int64_t j = 0; j < n; ++j) s[j] = s[j] == kNegInf ? 0.0f : std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float lse2 = base2_lse(lse);
  const Vec lv = Vec::set1(-lse2), sv = Vec::set1(scale2);
  int64_t j = 0;
  for (; j + W <= n; j += W) simd::exp2(Vec::fmadd(Vec::load(s + j), sv, lv)).store(s + j);
  for (; j < n; ++j) s[j] = s[j] == kNegInf ? 0.0f : std::exp2(scale2 * s[j] - lse2);
}

// dS = scale · P ⊙ (dP − Δ) over n keys of one row, into dp; exactly 0 where P = 0 (a hidden or dropped-out
// key's dP may be anything, NaN included).
inline void score_grads_row(const float* P, float* dp, int64_t n, float delta, float scale) {
  const Vec dv = Vec::set1(delta), sv = Vec::set1(scale);
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const Vec pj = Vec::load(P + j);
    Vec::zero_where_zero(pj, sv * pj * (Vec::load(dp + j) - dv)).store(dp + j);
  }
  for (; j < n; ++j) dp[j] = P[j] == 0.0f ? 0.0f : scale * P[j] * (dp[j] - delta);
}

// probabilities_row, the dropout (dropout_row_segment) and score_grads_row in one pass over a row whose lse is
// finite, bitwise their results: P = 2^(scale₂·s − lse₂), P̃ = c·Z ⊙ P into pt, dS = scale · P ⊙ (c·Z ⊙ dP̃ − Δ)
// into dp. keep: the masks of the row's 128-key group, `offset` the row segment's first key in it (a multiple
// of W); c = 1/(1 − p). P itself is not stored: with dropout only P̃ multiplies dO. One pass instead of three
// over the row: dropout p = 0.1 cost the backward +6.6% over p = 0 before, +4.3% after (L 2048, D 64, 1 thread).
inline void dropout_row_grads(const float* s, float* dp, float* pt, int64_t n, float scale2, float lse, float delta,
                              float scale, const uint16_t* keep, int64_t offset, float c) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const float lse2 = base2_lse(lse);
  const Vec lv = Vec::set1(-lse2), sv = Vec::set1(scale2), dv = Vec::set1(delta), gv = Vec::set1(scale);
  const Vec cv = Vec::set1(c);
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const uint32_t bits = dropout_lane_bits(keep, offset + j);
    const Vec P = simd::exp2(Vec::fmadd(Vec::load(s + j), sv, lv));
    Vec::masked_mul(bits, P, cv).store(pt + j);
    const Vec dpj = Vec::masked_mul(bits, Vec::load(dp + j), cv);
    Vec::zero_where_zero(P, gv * P * (dpj - dv)).store(dp + j);
  }
  for (; j < n; ++j) {
    const float P = s[j] == kNegInf ? 0.0f : std::exp2(scale2 * s[j] - lse2);
    const bool kept = dropout_kept(keep, offset + j);
    pt[j] = kept ? P * c : 0.0f;
    const float dpj = kept ? dp[j] * c : 0.0f;
    dp[j] = P == 0.0f ? 0.0f : scale * P * (dpj - delta);
  }
}

// How many of the block's n keys from j0 the query tile [i0, i0 + rows) meets: its last row sees the first n_tile of
// them (0: the tile skips the block); *diagonal: its first row sees fewer, so the tile crosses the causal diagonal
// and may trim its products to the visible triangle.
inline int64_t tile_keys(const AttentionProblem& p, int64_t i0, int64_t rows, int64_t j0, int64_t n, bool* diagonal) {
  int64_t unused, first_hi, last_hi;
  p.key_range(i0, &unused, &first_hi);
  p.key_range(i0 + rows - 1, &unused, &last_hi);
  const int64_t n_tile = std::clamp<int64_t>(last_hi - j0, 0, n);
  *diagonal = std::clamp<int64_t>(first_hi - j0, 0, n) < n_tile;
  return n_tile;
}

// One row of a backward tile over keys [j0, j0 + len): its scores s and dP̃ (dp) in; P (s), P̃ (pt, with dropout) and
// dS = scale · P ⊙ (dP − Δ) (dp) out, in place. scale2 times s gives the base-2 scores (the float32 backward's s
// already are, as its forward's: scale2 = 1; the 16-bit backward's are Q·Kᵀ: scale·log2 e).
// masked: the tile needs the masking rule, which works on base-2 scores, as the forward's; lse and delta: the row's.
inline void row_grads(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t len, bool masked,
                      float scale2, float lse, float delta, float* s, float* dp, float* pt) {
  if (masked) {
    if (scale2 != 1.0f) {
      const Vec sv = Vec::set1(scale2);
      int64_t j = 0;
      for (; j + W <= len; j += W) (Vec::load(s + j) * sv).store(s + j);
      for (; j < len; ++j) s[j] *= scale2;
    }
    mask_row_segment(p, b, h, i, j0, j0 + len, s, kLog2e);
  }
  if (p.dropout.active() && std::isfinite(lse)) {  // a key block lies in one dropout group (128 keys)
    DropoutGroupCache group;
    dropout_row_grads(s, dp, pt, len, masked ? 1.0f : scale2, lse, delta, p.scale,
                      dropout_group(p.dropout, b, h, i, j0, group), j0 % 128, p.dropout.scale);
  } else {
    probabilities_row(s, len, masked ? 1.0f : scale2, lse);
    if (p.dropout.active())  // P̃ = c·Z ⊙ P beside P; dP = c·Z ⊙ dP̃
      dropout_row_segment(p.dropout, b, h, i, j0, len, pt, dp, nullptr, s);
    score_grads_row(s, dp, len, delta, p.scale);
  }
}

}  // namespace attn::detail::ATTN_TARGET
