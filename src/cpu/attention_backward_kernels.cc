// The fused attention backward (FlashAttention-2's, on a CPU). Compiled once per instruction set, as the
// forward (attention_fused_kernels.cc). With S = scale·Q·Kᵀ + M, P = softmax(S) = exp(S − lse), the dropout
// mask Z and its scale c = 1/(1 − p), P̃ = c·Z ⊙ P, O = P̃·V:
//   dV = P̃ᵀ·dO      dP = c·Z ⊙ (dO·Vᵀ)      Δ_i = Σ_d dO_id · O_id  (= Σ_j P_ij dP_ij)
//   dS = P ⊙ (dP − Δ)      dQ = scale·dS·K      dK = scale·dSᵀ·Q
// P is recomputed tile by tile from the forward's lse; no [Lq, Lk] matrix exists, memory is O(L).
//
// Work division: one task per (batch, kv head g, key chunk), the costliest chunks first (backward_tasks). A task
// walks its chunk's key blocks (kBk keys); for each block it sweeps every query head of the group and every query
// tile (kBq rows) that can see the block, accumulating the block's dK, dV in its workspace (it owns them: no other task
// touches those keys) and each query row's dQ in the chunk's own dQ buffer. The chunks' dQ buffers are
// summed in chunk order at the end. With one chunk (one thread, or enough pairs for the threads) each task owns its
// heads' rows outright: it computes their Δ and checks itself and adds dQ straight into dq (BackwardPlan::own_rows).
// The chunk count depends only on the shape and the thread count, and every sum runs in a fixed order: the gradients
// are bitwise the same from run to run for a given num_threads.
//
// One call, step by step (attention_backward_fused, at the end of the file):
//   plan_backward     key blocks, chunks, threads
//   row_deltas_and_checks  Δ for every row; which query tiles hold non-finite Q or dO (not with own_rows)
//   run_key_blocks    every task above
//   reduce_dq         dQ = Σ over chunks, in order (not with own_rows and D whole vectors: dQ was added in place)
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/aligned_vector.h"
#include "cpu/attention_fused.h"
#include "cpu/backward_rows.h"
#include "cpu/dropout.h"
#include "cpu/threads.h"
#include "cpu/tile_kernels.h"

namespace attn::detail::ATTN_TARGET {
namespace {

constexpr int64_t kBq = Tiles::kBackwardBq, kBk = Tiles::kBackwardBk;
static_assert(128 % kBk == 0, "a key block spans one dropout group (cpu/dropout.h) at most");

struct BackwardPlan {
  int threads = 1;
  int64_t Dp = 0, Dvp = 0;   // D, Dv rounded up to whole vectors (at least one)
  int64_t key_blocks = 0;    // ⌈Lk / kBk⌉
  int64_t chunks = 1;        // key chunks per (batch, kv head)
  BackwardTasks tasks;       // B · Hkv · chunks, the costliest chunks first (backward_tasks)
  int64_t dq_part_rows = 0;  // rows of one chunk's dQ buffer: B · H · Lq
  int64_t q_tiles = 0;       // ⌈Lq / kBq⌉ query tiles per head, aligned to multiples of kBq
  int64_t span = 1;          // key blocks per pass over the query tiles (backward_span)
  int64_t block_floats = 0;  // one key block's part of each per-block buffer of the workspace
  // Q rows and dO rows are read in place when their width is whole vectors, else packed per tile
  bool q_in_place = false, dout_in_place = false;
  // One chunk: a task's (batch, kv head) rows are its own. It computes their Δ and checks as it starts (no pass over
  // every head's O, dO and Q before the tasks: with many short heads they were out of the caches again by the time
  // the tasks read them), and, where D is whole vectors (dq_in_place), adds dQ into dq itself (no dQ buffer, no copy).
  bool own_rows = false, dq_in_place = false;
  // The scores as the forward's, bit for bit: at most kFewQueries queries by dot products of the queries times the
  // operand with K's rows (scores_by_dot), else Q times the packed operand·Kᵀ; the factor scale·log2(e) carried by
  // that operand or applied after (score_scaling, decided on the same tensor as the forward's).
  bool scores_by_dot = false;
  ScoreScaling scaling;
};

BackwardPlan plan_backward(const AttentionProblem& p) {
  BackwardPlan plan;
  plan.threads = resolve_threads(p.num_threads);
  plan.Dp = round_up(std::max<int64_t>(p.D, 1), W);
  plan.Dvp = round_up(std::max<int64_t>(p.Dv, 1), W);
  plan.key_blocks = (p.Lk + kBk - 1) / kBk;
  plan.dq_part_rows = p.B * p.H * p.Lq;
  plan.q_tiles = (p.Lq + kBq - 1) / kBq;
  plan.q_in_place = p.D > 0 && p.D % W == 0;
  plan.dout_in_place = p.Dv > 0 && p.Dv % W == 0;
  plan.chunks = key_chunks(p, plan.threads, plan.key_blocks, plan.dq_part_rows * plan.Dp);
  plan.tasks = backward_tasks(p, plan.key_blocks, kBk, plan.chunks);
  plan.own_rows = plan.chunks == 1;
  plan.dq_in_place = plan.own_rows && p.D == plan.Dp;
  // key blocks per pass (backward_span): a block's packed keys and values, dK and dV (and padded K rows, where D is
  // not whole vectors); a pass's Q, dO and dQ (read and written) of the group's heads
  plan.block_floats = kBk * std::max(plan.Dp, plan.Dvp);
  const int64_t block_bytes = (plan.q_in_place ? 4 : 5) * plan.block_floats * static_cast<int64_t>(sizeof(float));
  const int64_t pass_bytes =
      p.group() * p.Lq * (2 * plan.Dp + plan.Dp + plan.Dvp) * static_cast<int64_t>(sizeof(float));
  plan.span = backward_span(block_bytes, pass_bytes);
  plan.scores_by_dot = scores_by_dot(p);
  plan.scaling = score_scaling(p);
  return plan;
}

// Per-thread buffers, grown once and reused across calls.
// Key block s of a pass owns the part of each per-block buffer from s · plan.block_floats on.
struct BackwardWorkspace {
  AlignedVector<float> kt, vt;     // [span][D, kBk], [span][Dv, kBk]   each key block's Kᵀ and Vᵀ, in panels
  AlignedVector<float> kb;         // [span][kBk, Dp]                   its K rows, padded
  AlignedVector<float> dk, dv;     // [span][kBk, Dp], [span][kBk, Dvp] its gradients
  AlignedVector<float> q, dout;    // [kBq, Dp], [kBq, Dvp]  the query tile's Q and dO (when packed)
  AlignedVector<float> s, pt, ds;  // [kBq, kBk] ×3         P, P̃ (with dropout), dP then dS
  AlignedVector<float> qs;         // [kFewQueries, D]      the queries times the operand (scores_by_dot)
  void reserve(const BackwardPlan& plan) {
    auto grow = [](auto& b, int64_t n) {
      if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
    };
    for (auto* b : {&kt, &vt, &kb, &dk, &dv}) grow(*b, plan.span * plan.block_floats);
    grow(q, kBq * plan.Dp);
    grow(dout, kBq * plan.Dvp);
    grow(s, kBq * kBk);
    grow(pt, kBq * kBk);
    grow(ds, kBq * kBk);
    grow(qs, kFewQueries * plan.Dp);
  }
};

// One key block of a pass, keys [j0, j0 + n), and its parts of the workspace.
struct KeyBlock {
  int64_t j0 = 0, n = 0;
  int64_t cols = 0;             // the width of its packed Kᵀ and Vᵀ panels (pack_panels)
  float* kt = nullptr;          // [D, cols]  in panels
  float* vt = nullptr;          // [Dv, cols] in panels
  float* dk = nullptr;          // [n, Dp]
  float* dv = nullptr;          // [n, Dvp]
  const float* keys = nullptr;  // [n, ≥ D], row stride k_rs: its K rows in place (D whole vectors) or padded
  int64_t k_rs = 0;
  bool keys_finite = true;
  bool all_padding = false;          // every key padding: nothing to add (its dK and dV stay 0)
  int64_t tile_lo = 0, tile_hi = 0;  // the aligned query tiles [tile_lo, tile_hi) that may see it (query_range)
};

BackwardWorkspace& thread_workspace() {
  thread_local BackwardWorkspace ws;
  return ws;
}

// rows × width floats of x (row stride x_rs) into dst (row stride dst_rs), zero-padded to dst_rs.
void pack_rows(const float* x, int64_t x_rs, int64_t rows, int64_t width, float* dst, int64_t dst_rs) {
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(x + r * x_rs, x + r * x_rs + width, dst + r * dst_rs);
    std::fill(dst + r * dst_rs + width, dst + (r + 1) * dst_rs, 0.0f);
  }
}

// Aligned query tile t = (b, h, tile): Δ_i = Σ_d dO_id · O_id for its rows (delta: [B, H, Lq]) and whether its
// Q rows and dO rows are all finite (q_ok, dout_ok: [B, H, q_tiles]).
void tile_deltas_and_checks(const AttentionProblem& p, const AttentionGradients& g, const BackwardPlan& plan, int64_t t,
                            float* delta, uint8_t* q_ok, uint8_t* dout_ok) {
  const int64_t tile = t % plan.q_tiles, bh = t / plan.q_tiles, b = bh / p.H, h = bh % p.H;
  const int64_t i0 = tile * kBq, rows = std::min(kBq, p.Lq - i0);
  const int64_t at = b * p.o_sb + h * p.o_sh + i0 * p.o_sl;
  for (int64_t r = 0; r < rows; ++r) {  // W lanes of partial sums, then the tail
    const float* dor = g.d_out + at + r * p.o_sl;
    const float* orow = g.out + at + r * p.o_sl;
    Vec acc = Vec::zero();
    int64_t d = 0;
    for (; d + W <= p.Dv; d += W) acc = Vec::fmadd(Vec::load(dor + d), Vec::load(orow + d), acc);
    float sum = acc.reduce_add();
    for (; d < p.Dv; ++d) sum += dor[d] * orow[d];
    delta[bh * p.Lq + i0 + r] = sum;
  }
  q_ok[t] = all_finite(p.q + b * p.q_sb + h * p.q_sh + i0 * p.q_sl, p.q_sl, rows, p.D);
  dout_ok[t] = all_finite(g.d_out + at, p.o_sl, rows, p.Dv);
}

// Every tile's Δ and checks, before the tasks (not with BackwardPlan::own_rows).
void row_deltas_and_checks(const AttentionProblem& p, const AttentionGradients& g, const BackwardPlan& plan,
                           float* delta, uint8_t* q_ok, uint8_t* dout_ok) {
#pragma omp for schedule(static)
  for (int64_t t = 0; t < p.B * p.H * plan.q_tiles; ++t) tile_deltas_and_checks(p, g, plan, t, delta, q_ok, dout_ok);
}

// A query tile's Q and dO rows as the products read them: in place where their widths are whole vectors, else padded
// into ws (once per pass: tile_rows).
struct TileRows {
  const float* q;     // [rows, ≥ D], row stride q_rs
  const float* dout;  // [rows, ≥ Dv], row stride dout_rs
  int64_t q_rs, dout_rs;
};

TileRows tile_rows(const AttentionProblem& p, const AttentionGradients& g, const BackwardPlan& plan, int64_t b,
                   int64_t h, int64_t i0, int64_t rows, BackwardWorkspace& ws) {
  TileRows tr{p.q + b * p.q_sb + h * p.q_sh + i0 * p.q_sl, g.d_out + b * p.o_sb + h * p.o_sh + i0 * p.o_sl, p.q_sl,
              p.o_sl};
  if (!plan.q_in_place) {
    pack_rows(tr.q, p.q_sl, rows, p.D, ws.q.data(), plan.Dp);
    tr.q = ws.q.data(), tr.q_rs = plan.Dp;
  }
  if (!plan.dout_in_place) {
    pack_rows(tr.dout, p.o_sl, rows, p.Dv, ws.dout.data(), plan.Dvp);
    tr.dout = ws.dout.data(), tr.dout_rs = plan.Dvp;
  }
  return tr;
}

// One query tile of head h (its rows: tr) against key block kb, of whose keys [kb.j0, kb.j0 + n) the tile may see
// (n ≤ kb.n): adds its share of dK and dV to kb.dk, kb.dv and of dQ to dq_rows ([rows, Dp], row stride dq_rs: the
// tile's rows of the chunk's dQ buffer, or of dq itself with BackwardPlan::dq_in_place). q_finite, dout_finite: the
// tile's checks.
// `diagonal`: the tile crosses the causal diagonal, row r seeing only the block's first visible(r) keys (growing
// with r; the last row sees all n). Its products then stop at that triangle in register-tile steps: S and dP per
// kScoreRows rows up to the block's last row's keys, dQ per kUpdateRows rows the same way, dK and dV per
// kUpdateRows keys from the first row that sees them. An entry of P̃ or dS such a step reads past its row's
// visible keys is 0, so the sums are those of the whole tile, without most of the hidden half's products.
void query_tile(const AttentionProblem& p, const AttentionGradients& g, const BackwardPlan& plan, const float* delta,
                int64_t b, int64_t h, int64_t i0, int64_t rows, const TileRows& tr, const KeyBlock& kb, int64_t n,
                bool diagonal, bool q_finite, bool dout_finite, float* dq_rows, int64_t dq_rs, BackwardWorkspace& ws) {
  const int64_t Dp = plan.Dp, Dvp = plan.Dvp, j0 = kb.j0;
  const float *q = tr.q, *dout = tr.dout;
  const int64_t q_rs = tr.q_rs, dout_rs = tr.dout_rs;
  const auto visible = [&](int64_t r) {  // the keys of the block row r may see: a prefix
    return diagonal ? visible_prefix(p, i0 + r, 1, j0, n) : n;
  };
  // S, the forward's base-2 scores bit for bit (BackwardPlan::scores_by_dot, scaling), and dP̃ = dO·Vᵀ, [rows, ≤ n
  // rounded up to whole vectors]
  const float after = plan.scaling.after;
  const auto scores = [&](int64_t r, int64_t block, int64_t cols) {
    float* const s = ws.s.data() + r * kBk;
    if (plan.scores_by_dot) {  // (pack_queries and compute_scores' few-query path, attention_fused_kernels.cc)
      for (int64_t i = 0; i < block; ++i) {
        float* qs = ws.qs.data() + i * p.D;
        for (int64_t d = 0; d < p.D; ++d) qs[d] = q[(r + i) * q_rs + d] * plan.scaling.operand;
        for (int64_t j = 0; j < cols; ++j)
          s[i * kBk + j] = j < kb.n ? after * dot(qs, kb.keys + j * kb.k_rs, p.D) : 0.0f;
      }
    } else {
      gemm_abt_panels(q + r * q_rs, q_rs, kb.kt, kb.cols, p.D, block, cols, s, kBk);
      for (int64_t i = 0; i < block && after != 1.0f; ++i)  // (compute_scores' scale_after)
        for (int64_t j = 0; j < cols; j += W) (Vec::load(s + i * kBk + j) * Vec::set1(after)).store(s + i * kBk + j);
    }
    gemm_abt_panels(dout + r * dout_rs, dout_rs, kb.vt, kb.cols, p.Dv, block, cols, ws.ds.data() + r * kBk, kBk);
  };
  if (!diagonal) {
    scores(0, rows, round_up(n, Tiles::kScoreVecs * W));
  } else {
    for (int64_t r = 0; r < rows; r += Tiles::kScoreRows) {
      const int64_t block = std::min<int64_t>(Tiles::kScoreRows, rows - r), cols = round_up(visible(r + block - 1), W);
      if (cols > 0) scores(r, block, cols);
    }
  }
  const bool masked = tile_needs_mask(p, b, i0, rows, j0, n);
  const bool dropout = p.dropout.active();
  const float* row_lse = g.lse + (b * p.H + h) * p.Lq + i0;
  const float* row_delta = delta + (b * p.H + h) * p.Lq + i0;
  for (int64_t r = 0; r < rows; ++r) {
    float* s = ws.s.data() + r * kBk;
    float* dp = ws.ds.data() + r * kBk;
    float* pt = ws.pt.data() + r * kBk;
    // this row's entries: its visible keys rounded up to whole vectors (the rest of them hidden by the mask)
    const int64_t len = diagonal ? std::min(n, round_up(visible(r), W)) : n;
    row_grads(p, b, h, i0 + r, j0, len, masked, 1.0f, row_lse[r], row_delta[r], s, dp, pt);
    if (len < n) {  // the diagonal's update steps may read up to the tile's last row's keys
      std::fill(s + len, s + n, 0.0f);
      std::fill(dp + len, dp + n, 0.0f);
      if (dropout) std::fill(pt + len, pt + n, 0.0f);
    }
  }
  const float* P_used = dropout ? ws.pt.data() : ws.s.data();  // what multiplied V in the forward
  const auto update_dv = dout_finite ? rank_update<Tiles::kUpdateRows, Tiles::kUpdateVecs> : rank_update_nonzero;
  const auto update_dk = q_finite ? rank_update<Tiles::kUpdateRows, Tiles::kUpdateVecs> : rank_update_nonzero;
  const auto update_dq = kb.keys_finite ? rank_update<Tiles::kUpdateRows, Tiles::kUpdateVecs> : rank_update_nonzero;
  // dV[n, Dvp] += P̃ᵀ · dO ; dK[n, Dp] += dSᵀ · Q ; dQ[rows, Dp] += dS · K
  if (!diagonal) {
    update_dv(P_used, 1, kBk, n, rows, dout, dout_rs, Dvp / W, kb.dv, Dvp);
    update_dk(ws.ds.data(), 1, kBk, n, rows, q, q_rs, Dp / W, kb.dk, Dp);
    update_dq(ws.ds.data(), kBk, 1, rows, n, kb.keys, kb.k_rs, Dp / W, dq_rows, dq_rs);
    return;
  }
  constexpr int64_t kSteps = Tiles::kUpdateRows;
  for (int64_t j = 0, first = 0; j < n; j += kSteps) {  // keys [j, j + kSteps) from the first row that sees key j
    while (visible(first) <= j) ++first;                // the last row sees all n keys
    const int64_t block = std::min(kSteps, n - j), terms = rows - first;
    update_dv(P_used + first * kBk + j, 1, kBk, block, terms, dout + first * dout_rs, dout_rs, Dvp / W, kb.dv + j * Dvp,
              Dvp);
    update_dk(ws.ds.data() + first * kBk + j, 1, kBk, block, terms, q + first * q_rs, q_rs, Dp / W, kb.dk + j * Dp, Dp);
  }
  for (int64_t r = 0; r < rows; r += kSteps) {  // rows [r, r + kSteps) up to their last row's keys
    const int64_t block = std::min(kSteps, rows - r), terms = visible(r + block - 1);
    if (terms > 0)
      update_dq(ws.ds.data() + r * kBk, kBk, 1, block, terms, kb.keys, kb.k_rs, Dp / W, dq_rows + r * dq_rs, dq_rs);
  }
}

// Every task: (b, kv head g, chunk c) walks its key blocks; see the file comment.
void run_key_blocks(const AttentionProblem& p, const AttentionGradients& g, const BackwardPlan& plan, float* delta,
                    uint8_t* q_ok, uint8_t* dout_ok, float* dq_part, BackwardWorkspace& ws) {
  const int64_t Dp = plan.Dp, Dvp = plan.Dvp, group = p.group();
#pragma omp for schedule(dynamic, 1)
  for (int64_t task = 0; task < plan.tasks.count(); ++task) {
    int64_t bg, c;
    plan.tasks.at(task, &bg, &c);
    const int64_t b = bg / p.Hkv, kvh = bg % p.Hkv;
    // head h's dQ rows: this chunk's buffer, [Lq, Dp], or (dq_in_place) dq's rows themselves, row stride q_sl
    const int64_t dq_rs = plan.dq_in_place ? p.q_sl : Dp;
    const auto dq_head = [&](int64_t h) {
      return plan.dq_in_place ? g.dq + b * p.q_sb + h * p.q_sh
                              : dq_part + (c * plan.dq_part_rows + (b * p.H + h) * p.Lq) * Dp;
    };
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      float* const dq = dq_head(h);
      for (int64_t i = 0; i < p.Lq; ++i) std::fill(dq + i * dq_rs, dq + i * dq_rs + Dp, 0.0f);
      if (plan.own_rows)
        for (int64_t tile = 0; tile < plan.q_tiles; ++tile)
          tile_deltas_and_checks(p, g, plan, (b * p.H + h) * plan.q_tiles + tile, delta, q_ok, dout_ok);
    }
    const float* k = p.k + b * p.k_sb + kvh * p.k_sh;
    const float* v = p.v + b * p.v_sb + kvh * p.v_sh;
    float* dk = g.dk + b * p.k_sb + kvh * p.k_sh;
    float* dv = g.dv + b * p.v_sb + kvh * p.v_sh;
    const int64_t kb_lo = plan.key_blocks * c / plan.chunks, kb_hi = plan.key_blocks * (c + 1) / plan.chunks;
    // span key blocks per pass over the query tiles; each query row still takes its blocks' dQ terms in block
    // order and each block its (head, tile) terms in the same order as one block per pass: the same sums
    for (int64_t kb0 = kb_lo; kb0 < kb_hi; kb0 += plan.span) {
      const int64_t blocks = std::min(plan.span, kb_hi - kb0);
      KeyBlock kbs[kMaxSpan];
      int64_t tile_lo = plan.q_tiles, tile_hi = 0;  // the pass's query tiles: every block's
      for (int64_t s = 0; s < blocks; ++s) {
        KeyBlock& kb = kbs[s];
        const int64_t at = s * plan.block_floats;
        kb.j0 = (kb0 + s) * kBk, kb.n = std::min(kBk, p.Lk - kb.j0);
        kb.kt = ws.kt.data() + at, kb.vt = ws.vt.data() + at, kb.dk = ws.dk.data() + at, kb.dv = ws.dv.data() + at;
        std::fill(kb.dk, kb.dk + kb.n * Dp, 0.0f);
        std::fill(kb.dv, kb.dv + kb.n * Dvp, 0.0f);
        kb.all_padding = all_padding(p, b, kb.j0, kb.n);
        if (kb.all_padding) continue;
        kb.cols = round_up(kb.n, Tiles::kScoreVecs * W);
        if (!plan.scores_by_dot) pack_panels(k, p.k_sl, kb.j0, kb.n, p.D, kb.cols, kb.kt, plan.scaling.operand);
        pack_panels(v, p.v_sl, kb.j0, kb.n, p.Dv, kb.cols, kb.vt);
        kb.keys_finite = all_finite(k + kb.j0 * p.k_sl, p.k_sl, kb.n, p.D);
        kb.keys = k + kb.j0 * p.k_sl, kb.k_rs = p.k_sl;
        if (!plan.q_in_place) {
          float* padded = ws.kb.data() + at;
          pack_rows(kb.keys, p.k_sl, kb.n, p.D, padded, Dp);
          kb.keys = padded, kb.k_rs = Dp;
        }
        int64_t i_lo, i_hi;
        query_range(p, kb.j0, kb.n, &i_lo, &i_hi);
        kb.tile_lo = i_lo / kBq, kb.tile_hi = (i_hi + kBq - 1) / kBq;  // aligned tiles: their checks are per tile
        tile_lo = std::min(tile_lo, kb.tile_lo);
        tile_hi = std::max(tile_hi, kb.tile_hi);
      }
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t tile = tile_lo; tile < tile_hi; ++tile) {
          const int64_t i0 = tile * kBq, rows = std::min(kBq, p.Lq - i0), t = (b * p.H + h) * plan.q_tiles + tile;
          TileRows tr{};
          bool have_rows = false;  // the tile's rows, padded once for all the pass's blocks where they need it
          for (int64_t s = 0; s < blocks; ++s) {
            const KeyBlock& kb = kbs[s];
            if (kb.all_padding || tile < kb.tile_lo || tile >= kb.tile_hi) continue;
            // On the causal diagonal the tile's last row sees only the block's first keys: the rest are hidden
            // from every row of the tile, so the tile stops there; a tile across the diagonal trims its products
            // to the visible triangle (query_tile).
            bool diagonal;
            const int64_t n_tile = tile_keys(p, i0, rows, kb.j0, kb.n, &diagonal);
            if (n_tile == 0) continue;
            if (!have_rows) tr = tile_rows(p, g, plan, b, h, i0, rows, ws);
            have_rows = true;
            query_tile(p, g, plan, delta, b, h, i0, rows, tr, kb, n_tile, diagonal, q_ok[t] != 0, dout_ok[t] != 0,
                       dq_head(h) + i0 * dq_rs, dq_rs, ws);
          }
        }
      for (int64_t s = 0; s < blocks; ++s) {
        const KeyBlock& kb = kbs[s];
        for (int64_t jj = 0; jj < kb.n; ++jj) {
          std::copy(kb.dk + jj * Dp, kb.dk + jj * Dp + p.D, dk + (kb.j0 + jj) * p.k_sl);
          std::copy(kb.dv + jj * Dvp, kb.dv + jj * Dvp + p.Dv, dv + (kb.j0 + jj) * p.v_sl);
        }
      }
    }
  }
}

// dq = Σ_c dq_part[c], chunk by chunk in order.
void reduce_dq(const AttentionProblem& p, const AttentionGradients& g, const BackwardPlan& plan, const float* dq_part) {
#pragma omp for schedule(static)
  for (int64_t row = 0; row < plan.dq_part_rows; ++row) {
    const int64_t i = row % p.Lq, bh = row / p.Lq, b = bh / p.H, h = bh % p.H;
    float* dq = g.dq + b * p.q_sb + h * p.q_sh + i * p.q_sl;
    const float* part = dq_part + row * plan.Dp;
    std::copy(part, part + p.D, dq);
    for (int64_t c = 1; c < plan.chunks; ++c) {
      const float* pc = part + c * plan.dq_part_rows * plan.Dp;
      for (int64_t d = 0; d < p.D; ++d) dq[d] += pc[d];
    }
  }
}

}  // namespace

void attention_backward_fused(const AttentionProblem& p, const AttentionGradients& g) {
  if (p.B == 0 || p.H == 0) return;
  const BackwardPlan plan = plan_backward(p);
  thread_local AlignedVector<float> delta, dq_part;  // [B, H, Lq], [chunks, B, H, Lq, Dp]
  thread_local std::vector<uint8_t> checks;          // [2, B, H, q_tiles]: Q rows finite, dO rows finite
  const int64_t tiles = p.B * p.H * plan.q_tiles;
  if (static_cast<int64_t>(checks.size()) < 2 * tiles) checks.resize(static_cast<size_t>(2 * tiles));
  const int64_t rows = p.B * p.H * p.Lq;
  if (static_cast<int64_t>(delta.size()) < rows) delta.resize(static_cast<size_t>(rows));
  if (!plan.dq_in_place && static_cast<int64_t>(dq_part.size()) < plan.chunks * rows * plan.Dp)
    dq_part.resize(static_cast<size_t>(plan.chunks * rows * plan.Dp));
  float* const deltas = delta.data();  // the calling thread's buffers (thread_local: name them out here)
  float* const dq_parts = dq_part.data();
  uint8_t* const q_ok = checks.data();
  uint8_t* const dout_ok = checks.data() + tiles;
#pragma omp parallel num_threads(plan.threads)
  {
    BackwardWorkspace& ws = thread_workspace();
    ws.reserve(plan);
    if (!plan.own_rows) row_deltas_and_checks(p, g, plan, deltas, q_ok, dout_ok);
    run_key_blocks(p, g, plan, deltas, q_ok, dout_ok, dq_parts, ws);
    if (!plan.dq_in_place) reduce_dq(p, g, plan, dq_parts);
  }
}

}  // namespace attn::detail::ATTN_TARGET
