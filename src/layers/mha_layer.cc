// Multi-head attention over rows (layers/mha_layer.h): projections through BLAS, heads read in place.
#include "layers/mha_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/attention_decode.h"

#include "ops/nn.h"

namespace attn::layers {
using ops::grow;

namespace {

// The attention problem of one call, heads interleaved in the projection rows, with the masks set (the
// public mask is checked here, before any work).
detail::AttentionProblem make_problem(const MhaWeights& w, const MhaMasks& masks, int64_t B, int64_t Lq, int64_t Lk,
                                      float* q, float* k, float* v, float* heads) {
  detail::AttentionProblem p = detail::interleaved_heads_problem(B, w.H, w.Hkv, Lq, Lk, w.head_dim(), q, k, v, heads);
  if (masks.mask.defined()) detail::set_mask(p, masks.mask, "MultiHeadAttention", "attn_mask");
  p.key_padding = masks.key_padding;
  p.causal = masks.causal;
  p.num_threads = masks.num_threads;
  return p;
}

// Where one step's projections of x [N, E] went: q, k, v with their row strides (scratch slots 0-2).
struct Projections {
  float *q, *k, *v;
  int64_t q_ld, kv_ld;
};

// Q, K and V of x as one GEMM into qkv [N, E + 2·Hkv·Dh] when the three projections are one packed float32
// in_proj (nn.MultiheadAttention's in_proj_weight); else three GEMMs.
Projections project_qkv(const MhaWeights& w, const float* x, int64_t N) {
  const int64_t E = w.E, kv = w.kv_width();
  const bool packed = (w.qw_q == nullptr || w.qw_qkv != nullptr) && w.kdim == E && w.vdim == E &&
                      w.w_k == w.w_q + E * E && w.w_v == w.w_k + kv * E &&
                      ((w.b_q == nullptr && w.b_k == nullptr && w.b_v == nullptr) ||
                       (w.b_q != nullptr && w.b_k == w.b_q + E && w.b_v == w.b_k + kv));
  if (packed) {
    const int64_t row = E + 2 * kv;
    float* qkv = ops::scratch(0, N * row);
    ops::linear_forward(qkv, x, w.w_q, w.qw_qkv, w.b_q, N, row, E);
    return {qkv, qkv + E, qkv + E + kv, row, row};
  }
  Projections p{ops::scratch(0, N * E), ops::scratch(1, N * kv), ops::scratch(2, N * kv), E, kv};
  ops::linear_forward(p.q, x, w.w_q, w.qw_q, w.b_q, N, E, E);
  ops::linear_forward(p.k, x, w.w_k, w.qw_k, w.b_k, N, kv, w.kdim);
  ops::linear_forward(p.v, x, w.w_v, w.qw_v, w.b_v, N, kv, w.vdim);
  return p;
}

// Consecutive sentences of a right-padded [B, L] batch attended as one problem over their first `len` rows.
struct SentenceGroup {
  int64_t b0, b1, len;
  std::vector<uint8_t> padding;  // [b1 − b0, len], 1 = padding; empty: none
};

// A right-padded batch (each row's padding a suffix; else none) cut into groups of consecutive sentences whose
// lengths stay within a factor of 2 of each other: a group's problem spans its longest sentence, so a short sentence's
// queries no longer run against the longest's key tiles (the MiniLM parity fixture's batches pad short texts to 256).
std::vector<SentenceGroup> group_sentences(const uint8_t* key_padding, int64_t B, int64_t L) {
  if (key_padding == nullptr || B < 2) return {};
  std::vector<int64_t> len(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* pad = key_padding + b * L;
    int64_t n = 0;
    while (n < L && !pad[n]) ++n;
    for (int64_t j = n; j < L; ++j)
      if (!pad[j]) return {};  // a hole: not right padding
    if (n == 0) return {};     // a sentence of padding alone
    len[static_cast<size_t>(b)] = n;
  }
  std::vector<SentenceGroup> groups;
  int64_t lo = 0, hi = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = len[static_cast<size_t>(b)];
    if (!groups.empty() && 2 * std::min(lo, n) > std::max(hi, n)) {
      groups.back().b1 = b + 1, lo = std::min(lo, n), hi = std::max(hi, n);
    } else {
      groups.push_back({b, b + 1, 0, {}}), lo = n, hi = n;
    }
    groups.back().len = hi;
  }
  if (groups.size() == 1 && groups[0].len == L) return {};  // the batch itself
  for (SentenceGroup& g : groups)
    for (int64_t b = g.b0; b < g.b1; ++b)
      if (len[static_cast<size_t>(b)] < g.len) {
        g.padding.assign(static_cast<size_t>((g.b1 - g.b0) * g.len), 0);
        for (int64_t c = g.b0; c < g.b1; ++c)
          std::fill(g.padding.begin() + (c - g.b0) * g.len + len[static_cast<size_t>(c)],
                    g.padding.begin() + (c - g.b0 + 1) * g.len, uint8_t{1});
        break;
      }
  return groups;
}
}  // namespace

void mha_forward(float* out, const MhaWeights& w, const float* xq, const float* xk, const float* xv, int64_t B,
                 int64_t Lq, int64_t Lk, const MhaMasks& masks, MhaActivations* acts, float* weights, float dropout,
                 std::mt19937_64* rng, ops::LinearEpilogue out_epilogue) {
  const int64_t E = w.E, kv = w.kv_width();
  // q: [B·Lq, E]  k, v: [B·Lk, Hkv·Dh]  heads: [B·Lq, E]; kept for the backward when training
  float *q, *k, *v, *heads;
  if (acts) {
    q = grow(acts->q, B * Lq * E), k = grow(acts->k, B * Lk * kv), v = grow(acts->v, B * Lk * kv);
    heads = grow(acts->heads, B * Lq * E);
  } else {
    q = ops::scratch(0, B * Lq * E), k = ops::scratch(1, B * Lk * kv), v = ops::scratch(2, B * Lk * kv);
    heads = ops::scratch(3, B * Lq * E);
  }
  detail::AttentionProblem p = make_problem(w, masks, B, Lq, Lk, q, k, v, heads);
  if (acts && acts->record_weights && weights == nullptr) weights = grow(acts->weights, B * w.H * Lq * Lk);
  p.weights = weights;
  if (acts) {
    p.lse = grow(acts->lse, B * w.H * Lq);  // [B, H, Lq]: the backward recomputes the weights from it
    // attention dropout inside the kernel; the backward regenerates the mask from the same seed
    if (rng && dropout > 0.0f) p.dropout = detail::make_dropout(dropout, (*rng)());
  }
  if (!acts && xq == xk && xk == xv && Lq == Lk) {  // inference self-attention: one GEMM if in_proj is packed
    const Projections qkv = project_qkv(w, xq, B * Lq);
    p.q = qkv.q, p.k = qkv.k, p.v = qkv.v;
    p.q_sb = Lq * qkv.q_ld, p.q_sl = qkv.q_ld;
    p.k_sb = p.v_sb = Lk * qkv.kv_ld, p.k_sl = p.v_sl = qkv.kv_ld;
  } else {
    // Q = xq·W_Qᵀ + b_Q,  K = xk·W_Kᵀ + b_K,  V = xv·W_Vᵀ + b_V
    ops::linear_forward(q, xq, w.w_q, w.qw_q, w.b_q, B * Lq, E, E);
    ops::linear_forward(k, xk, w.w_k, w.qw_k, w.b_k, B * Lk, kv, w.kdim);
    ops::linear_forward(v, xv, w.w_v, w.qw_v, w.b_v, B * Lk, kv, w.vdim);
  }
  // heads = dropout(softmax(scale·Q·Kᵀ + M))·V
  detail::run_problem(p, masks.impl);
  if (acts) acts->xq = xq, acts->xk = xk, acts->xv = xv, acts->problem = p;
  // out = heads·W_Oᵀ + b_O
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, B * Lq, E, E, out_epilogue);
}

void mha_backward(float* dxq, float* dxk, float* dxv, const MhaGrads& g, const float* dout, MhaActivations& acts,
                  const MhaWeights& w, int64_t B, int64_t Lq, int64_t Lk, ops::GradWrite dxq_write) {
  const int64_t E = w.E, kv = w.kv_width();
  // out = heads·W_Oᵀ + b_O
  float* dheads = grow(acts.dheads, B * Lq * E);
  ops::linear_backward(dheads, g.dw_o, g.db_o, dout, acts.heads.data(), w.w_o, B * Lq, E, E,
                       ops::GradWrite::kOverwrite);
  // heads = dropout(softmax(scale·Q·Kᵀ + M))·V: the fused backward writes dQ, dK, dV
  detail::AttentionGradients ag;
  ag.out = acts.heads.data(), ag.lse = acts.lse.data(), ag.d_out = dheads;
  ag.dq = grow(acts.dq, B * Lq * E), ag.dk = grow(acts.dk, B * Lk * kv), ag.dv = grow(acts.dv, B * Lk * kv);
  detail::run_backward(acts.problem, ag, AttentionImpl::kFused);
  // Q = xq·W_Qᵀ + b_Q, K = xk·W_Kᵀ + b_K, V = xv·W_Vᵀ + b_V
  ops::linear_backward(dxq, g.dw_q, g.db_q, ag.dq, acts.xq, w.w_q, B * Lq, E, E, dxq_write);
  ops::linear_backward(dxk, g.dw_k, g.db_k, ag.dk, acts.xk, w.w_k, B * Lk, kv, w.kdim);
  ops::linear_backward(dxv, g.dw_v, g.db_v, ag.dv, acts.xv, w.w_v, B * Lk, kv, w.vdim);
}

void mha_self_attention_step(float* out, const MhaWeights& w, const float* x, int64_t N, int64_t t, KVCache& cache) {
  const int64_t E = w.E, Dh = w.head_dim();
  // q: [N, E], k_t, v_t: [N, Hkv·Dh] (rows q_ld, kv_ld apart)  heads: [N, E]
  const Projections qkv = project_qkv(w, x, N);
  float* heads = ops::scratch(3, N * E);
  cache.write(qkv.k, qkv.v, qkv.kv_ld, N, t, 1);
  // the one new query of each hypothesis sees every cached position 0..t
  detail::DecodeProblem p;
  p.B = N, p.H = w.H, p.Hkv = w.Hkv, p.Lq = 1, p.Lk = t + 1, p.D = Dh, p.Dv = Dh;
  p.q = qkv.q, p.q_sb = qkv.q_ld, p.q_sh = Dh, p.q_sl = qkv.q_ld;
  cache.describe(p);
  p.o = heads, p.o_sb = E, p.o_sh = Dh, p.o_sl = E;
  p.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  detail::attention_decode(p);
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, N, E, E, {.accumulate = true});
}

void mha_self_attention_packed(float* out, const MhaWeights& w, const float* x, int64_t B, int64_t L,
                               const PackedRows& packed, const MhaMasks& masks, float* weights) {
  const int64_t E = w.E, kv = w.kv_width(), n = packed.count;
  // Q, K, V of the packed rows, spread to their places in [B·L]
  const Projections qkv = project_qkv(w, x, n);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = packed.rows[r];
    std::copy_n(qkv.q + r * qkv.q_ld, E, packed.q + row * E);
    std::copy_n(qkv.k + r * qkv.kv_ld, kv, packed.k + row * kv);
    std::copy_n(qkv.v + r * qkv.kv_ld, kv, packed.v + row * kv);
  }
  // heads = softmax(scale·Q·Kᵀ + M)·V over [B, L]
  const std::vector<SentenceGroup> groups =
      weights == nullptr && !masks.mask.defined() && masks.causal == CausalAlignment::kNone
          ? group_sentences(masks.key_padding, B, L)
          : std::vector<SentenceGroup>{};
  if (groups.empty()) {
    detail::AttentionProblem p = make_problem(w, masks, B, L, L, packed.q, packed.k, packed.v, packed.heads);
    p.weights = weights;
    detail::run_problem(p, masks.impl);
  }
  // or group by group: sentences [b0, b1) over their first `len` rows (the batch's row strides), the padding of the
  // group's shorter sentences as its own [b1 − b0, len] key padding
  for (const SentenceGroup& g : groups) {
    const int64_t n_b = g.b1 - g.b0, first = g.b0 * L;
    detail::AttentionProblem p = make_problem(w, masks, n_b, g.len, g.len, packed.q + first * E, packed.k + first * kv,
                                              packed.v + first * kv, packed.heads + first * E);
    p.q_sb = p.o_sb = L * E, p.k_sb = p.v_sb = L * kv;
    p.key_padding = g.padding.empty() ? nullptr : g.padding.data();
    detail::run_problem(p, masks.impl);
  }
  // out = heads·W_Oᵀ + b_O over the packed rows
  float* heads = ops::scratch(3, n * E);
  for (int64_t r = 0; r < n; ++r) std::copy_n(packed.heads + packed.rows[r] * E, E, heads + r * E);
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, n, E, E);
}

void mha_cross_kv(KVCache& cache, const MhaWeights& w, const float* memory, int64_t B, int64_t Ls,
                  detail::KVType kv_type) {
  const int64_t kv = w.kv_width();
  cache.allocate(B, Ls, w.Hkv, w.head_dim(), /*paged_blocks=*/false, kv_type);
  // K and V as rows [B, Ls, Hkv·Dh], then into the cache's layout and type
  float* k = ops::scratch(1, B * Ls * kv);
  float* v = ops::scratch(2, B * Ls * kv);
  ops::linear_forward(k, memory, w.w_k, w.qw_k, w.b_k, B * Ls, kv, w.kdim);
  ops::linear_forward(v, memory, w.w_v, w.qw_v, w.b_v, B * Ls, kv, w.vdim);
  cache.write(k, v, Ls * kv, B, 0, Ls);
}

void mha_cross_attention_step(float* out, const MhaWeights& w, const float* x, int64_t B, int64_t K,
                              const KVCache& cache, const uint8_t* key_padding) {
  const int64_t E = w.E, N = B * K, Dh = w.head_dim();
  float* q = ops::scratch(0, N * E);
  float* heads = ops::scratch(3, N * E);
  ops::linear_forward(q, x, w.w_q, w.qw_q, w.b_q, N, E, E);
  // the K hypotheses of sentence b are K query rows over b's encoder K/V: nothing is copied per beam
  detail::DecodeProblem p;
  p.B = B, p.H = w.H, p.Hkv = w.Hkv, p.Lq = K, p.Lk = cache.capacity, p.D = Dh, p.Dv = Dh;
  p.q = q, p.q_sb = K * E, p.q_sh = Dh, p.q_sl = E;
  cache.describe(p);
  p.o = heads, p.o_sb = K * E, p.o_sh = Dh, p.o_sl = E;
  p.key_padding = key_padding, p.pad_sb = cache.capacity;
  p.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  detail::attention_decode(p);
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, N, E, E, {.accumulate = true});
}

}  // namespace attn::layers
