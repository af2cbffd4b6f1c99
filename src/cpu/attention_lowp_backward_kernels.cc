// The bfloat16 attention backward: the float32 fused backward's algorithm (attention_backward_kernels.cc, its
// file comment: FlashAttention-2, P recomputed from the forward's lse, one task per (batch, kv head, key chunk),
// dQ summed over chunks in order, so bitwise the same from run to run for a thread count) with its five products
// on vdpbf16ps. Built only for AVX512_BF16 (ATTN_TARGET = avx512bf16).
//
// Per key block (kBk keys) and query tile (kBq rows):
//   S  = Q·Kᵀ, dP̃ = dO·Vᵀ         the bfloat16 inputs' pairs: exact products, float32 sums
//   P, P̃, dS                       float32, the float32 path's row passes (cpu/backward_rows.h)
//   dV += P̃ᵀ·dO, dK += dSᵀ·Q, dQ += dS·K
//                                  P̃ and dS rounded to bfloat16 (nearest even) for these three, as
//                                  FlashAttention-2 does on GPUs and PyTorch's CPU kernel for bfloat16; float32 sums
// The gradients are rounded to bfloat16 once, at the end. Non-finite inputs are left to the caller (the function
// returns false without writing): it runs the float32 backward on the widened tensors, which keeps the
// non-finite rule of attn/attention.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/aligned_vector.h"
#include "cpu/attention_lowp.h"
#include "cpu/backward_rows.h"
#include "cpu/bf16_pairs.h"
#include "cpu/lowp_convert.h"
#include "cpu/threads.h"

#if !ATTN_LOWP_DOT
#error "the bfloat16 backward is built for AVX512_BF16 only (ATTN_TARGET=avx512bf16)"
#endif

namespace attn::detail::ATTN_TARGET {
namespace {

constexpr int64_t kBq = Tiles::kBackwardBq, kBk = Tiles::kBackwardBk;
static_assert(kBk % 32 == 0 && kBq % 2 == 0, "whole vectors of keys; pairs of query rows");

struct Bf16BackwardPlan {
  int threads = 1;
  int64_t Dp = 0, Dvp = 0;    // D, Dv rounded up to even: the pairs of S's and dP's products
  int64_t D16 = 0, Dv16 = 0;  // D, Dv rounded up to whole vectors: the accumulators' widths
  int64_t key_blocks = 0, chunks = 1, q_tiles = 0;
  BackwardTasks tasks;       // B · Hkv · chunks, the costliest chunks first (backward_tasks)
  int64_t span = 1;          // key blocks per pass over the query tiles (backward_span)
  int64_t dq_part_rows = 0;  // B · H · Lq
};

// Per-thread buffers, grown once and reused.
// Key block s of a pass owns its part of kt, vt, kp, dk and dv, from s times one block's size on.
struct Bf16Workspace {
  AlignedVector<uint16_t> kt, vt;  // [span][Dp/2, kBk, 2], [span][Dvp/2, kBk, 2]  each block's Kᵀ, Vᵀ pairs (S, dP)
  AlignedVector<uint16_t> kp;      // [span][kBk/2, D16, 2]                        K in key pairs (dQ = dS·K)
  AlignedVector<uint32_t> qa, da;  // [kBq, Dp/2], [kBq, Dvp/2]        the tile's Q and dO pairs along D (S, dP)
  AlignedVector<uint16_t> qp, dop;  // [kBq/2, D16, 2], [kBq/2, Dv16, 2] Q, dO in row pairs (dK, dV)
  AlignedVector<float> s, pt, ds;   // [kBq, kBk]                       P, P̃ (dropout), dP then dS
  AlignedVector<uint32_t> pT, dsT;  // [kBq/2, kBk]                     P̃ᵀ, dSᵀ in row pairs (dV, dK)
  AlignedVector<uint32_t> dsr;      // [kBq, kBk/2]                     dS in key pairs (dQ)
  AlignedVector<float> dk, dv;      // [span][kBk, D16], [span][kBk, Dv16]  each block's gradients
  void reserve(const Bf16BackwardPlan& plan) {
    auto grow = [](auto& b, int64_t n) {
      if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
    };
    grow(kt, plan.span * plan.Dp * kBk), grow(vt, plan.span * plan.Dvp * kBk), grow(kp, plan.span * kBk * plan.D16);
    grow(qa, kBq * plan.Dp / 2), grow(da, kBq * plan.Dvp / 2);
    grow(qp, kBq * plan.D16), grow(dop, kBq * plan.Dv16);
    grow(s, kBq * kBk), grow(pt, kBq * kBk), grow(ds, kBq * kBk);
    grow(pT, kBq / 2 * kBk), grow(dsT, kBq / 2 * kBk), grow(dsr, kBq * kBk / 2);
    grow(dk, plan.span * kBk * plan.D16), grow(dv, plan.span * kBk * plan.Dv16);
  }
};

// One key block of a pass, keys [j0, j0 + n), and its parts of the workspace.
struct Bf16KeyBlock {
  int64_t j0 = 0, n = 0;
  const uint16_t *kt = nullptr, *vt = nullptr, *kp = nullptr;  // packed as Bf16Workspace's
  float *dk = nullptr, *dv = nullptr;                          // [kBk, D16], [kBk, Dv16]
  bool all_padding = false;
  int64_t tile_lo = 0, tile_hi = 0;  // the aligned query tiles that may see it (query_range)
};

// n values at x (bfloat16 bits) contain NaN or Inf?
bool any_nonfinite(const uint16_t* x, int64_t n) {
  const __m512i e = _mm512_set1_epi16(0x7f80);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    if (_mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_loadu_si512(x + i), e), e)) return true;
  for (; i < n; ++i)
    if ((x[i] & 0x7f80) == 0x7f80) return true;
  return false;
}

// A [B, G, L, width] tensor with strides (sb, sh, sl) holds NaN or Inf?
bool tensor_nonfinite(const uint16_t* x, int64_t B, int64_t G, int64_t L, int64_t width, int64_t sb, int64_t sh,
                      int64_t sl) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t i = 0; i < L; ++i)
        if (any_nonfinite(x + b * sb + g * sh + i * sl, width)) return true;
  return false;
}

// rows × depth bfloat16 values (row stride x_rs) as each row's pairs along depth: [rows, Dp/2] uint32.
void pack_row_pairs(const uint16_t* x, int64_t x_rs, int64_t rows, int64_t depth, int64_t Dp, uint32_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* xr = x + r * x_rs;
    uint32_t* o = out + r * Dp / 2;
    if (depth % 2 == 0) {
      std::memcpy(o, xr, static_cast<size_t>(depth) * 2);
    } else {
      for (int64_t d2 = 0; d2 < Dp / 2; ++d2)
        o[d2] = xr[2 * d2] | (2 * d2 + 1 < depth ? static_cast<uint32_t>(xr[2 * d2 + 1]) << 16 : 0u);
    }
  }
}

// rows × width bfloat16 values (row stride x_rs) in row pairs [⌈rows/2⌉, width16, 2] (interleave_rows).
void pack_pair_rows(const uint16_t* x, int64_t x_rs, int64_t rows, int64_t width, int64_t width16, uint16_t* out) {
  for (int64_t r2 = 0; 2 * r2 < rows; ++r2)
    interleave_rows(x + 2 * r2 * x_rs, 2 * r2 + 1 < rows ? x + (2 * r2 + 1) * x_rs : nullptr, width, width16,
                    out + r2 * width16 * 2);
}

// 16 floats at x as bfloat16 (nearest even), zero-extended into 32-bit lanes.
inline __m512i bf16_lanes(const float* x) {
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x)));
}

// X [rows, cols] (float32, row stride kBk) rounded to bfloat16, transposed into row pairs: out[r2·kBk + j] =
// (X[2·r2][j], X[2·r2 + 1][j]) — the A operand of Xᵀ·B (dV = P̃ᵀ·dO, dK = dSᵀ·Q). cols: a multiple of 16.
void narrow_transposed_pairs(const float* x, int64_t rows, int64_t cols, uint32_t* out) {
  for (int64_t r2 = 0; 2 * r2 < rows; ++r2) {
    const float* lo = x + 2 * r2 * kBk;
    const float* hi = 2 * r2 + 1 < rows ? lo + kBk : nullptr;
    for (int64_t j = 0; j < cols; j += 16) {
      const __m512i second = hi ? _mm512_slli_epi32(bf16_lanes(hi + j), 16) : _mm512_setzero_si512();
      _mm512_storeu_si512(out + r2 * kBk + j, _mm512_or_si512(bf16_lanes(lo + j), second));
    }
  }
}

// X [rows, cols] (float32, row stride kBk) rounded to bfloat16 in place of pairs along each row: [rows, kBk/2]
// uint32 — the A operand of X·B (dQ = dS·K). cols: a multiple of 32.
void narrow_rows(const float* x, int64_t rows, int64_t cols, uint32_t* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; j += 32) {
      const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + r * kBk + j + 16), _mm512_loadu_ps(x + r * kBk + j));
      _mm512_storeu_si512(out + r * kBk / 2 + j / 2, (__m512i)h);
    }
}

// rows × width float32 (row stride src_rs) rounded to bfloat16 into dst (row stride dst_rs), as float_to_bf16 rounds
// (narrow_row: 16 at a time; vcvtneps2bf16 would flush subnormal gradients to 0).
void narrow_out(const float* src, int64_t src_rs, int64_t rows, int64_t width, uint16_t* dst, int64_t dst_rs) {
  for (int64_t r = 0; r < rows; ++r) narrow_row<LowpType::kBFloat16>(src + r * src_rs, width, 1.0f, dst + r * dst_rs);
}

// A query tile's Q and dO rows into ws: pairs along D (qa, da) and row pairs (qp, dop), once for every key block of a
// pass.
void pack_query_tile(const LowpBackwardProblem& bp, const Bf16BackwardPlan& plan, int64_t b, int64_t h, int64_t i0,
                     int64_t rows, Bf16Workspace& ws) {
  const AttentionProblem& p = bp.p;
  const uint16_t* q = bp.q + b * p.q_sb + h * p.q_sh + i0 * p.q_sl;
  const uint16_t* dout = bp.d_out + b * p.o_sb + h * p.o_sh + i0 * p.o_sl;
  pack_row_pairs(q, p.q_sl, rows, p.D, plan.Dp, ws.qa.data());
  pack_row_pairs(dout, p.o_sl, rows, p.Dv, plan.Dvp, ws.da.data());
  pack_pair_rows(q, p.q_sl, rows, p.D, plan.D16, ws.qp.data());
  pack_pair_rows(dout, p.o_sl, rows, p.Dv, plan.Dv16, ws.dop.data());
}

// One query tile (packed in ws: pack_query_tile) against key block kb, of whose keys [kb.j0, kb.j0 + n) it may see:
// its shares of dK, dV (kb.dk, kb.dv) and dQ (dq_rows).
// `diagonal`: the tile crosses the causal diagonal, row r seeing only the block's first visible(r) keys (growing
// with r); its products then stop at that triangle, as the float32 backward's: S and dP per kScoreRows rows up to
// their last row's keys, dQ per kUpdateRows rows the same way, dK and dV per kUpdateRows keys from the row pair of the
// first row that sees them. What a step reads past a row's visible keys is 0 in P̃ and dS.
void query_tile(const LowpBackwardProblem& bp, const Bf16BackwardPlan& plan, const float* delta, int64_t b, int64_t h,
                int64_t i0, int64_t rows, const Bf16KeyBlock& kb, int64_t n, bool diagonal, float* dq_rows,
                Bf16Workspace& ws) {
  const AttentionProblem& p = bp.p;
  const int64_t j0 = kb.j0;
  const auto visible = [&](int64_t r) {  // the keys of the block row r may see: a prefix
    return diagonal ? visible_prefix(p, i0 + r, 1, j0, n) : n;
  };
  const int64_t cols = round_up(n, 32);  // whole score vectors and whole key pairs
  // S = Q·Kᵀ (scaled below) and dP̃ = dO·Vᵀ, rows [r, r + block) up to c columns
  const auto scores = [&](int64_t r, int64_t block, int64_t c) {
    dot_scores(ws.qa.data() + r * plan.Dp / 2, plan.Dp / 2, kb.kt, kBk, plan.Dp / 2, block, c, 1.0f,
               ws.s.data() + r * kBk, kBk);
    dot_scores(ws.da.data() + r * plan.Dvp / 2, plan.Dvp / 2, kb.vt, kBk, plan.Dvp / 2, block, c, 1.0f,
               ws.ds.data() + r * kBk, kBk);
  };
  if (!diagonal) {
    scores(0, rows, cols);
  } else {
    for (int64_t r = 0; r < rows; r += Tiles::kScoreRows) {
      const int64_t block = std::min<int64_t>(Tiles::kScoreRows, rows - r), c = round_up(visible(r + block - 1), 32);
      if (c > 0) scores(r, block, c);
    }
  }
  const bool masked = tile_needs_mask(p, b, i0, rows, j0, n);
  const bool dropout = p.dropout.active();
  const float* row_lse = bp.lse + (b * p.H + h) * p.Lq + i0;
  const float* row_delta = delta + (b * p.H + h) * p.Lq + i0;
  for (int64_t r = 0; r < rows; ++r) {  // the float32 path's row passes (attention_backward_kernels.cc)
    float* s = ws.s.data() + r * kBk;
    float* dp = ws.ds.data() + r * kBk;
    float* pt = ws.pt.data() + r * kBk;
    // this row's entries: its visible keys rounded up to whole vectors (the rest of them hidden by the mask)
    const int64_t len = diagonal ? std::min(n, round_up(visible(r), W)) : n;
    row_grads(p, b, h, i0 + r, j0, len, masked, p.scale * kLog2e, row_lse[r], row_delta[r], s, dp, pt);
    std::fill(s + len, s + cols, 0.0f);  // the keys past len weigh nothing in the pairs below
    std::fill(dp + len, dp + cols, 0.0f);
    if (dropout) std::fill(pt + len, pt + cols, 0.0f);
  }
  const float* P_used = dropout ? ws.pt.data() : ws.s.data();  // what multiplied V in the forward
  narrow_transposed_pairs(P_used, rows, cols, ws.pT.data());
  narrow_transposed_pairs(ws.ds.data(), rows, cols, ws.dsT.data());
  narrow_rows(ws.ds.data(), rows, cols, ws.dsr.data());
  const int64_t row_pairs = (rows + 1) / 2;
  constexpr auto update = dot_pv<Tiles::kUpdateRows, Tiles::kUpdateVecs>;  // the float32 backward's update tiles
  // dV[n, Dv16] += P̃ᵀ · dO ; dK[n, D16] += dSᵀ · Q ; dQ[rows, D16] += dS · K
  if (!diagonal) {
    update(ws.pT.data(), 1, kBk, n, row_pairs, ws.dop.data(), plan.Dv16 / 16, kb.dv, plan.Dv16);
    update(ws.dsT.data(), 1, kBk, n, row_pairs, ws.qp.data(), plan.D16 / 16, kb.dk, plan.D16);
    update(ws.dsr.data(), kBk / 2, 1, rows, cols / 2, kb.kp, plan.D16 / 16, dq_rows, plan.D16);
    return;
  }
  constexpr int64_t kSteps = Tiles::kUpdateRows;
  for (int64_t j = 0, first = 0; j < n; j += kSteps) {  // keys [j, j + kSteps) from the row pair of the first row
    while (visible(first) <= j) ++first;                // that sees key j (the last row sees all n keys)
    const int64_t block = std::min(kSteps, n - j), r2 = first / 2;
    update(ws.pT.data() + r2 * kBk + j, 1, kBk, block, row_pairs - r2, ws.dop.data() + r2 * plan.Dv16 * 2,
           plan.Dv16 / 16, kb.dv + j * plan.Dv16, plan.Dv16);
    update(ws.dsT.data() + r2 * kBk + j, 1, kBk, block, row_pairs - r2, ws.qp.data() + r2 * plan.D16 * 2, plan.D16 / 16,
           kb.dk + j * plan.D16, plan.D16);
  }
  for (int64_t r = 0; r < rows; r += kSteps) {  // rows [r, r + kSteps) up to their last row's keys
    const int64_t block = std::min(kSteps, rows - r), pairs = (visible(r + block - 1) + 1) / 2;
    if (pairs > 0)
      update(ws.dsr.data() + r * kBk / 2, kBk / 2, 1, block, pairs, kb.kp, plan.D16 / 16, dq_rows + r * plan.D16,
             plan.D16);
  }
}

}  // namespace

bool attention_backward_bf16(const LowpBackwardProblem& bp) {
  const AttentionProblem& p = bp.p;
  if (p.B == 0 || p.H == 0) return true;
  if (p.D == 0 || p.Dv == 0) return false;  // no pairs to multiply: the float32 backward handles empty heads
  if (tensor_nonfinite(bp.q, p.B, p.H, p.Lq, p.D, p.q_sb, p.q_sh, p.q_sl) ||
      tensor_nonfinite(bp.k, p.B, p.Hkv, p.Lk, p.D, p.k_sb, p.k_sh, p.k_sl) ||
      tensor_nonfinite(bp.v, p.B, p.Hkv, p.Lk, p.Dv, p.v_sb, p.v_sh, p.v_sl) ||
      tensor_nonfinite(bp.d_out, p.B, p.H, p.Lq, p.Dv, p.o_sb, p.o_sh, p.o_sl) ||
      tensor_nonfinite(bp.out, p.B, p.H, p.Lq, p.Dv, p.o_sb, p.o_sh, p.o_sl))
    return false;
  Bf16BackwardPlan plan;
  plan.threads = resolve_threads(p.num_threads);
  plan.Dp = round_up(std::max<int64_t>(p.D, 1), 2), plan.Dvp = round_up(std::max<int64_t>(p.Dv, 1), 2);
  plan.D16 = round_up(std::max<int64_t>(p.D, 1), 16), plan.Dv16 = round_up(std::max<int64_t>(p.Dv, 1), 16);
  plan.key_blocks = (p.Lk + kBk - 1) / kBk;
  plan.q_tiles = (p.Lq + kBq - 1) / kBq;
  const int64_t group = p.group();
  plan.dq_part_rows = p.B * p.H * p.Lq;
  plan.chunks = key_chunks(p, plan.threads, plan.key_blocks, plan.dq_part_rows * plan.D16);
  plan.tasks = backward_tasks(p, plan.key_blocks, kBk, plan.chunks);
  const int64_t block_bytes = kBk * (2 * (plan.Dp + plan.Dvp + plan.D16) + 4 * (plan.D16 + plan.Dv16));
  const int64_t pass_bytes = group * p.Lq * (2 * (p.D + p.Dv) + 8 * plan.D16);  // Q, dO; dQ read and written
  plan.span = backward_span(block_bytes, pass_bytes);                           // cpu/backward_rows.h
  thread_local AlignedVector<float> delta, dq_part;                             // [B, H, Lq], [chunks, B, H, Lq, D16]
  if (static_cast<int64_t>(delta.size()) < plan.dq_part_rows) delta.resize(static_cast<size_t>(plan.dq_part_rows));
  if (static_cast<int64_t>(dq_part.size()) < plan.chunks * plan.dq_part_rows * plan.D16)
    dq_part.resize(static_cast<size_t>(plan.chunks * plan.dq_part_rows * plan.D16));
  float* const deltas = delta.data();
  float* const dq_parts = dq_part.data();
  // One chunk: each task owns its (batch, kv head)'s rows, computes their Δ as it starts and rounds their dQ as it
  // ends, while they are in its caches (the float32 backward's BackwardPlan::own_rows), instead of a pass over every
  // row before the tasks and one after.
  const bool own_rows = plan.chunks == 1;
  const auto row_delta = [&](int64_t row) {  // Δ_i = Σ_d dO_id · O_id of row (b·H + h)·Lq + i
    const int64_t i = row % p.Lq, bh = row / p.Lq, at = (bh / p.H) * p.o_sb + (bh % p.H) * p.o_sh + i * p.o_sl;
    const uint16_t *dor = bp.d_out + at, *orow = bp.out + at;
    __m512 acc = _mm512_setzero_ps();  // 32 products a step, exact, summed in float32
    int64_t d = 0;
    for (; d + 32 <= p.Dv; d += 32)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(dor + d), (__m512bh)_mm512_loadu_si512(orow + d));
    float sum = _mm512_reduce_add_ps(acc);
    for (; d < p.Dv; ++d) sum += bf16_to_float(dor[d]) * bf16_to_float(orow[d]);
    deltas[row] = sum;
  };
  const auto round_dq = [&](int64_t row) {  // dQ = Σ over chunks, in order, then rounded
    const int64_t i = row % p.Lq, bh = row / p.Lq;
    uint16_t* dq = bp.dq + (bh / p.H) * p.q_sb + (bh % p.H) * p.q_sh + i * p.q_sl;
    const float* part = dq_parts + row * plan.D16;  // [chunks, dq_part_rows, D16] (D16: whole vectors)
    for (int64_t d = 0; d < p.D; d += 16) {         // each element summed over the chunks in order, as one at a time
      __m512 x = _mm512_loadu_ps(part + d);
      for (int64_t c = 1; c < plan.chunks; ++c)
        x = _mm512_add_ps(x, _mm512_loadu_ps(part + c * plan.dq_part_rows * plan.D16 + d));
      alignas(64) float sum[16];
      _mm512_store_ps(sum, x);
      narrow_row<LowpType::kBFloat16>(sum, std::min<int64_t>(16, p.D - d), 1.0f, dq + d);
    }
  };
#pragma omp parallel num_threads(plan.threads)
  {
    thread_local Bf16Workspace ws;
    ws.reserve(plan);
    if (!own_rows) {
#pragma omp for schedule(static)
      for (int64_t row = 0; row < plan.dq_part_rows; ++row) row_delta(row);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < plan.tasks.count(); ++task) {
      int64_t bg, c;
      plan.tasks.at(task, &bg, &c);
      const int64_t b = bg / p.Hkv, kvh = bg % p.Hkv;
      float* dq_chunk = dq_parts + c * plan.dq_part_rows * plan.D16;  // [B, H, Lq, D16]
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        std::fill(dq_chunk + (b * p.H + h) * p.Lq * plan.D16, dq_chunk + (b * p.H + h + 1) * p.Lq * plan.D16, 0.0f);
        if (own_rows)
          for (int64_t i = 0; i < p.Lq; ++i) row_delta((b * p.H + h) * p.Lq + i);
      }
      const uint16_t* k = bp.k + b * p.k_sb + kvh * p.k_sh;
      const uint16_t* v = bp.v + b * p.v_sb + kvh * p.v_sh;
      const int64_t kb_lo = plan.key_blocks * c / plan.chunks, kb_hi = plan.key_blocks * (c + 1) / plan.chunks;
      // span key blocks per pass; each row takes its blocks' dQ terms, and each block its rows' terms, in the order
      // of one block per pass: the same sums
      for (int64_t kb0 = kb_lo; kb0 < kb_hi; kb0 += plan.span) {
        const int64_t blocks = std::min(plan.span, kb_hi - kb0);
        Bf16KeyBlock kbs[kMaxSpan];
        int64_t tile_lo = plan.q_tiles, tile_hi = 0;
        for (int64_t s = 0; s < blocks; ++s) {
          Bf16KeyBlock& kb = kbs[s];
          kb.j0 = (kb0 + s) * kBk, kb.n = std::min(kBk, p.Lk - kb.j0);
          uint16_t* kt = ws.kt.data() + s * plan.Dp * kBk;
          uint16_t* vt = ws.vt.data() + s * plan.Dvp * kBk;
          uint16_t* kp = ws.kp.data() + s * kBk * plan.D16;
          kb.kt = kt, kb.vt = vt, kb.kp = kp;
          kb.dk = ws.dk.data() + s * kBk * plan.D16, kb.dv = ws.dv.data() + s * kBk * plan.Dv16;
          std::fill(kb.dk, kb.dk + kBk * plan.D16, 0.0f);
          std::fill(kb.dv, kb.dv + kBk * plan.Dv16, 0.0f);
          kb.all_padding = all_padding(p, b, kb.j0, kb.n);
          if (kb.all_padding) continue;
          pack_transposed_pairs(k + kb.j0 * p.k_sl, p.k_sl, kb.n, p.D, plan.Dp, kBk, kt);
          pack_transposed_pairs(v + kb.j0 * p.v_sl, p.v_sl, kb.n, p.Dv, plan.Dvp, kBk, vt);
          std::fill(kp, kp + kBk * plan.D16, uint16_t{0});
          pack_pair_rows(k + kb.j0 * p.k_sl, p.k_sl, kb.n, p.D, plan.D16, kp);
          int64_t i_lo, i_hi;
          query_range(p, kb.j0, kb.n, &i_lo, &i_hi);
          kb.tile_lo = i_lo / kBq, kb.tile_hi = (i_hi + kBq - 1) / kBq;
          tile_lo = std::min(tile_lo, kb.tile_lo);
          tile_hi = std::max(tile_hi, kb.tile_hi);
        }
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
          for (int64_t tile = tile_lo; tile < tile_hi; ++tile) {
            const int64_t i0 = tile * kBq, rows = std::min(kBq, p.Lq - i0);
            bool packed = false;
            for (int64_t s = 0; s < blocks; ++s) {
              const Bf16KeyBlock& kb = kbs[s];
              if (kb.all_padding || tile < kb.tile_lo || tile >= kb.tile_hi) continue;
              bool diagonal;
              const int64_t n_tile = tile_keys(p, i0, rows, kb.j0, kb.n, &diagonal);
              if (n_tile == 0) continue;
              if (!packed) pack_query_tile(bp, plan, b, h, i0, rows, ws);
              packed = true;
              query_tile(bp, plan, deltas, b, h, i0, rows, kb, n_tile, diagonal,
                         dq_chunk + ((b * p.H + h) * p.Lq + i0) * plan.D16, ws);
            }
          }
        for (int64_t s = 0; s < blocks; ++s) {
          const Bf16KeyBlock& kb = kbs[s];
          narrow_out(kb.dk, plan.D16, kb.n, p.D, bp.dk + b * p.k_sb + kvh * p.k_sh + kb.j0 * p.k_sl, p.k_sl);
          narrow_out(kb.dv, plan.Dv16, kb.n, p.Dv, bp.dv + b * p.v_sb + kvh * p.v_sh + kb.j0 * p.v_sl, p.v_sl);
        }
      }
      if (own_rows)
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
          for (int64_t i = 0; i < p.Lq; ++i) round_dq((b * p.H + h) * p.Lq + i);
    }
    if (!own_rows) {
#pragma omp for schedule(static)
      for (int64_t row = 0; row < plan.dq_part_rows; ++row) round_dq(row);
    }
  }
  return true;
}

}  // namespace attn::detail::ATTN_TARGET
