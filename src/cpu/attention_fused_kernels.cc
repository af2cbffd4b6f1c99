// The fused attention kernel (FlashAttention-2 forward on a CPU). Compiled once per instruction set:
// ATTN_TARGET names the namespace (avx512, avx2, scalar) and the compiler flags pick simd::Vec.
//
// For each task (b, h, query tile of up to bq rows, key split; bq = kBq, or up to kBqLong for long K and V, whose
// rows then go kBq at a time through each key tile: accumulate_keys):
//   m = −inf, l = 0, acc = 0                              // [rows], [rows], [rows, Dv]
//   for each key tile K_t, V_t (kBk keys) that the causal/window range can reach:
//     S = Q_tile · (scale · K_t)ᵀ                         // [rows, kBk], never wider than a tile
//     S = mask(S)                                         // only on tiles that need it
//     m' = max(m, rowmax S);  P = exp(S − m');  c = exp(m − m')   (base 2 in fact: K carries log2 e, or S)
//     l = c·l + rowsum P;  acc = c·acc + P · V_t;  m = m'
//     (m' = m, no correction, while S stays below m + 8: lazy rescaling, see softmax_tile)
//   out = acc / l  (0 where l = 0: a row with every key hidden)
// The [Lq, Lk] score matrix never exists; memory is linear in the length. With several key splits
// (decode: few queries, long K/V) each split keeps its own (m, l, acc) and they merge by log-sum-exp.
// Weights, when asked for, come from a second pass over K: w = 2^((S − m) − log2 l), each row's (m, l) kept for it.
//
// One call, step by step (attention_fused, at the end of the file):
//   plan_fused        how the work divides: query tiles, key splits, whether Kᵀ is packed, threads
//   pack_keys         scale·log2(e)·Kᵀ packed once per call into [D, ≤ kBk] tiles (not on the few-query path,
//                     which scales its queries instead: pack_queries), each thread its share, no barrier after: a
//                     task packs a tile still missing itself (pack_head_keys); where |scale·log2(e)| > 1 would
//                     overflow a huge finite key (or query), the scores take the factor after the product instead
//   run_tiles         every task above; with one split it finishes its rows (out, lse)
//   merge_key_splits  with several key splits, each row's per-split (m, l, acc) merged into out and lse
//   write_weights     the second pass, when weights are asked for
// Tile sizes (kBq, kBqLong, kBk, the register tiles) are this target's Tiles (cpu/tile_traits.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/aligned_vector.h"
#include "cpu/attention_fused.h"
#include "cpu/packed_on_demand.h"
#include "cpu/simd.h"
#include "cpu/softmax_rows.h"
#include "cpu/threads.h"
#include "cpu/tile_kernels.h"
#include "cpu/tile_traits.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512|avx2|scalar"
#endif
// bench/cpu_tile_sweep.sh's stage-left-out variants (timing only: wrong results; 0: as built): 1 leaves out the
// softmax, 2 P·V, 3 Q·Kᵀ, 4 the causal diagonal's tiles, 5 the packing of K.
#ifndef ATTN_SWEEP_SKIP
#define ATTN_SWEEP_SKIP 0
#endif

namespace attn::detail::ATTN_TARGET {
namespace {

static_assert(Tiles::kBk % (Tiles::kScoreVecs * W) == 0);
// A key tile starts at a multiple of kBk and lies inside one 128-key dropout group (cpu/dropout.h), whose
// masks softmax_tile applies as it writes P.
static_assert(128 % Tiles::kBk == 0, "a key tile spans one dropout group at most");
// On a prefix diagonal (softmax_tile) a P·V block of rows reads P up to its last row's last key, which lies fewer than
// kPvRows (or kRowPvRows) keys past any of its rows' last key: within the one vector softmax_tile zeroes past a row.
static_assert(Tiles::kPvRows <= W && Tiles::kRowPvRows <= W && Tiles::kFewPvRows <= W,
              "a P·V block reaches one vector past a row at most");
// Scores are kept in base 2: the keys (or, on the few-query path, the queries) are scaled by scale·log2(e) (kLog2e,
// tile_kernels.h), so P = 2^(s − m) (simd::exp2, cheaper than exp) and the row's log-sum-exp is ln 2 · (m + log2 l).
constexpr float kLn2 = 0.693147180559945309f;

// A row's (m, log2 l) for the weights pass (FusedBuffers::row_base): log2 l = kNoWeights where the row sees no key.
constexpr float kNoWeights = std::numeric_limits<float>::infinity();
void set_row_base(float* base, float m, float l) {
  base[0] = m;
  base[1] = l == 0.0f ? kNoWeights : std::log2(l);  // NaN stays NaN: a poisoned row
}

// Per-thread buffers, grown once and reused across calls (fresh pages are expensive to touch).
struct Workspace {
  AlignedVector<float> qs;              // [bq, D]       the tile's queries times plan.operand (few-query path)
  AlignedVector<float> vp;              // [kBk, Dvp]    value tile padded to whole vectors (when Dv % W != 0)
  AlignedVector<float> s;               // [bq, kBk]     scores, then probabilities (bq: FusedPlan)
  AlignedVector<float> acc;             // [bq, Dvp]
  AlignedVector<float> m, l;            // [bq]     each row's reference max (base 2; up to 8 below the true running
                                        //          max: lazy rescaling, softmax_tile) and sum
  AlignedVector<float> lanes_l;         // [bq, W]  the running sums lane by lane, inside accumulate_keys
  AlignedVector<float> m_new, c;        // [bq]     softmax_tile's new maxima and corrections
  std::vector<DropoutGroupCache> drop;  // [bq] each row's current dropout group
  AlignedVector<float> kpack;           // [key_tiles, D, kBk] the task's head's Kᵀ (FusedPlan::task_keys)
  // bq: the call's query rows per task (FusedPlan::bq); kpack_floats: a head's packed keys with FusedPlan::task_keys
  void reserve(int64_t D, int64_t Dvp, int64_t bq, int64_t kpack_floats) {
    auto grow = [](auto& b, int64_t n) {
      if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
    };
    grow(qs, bq * std::max<int64_t>(D, 1));
    grow(vp, Tiles::kBk * Dvp);
    grow(s, bq * Tiles::kBk);
    grow(acc, bq * std::max<int64_t>(Dvp, 1));
    grow(m, bq);
    grow(l, bq);
    grow(lanes_l, bq * W);
    grow(m_new, bq);
    grow(c, bq);
    if (drop.size() < static_cast<size_t>(bq)) drop.resize(static_cast<size_t>(bq));
    grow(kpack, kpack_floats);
  }
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

// A packed key tile of n keys is [D, packed_width(n)] in panels: its keys padded to whole vectors only (gemm_abt_panels
// takes any multiple of W columns), so a short sequence (L = 16) packs 16 columns, not kBk.
int64_t packed_width(int64_t n) { return round_up(n, W); }

// S[rows, n] = scale·log2(e) · Q[i0 : i0 + rows] · K[j0 : j0 + n]ᵀ for head (b, h). `kt` is the key tile
// already transposed and times plan.operand (see pack_head_keys), multiplied by Q's rows where they lie; or nullptr for
// the few-query path, which takes dot products of the queries in ws.qs (times plan.operand: pack_queries) with K's
// rows. `after`: the factor left for the scores when the operands could not carry scale·log2(e) (FusedPlan; 1
// else). On the causal diagonal (`diagonal`) each block of kScoreRows rows stops at its last row's last key.
void compute_scores(const AttentionProblem& p, int64_t b, int64_t h, const float* k, const float* kt, int64_t i0,
                    int64_t j0, int64_t n, int64_t rows, bool diagonal, float after, Workspace& ws) {
  const int64_t D = p.D;
  const auto scale_after = [&](int64_t r, int64_t count, int64_t cols) {  // rows [r, r + count), cols a multiple of W
    if (after == 1.0f) return;
    for (int64_t i = r; i < r + count; ++i)
      for (int64_t j = 0; j < cols; j += W) {
        float* x = ws.s.data() + i * Tiles::kBk + j;
        (Vec::load(x) * Vec::set1(after)).store(x);
      }
  };
  if (kt == nullptr) {
    for (int64_t jj = 0; jj < n; ++jj) {
      const float* kj = k + (j0 + jj) * p.k_sl;
      for (int64_t r = 0; r < rows; ++r) ws.s[r * Tiles::kBk + jj] = after * dot(ws.qs.data() + r * D, kj, D);
    }
    return;
  }
  const int64_t kt_cols = packed_width(std::min(Tiles::kBk, p.Lk - j0));  // the packed tile's width (pack_head_keys)
  const float* q = p.q + b * p.q_sb + h * p.q_sh + i0 * p.q_sl;           // [rows, D], row stride q_sl
  if (!diagonal) {
    gemm_abt_panels(q, p.q_sl, kt, kt_cols, D, rows, packed_width(n), ws.s.data(), Tiles::kBk);
    scale_after(0, rows, packed_width(n));
    return;
  }
  for (int64_t r = 0; r < rows; r += Tiles::kScoreRows) {
    const int64_t block = std::min<int64_t>(Tiles::kScoreRows, rows - r);
    const int64_t cols = packed_width(visible_prefix(p, i0 + r, block, j0, n));
    if (cols > 0) {
      gemm_abt_panels(q + r * p.q_sl, p.q_sl, kt, kt_cols, D, block, cols, ws.s.data() + r * Tiles::kBk, Tiles::kBk);
      scale_after(r, block, cols);
    }
  }
}

// Rows [i0, i0 + rows) of head (b, h): queries times qscale (scale·log2(e): scores in base 2, or 1, see
// FusedPlan) into ws.qs, for the few-query path (the packed path scales the keys instead, once per call).
void pack_queries(const AttentionProblem& p, int64_t b, int64_t h, int64_t i0, int64_t rows, float qscale,
                  Workspace& ws) {
  const float* q = p.q + b * p.q_sb + h * p.q_sh;
  const Vec qv = Vec::set1(qscale);
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + (i0 + r) * p.q_sl;
    float* out = ws.qs.data() + r * p.D;
    int64_t d = 0;
    for (; d + W <= p.D; d += W) (Vec::load(qr + d) * qv).store(out + d);
    for (; d < p.D; ++d) out[d] = qr[d] * qscale;
  }
}

// Lazy rescaling: a row keeps its running max m while no score of a new tile exceeds m + kRescaleAbove (base 2),
// so its weights 2^(s − m) stay ≤ 2^8 (FlashAttention-4 keeps its max the same way): no new max to reduce, no
// correction, no rescaled accumulator. The result is the same up to rounding: out = acc / l for any common m.
constexpr float kRescaleAbove = 8.0f;

// The online-softmax step of one score tile, S = ws.s [rows, n] (base 2) for keys [j0, j0 + n) and rows [i0, i0 +
// rows), whose state (ws.m, ws.lanes_l, ws.acc, ws.drop) starts at the task's row `row0`: masks it when `masked`, then
// for every row m' = m, or max(m, rowmax S) where a score exceeds m + kRescaleAbove (or m is −inf), P = 2^(S − m') in
// place, c = 2^(m − m'), l = c·l + Σ P (ws.lanes_l, lane by lane: no horizontal sum per tile), acc = c·acc, m = m'.
// Done phase by phase over all rows, not row by row: each row's chain (max, exponentials, sum) is long and serial, and
// rows side by side keep the vector units busy; the corrections c of W rows are one vector exp2. `prefix` (on the
// causal diagonal, with masked): no mask but the causal range applies and every row's visible keys are a prefix of the
// tile, so the masking pass is skipped and each row's max and exponentials stop at its last visible key
// (row_max_prefix_lanes, exp2_prefix_row): causal forward L 256 −4%, L 1024 −1 to −2% (D 32–128).
void softmax_tile(const AttentionProblem& p, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t row0, int64_t j0,
                  int64_t n, bool masked, bool diagonal, bool prefix, int64_t Dvp, Workspace& ws) {
  // The buffers as local pointers: read through ws, their addresses were reloaded (from thread-local storage)
  // after every store to a float, which might have changed them.
  float* const m_new = ws.m_new.data();                         // [rows]
  float* const c = ws.c.data();                                 // [rows]
  float* const m_run = ws.m.data() + row0;                      // [rows]
  float* const scores = ws.s.data();                            // [rows, kBk]
  float* const lanes = ws.lanes_l.data() + row0 * W;            // [rows, W]
  float* const acc_rows = ws.acc.data() + row0 * Dvp;           // [rows, Dvp]
  DropoutGroupCache* const drop_cache = ws.drop.data() + row0;  // [rows]
  const auto visible = [&](int64_t r) { return diagonal ? visible_prefix(p, i0 + r, 1, j0, n) : n; };
  // On the causal diagonal a row's scores end at its last visible key (rounded up to a vector; the
  // scores after it were perhaps never computed, see compute_scores): its P is 0 from there on.
  const auto row_length = [&](int64_t vis) { return diagonal ? std::min(n, packed_width(vis)) : n; };
  // 1. masking and the new running maxima (kept where no score exceeds m + kRescaleAbove)
  bool moved = false;
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * Tiles::kBk;
    const int64_t vis = visible(r), len = row_length(vis);
    if (masked && !prefix) mask_row_segment(p, b, h, i0 + r, j0, j0 + len, s, kLog2e);
    const Vec mx = prefix ? row_max_prefix_lanes(s, vis, len) : row_max_lanes(s, len);
    const float m = m_run[r];
    m_new[r] = m != kNegInf && !Vec::any_above(mx, m + kRescaleAbove) ? m : std::max(m, mx.reduce_max());
    moved |= m_new[r] != m;
  }
  // 2. the corrections c = 2^(m − m'): 0 while m = −inf (nothing seen yet), exactly 1 where m' = m
  if (!moved) std::fill(c, c + rows, 1.0f);
  for (int64_t r = 0; moved && r < rows; r += W) {
    float m_old[W], m_cur[W];
    std::fill(m_old, m_old + W, 0.0f);
    std::fill(m_cur, m_cur + W, 0.0f);
    std::copy(m_run + r, m_run + std::min(rows, r + W), m_old);
    std::copy(m_new + r, m_new + std::min(rows, r + W), m_cur);
    float e[W];
    simd::exp2(Vec::load(m_old) - Vec::load(m_cur)).store(e);
    std::copy(e, e + std::min<int64_t>(W, rows - r), c + r);
  }
  // 3. P = 2^(S − m'), l = c·l + Σ P, acc = c·acc
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * Tiles::kBk;
    const int64_t vis = visible(r), len = row_length(vis);
    float* lanes_l = lanes + r * W;
    // P must be 0 wherever the P·V reads past the row's scores: up to n, or on a prefix diagonal up to its block's last
    // row's last key, within one vector of len (the static_assert above); one vector store, no fill call (causal L 128
    // +2%)
    if (!prefix) {
      std::fill(s + len, s + n, 0.0f);
    } else if (len < n) {  // len is a multiple of W below kBk: the vector fits the row
      Vec::zero().store(s + len);
    }
    if (m_new[r] == kNegInf) {  // nothing visible yet: P = 0, state unchanged
      // unless a visible score is NaN (max skips it): poison the row
      for (int64_t j = 0; j < (prefix ? vis : len); ++j)
        if (std::isnan(s[j])) Vec::set1(std::numeric_limits<float>::quiet_NaN()).store(lanes_l);
      std::fill(s, s + len, 0.0f);
      continue;
    }
    const float cr = m_run[r] == kNegInf ? 0.0f : c[r];
    const auto exponentials = [&](auto dropout, const RowDropout& drop) {
      constexpr bool kDropout = decltype(dropout)::value;
      if (prefix) return exp2_prefix_row<kDropout>(s, vis, len, m_new[r], drop);
      return masked ? exp2_row<false, kDropout>(s, len, m_new[r], drop)
                    : exp2_row<true, kDropout>(s, len, m_new[r], drop);
    };
    Vec sum;
    if (!p.dropout.active()) {
      sum = exponentials(std::false_type{}, {});
    } else {  // the tile lies in one dropout group (static_assert above); l counts every weight
      const RowDropout drop{dropout_group(p.dropout, b, h, i0 + r, j0, drop_cache[r]), j0 % 128, p.dropout.scale};
      sum = exponentials(std::true_type{}, drop);
    }
    (Vec::load(lanes_l) * Vec::set1(cr) + sum).store(lanes_l);
    // first visible keys: acc holds zeros (or a row run_tiles redoes), no pass × 0 (causal L 128–256 +1–2%, Zen 5)
    const bool first = m_run[r] == kNegInf;
    m_run[r] = m_new[r];
    if (cr != 1.0f && !first) {
      float* acc = acc_rows + r * Dvp;
      for (int64_t d = 0; d < Dvp; d += W) (Vec::load(acc + d) * Vec::set1(cr)).store(acc + d);
    }
  }
}

// One key tile, keys [j0, j0 + n) (values vt, row stride v_stride), for rows [i0, i0 + rows) of head (b, h), whose
// state (ws.m, ws.lanes_l, ws.acc, ws.drop) starts at row `row0` of the task's: S = Q·Kᵀ into ws.s, the online-softmax
// step (softmax_tile), acc += P·V. kt: the packed key tile (or nullptr: the few-query path); next_keys, when not
// nullptr, the next packed key tile, asked into the L2 before the P·V.
void accumulate_tile(const AttentionProblem& p, int64_t b, int64_t h, const float* k, const float* kt, int64_t i0,
                     int64_t rows, int64_t row0, int64_t j0, int64_t n, const float* vt, int64_t v_stride, int64_t Dvp,
                     float after, const float* next_keys, Workspace& ws) {
  // the causal diagonal: the first row sees fewer keys of the tile than the last
  const bool diagonal = visible_prefix(p, i0, 1, j0, n) < visible_prefix(p, i0, rows, j0, n);
  if (ATTN_SWEEP_SKIP == 4 && diagonal) return;
  if (ATTN_SWEEP_SKIP != 3) compute_scores(p, b, h, k, kt, i0, j0, n, rows, diagonal, after, ws);
  const bool masked = tile_needs_mask(p, b, i0, rows, j0, n);
  // on the diagonal with only the causal range masking and the tile's first key seen by every row (no window
  // cut there), each row's visible keys are a prefix of the tile
  int64_t lo_last, hi_last;
  p.key_range(i0 + rows - 1, &lo_last, &hi_last);
  const bool prefix = diagonal && only_range_masking(p) && lo_last <= j0;
  if (ATTN_SWEEP_SKIP != 1) softmax_tile(p, b, h, i0, rows, row0, j0, n, masked, diagonal, prefix, Dvp, ws);
  if (ATTN_SWEEP_SKIP == 2) return;
  if (next_keys != nullptr) {
    const int64_t next = j0 + Tiles::kBk, width = packed_width(std::min(Tiles::kBk, p.Lk - next));
    prefetch_rows(next_keys, 1, p.D * width, 0);
  }
  // acc += P · V_tile
  float* const acc = ws.acc.data() + row0 * Dvp;  // [rows, Dvp]
  // A hidden key's value is never multiplied (its weight is 0), even when it holds NaN or Inf: such a tile
  // takes the zero-skipping update, whose sums are bitwise those of the fast one where all is finite. The value rows
  // checked are those the fast update would read: on the causal diagonal, the keys the tile's last row sees. Not on a
  // diagonal of the causal range alone (`prefix`): its blocks stop at their last row's last key (below), so a hidden
  // key the fast update multiplies is one that a later row of the same block sees; a NaN or Inf value there makes the
  // rows before it non-finite, and run_tiles redoes those rows term by term (exact_row_state), as it redoes the rows
  // that see it. (The check took 1–2% of causal L 128–256, Zen 5, 1 thread.)
  const int64_t read_rows = diagonal ? visible_prefix(p, i0, rows, j0, n) : n;
  const bool skip_zero =
      masked && !prefix && any_zero(ws.s.data(), Tiles::kBk, rows, n) && !all_finite(vt, v_stride, read_rows, p.Dv);
  // acc[r0 : r0 + block] += P[r0 : r0 + block, :terms] · V_tile[:terms] (the register tile: see Tiles::kPvRows)
  const bool few = kt == nullptr, row_tile = Dvp == Tiles::kRowPvVecs * W;
  const auto update = [&](int64_t r0, int64_t block, int64_t terms) {
    const float* P = ws.s.data() + r0 * Tiles::kBk;
    if (few)  // (a lone query row: its own tile, see Tiles::kLonePvVecs)
      (block == 1 ? rank_update<1, Tiles::kLonePvVecs>
                  : rank_update<Tiles::kFewPvRows, Tiles::kFewPvVecs>)(P, Tiles::kBk, 1, block, terms, vt, v_stride,
                                                                       Dvp / W, acc + r0 * Dvp, Dvp);
    else if (row_tile)
      rank_update<Tiles::kRowPvRows, Tiles::kRowPvVecs>(P, Tiles::kBk, 1, block, terms, vt, v_stride, Dvp / W,
                                                        acc + r0 * Dvp, Dvp);
    else
      rank_update<Tiles::kPvRows, Tiles::kPvVecs>(P, Tiles::kBk, 1, block, terms, vt, v_stride, Dvp / W, acc + r0 * Dvp,
                                                  Dvp);
  };
  if (skip_zero) {
    rank_update_nonzero(ws.s.data(), Tiles::kBk, 1, rows, n, vt, v_stride, Dvp / W, acc, Dvp);
  } else if (!diagonal) {
    update(0, rows, n);
  } else {  // each block of the tile's rows stops at its last row's last key: the rest of P is 0
    const int64_t pv_rows = few ? Tiles::kFewPvRows : row_tile ? Tiles::kRowPvRows : Tiles::kPvRows;
    for (int64_t r = 0; r < rows; r += pv_rows) {
      const int64_t block = std::min<int64_t>(pv_rows, rows - r);
      const int64_t terms = visible_prefix(p, i0 + r, block, j0, n);
      if (terms > 0) update(r, block, terms);
    }
  }
}

// Online softmax over keys [j_begin, j_end) for rows [i0, i0 + rows) of head (b, h); on the few-query path
// (kpack nullptr) ws.qs already holds the rows' queries (pack_queries); updates ws.m, ws.l, ws.acc.
// j_begin is a multiple of kBk; kpack is this head's packed Kᵀ (pack_head_keys, or pack_task_keys into the task's
// workspace) or nullptr (few queries); after
// multiplies the scores where the operands could not carry scale·log2(e) (FusedPlan, 1 else).
void accumulate_keys(const AttentionProblem& p, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j_begin,
                     int64_t j_end, int64_t Dvp, const float* kpack, float after, Workspace& ws) {
  const int64_t kvh = p.kv_head(h);
  const float* k = p.k + b * p.k_sb + kvh * p.k_sh;  // [Lk, D]
  const float* v = p.v + b * p.v_sb + kvh * p.v_sh;  // [Lk, Dv]
  const bool pack_v = p.Dv % W != 0;
  // A head's long K and V come from L3 or memory for every query tile: this tile's values are asked for before
  // its scores are computed, the next tile's keys before this tile's last P·V (kPrefetchFromBytes).
  const bool prefetch = kpack != nullptr && (j_end - j_begin) * (p.D + p.Dv) * 4 >= kPrefetchFromBytes;
  for (int64_t r = 0; r < rows; ++r) {  // l lane by lane while the tiles run (softmax_tile), reduced at the end
    std::fill(ws.lanes_l.data() + r * W, ws.lanes_l.data() + (r + 1) * W, 0.0f);
    ws.lanes_l[r * W] = ws.l[r];
  }
  for (int64_t j0 = j_begin; j0 < j_end; j0 += Tiles::kBk) {
    const int64_t n = std::min(Tiles::kBk, j_end - j0);
    if (all_padding(p, b, j0, n)) continue;  // every key of the tile is padding: nothing to add
    if (prefetch) prefetch_rows(v + j0 * p.v_sl, n, p.Dv, p.v_sl);
    const float* kt = kpack ? kpack + j0 / Tiles::kBk * p.D * Tiles::kBk : nullptr;
    const float* vt = v + j0 * p.v_sl;
    int64_t v_stride = p.v_sl;
    if (pack_v) {
      for (int64_t jj = 0; jj < n; ++jj) {
        std::copy(vt + jj * p.v_sl, vt + jj * p.v_sl + p.Dv, ws.vp.data() + jj * Dvp);
        std::fill(ws.vp.data() + jj * Dvp + p.Dv, ws.vp.data() + (jj + 1) * Dvp, 0.0f);
      }
      vt = ws.vp.data();
      v_stride = Dvp;
    }
    // The task's rows kBq at a time (one sub-tile when bq = kBq): a sub-tile's scores and accumulators stay in the
    // L1 while the key tile, read from the L3 or memory once for all of them, stays in the L2. (The few-query path,
    // whose scores read ws.qs from its first row, takes all its rows at once.)
    const int64_t sub_rows = kpack != nullptr ? Tiles::kBq : rows;
    for (int64_t r0 = 0; r0 < rows; r0 += sub_rows) {
      const int64_t sub = std::min(sub_rows, rows - r0);
      if (visible_prefix(p, i0 + r0, sub, j0, n) == 0) continue;  // the causal range ends before the tile here
      // the next key tile's keys are asked for before the last sub-tile's P·V
      const bool ask_next = prefetch && j0 + Tiles::kBk < j_end && r0 + sub_rows >= rows;
      accumulate_tile(p, b, h, k, kt, i0 + r0, sub, r0, j0, n, vt, v_stride, Dvp, after,
                      ask_next ? kt + p.D * Tiles::kBk : nullptr, ws);
    }
  }
  for (int64_t r = 0; r < rows; ++r) ws.l[r] = Vec::load(ws.lanes_l.data() + r * W).reduce_add();
}

// The slow path for one row whose fast state came out non-finite: its (m, l, acc) over keys [lo, hi),
// computed term by term as attention_reference does (in base 2, as the fast path) (a value is only multiplied by a
// nonzero weight, a NaN score poisons the row), in float. Non-finite rows are rare (corrupted inputs), so the fast path
// pays only the check in row_state_finite.
void exact_row_state(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t lo, int64_t hi, float* m_out,
                     float* l_out, float* acc) {
  thread_local AlignedVector<float> s;  // [hi − lo]
  s.resize(static_cast<size_t>(hi - lo));
  const float* k = p.k + b * p.k_sb + p.kv_head(h) * p.k_sh;
  const float* v = p.v + b * p.v_sb + p.kv_head(h) * p.v_sh;
  const float* q_row = p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl;
  const float qscale = p.scale * kLog2e;
  for (int64_t j = lo; j < hi; ++j) {  // in double: a dot that overflows float before its scale (q·k ~ 4e38 at scale
    double sum = 0.0;                  // 0.5) stays finite, as on the fast path, which scales an operand first
    for (int64_t d = 0; d < p.D; ++d) sum += static_cast<double>(q_row[d]) * k[j * p.k_sl + d];
    s[j - lo] = static_cast<float>(static_cast<double>(qscale) * sum);
  }
  mask_row_segment(p, b, h, i, lo, hi, s.data(), kLog2e);
  float m = kNegInf;
  bool any_nan = false;
  for (float x : s) {
    m = x > m ? x : m;
    any_nan |= std::isnan(x);
  }
  *m_out = m;
  *l_out = 0.0f;
  std::fill(acc, acc + p.Dv, 0.0f);
  if (m == kNegInf && !any_nan) return;
  for (int64_t j = lo; j < hi; ++j) {
    float e = s[j - lo] == kNegInf ? 0.0f : std::exp2(s[j - lo] - m);
    *l_out += e;
    if (p.dropout.active()) e = dropout_keeps(p.dropout, b, h, i, j) ? e * p.dropout.scale : 0.0f;
    if (e == 0.0f) continue;
    for (int64_t d = 0; d < p.Dv; ++d) acc[d] += e * v[j * p.v_sl + d];
  }
}

bool row_state_finite(float l, const float* acc, int64_t Dv) { return std::isfinite(l) && all_finite(acc, 0, 1, Dv); }

// The keys any row of [i0, i0 + rows) may see, as a half-open range.
void tile_key_range(const AttentionProblem& p, int64_t i0, int64_t rows, int64_t* lo, int64_t* hi) {
  int64_t unused;
  p.key_range(i0, lo, &unused);
  p.key_range(i0 + rows - 1, &unused, hi);
}

// Second pass: weights[b, h, i, :] = 2^((S − m_i) − log2 l_i) for rows [i0, i0 + rows); 0 where hidden.
// base: [rows, 2], each row's (m, log2 l) in base 2 (set_row_base); kpack and after as in accumulate_keys. Not from the
// lse: rounded to a float32 near |m| (scores in the hundreds), it had scaled a whole row's weights by up to 1 ± 2·10⁻⁵,
// and a row's weights are to sum to 1 (a learned mask's gradient in attn.torch, dS = P ∘ (dP − Σ P dP), takes that
// error times |dP| where the row is nearly one-hot). s − m is exact, log2 l small.
void write_tile_weights(const AttentionProblem& p, int64_t b, int64_t h, int64_t i0, int64_t rows, const float* base,
                        const float* kpack, float after, Workspace& ws) {
  const float* k = p.k + b * p.k_sb + p.kv_head(h) * p.k_sh;
  for (int64_t j0 = 0; j0 < p.Lk; j0 += Tiles::kBk) {
    const int64_t n = std::min(Tiles::kBk, p.Lk - j0);
    compute_scores(p, b, h, k, kpack ? kpack + j0 / Tiles::kBk * p.D * Tiles::kBk : nullptr, i0, j0, n, rows, false,
                   after, ws);
    for (int64_t r = 0; r < rows; ++r) {
      float* s = ws.s.data() + r * Tiles::kBk;
      float* w = p.weights + ((b * p.H + h) * p.Lq + i0 + r) * p.Lk + j0;
      mask_row_segment(p, b, h, i0 + r, j0, j0 + n, s, kLog2e);
      const float m = base[2 * r], log2_l = base[2 * r + 1];
      if (std::isnan(log2_l)) {  // a poisoned row: NaN wherever a key is visible, 0 where hidden
        for (int64_t j = 0; j < n; ++j) w[j] = s[j] == kNegInf ? 0.0f : std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      if (log2_l == kNoWeights) {  // no key visible (l = 0; m is then −inf too)
        std::fill(w, w + n, 0.0f);
        continue;
      }
      const Vec mv = Vec::set1(m), lv = Vec::set1(log2_l);
      int64_t j = 0;
      for (; j + W <= n; j += W) simd::exp2((Vec::load(s + j) - mv) - lv).store(w + j);
      for (; j < n; ++j) w[j] = std::exp2((s[j] - m) - log2_l);
    }
  }
}

// ---- The steps of one call --------------------------------------------------------------------------------

// How one call divides its work; every step reads it.
struct FusedPlan {
  int threads = 1;
  int64_t Dvp = 0;              // Dv rounded up to whole vectors: an accumulator row
  int64_t bq = 0;               // query rows per tile: Tiles::kBq, or up to kBqLong for long K and V (plan_fused)
  int64_t query_tiles = 0;      // query tiles per head: ⌈Lq / bq⌉
  int64_t tile_tasks = 0;       // (batch, head, query tile) tasks: B · H · query_tiles
  int64_t splits = 1;           // key splits per tile task; > 1 only for decode (Lq <= 4, few tasks)
  int64_t row_state = 0;        // floats of one row's kept (m, l, acc): 2 + Dvp
  bool keys_packed = false;     // Kᵀ packed (pack_head_keys); the few-query path reads K's rows instead
  int64_t key_tiles = 0;        // ⌈Lk / kBk⌉
  int64_t key_tile_floats = 0;  // one packed key tile [D, kBk] (D at least 1)
  // Each task packs its head's Kᵀ into its workspace (plan_fused says when), instead of into one buffer shared by the
  // call's tasks (pack_head_keys).
  bool task_keys = false;
  // pack_keys runs before the tasks (keys_packed, not task_keys; a test may leave it to the tasks alone:
  // detail::force_packing_by_tasks, read once here so that every thread meets the same work-shared loops)
  bool pack_pass = false;
  // Tasks taken task_group at a time (consecutive: with task_keys, whole heads in order, or a head's query tiles where
  // its queries outnumber one task's rows), each asking for the next one's Q, K and V while it computes: with task_keys
  // every head comes from memory, and its first touches were the stall (Zen 5, B·H 512, L 128, D 64: 1 thread +3%,
  // causal +7%; 2 threads +7%, causal +13%; asking for the next task of a dynamic schedule of single tasks, another
  // thread's half the time at 2 threads, measured −4% to +4% there). 4 with task_keys, fewer while the call would have
  // fewer than 4 groups a thread; else 1 (nothing asked for).
  int64_t task_group = 1;
  // scale·log2(e), carried by the packed keys (the few-query path: its queries), `operand`, or by every score after
  // the product, `after` (score_scaling, tile_kernels.h, which the backward shares). Calls with |scale·log2(e)| > 1
  // pay one scan of K (or Q) to decide; those that overflow, one more pass over S.
  float operand = 1.0f, after = 1.0f;
};

FusedPlan plan_fused(const AttentionProblem& p) {
  FusedPlan plan;
  plan.threads = resolve_threads(p.num_threads);
  // A problem of a few microseconds (one short sentence's encoder) on the calling thread: waking the pool
  // costs more than the work.
  if (2 * p.B * p.H * p.Lq * p.Lk * (p.D + p.Dv) < (int64_t{1} << 18)) plan.threads = 1;
  plan.Dvp = round_up(p.Dv, W);
  plan.keys_packed = !scores_by_dot(p);
  plan.key_tiles = (p.Lk + Tiles::kBk - 1) / Tiles::kBk;
  plan.key_tile_floats = std::max<int64_t>(p.D, 1) * Tiles::kBk;
  // Many short heads whose packed keys together outgrow the caches (an encoder's batch): each task takes a whole head
  // and packs its Kᵀ itself (forward_whole_head_tasks). Not with weights asked for (their pass reads the shared packed
  // keys).
  const int64_t head_key_bytes = plan.key_tiles * plan.key_tile_floats * static_cast<int64_t>(sizeof(float));
  const int64_t head_rows = round_up(p.Lq, Tiles::kBq);
  plan.task_keys = plan.keys_packed && !p.weights &&
                   (forward_whole_head_tasks<Tiles>(head_key_bytes, p.B * p.Hkv, p.B * p.H, p.Lq, plan.threads) ||
                    forced_task_keys());
  const int64_t kv_bytes = p.Lk * (p.D + p.Dv) * static_cast<int64_t>(sizeof(float));  // one head's K and V
  plan.bq = plan.task_keys && forward_head_fits_a_task<Tiles>(p.Lq)
                ? head_rows
                : forward_task_rows<Tiles>(plan.keys_packed, kv_bytes, p.B * p.H, p.Lq, plan.threads);
  plan.query_tiles = (p.Lq + plan.bq - 1) / plan.bq;
  plan.tile_tasks = p.B * p.H * plan.query_tiles;
  if (plan.task_keys) plan.task_group = std::clamp<int64_t>(plan.tile_tasks / (4 * plan.threads), 1, 4);
  plan.pack_pass = plan.keys_packed && !plan.task_keys && !forced_packing_by_tasks();
  // Decode (few queries, long K/V, fewer tasks than threads): split the keys too, so every thread works.
  if (!plan.keys_packed && plan.tile_tasks < 2 * plan.threads)
    plan.splits = std::min<int64_t>((2 * plan.threads + plan.tile_tasks - 1) / plan.tile_tasks, plan.key_tiles);
  plan.splits = std::max<int64_t>(plan.splits, 1);
  plan.row_state = 2 + plan.Dvp;
  const ScoreScaling scaling = score_scaling(p);
  plan.operand = scaling.operand;
  plan.after = scaling.after;
  return plan;
}

// The call's buffers shared by its threads; owned by the calling thread, grown once and reused.
struct FusedBuffers {
  float* partial;        // [tile_tasks, splits, bq, row_state]   each split's row states, when splits > 1
  float* lse;            // [B, H, Lq]                            each row's log-sum-exp: p.lse, or nullptr
  float* row_base;       // [B, H, Lq, 2]                         each row's (m, log2 l) when weights are asked for
  float* packed;         // [B, Hkv, key_tiles, D, kBk]           Kᵀ, when keys_packed and not task_keys
  uint32_t* key_states;  // [B, Hkv, key_tiles]               each tile of `packed`: its PackedOnDemand state, 0 at
                         //                                       the call's start
};

FusedBuffers call_buffers(const AttentionProblem& p, const FusedPlan& plan) {
  thread_local AlignedVector<float> partial, row_base, packed;
  thread_local std::vector<uint32_t> key_states;
  const int64_t partial_floats = plan.tile_tasks * plan.splits * plan.bq * plan.row_state;
  if (plan.splits > 1 && static_cast<int64_t>(partial.size()) < partial_floats)
    partial.resize(static_cast<size_t>(partial_floats));
  const int64_t base_floats = 2 * p.B * p.H * p.Lq;
  if (p.weights && static_cast<int64_t>(row_base.size()) < base_floats)
    row_base.resize(static_cast<size_t>(base_floats));
  const int64_t tiles = p.B * p.Hkv * plan.key_tiles, packed_floats = tiles * plan.key_tile_floats;
  if (plan.keys_packed && !plan.task_keys) {
    if (static_cast<int64_t>(packed.size()) < packed_floats) packed.resize(static_cast<size_t>(packed_floats));
    if (static_cast<int64_t>(key_states.size()) < tiles) key_states.resize(static_cast<size_t>(tiles));
    std::fill(key_states.begin(), key_states.begin() + tiles, 0u);
  }
  return {partial.data(), p.lse, p.weights ? row_base.data() : nullptr, packed.data(), key_states.data()};
}

// Head (b, h)'s packed Kᵀ, [key_tiles, D, kBk] (shared by the heads of a group), or nullptr when the
// keys are not packed.
const float* head_keys(const AttentionProblem& p, const FusedPlan& plan, const float* packed, int64_t b, int64_t h) {
  return plan.keys_packed ? packed + (b * p.Hkv + p.kv_head(h)) * plan.key_tiles * plan.key_tile_floats : nullptr;
}

// One (batch, head, query tile) task: rows [i0, i0 + rows) of head (b, h); bh = b · H + h.
struct TileTask {
  int64_t b, h, bh, i0, rows;
};

// Tasks go head by head (consecutive tasks share their K and V in the caches); with a causal mask each
// head's last query tiles (the most keys) come first, so that the dynamic schedule ends on cheap tiles and
// the threads finish together. (Heaviest first across all heads measured 20% slower at L = 16384, H = 8:
// eight heads' K and V, 32 MB, cycled through the L3 task by task.)
// bench/device_cpu_check.sh's `stride` variant (timing only, the same results): consecutive tasks from different
// heads, so that at 1 thread each task reads its K and V from the L3 as every task does at 16 threads, where the
// threads take a head's query tiles side by side (Zen 5, 1 thread, H 8: L 1024 ±1%, L 2048 −3%).
#ifndef ATTN_SWEEP_TASK_STRIDE
#define ATTN_SWEEP_TASK_STRIDE 0
#endif
TileTask tile_task(const AttentionProblem& p, const FusedPlan& plan, int64_t index) {
#if ATTN_SWEEP_TASK_STRIDE
  const int64_t in_head = index / (p.B * p.H), bh = index % (p.B * p.H);
#else
  const int64_t in_head = index % plan.query_tiles, bh = index / plan.query_tiles;
#endif
  const int64_t tile = forward_query_tile(p.causal != CausalAlignment::kNone, in_head, plan.query_tiles);
  const int64_t i0 = tile * plan.bq;
  return {bh / p.H, bh % p.H, bh, i0, std::min(plan.bq, p.Lq - i0)};
}

// The steps below run inside the call's parallel region, each one OpenMP work-shared loop. pack_keys ends in no
// barrier (the tasks pack what is still missing), nor do the tasks where nothing follows them; the others do.

// plan.operand·Kᵀ (scale·log2(e)·Kᵀ unless that overflows: FusedPlan) packed once per call as [B, Hkv, key tile, D,
// packed_width(keys of the tile)], shared by every query tile and every head of a group, in panels (pack_panels, which
// pads each tile's last columns with 0). The queries are then read where they lie: scaling them per tile was a pass of
// its own (forward 0 to −2%). Key tile kt of kv head (b, kvh), packed at dst:
void pack_key_tile(const AttentionProblem& p, const FusedPlan& plan, int64_t b, int64_t kvh, int64_t kt, float* dst) {
  const int64_t n = std::min(Tiles::kBk, p.Lk - kt * Tiles::kBk);
  pack_panels(p.k + b * p.k_sb + kvh * p.k_sh, p.k_sl, kt * Tiles::kBk, n, p.D, packed_width(n), dst, plan.operand);
}

// Every kv head's key tiles into buf.packed, each thread its static share, with no barrier after (PackedOnDemand): a
// thread goes on to its tasks, which pack_head_keys what is still missing. With a barrier here and after the tasks,
// 2 threads, L 256, under OMP_WAIT_POLICY=passive ran 4–47% slower (Zen 5); with the tasks alone packing, many short
// heads ran 4–13% slower (the two threads start a head's tasks side by side, and one waited for the other's packing).
void pack_keys(const AttentionProblem& p, const FusedPlan& plan, const FusedBuffers& buf) {
#pragma omp for schedule(static) nowait
  for (int64_t t = 0; t < p.B * p.Hkv * plan.key_tiles; ++t) {
    const int64_t kt = t % plan.key_tiles, bk = t / plan.key_tiles;
    PackedOnDemand::pack_if_unclaimed(buf.key_states, t, [&](int64_t) {
      pack_key_tile(p, plan, bk / p.Hkv, bk % p.Hkv, kt, buf.packed + t * plan.key_tile_floats);
    });
  }
}

// The tiles of kv head (b, kvh) that hold keys [lo, hi), packed (by this task, or waited for).
void pack_head_keys(const AttentionProblem& p, const FusedPlan& plan, const FusedBuffers& buf, int64_t b, int64_t kvh,
                    int64_t lo, int64_t hi) {
  if (ATTN_SWEEP_SKIP == 5 || lo >= hi) return;
  const int64_t head = (b * p.Hkv + kvh) * plan.key_tiles;
  PackedOnDemand::ensure(buf.key_states + head, lo / Tiles::kBk, (hi + Tiles::kBk - 1) / Tiles::kBk, [&](int64_t kt) {
    pack_key_tile(p, plan, b, kvh, kt, buf.packed + (head + kt) * plan.key_tile_floats);
  });
}

// FusedPlan::task_keys: the key tiles of [lo, hi) (lo a multiple of kBk) of kv head (b, kvh), at their places in kpack
// ([key_tiles, D, kBk]).
void pack_task_keys(const AttentionProblem& p, const FusedPlan& plan, int64_t b, int64_t kvh, int64_t lo, int64_t hi,
                    float* kpack) {
  for (int64_t kt = lo / Tiles::kBk; kt * Tiles::kBk < hi; ++kt)
    pack_key_tile(p, plan, b, kvh, kt, kpack + kt * plan.key_tile_floats);
}

// The keys split `split` of task t covers, as a half-open range: whole, aligned key tiles of the range
// the task's rows may see, divided evenly among the splits.
void split_key_range(const AttentionProblem& p, const FusedPlan& plan, const TileTask& t, int64_t split, int64_t* lo,
                     int64_t* hi) {
  tile_key_range(p, t.i0, t.rows, lo, hi);
  *lo = *lo / Tiles::kBk * Tiles::kBk;  // whole, aligned key tiles: the keys before lo are hidden in every row
  if (plan.splits > 1) {                // this split's share of the key tiles
    const int64_t ntiles = *hi > *lo ? (*hi - *lo + Tiles::kBk - 1) / Tiles::kBk : 0;
    const int64_t a = *lo + ntiles * split / plan.splits * Tiles::kBk;
    const int64_t e = *lo + ntiles * (split + 1) / plan.splits * Tiles::kBk;
    *lo = std::min(a, *hi);
    *hi = std::min(e, *hi);
  }
}

// Every (tile task, key split): the online softmax over the split's keys into ws.m, ws.l, ws.acc, a row
// whose fast state came out non-finite redone by exact_row_state. With one split the task finishes its
// rows: out = acc / l, and lse = m + log l when weights are asked for. With several, it keeps the rows'
// (m, l, acc) in buf.partial for merge_key_splits.
void run_tiles(const AttentionProblem& p, const FusedPlan& plan, const FusedBuffers& buf, Workspace& ws) {
  const int64_t Dvp = plan.Dvp;
  const auto run_task = [&](int64_t task, int64_t next_task) {
    const int64_t split = task % plan.splits;
    const TileTask t = tile_task(p, plan, task / plan.splits);
    int64_t lo, hi;
    split_key_range(p, plan, t, split, &lo, &hi);
    if (!plan.keys_packed) pack_queries(p, t.b, t.h, t.i0, t.rows, plan.operand, ws);
    // the task's queries, read by every key tile's Q·Kᵀ, asked into the L2 at once: the first product read them row by
    // row, 8 rows of a few cache lines each, too short for the hardware prefetchers (L 1024, D 128: +1–3%)
    if (plan.keys_packed) prefetch_rows(p.q + t.b * p.q_sb + t.h * p.q_sh + t.i0 * p.q_sl, t.rows, p.D, p.q_sl);
    std::fill(ws.m.begin(), ws.m.begin() + t.rows, kNegInf);
    std::fill(ws.l.begin(), ws.l.begin() + t.rows, 0.0f);
    std::fill(ws.acc.begin(), ws.acc.begin() + t.rows * Dvp, 0.0f);
    for (int64_t r = 0; r < t.rows; ++r) ws.drop[r].group = -1;
    if (lo < hi) {
      const float* kpack = plan.task_keys ? ws.kpack.data() : head_keys(p, plan, buf.packed, t.b, t.h);
      if (plan.task_keys)
        pack_task_keys(p, plan, t.b, p.kv_head(t.h), lo, hi, ws.kpack.data());
      else if (plan.keys_packed)
        pack_head_keys(p, plan, buf, t.b, p.kv_head(t.h), lo, hi);
      if (next_task >= 0) {  // the next task of its group (task_group): its Q, K and V asked into the L2
        const TileTask n = tile_task(p, plan, next_task / plan.splits);
        const int64_t nkv = p.kv_head(n.h);
        prefetch_rows(p.q + n.b * p.q_sb + n.h * p.q_sh + n.i0 * p.q_sl, n.rows, p.D, p.q_sl);
        prefetch_rows(p.k + n.b * p.k_sb + nkv * p.k_sh, p.Lk, p.D, p.k_sl);
        prefetch_rows(p.v + n.b * p.v_sb + nkv * p.v_sh, p.Lk, p.Dv, p.v_sl);
      }
      accumulate_keys(p, t.b, t.h, t.i0, t.rows, lo, hi, Dvp, kpack, plan.after, ws);
      if (!rows_state_finite(ws.l.data(), ws.acc.data(), Dvp, t.rows, p.Dv))
        for (int64_t r = 0; r < t.rows; ++r)
          if (!row_state_finite(ws.l[r], ws.acc.data() + r * Dvp, p.Dv))
            exact_row_state(p, t.b, t.h, t.i0 + r, lo, hi, &ws.m[r], &ws.l[r], ws.acc.data() + r * Dvp);
    }
    if (plan.splits > 1) {
      float* state = buf.partial + task * plan.bq * plan.row_state;  // [bq, row_state]
      for (int64_t r = 0; r < t.rows; ++r) {
        state[r * plan.row_state] = ws.m[r];
        state[r * plan.row_state + 1] = ws.l[r];
        std::copy(ws.acc.data() + r * Dvp, ws.acc.data() + (r + 1) * Dvp, state + r * plan.row_state + 2);
      }
      return;
    }
    // out = acc / l ; lse = m + log l
    float* o = p.o + t.b * p.o_sb + t.h * p.o_sh;
    for (int64_t r = 0; r < t.rows; ++r) {  // l = 0: every key hidden; l = NaN: a poisoned row
      const float inv = ws.l[r] == 0.0f ? 0.0f : 1.0f / ws.l[r];
      const float* acc = ws.acc.data() + r * Dvp;
      float* out = o + (t.i0 + r) * p.o_sl;
      int64_t d = 0;
      for (; d + W <= p.Dv; d += W) (Vec::load(acc + d) * Vec::set1(inv)).store(out + d);
      for (; d < p.Dv; ++d) out[d] = acc[d] * inv;
      if (buf.lse) buf.lse[t.bh * p.Lq + t.i0 + r] = ws.l[r] == 0.0f ? kNegInf : kLn2 * (ws.m[r] + std::log2(ws.l[r]));
      if (buf.row_base) set_row_base(buf.row_base + 2 * (t.bh * p.Lq + t.i0 + r), ws.m[r], ws.l[r]);
    }
  };
  // Nothing follows the tasks but the parallel region's end (one key split, no weights): no barrier of their own, so
  // that a thread that finishes early waits once, not twice (2 threads, L 256, OMP_WAIT_POLICY=passive: 5–11%).
  const int64_t tasks = plan.tile_tasks * plan.splits;
  const int64_t G = plan.task_group, groups = (tasks + G - 1) / G;
  const auto run_group = [&](int64_t group) {
    const int64_t end = std::min(tasks, (group + 1) * G);
    for (int64_t task = group * G; task < end; ++task) run_task(task, task + 1 < end ? task + 1 : -1);
  };
  if (plan.splits == 1 && !p.weights) {
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t group = 0; group < groups; ++group) run_group(group);
  } else {
#pragma omp for schedule(dynamic, 1)
    for (int64_t group = 0; group < groups; ++group) run_group(group);
  }
}

// Merges the splits of each (b, h, tile) row by log-sum-exp, in split order (deterministic): out, lse when asked
// for, and the rows' (m, log2 l) when weights are. partial: [tile_tasks, splits, bq, row_state].
void merge_key_splits(const AttentionProblem& p, const FusedPlan& plan, const FusedBuffers& buf) {
  const float* partial = buf.partial;
  float* lse = buf.lse;
  const int64_t splits = plan.splits, row_state = plan.row_state;
#pragma omp for schedule(static)
  for (int64_t index = 0; index < plan.tile_tasks; ++index) {
    const TileTask t = tile_task(p, plan, index);
    float* o = p.o + t.b * p.o_sb + t.h * p.o_sh;
    for (int64_t r = 0; r < t.rows; ++r) {
      auto state_of = [&](int64_t s) { return partial + ((index * splits + s) * plan.bq + r) * row_state; };
      float m = kNegInf;
      bool poisoned = false;  // a split whose l is NaN makes the whole row NaN
      for (int64_t s = 0; s < splits; ++s) {
        m = std::max(m, state_of(s)[0]);
        poisoned |= std::isnan(state_of(s)[1]);
      }
      float l = 0.0f;
      float* out = o + (t.i0 + r) * p.o_sl;
      std::fill(out, out + p.Dv, poisoned ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
      if (poisoned) l = std::numeric_limits<float>::quiet_NaN();
      if (!poisoned && m != kNegInf) {
        for (int64_t s = 0; s < splits; ++s) {
          const float* state = state_of(s);
          const float c = state[0] == kNegInf ? 0.0f : std::exp2(state[0] - m);
          if (c == 0.0f) continue;  // its weights, c·P, are all 0 in float here: its values are never multiplied
          l += c * state[1];
          for (int64_t d = 0; d < p.Dv; ++d) out[d] += c * state[2 + d];
        }
        for (int64_t d = 0; d < p.Dv; ++d) out[d] /= l;
      }
      if (lse) lse[t.bh * p.Lq + t.i0 + r] = l == 0.0f ? kNegInf : kLn2 * (m + std::log2(l));
      if (buf.row_base) set_row_base(buf.row_base + 2 * (t.bh * p.Lq + t.i0 + r), m, l);
    }
  }
}

// The weights pass: every tile task's rows of p.weights, from the rows' (m, log2 l) (buf.row_base).
void write_weights(const AttentionProblem& p, const FusedPlan& plan, const FusedBuffers& buf, Workspace& ws) {
#pragma omp for schedule(dynamic, 1)
  for (int64_t index = 0; index < plan.tile_tasks; ++index) {
    const TileTask t = tile_task(p, plan, index);
    if (!plan.keys_packed) pack_queries(p, t.b, t.h, t.i0, t.rows, plan.operand, ws);
    if (plan.keys_packed) pack_head_keys(p, plan, buf, t.b, p.kv_head(t.h), 0, p.Lk);  // tiles no task needed
    write_tile_weights(p, t.b, t.h, t.i0, t.rows, buf.row_base + 2 * (t.bh * p.Lq + t.i0),
                       head_keys(p, plan, buf.packed, t.b, t.h), plan.after, ws);
  }
}

}  // namespace

void attention_fused(const AttentionProblem& p) {
  if (p.Lq == 0 || p.B == 0 || p.H == 0) return;
  const FusedPlan plan = plan_fused(p);
  const FusedBuffers buf = call_buffers(p, plan);
  const auto steps = [&] {  // every thread of the team (the worksharing inside divides the work)
    Workspace& ws = thread_workspace();
    ws.reserve(p.D, plan.Dvp, plan.bq, plan.task_keys ? plan.key_tiles * plan.key_tile_floats : 0);
    if (plan.pack_pass && ATTN_SWEEP_SKIP != 5) pack_keys(p, plan, buf);
    run_tiles(p, plan, buf, ws);
    if (plan.splits > 1) merge_key_splits(p, plan, buf);
    if (p.weights) write_weights(p, plan, buf, ws);
  };
  // One thread and no enclosing region: no parallel region (see plan_fused). Inside one (a translator's
  // batch-parallel workers), the steps' worksharing must bind to a team of their own: an inactive one.
  if (plan.threads == 1 && !omp_in_parallel()) {
    steps();
    return;
  }
#pragma omp parallel num_threads(plan.threads)
  steps();
}

}  // namespace attn::detail::ATTN_TARGET
