// Multi-head attention over rows (layers/mha_layer.h): projections through BLAS, heads read in place.
#include "layers/mha_layer.h"

#include <algorithm>

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

}  // namespace

void mha_forward(float* out, const MhaWeights& w, const float* xq, const float* xk, const float* xv, int64_t B,
                 int64_t Lq, int64_t Lk, const MhaMasks& masks, MhaActivations* acts, float* weights, float dropout,
                 std::mt19937_64* rng) {
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
  // Q = xq·W_Qᵀ + b_Q,  K = xk·W_Kᵀ + b_K,  V = xv·W_Vᵀ + b_V
  ops::linear_forward(q, xq, w.w_q, w.qw_q, w.b_q, B * Lq, E, E);
  ops::linear_forward(k, xk, w.w_k, w.qw_k, w.b_k, B * Lk, kv, w.kdim);
  ops::linear_forward(v, xv, w.w_v, w.qw_v, w.b_v, B * Lk, kv, w.vdim);
  // heads = dropout(softmax(scale·Q·Kᵀ + M))·V
  detail::run_problem(p, masks.impl);
  if (acts) acts->xq = xq, acts->xk = xk, acts->xv = xv, acts->problem = p;
  // out = heads·W_Oᵀ + b_O
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, B * Lq, E, E);
}

void mha_backward(float* dxq, float* dxk, float* dxv, const MhaGrads& g, const float* dout, MhaActivations& acts,
                  const MhaWeights& w, int64_t B, int64_t Lq, int64_t Lk) {
  const int64_t E = w.E, kv = w.kv_width();
  // out = heads·W_Oᵀ + b_O
  float* dheads = grow(acts.dheads, B * Lq * E);
  std::fill(dheads, dheads + B * Lq * E, 0.0f);
  ops::linear_backward(dheads, g.dw_o, g.db_o, dout, acts.heads.data(), w.w_o, B * Lq, E, E);
  // heads = dropout(softmax(scale·Q·Kᵀ + M))·V: the fused backward writes dQ, dK, dV
  detail::AttentionGradients ag;
  ag.out = acts.heads.data(), ag.lse = acts.lse.data(), ag.d_out = dheads;
  ag.dq = grow(acts.dq, B * Lq * E), ag.dk = grow(acts.dk, B * Lk * kv), ag.dv = grow(acts.dv, B * Lk * kv);
  detail::run_backward(acts.problem, ag, AttentionImpl::kFused);
  // Q = xq·W_Qᵀ + b_Q, K = xk·W_Kᵀ + b_K, V = xv·W_Vᵀ + b_V
  ops::linear_backward(dxq, g.dw_q, g.db_q, ag.dq, acts.xq, w.w_q, B * Lq, E, E);
  ops::linear_backward(dxk, g.dw_k, g.db_k, ag.dk, acts.xk, w.w_k, B * Lk, kv, w.kdim);
  ops::linear_backward(dxv, g.dw_v, g.db_v, ag.dv, acts.xv, w.w_v, B * Lk, kv, w.vdim);
}

void KVCache::allocate(int64_t n, int64_t cap, int64_t w, bool spare) {
  N = n, capacity = cap, width = w;
  // Uninitialised on purpose: position t is written before anything reads it, so only the pages of the
  // positions a batch reaches are ever touched (zero-filling the whole capacity cost more than decoding).
  const size_t floats = static_cast<size_t>(N * capacity * width);
  if (floats > held) {
    k.reset(new float[floats]);
    v.reset(new float[floats]);
    held = floats;
  }
  if (spare && floats > spare_held) {
    spare_k.reset(new float[floats]);
    spare_v.reset(new float[floats]);
    spare_held = floats;
  }
}

void KVCache::reorder(const std::vector<int64_t>& parent, int64_t length) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t from = parent[static_cast<size_t>(n)];
    std::copy_n(k.get() + from * capacity * width, length * width, spare_k.get() + n * capacity * width);
    std::copy_n(v.get() + from * capacity * width, length * width, spare_v.get() + n * capacity * width);
  }
  k.swap(spare_k);
  v.swap(spare_v);
  std::swap(held, spare_held);
}

void KVCache::move_rows(int64_t from, int64_t to, int64_t rows, int64_t length) {
  if (from == to) return;
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(k.get() + (from + r) * capacity * width, length * width, k.get() + (to + r) * capacity * width);
    std::copy_n(v.get() + (from + r) * capacity * width, length * width, v.get() + (to + r) * capacity * width);
  }
}

void mha_self_attention_step(float* out, const MhaWeights& w, const float* x, int64_t N, int64_t t, KVCache& cache) {
  const int64_t E = w.E, kv = w.kv_width(), T = cache.capacity;
  // q: [N, E]  k_t, v_t: [N, Hkv·Dh]  heads: [N, E]
  float *q = ops::scratch(0, N * E), *k = ops::scratch(1, N * kv), *v = ops::scratch(2, N * kv);
  float* heads = ops::scratch(3, N * E);
  ops::linear_forward(q, x, w.w_q, w.qw_q, w.b_q, N, E, E);
  ops::linear_forward(k, x, w.w_k, w.qw_k, w.b_k, N, kv, w.kdim);
  ops::linear_forward(v, x, w.w_v, w.qw_v, w.b_v, N, kv, w.vdim);
  for (int64_t n = 0; n < N; ++n) {
    std::copy_n(k + n * kv, kv, cache.k.get() + (n * T + t) * kv);
    std::copy_n(v + n * kv, kv, cache.v.get() + (n * T + t) * kv);
  }
  // the one new query sees every cached key; cache rows are T apart per hypothesis
  detail::AttentionProblem p =
      detail::interleaved_heads_problem(N, w.H, w.Hkv, 1, t + 1, w.head_dim(), q, cache.k.get(), cache.v.get(), heads);
  p.k_sb = p.v_sb = T * kv;
  detail::run_problem(p, AttentionImpl::kAuto);
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, N, E, E);
}

void mha_cross_kv(KVCache& cache, const MhaWeights& w, const float* memory, int64_t B, int64_t Ls) {
  cache.allocate(B, Ls, w.kv_width(), /*spare=*/false);
  ops::linear_forward(cache.k.get(), memory, w.w_k, w.qw_k, w.b_k, B * Ls, w.kv_width(), w.kdim);
  ops::linear_forward(cache.v.get(), memory, w.w_v, w.qw_v, w.b_v, B * Ls, w.kv_width(), w.vdim);
}

void mha_cross_attention_step(float* out, const MhaWeights& w, const float* x, int64_t B, int64_t K,
                              const KVCache& cache, const uint8_t* key_padding) {
  const int64_t E = w.E, N = B * K;
  float* q = ops::scratch(0, N * E);
  float* heads = ops::scratch(3, N * E);
  ops::linear_forward(q, x, w.w_q, w.qw_q, w.b_q, N, E, E);
  // the K hypotheses of sentence b are K query rows over b's encoder K/V: nothing is copied per beam
  detail::AttentionProblem p = detail::interleaved_heads_problem(B, w.H, w.Hkv, K, cache.capacity, w.head_dim(), q,
                                                                 cache.k.get(), cache.v.get(), heads);
  p.key_padding = key_padding;
  detail::run_problem(p, AttentionImpl::kAuto);
  ops::linear_forward(out, heads, w.w_o, w.qw_o, w.b_o, N, E, E);
}

}  // namespace attn::layers
