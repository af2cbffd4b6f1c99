#include "models/transformer_blocks.h"

#include <algorithm>
#include <cmath>

namespace attn::models {

void mha_forward(float* out, MhaCache& c, const MhaWeights& w, const float* xq, const float* xkv, int64_t B, int64_t Lq,
                 int64_t Lk, const uint8_t* key_padding, bool causal, float dropout, std::mt19937_64* rng) {
  const int64_t E = w.E, H = w.H, Dh = E / H;
  c.xq = xq, c.xkv = xkv, c.dropout = rng ? dropout : 0.0f;
  // Q = xq·W_Qᵀ + b_Q,  K = xkv·W_Kᵀ + b_K,  V = xkv·W_Vᵀ + b_V        [B·L, E] = [B, L, H, Dh]
  ops::linear_forward(grow(c.q, B * Lq * E), xq, w.w_in, w.b_in, B * Lq, E, E);
  ops::linear_forward(grow(c.k, B * Lk * E), xkv, w.w_in + E * E, w.b_in + E, B * Lk, E, E);
  ops::linear_forward(grow(c.v, B * Lk * E), xkv, w.w_in + 2 * E * E, w.b_in + 2 * E, B * Lk, E, E);
  detail::AttentionProblem& p = c.problem;
  p = detail::interleaved_heads_problem(B, H, H, Lq, Lk, Dh, c.q.data(), c.k.data(), c.v.data(), grow(c.heads, B * Lq * E));
  p.weights = grow(c.weights, B * H * Lq * Lk);
  p.key_padding = key_padding;
  p.causal = causal ? CausalAlignment::kTopLeft : CausalAlignment::kNone;
  detail::run_problem(p, AttentionImpl::kAuto);
  if (c.dropout > 0.0f) {
    // heads = (P ⊙ keep / (1 − p)) · V, recomputed with the dropped weights
    c.keep.resize(c.weights.size());
    Buf dropped(static_cast<size_t>(B * H * Lq * Lk));
    ops::dropout_forward(dropped.data(), c.keep.data(), c.weights.data(), B * H * Lq * Lk, c.dropout, *rng);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Lq; ++i) {
          float* o = c.heads.data() + (b * Lq + i) * E + h * Dh;
          std::fill(o, o + Dh, 0.0f);
          const float* P = dropped.data() + ((b * H + h) * Lq + i) * Lk;
          for (int64_t j = 0; j < Lk; ++j) {
            if (P[j] == 0.0f) continue;
            const float* vj = c.v.data() + (b * Lk + j) * E + h * Dh;
            for (int64_t d = 0; d < Dh; ++d) o[d] += P[j] * vj[d];
          }
        }
  }
  // out = heads·W_Oᵀ + b_O
  ops::linear_forward(out, c.heads.data(), w.w_out, w.b_out, B * Lq, E, E);
}

void mha_backward(float* dxq, float* dxkv, const float* dout, MhaCache& c, const MhaWeights& w, int64_t B, int64_t Lq,
                  int64_t Lk) {
  const int64_t E = w.E;
  // out = heads·W_Oᵀ + b_O
  Buf dheads(static_cast<size_t>(B * Lq * E), 0.0f);
  ops::linear_backward(dheads.data(), w.dw_out, w.db_out, dout, c.heads.data(), w.w_out, B * Lq, E, E);
  // heads = softmax(scale·Q·Kᵀ + M)·V
  Buf dq(static_cast<size_t>(B * Lq * E), 0.0f), dk(static_cast<size_t>(B * Lk * E), 0.0f),
      dv(static_cast<size_t>(B * Lk * E), 0.0f);
  detail::attention_backward(c.problem, c.weights.data(), dheads.data(), dq.data(), dk.data(), dv.data(),
                             c.dropout > 0.0f ? c.keep.data() : nullptr, c.dropout);
  // Q = xq·W_Qᵀ + b_Q, K = xkv·W_Kᵀ + b_K, V = xkv·W_Vᵀ + b_V
  ops::linear_backward(dxq, w.dw_in, w.db_in, dq.data(), c.xq, w.w_in, B * Lq, E, E);
  ops::linear_backward(dxkv, w.dw_in + E * E, w.db_in + E, dk.data(), c.xkv, w.w_in + E * E, B * Lk, E, E);
  ops::linear_backward(dxkv, w.dw_in + 2 * E * E, w.db_in + 2 * E, dv.data(), c.xkv, w.w_in + 2 * E * E, B * Lk, E, E);
}

void ff_forward(float* out, FfCache& c, const FfWeights& w, const float* x, int64_t M, Activation act, float dropout,
                std::mt19937_64* rng) {
  c.x = x;
  // h = act(x·W1ᵀ + b1) ; out = dropout(h)·W2ᵀ + b2
  ops::linear_forward(grow(c.h_pre, M * w.F), x, w.w1, w.b1, M, w.F, w.E);
  ops::activation_forward(grow(c.h, M * w.F), c.h_pre.data(), M * w.F, act);
  const float* h = c.h.data();
  if (rng && dropout > 0.0f) {
    c.keep.resize(static_cast<size_t>(M * w.F));
    ops::dropout_forward(grow(c.h_drop, M * w.F), c.keep.data(), c.h.data(), M * w.F, dropout, *rng);
    h = c.h_drop.data();
  } else {
    c.keep.clear();
  }
  ops::linear_forward(out, h, w.w2, w.b2, M, w.E, w.F);
}

void ff_backward(float* dx, const float* dout, FfCache& c, const FfWeights& w, int64_t M, Activation act,
                 float dropout) {
  const bool dropped = !c.keep.empty();
  // out = h_drop·W2ᵀ + b2
  Buf dh(static_cast<size_t>(M * w.F), 0.0f);
  ops::linear_backward(dh.data(), w.dw2, w.db2, dout, dropped ? c.h_drop.data() : c.h.data(), w.w2, M, w.E, w.F);
  Buf dh_pre(static_cast<size_t>(M * w.F), 0.0f);
  if (dropped) {  // h_drop = dropout(h)
    Buf t(static_cast<size_t>(M * w.F), 0.0f);
    ops::dropout_backward(t.data(), dh.data(), c.keep.data(), M * w.F, dropout);
    dh.swap(t);
  }
  // h = act(h_pre)
  ops::activation_backward(dh_pre.data(), dh.data(), c.h_pre.data(), M * w.F, act);
  // h_pre = x·W1ᵀ + b1
  ops::linear_backward(dx, w.dw1, w.db1, dh_pre.data(), c.x, w.w1, M, w.F, w.E);
}

const float* sublayer_input(SublayerCache& c, const float* x, int64_t M, int64_t E, const LnWeights& ln, bool norm_first) {
  c.x = x;
  grow(c.f_out, M * E);
  if (!norm_first) return x;
  ops::layer_norm_forward(grow(c.ln_out, M * E), grow(c.mean, M), grow(c.rstd, M), x, ln.w, ln.b, M, E);
  return c.ln_out.data();
}

void sublayer_output(float* out, SublayerCache& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first, float dropout,
                     std::mt19937_64* rng) {
  // f_drop = dropout(F(...))
  const float* f = c.f_out.data();
  if (rng && dropout > 0.0f) {
    c.keep.resize(static_cast<size_t>(M * E));
    ops::dropout_forward(grow(c.f_drop, M * E), c.keep.data(), c.f_out.data(), M * E, dropout, *rng);
    f = c.f_drop.data();
  } else {
    c.keep.clear();
  }
  if (norm_first) {  // out = x + f_drop
    for (int64_t i = 0; i < M * E; ++i) out[i] = c.x[i] + f[i];
  } else {  // out = LN(r), r = x + f_drop
    float* r = grow(c.r, M * E);
    for (int64_t i = 0; i < M * E; ++i) r[i] = c.x[i] + f[i];
    ops::layer_norm_forward(out, grow(c.mean, M), grow(c.rstd, M), r, ln.w, ln.b, M, E);
  }
}

float* sublayer_backward_output(float* dx, const float* dout, SublayerCache& c, int64_t M, int64_t E, const LnWeights& ln,
                                bool norm_first, float dropout) {
  const float* dr = dout;
  Buf tmp;
  if (!norm_first) {  // out = LN(r)
    tmp.assign(static_cast<size_t>(M * E), 0.0f);
    ops::layer_norm_backward(tmp.data(), ln.dw, ln.db, dout, c.r.data(), ln.w, c.mean.data(), c.rstd.data(), M, E);
    dr = tmp.data();
  }
  // r = x + f_drop
  for (int64_t i = 0; i < M * E; ++i) dx[i] += dr[i];
  float* df = grow(c.d_f_out, M * E);
  if (!c.keep.empty()) {  // f_drop = dropout(f)
    std::fill(df, df + M * E, 0.0f);
    ops::dropout_backward(df, dr, c.keep.data(), M * E, dropout);
  } else {
    std::copy(dr, dr + M * E, df);
  }
  float* df_in = grow(c.d_f_in, M * E);  // (grow first: it may reallocate)
  std::fill(df_in, df_in + M * E, 0.0f);
  return df;
}

void sublayer_backward_input(float* dx, SublayerCache& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first) {
  if (norm_first)  // F read LN(x)
    ops::layer_norm_backward(dx, ln.dw, ln.db, c.d_f_in.data(), c.x, ln.w, c.mean.data(), c.rstd.data(), M, E);
  else  // F read x
    for (int64_t i = 0; i < M * E; ++i) dx[i] += c.d_f_in[i];
}

}  // namespace attn::models
