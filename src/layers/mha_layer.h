// Internal: multi-head attention as a layer over rows — the one implementation under the public
// MultiHeadAttention, the Transformer's encoder and decoder, incremental decoding and BERT.
//
//   out = concat_h( softmax(Q_h·K_hᵀ/√Dh + M) · V_h ) · W_Oᵀ + b_O
//   Q = xq·W_Qᵀ + b_Q   K = xk·W_Kᵀ + b_K   V = xv·W_Vᵀ + b_V
//
// Rows are [B·L, width]; the projections write Q as [B, Lq, H, Dh] and K, V as [B, Lk, Hkv, Dh], and the
// kernel reads each head in place through the problem's strides and writes its output the same way,
// which is out_proj's input: no head is ever transposed.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "attn/attention.h"
#include "attn/tensor.h"
#include "cpu/attention_decode.h"
#include "layers/kv_cache.h"
#include "ops/attention_problem.h"
#include "ops/nn.h"

namespace attn::layers {

// Views of one attention's parameters in nn.MultiheadAttention's layout ([out, in]); biases may be null.
// A packed in_proj_weight [E + 2·Hkv·Dh, E] is w_q = in_proj, w_k = in_proj + E·E, w_v = w_k + Hkv·Dh·E.
struct MhaWeights {
  const float *w_q = nullptr, *w_k = nullptr, *w_v = nullptr, *w_o = nullptr;  // [E, E], [Hkv·Dh, kdim] ×2, [E, E]
  const float *b_q = nullptr, *b_k = nullptr, *b_v = nullptr, *b_o = nullptr;  // [E], [Hkv·Dh] ×2, [E]
  // An inference-only model's copies (int8, bf16 or transposed float32) of W_Q, W_K, W_V, W_O, else null.
  const ops::QuantizedMatrix *qw_q = nullptr, *qw_k = nullptr, *qw_v = nullptr, *qw_o = nullptr;
  // The float32 inference copy of the packed in_proj [E + 2·Hkv·Dh, E] (Quantization::kFloat32), else null.
  const ops::QuantizedMatrix* qw_qkv = nullptr;
  int64_t E = 0, H = 1, Hkv = 1, kdim = 0, vdim = 0;
  int64_t head_dim() const { return E / H; }
  int64_t kv_width() const { return Hkv * head_dim(); }  // Hkv·Dh
};

// The gradients of MhaWeights (same layout), accumulated (+=) by the backward.
struct MhaGrads {
  float *dw_q = nullptr, *dw_k = nullptr, *dw_v = nullptr, *dw_o = nullptr;
  float *db_q = nullptr, *db_k = nullptr, *db_v = nullptr, *db_o = nullptr;
};

// What the attention hides, beside what the caller's kernel options say.
struct MhaMasks {
  const uint8_t* key_padding = nullptr;  // [B, Lk], 1 = padding
  CausalAlignment causal = CausalAlignment::kNone;
  Tensor mask;  // SDPA polarity (true = may attend) or additive, broadcastable to [B, H, Lq, Lk]; may be undefined
  AttentionImpl impl = AttentionImpl::kAuto;
  int num_threads = 0;
};

// What the backward needs from a training forward (llm.c's activations).
struct MhaActivations {
  const float* xq = nullptr;    // [B·Lq, E]
  const float* xk = nullptr;    // [B·Lk, kdim]
  const float* xv = nullptr;    // [B·Lk, vdim]
  std::vector<float> q, k, v;   // projections: [B·Lq, E], [B·Lk, Hkv·Dh] ×2
  std::vector<float> heads;     // attention output before out_proj, [B·Lq, E]
  std::vector<float> lse;       // [B, H, Lq] each row's log-sum-exp: the backward recomputes the weights
  bool record_weights = false;  // also keep the weights [B, H, Lq, Lk] (attention maps; never needed by training)
  std::vector<float> weights;
  detail::AttentionProblem problem;  // the forward's, dropout seed included
  // the backward's buffers, grown once and reused: [B·Lq, E], [B·Lq, E], [B·Lk, Hkv·Dh] ×2
  std::vector<float> dheads, dq, dk, dv;
};

// out [B·Lq, E] = MHA(xq [B·Lq, E], xk [B·Lk, kdim], xv [B·Lk, vdim]).
// Inference (acts = nullptr): no weights are computed unless `weights` ([B, H, Lq, Lk]) is given.
// Training (acts given): keeps what mha_backward needs (projections, output, log-sum-exp; never the
// [B, H, Lq, Lk] weights) and applies attention-weight dropout with probability `dropout` inside the
// kernel, seeded from rng (none when rng is null).
// out_epilogue: what out_proj's GEMM does after the product (accumulate: out += MHA(...), a residual).
void mha_forward(float* out, const MhaWeights& w, const float* xq, const float* xk, const float* xv, int64_t B,
                 int64_t Lq, int64_t Lk, const MhaMasks& masks, MhaActivations* acts = nullptr,
                 float* weights = nullptr, float dropout = 0.0f, std::mt19937_64* rng = nullptr,
                 ops::LinearEpilogue out_epilogue = {});
// A [B, L] batch's real rows, packed (the rest is padding, which masks.key_padding marks): packed row r is row rows[r]
// of [B·L]. q, k, v, heads: work buffers in the [B·L] layout ([B·L, E], k and v [B·L, Hkv·Dh]), kept by the caller
// from layer to layer; q, k and v's rows outside `rows` are 0 and stay so (heads' are the kernel's, never read).
struct PackedRows {
  const int64_t* rows = nullptr;  // [count]
  int64_t count = 0;
  float *q = nullptr, *k = nullptr, *v = nullptr, *heads = nullptr;
};

// Inference self-attention over packed rows: out [count, E] = MHA(x [count, E]). The projections run on the packed
// rows alone (a batch's padding had gone through them); the kernel reads Q, K, V in the [B, L] layout, whose padded
// rows it never sees (key padding hides those keys; their queries' rows are dropped). weights as mha_forward's.
void mha_self_attention_packed(float* out, const MhaWeights& w, const float* x, int64_t B, int64_t L,
                               const PackedRows& packed, const MhaMasks& masks, float* weights = nullptr);

// dxq += dLoss/dxq, dxk += ..., dxv += ..., in that order (they may alias: self-attention accumulates all three into
// one); dxq_write kOverwrite: dxq = dLoss/dxq, the first term of an aliased buffer. Parameter gradients accumulate
// into g.
void mha_backward(float* dxq, float* dxk, float* dxv, const MhaGrads& g, const float* dout, MhaActivations& acts,
                  const MhaWeights& w, int64_t B, int64_t Lq, int64_t Lk,
                  ops::GradWrite dxq_write = ops::GradWrite::kAccumulate);

// Masked self-attention of one step: out [N, E] += MHA(x [N, E]) (one token per hypothesis at position t; out
// may be x: the residual); writes k_t, v_t into the cache, then the new query sees positions 0..t.
void mha_self_attention_step(float* out, const MhaWeights& w, const float* x, int64_t N, int64_t t, KVCache& cache);
// Fills the cross-attention cache from memory [B·Ls, kdim = vdim]: K and V projected once.
void mha_cross_kv(KVCache& cache, const MhaWeights& w, const float* memory, int64_t B, int64_t Ls,
                  detail::KVType kv_type = detail::KVType::kFloat32);
// Cross-attention of one step: out [B·K, E] += MHA(x [B·K, E]) (out may be x), the K hypotheses of sentence b
// being K query rows over b's cached K/V; key_padding [B, Ls].
void mha_cross_attention_step(float* out, const MhaWeights& w, const float* x, int64_t B, int64_t K,
                              const KVCache& cache, const uint8_t* key_padding);

}  // namespace attn::layers
