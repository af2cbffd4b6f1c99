// The feed-forward block and the residual sublayer (layers/transformer_blocks.h).
#include "layers/transformer_blocks.h"

#include <algorithm>
#include <cmath>

namespace attn::layers {
namespace {

void add_to(float* dx, const float* d, int64_t n) { ops::add(dx, dx, d, n); }

}  // namespace

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

void ff_forward_accumulate(float* x, FeedForwardActivations& c, const FfWeights& w, const float* in, int64_t M,
                           Activation act) {
  c.x = in;
  float* h = grow(c.h, M * w.F);
  ops::linear_forward(h, in, w.w1, w.qw1, w.b1, M, w.F, w.E, {.relu = act == Activation::kRelu});
  if (act != Activation::kRelu) ops::activation_forward(h, h, M * w.F, act);  // (in place)
  ops::linear_forward(x, h, w.w2, w.qw2, w.b2, M, w.E, w.F, {.accumulate = true});
}

void ff_backward(float* dx, const float* dout, FeedForwardActivations& c, const FfWeights& w, int64_t M, Activation act,
                 float dropout, BackwardScratch& scratch, ops::GradWrite dx_write) {
  const bool dropped = !c.keep.empty();
  const int64_t n = M * w.F;
  // one buffer, written over by each step in turn (each is the only contribution): no zeroing
  // out = h_drop·W2ᵀ + b2   (h_drop is h itself without dropout)
  float* dh = ops::grow(scratch.d_h, n);
  ops::linear_backward(dh, w.dw2, w.db2, dout, dropped ? c.h_drop.data() : c.h.data(), w.w2, M, w.E, w.F,
                       ops::GradWrite::kOverwrite);
  // h_drop = dropout(h)
  if (dropped) ops::dropout_backward(dh, dh, c.keep.data(), n, dropout, ops::GradWrite::kOverwrite);
  // h = act(h_pre)
  ops::activation_backward(dh, dh, c.h_pre.data(), n, act, ops::GradWrite::kOverwrite);
  // h_pre = x·W1ᵀ + b1
  ops::linear_backward(dx, w.dw1, w.db1, dh, c.x, w.w1, M, w.F, w.E, dx_write);
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
    ops::add(out, c.x, f, M * E);
  } else {  // out = LN(r), r = x + f_drop
    float* r = grow(c.r, M * E);
    ops::add(r, c.x, f, M * E);
    ops::layer_norm_forward(out, grow(c.mean, M), grow(c.rstd, M), r, ln.w, ln.b, M, E);
  }
}

const float* sublayer_backward_output(float* dx, const float* dout, SublayerActivations& c, int64_t M, int64_t E,
                                      const LnWeights& ln, bool norm_first, float dropout) {
  const int64_t n = M * E;
  grow(c.d_f_in, n);  // dLoss/dF_input: F's backward writes it over (its first contribution), then adds the rest
  // r = x + f_drop (post-norm: out = LN(r); pre-norm: out = r): dx = dLoss/dr, the residual's share, written over
  if (!norm_first) {
    ops::layer_norm_backward(dx, ln.dw, ln.db, dout, c.r.data(), ln.w, c.mean.data(), c.rstd.data(), M, E,
                             ops::GradWrite::kOverwrite);
  } else {
    std::copy(dout, dout + n, dx);
  }
  const float* dr = dx;           // read by F's backward; sublayer_backward_input adds F's share to dx only after it
  if (c.keep.empty()) return dr;  // f_drop = f
  // f_drop = dropout(f)
  float* df = grow(c.d_f_out, n);
  ops::dropout_backward(df, dr, c.keep.data(), n, dropout, ops::GradWrite::kOverwrite);
  return df;
}

void sublayer_backward_input(float* dx, SublayerActivations& c, int64_t M, int64_t E, const LnWeights& ln,
                             bool norm_first) {
  if (norm_first)  // F read LN(x)
    ops::layer_norm_backward(dx, ln.dw, ln.db, c.d_f_in.data(), c.x, ln.w, c.mean.data(), c.rstd.data(), M, E);
  else  // F read x
    add_to(dx, c.d_f_in.data(), M * E);
}

}  // namespace attn::layers
