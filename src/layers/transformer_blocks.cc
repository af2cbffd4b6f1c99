// The feed-forward block and the residual sublayer (layers/transformer_blocks.h).
#include "layers/transformer_blocks.h"

#include <algorithm>
#include <cmath>

namespace attn::layers {

void ff_forward(float* out, FeedForwardActivations& c, const FfWeights& w, const float* x, int64_t M, Activation act,
                float dropout, std::mt19937_64* rng) {
  c.x = x;
  // h = act(x·W1ᵀ + b1) ; out = dropout(h)·W2ᵀ + b2
  ops::linear_forward(grow(c.h_pre, M * w.F), x, w.w1, w.qw1, w.b1, M, w.F, w.E);
  ops::activation_forward(grow(c.h, M * w.F), c.h_pre.data(), M * w.F, act);
  const float* h = c.h.data();
  if (rng && dropout > 0.0f) {
    c.keep.resize(static_cast<size_t>(M * w.F));
    ops::dropout_forward(grow(c.h_drop, M * w.F), c.keep.data(), c.h.data(), M * w.F, dropout, *rng);
    h = c.h_drop.data();
  } else {
    c.keep.clear();
  }
  ops::linear_forward(out, h, w.w2, w.qw2, w.b2, M, w.E, w.F);
}

void ff_backward(float* dx, const float* dout, FeedForwardActivations& c, const FfWeights& w, int64_t M, Activation act,
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

const float* sublayer_input(SublayerActivations& c, const float* x, int64_t M, int64_t E, const LnWeights& ln,
                            bool norm_first) {
  c.x = x;
  grow(c.f_out, M * E);
  if (!norm_first) return x;
  ops::layer_norm_forward(grow(c.ln_out, M * E), grow(c.mean, M), grow(c.rstd, M), x, ln.w, ln.b, M, E);
  return c.ln_out.data();
}

void sublayer_output(float* out, SublayerActivations& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first,
                     float dropout, std::mt19937_64* rng) {
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

float* sublayer_backward_output(float* dx, const float* dout, SublayerActivations& c, int64_t M, int64_t E,
                                const LnWeights& ln, bool norm_first, float dropout) {
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

void sublayer_backward_input(float* dx, SublayerActivations& c, int64_t M, int64_t E, const LnWeights& ln,
                             bool norm_first) {
  if (norm_first)  // F read LN(x)
    ops::layer_norm_backward(dx, ln.dw, ln.db, c.d_f_in.data(), c.x, ln.w, c.mean.data(), c.rstd.data(), M, E);
  else  // F read x
    for (int64_t i = 0; i < M * E; ++i) dx[i] += c.d_f_in[i];
}

}  // namespace attn::layers
