// Internal: the feed-forward block and the residual sublayer around any block, as forward/backward
// pairs with the activations the backward needs. Rows are [M, E] row-major, M = B·L. Gradients
// accumulate (+=). (Multi-head attention is layers/mha_layer.h.)
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "attn/activation.h"
#include "ops/nn.h"

namespace attn::layers {

using Buf = std::vector<float>;

using ops::grow;
using ops::grow_zeroed;

struct FfWeights {
  const float *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr;  // [F, E], [F], [E, F], [E]
  float *dw1 = nullptr, *db1 = nullptr, *dw2 = nullptr, *db2 = nullptr;    // their gradients (null: inference)
  int64_t E = 0, F = 0;
  const ops::QuantizedMatrix *qw1 = nullptr, *qw2 = nullptr;  // int8 copies (a quantised model's inference)
};

struct FeedForwardActivations {
  const float* x = nullptr;
  Buf h_pre, h, h_drop;
  std::vector<uint8_t> keep;
};

// The temporaries of the blocks' backward passes. Only one block's backward runs at a time, so a model keeps one
// of these for all its layers and from step to step: each buffer grows to the largest batch shape it has seen and
// is never shrunk, so the backward allocates nothing once the shapes repeat.
struct BackwardScratch {
  Buf d_h;  // feed-forward: dLoss/dh_drop, then /dh and /dh_pre in place (each written over the last)  [M, F]
};

// out = linear2(dropout(act(linear1(x))))          x, out: [M, E]
void ff_forward(float* out, FeedForwardActivations& c, const FfWeights& w, const float* x, int64_t M, Activation act,
                float dropout, std::mt19937_64* rng);
// dx += dLoss/dx (dx_write kOverwrite: dx = dLoss/dx)
void ff_backward(float* dx, const float* dout, FeedForwardActivations& c, const FfWeights& w, int64_t M, Activation act,
                 float dropout, BackwardScratch& scratch, ops::GradWrite dx_write = ops::GradWrite::kAccumulate);

// Inference: x += linear2(act(linear1(in))), the bias, ReLU and the residual sum fused into the GEMMs.
// in, x: [M, E] (in may be x: linear1 reads it whole before linear2 adds into it)
void ff_forward_accumulate(float* x, FeedForwardActivations& c, const FfWeights& w, const float* in, int64_t M,
                           Activation act);

struct LnWeights {
  const float *w = nullptr, *b = nullptr;  // [E], [E]
  float *dw = nullptr, *db = nullptr;
};

// A residual sublayer around F: norm_first ? x + drop(F(LN(x))) : LN(x + drop(F(x))).
struct SublayerActivations {
  const float* x = nullptr;
  Buf ln_out, mean, rstd;  // LN of x (pre-norm) or of r (post-norm)
  Buf f_out, r;            // F's output; r = x + drop(F) (post-norm)
  std::vector<uint8_t> keep;
  Buf f_drop, d_f_out, d_f_in;
};

// The input F should read: x (post-norm) or LN(x) (pre-norm). Computes LN(x) first when pre-norm.
const float* sublayer_input(SublayerActivations& c, const float* x, int64_t M, int64_t E, const LnWeights& ln,
                            bool norm_first);
// Given F's output in c.f_out, finishes the sublayer into out.
void sublayer_output(float* out, SublayerActivations& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first,
                     float dropout, std::mt19937_64* rng);
// Inference, in place on x [M, E]: x = norm_first ? x + F(LN(x)) : LN(x + F(x)), no dropout.
// f(in, x) must ADD F(in) into x (its last GEMM accumulating, LinearEpilogue::accumulate) after it has read in.
template <class F>
void residual_inference(float* x, SublayerActivations& c, int64_t M, int64_t E, const LnWeights& ln, bool norm_first,
                        F&& f) {
  const float* in = x;
  if (norm_first) {
    float* ln_out = grow(c.ln_out, M * E);
    ops::layer_norm_forward(ln_out, grow(c.mean, M), grow(c.rstd, M), x, ln.w, ln.b, M, E);
    in = ln_out;
  }
  f(in, x);
  if (!norm_first) ops::layer_norm_forward(x, grow(c.mean, M), grow(c.rstd, M), x, ln.w, ln.b, M, E);  // in place
}

// Backward, first half: dx = the residual's share (written over: dx is the sublayer input's gradient, whose one
// writer is this sublayer); returns dLoss/dF_out (c.d_f_out, or dx itself without dropout: F's backward must only
// read it) and sizes c.d_f_in for F's backward, which writes it over (GradWrite::kOverwrite on its first term).
const float* sublayer_backward_output(float* dx, const float* dout, SublayerActivations& c, int64_t M, int64_t E,
                                      const LnWeights& ln, bool norm_first, float dropout);
// Backward, second half: given dLoss/dF_input (c.d_f_in, filled by F's backward), dx += through LN (pre-norm)
// or directly (post-norm).
void sublayer_backward_input(float* dx, SublayerActivations& c, int64_t M, int64_t E, const LnWeights& ln,
                             bool norm_first);

}  // namespace attn::layers
