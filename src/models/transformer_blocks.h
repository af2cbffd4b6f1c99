// Internal: the blocks of the Transformer as forward/backward pairs with their caches. Activations
// are [rows, E] row-major, rows = B·L. Gradients accumulate (+=).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "attn/models/transformer.h"
#include "ops/attention_problem.h"
#include "ops/nn.h"

namespace attn::models {

using Buf = std::vector<float>;

inline float* grow(Buf& b, int64_t n) {
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// Multi-head attention parameters in nn.MultiheadAttention's packed layout.
struct MhaWeights {
  const float *w_in = nullptr, *b_in = nullptr, *w_out = nullptr, *b_out = nullptr;  // [3E, E], [3E], [E, E], [E]
  float *dw_in = nullptr, *db_in = nullptr, *dw_out = nullptr, *db_out = nullptr;
  int64_t E = 0, H = 0;
};

struct MhaCache {
  const float* xq = nullptr;   // [B·Lq, E]
  const float* xkv = nullptr;  // [B·Lk, E]
  Buf q, k, v;                 // projections, [B, L, H, Dh]
  Buf weights;                 // [B, H, Lq, Lk]
  Buf heads;                   // attention output before out_proj, [B·Lq, E]
  std::vector<uint8_t> keep;   // attention-weight dropout mask
  float dropout = 0.0f;
  detail::AttentionProblem problem;
};

// out [B·Lq, E] = MHA(xq, xkv); key_padding [B, Lk] (1 = padding) or null; causal: top-left.
void mha_forward(float* out, MhaCache& c, const MhaWeights& w, const float* xq, const float* xkv, int64_t B, int64_t Lq,
                 int64_t Lk, const uint8_t* key_padding, bool causal, float dropout, std::mt19937_64* rng);
// dxq += ..., dxkv += ... (dxq == dxkv for self-attention is fine: both accumulate)
void mha_backward(float* dxq, float* dxkv, const float* dout, MhaCache& c, const MhaWeights& w, int64_t B, int64_t Lq,
                  int64_t Lk);

struct FfWeights {
  const float *w1, *b1, *w2, *b2;  // [F, E], [F], [E, F], [E]
  float *dw1, *db1, *dw2, *db2;
  int64_t E, F;
};

struct FfCache {
  const float* x = nullptr;
  Buf h_pre, h, h_drop;
  std::vector<uint8_t> keep;
};

// out = linear2(dropout(act(linear1(x))))          x, out: [M, E]
void ff_forward(float* out, FfCache& c, const FfWeights& w, const float* x, int64_t M, Activation act, float dropout,
                std::mt19937_64* rng);
void ff_backward(float* dx, const float* dout, FfCache& c, const FfWeights& w, int64_t M, Activation act,
                 float dropout);

struct LnWeights {
  const float *w, *b;
  float *dw, *db;
};

// A residual sublayer around F: norm_first ? x + drop(F(LN(x))) : LN(x + drop(F(x))).
struct SublayerCache {
  const float* x = nullptr;
  Buf ln_out, mean, rstd;  // LN of x (pre-norm) or of r (post-norm)
  Buf f_out, r;            // F's output; r = x + drop(F) (post-norm)
  std::vector<uint8_t> keep;
  Buf f_drop, d_f_out, d_f_in;
};

// The input F should read: x (post-norm) or LN(x) (pre-norm). Computes LN(x) first when pre-norm.
const float* sublayer_input(SublayerCache& c, const float* x, int64_t M, int64_t E, const LnWeights& ln, bool norm_first);
// Given F's output in c.f_out, finishes the sublayer into out.
void sublayer_output(float* out, SublayerCache& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first, float dropout,
                     std::mt19937_64* rng);
// Backward, first half: dx += the residual's share; returns dLoss/dF_out (in c.d_f_out).
float* sublayer_backward_output(float* dx, const float* dout, SublayerCache& c, int64_t M, int64_t E, const LnWeights& ln,
                                bool norm_first, float dropout);
// Backward, second half: given dLoss/dF_input (c.d_f_in, filled by F's backward), dx += through LN (pre-norm)
// or directly (post-norm).
void sublayer_backward_input(float* dx, SublayerCache& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first);

}  // namespace attn::models
