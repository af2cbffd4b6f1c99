// The Transformer's layers as forward/backward pairs (see transformer_internal.h).
#include <omp.h>

#include <cmath>

#include "attn/error.h"
#include "models/transformer_internal.h"

namespace attn::models {
namespace {

const float* P(const std::map<std::string, Tensor>& m, const std::string& name) { return m.at(name).f32(); }
float* G(std::map<std::string, Tensor>& g, const std::string& name) { return g.at(name).f32(); }

// nn.MultiheadAttention's packed in_proj_weight [3E, E] / in_proj_bias [3E] seen as W_Q, W_K, W_V.
AttentionWeights bind_attention(const std::map<std::string, Tensor>& p, std::map<std::string, Tensor>& g,
                                const std::string& pre, int64_t E, int64_t H) {
  AttentionWeights a;
  const float *w_in = P(p, pre + "in_proj_weight"), *b_in = P(p, pre + "in_proj_bias");
  float *dw_in = G(g, pre + "in_proj_weight"), *db_in = G(g, pre + "in_proj_bias");
  a.w.w_q = w_in, a.w.w_k = w_in + E * E, a.w.w_v = w_in + 2 * E * E, a.w.w_o = P(p, pre + "out_proj.weight");
  a.w.b_q = b_in, a.w.b_k = b_in + E, a.w.b_v = b_in + 2 * E, a.w.b_o = P(p, pre + "out_proj.bias");
  a.w.E = E, a.w.H = H, a.w.Hkv = H, a.w.kdim = E, a.w.vdim = E;
  a.g.dw_q = dw_in, a.g.dw_k = dw_in + E * E, a.g.dw_v = dw_in + 2 * E * E, a.g.dw_o = G(g, pre + "out_proj.weight");
  a.g.db_q = db_in, a.g.db_k = db_in + E, a.g.db_v = db_in + 2 * E, a.g.db_o = G(g, pre + "out_proj.bias");
  return a;
}

layers::FfWeights bind_ff(const std::map<std::string, Tensor>& p, std::map<std::string, Tensor>& g,
                          const std::string& pre, int64_t E, int64_t F) {
  return {P(p, pre + "linear1.weight"),
          P(p, pre + "linear1.bias"),
          P(p, pre + "linear2.weight"),
          P(p, pre + "linear2.bias"),
          G(g, pre + "linear1.weight"),
          G(g, pre + "linear1.bias"),
          G(g, pre + "linear2.weight"),
          G(g, pre + "linear2.bias"),
          E,
          F};
}

layers::LnWeights bind_ln(const std::map<std::string, Tensor>& p, std::map<std::string, Tensor>& g,
                          const std::string& pre) {
  return {P(p, pre + "weight"), P(p, pre + "bias"), G(g, pre + "weight"), G(g, pre + "bias")};
}

}  // namespace

TransformerWeights bind(const TransformerConfig& c, const std::map<std::string, Tensor>& p,
                        std::map<std::string, Tensor>& g, Quantization quantization) {
  TransformerWeights n;
  n.c = c;
  const int64_t E = c.d_model;
  n.src_embed = P(p, "src_embed.weight"), n.src_embed_d = G(g, "src_embed.weight");
  n.tgt_embed = P(p, "tgt_embed.weight"), n.tgt_embed_d = G(g, "tgt_embed.weight");
  if (c.learned_positions) {
    n.pos_embed = P(p, "pos_embed.weight"), n.pos_embed_d = G(g, "pos_embed.weight");
  } else {  // PE[pos, 2i] = sin(pos / 10000^(2i/E)), PE[pos, 2i+1] = cos(...)
    n.sinusoid.resize(static_cast<size_t>(c.max_len * E));
    for (int64_t pos = 0; pos < c.max_len; ++pos)
      for (int64_t i = 0; i < E; ++i) {
        const double angle =
            static_cast<double>(pos) / std::pow(10000.0, static_cast<double>(i / 2 * 2) / static_cast<double>(E));
        n.sinusoid[static_cast<size_t>(pos * E + i)] = static_cast<float>(i % 2 ? std::cos(angle) : std::sin(angle));
      }
  }
  for (int64_t l = 0; l < c.num_encoder_layers; ++l) {
    const std::string pre = "encoder.layers." + std::to_string(l) + ".";
    n.enc.push_back({bind_attention(p, g, pre + "self_attn.", E, c.num_heads), bind_ff(p, g, pre, E, c.d_ff),
                     bind_ln(p, g, pre + "norm1."), bind_ln(p, g, pre + "norm2.")});
  }
  for (int64_t l = 0; l < c.num_decoder_layers; ++l) {
    const std::string pre = "decoder.layers." + std::to_string(l) + ".";
    n.dec.push_back({bind_attention(p, g, pre + "self_attn.", E, c.num_heads),
                     bind_attention(p, g, pre + "multihead_attn.", E, c.num_heads), bind_ff(p, g, pre, E, c.d_ff),
                     bind_ln(p, g, pre + "norm1."), bind_ln(p, g, pre + "norm2."), bind_ln(p, g, pre + "norm3.")});
  }
  n.enc_norm = bind_ln(p, g, "encoder.norm.");
  n.dec_norm = bind_ln(p, g, "decoder.norm.");
  const std::string gen = c.tie_embeddings ? "tgt_embed.weight" : "generator.weight";
  n.gen_w = P(p, gen), n.gen_dw = G(g, gen);
  n.gen_b = P(p, "generator.bias"), n.gen_db = G(g, "generator.bias");
  for (const auto* m : {&p, static_cast<const std::map<std::string, Tensor>*>(&g)})
    for (const auto& [name, t] : *m) n.bound.push_back(t);
  if (quantization != Quantization::kNone) quantize_projections(n, quantization);
  return n;
}

void quantize_projections(TransformerWeights& n, Quantization quantization) {
  const int64_t E = n.c.d_model, F = n.c.d_ff;
  auto q = [&](const float* w, int64_t rows, int64_t cols) -> const ops::QuantizedMatrix* {
    n.quantized.push_back(quantization == Quantization::kBFloat16  ? ops::bf16_rows(w, rows, cols)
                          : quantization == Quantization::kFloat32 ? ops::small_gemm_weights(w, rows, cols)
                                                                   : ops::quantize_rows(w, rows, cols));
    // a deque: the pointers stay valid; a float32 matrix too large for the copy stays with OpenBLAS
    return n.quantized.back().N == 0 ? nullptr : &n.quantized.back();
  };
  // self: a self-attention, whose Q, K and V come from one input: float32 copies the packed in_proj as one
  // matrix (one GEMM for the three: layers::project_qkv) instead of three
  auto attention = [&](layers::MhaWeights& w, bool self) {
    if (self && quantization == Quantization::kFloat32 && w.kdim == E && w.vdim == E && w.w_k == w.w_q + E * E &&
        w.w_v == w.w_k + w.kv_width() * E) {
      w.qw_qkv = q(w.w_q, E + 2 * w.kv_width(), E);
    } else {
      w.qw_q = q(w.w_q, E, E), w.qw_k = q(w.w_k, w.kv_width(), w.kdim);
      w.qw_v = q(w.w_v, w.kv_width(), w.vdim);
    }
    w.qw_o = q(w.w_o, E, E);
  };
  auto ff = [&](layers::FfWeights& w) { w.qw1 = q(w.w1, F, E), w.qw2 = q(w.w2, E, F); };
  for (EncoderLayerWeights& l : n.enc) attention(l.self_attn.w, true), ff(l.ff);
  for (DecoderLayerWeights& l : n.dec) attention(l.self_attn.w, true), attention(l.cross_attn.w, false), ff(l.ff);
  n.gen_q = q(n.gen_w, n.c.tgt_vocab, E);
}

bool TransformerWeights::bound_to(const std::map<std::string, Tensor>& params,
                                  const std::map<std::string, Tensor>& grads) const {
  size_t i = 0;
  for (const auto* m : {&params, &grads})
    for (const auto& [name, t] : *m)
      if (i >= bound.size() || bound[i++].raw() != t.raw()) return false;
  return i == bound.size();
}

void check_tokens(const TransformerConfig& c, const TokenBatch& t, int64_t vocab, const char* name) {
  if (t.B <= 0 || t.L <= 0 || t.B > static_cast<int64_t>(t.ids.size()) / t.L ||  // B·L never overflows below
      static_cast<int64_t>(t.ids.size()) != t.B * t.L)
    throw ShapeError(std::string("Transformer: ") + name + " has " + std::to_string(t.ids.size()) +
                     " ids for [B, L] = [" + std::to_string(t.B) + ", " + std::to_string(t.L) + "]");
  if (t.L > c.max_len)
    throw ShapeError(std::string("Transformer: ") + name + " has length " + std::to_string(t.L) + " > max_len " +
                     std::to_string(c.max_len));
  for (int32_t id : t.ids)
    if (id < 0 || id >= vocab)
      throw ArgumentError(std::string("Transformer: ") + name + " holds token id " + std::to_string(id) +
                          " outside [0, " + std::to_string(vocab) + ")");
}

void padding_mask(std::vector<uint8_t>& mask, const TokenBatch& t, int32_t pad_id) {
  mask.resize(t.ids.size());
  for (size_t i = 0; i < t.ids.size(); ++i) mask[i] = t.ids[i] == pad_id;
}

void embed_rows(float* out, const TransformerWeights& net, const float* table, const int32_t* ids, int64_t n,
                int64_t pos) {
  const int64_t E = net.c.d_model;
  const float s = std::sqrt(static_cast<float>(E));
  const float* pe = net.positions() + pos * E;
  for (int64_t r = 0; r < n; ++r) {
    const float* row = table + ids[r] * E;
    float* o = out + r * E;
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) o[e] = row[e] * s + pe[e];
  }
}

float* embed_forward(Buf& buf, std::vector<uint8_t>& keep, const TransformerWeights& net, const float* table,
                     const TokenBatch& ids, std::mt19937_64* rng) {
  const int64_t E = net.c.d_model, n = ids.B * ids.L;
  float* x = grow(buf, n * E);
  // rows are independent: split over the threads when there is enough work (else no parallel region at all:
  // ops::layer_norm_forward says why)
  const auto embed_row = [&](int64_t row) {
    embed_rows(x + row * E, net, table, &ids.ids[static_cast<size_t>(row)], 1, row % ids.L);
  };
  if (n * E >= (1 << 15)) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; ++row) embed_row(row);
  } else {
    for (int64_t row = 0; row < n; ++row) embed_row(row);
  }
  if (rng && net.c.dropout > 0.0f) {
    keep.resize(static_cast<size_t>(n * E));
    ops::dropout_forward(x, keep.data(), x, n * E, net.c.dropout, *rng);  // in place
  } else {
    keep.clear();
  }
  return x;
}

namespace {
// Columns [e0, e1) of one row of dLoss/dx taken back through the embedding dropout (keep: that row's mask, or null
// without dropout): a per-thread buffer indexed like the row, or the row itself.
const float* d_row_scratch(const float* d_row, const uint8_t* keep, float ks, int64_t e0, int64_t e1) {
  if (!keep) return d_row;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < e1) buf.resize(static_cast<size_t>(e1));
  float* d = buf.data();
#pragma omp simd
  for (int64_t e = e0; e < e1; ++e) {
    const float v = d_row[e] * ks;
    d[e] = keep[e] ? v : 0.0f;
  }
  return d;
}
}  // namespace

void embed_backward(const TransformerWeights& net, float* dtable, const TokenBatch& ids,
                    const std::vector<uint8_t>& keep, const float* dx) {
  // x = dropout(table[id]·√E + pos)
  const int64_t E = net.c.d_model, n = ids.B * ids.L;
  const float s = std::sqrt(static_cast<float>(E)), ks = keep.empty() ? 1.0f : 1.0f / (1.0f - net.c.dropout);
  const uint8_t* kp = keep.empty() ? nullptr : keep.data();
  float* dpos = net.pos_embed_d;
  // Rows scatter into the table (two rows may share a token): each thread owns a share of the columns and adds
  // the rows in row order, as one thread would, so any thread count gives the same sums.
#pragma omp parallel if (n * E >= (1 << 15))
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t e0 = E * t / T, e1 = E * (t + 1) / T;
    for (int64_t row = 0; row < n; ++row) {
      const int32_t id = ids.ids[static_cast<size_t>(row)];
      const float* d_row = dx + row * E;
      const float* d = d_row_scratch(d_row, kp ? kp + row * E : nullptr, ks, e0, e1);  // dLoss/d(embedding + position)
      float* dt = dtable + id * E;
#pragma omp simd
      for (int64_t e = e0; e < e1; ++e) dt[e] += d[e] * s;
      if (dpos) {
        float* dp = dpos + (row % ids.L) * E;
#pragma omp simd
        for (int64_t e = e0; e < e1; ++e) dp[e] += d[e];
      }
    }
  }
}

namespace {
// Self-attention of one layer: the training forward keeps its activations (weights included), inference
// computes no weights.
void self_attention(float* out, layers::MhaActivations& acts, const AttentionWeights& w, const float* x, int64_t B,
                    int64_t L, const uint8_t* pad, CausalAlignment causal, bool keep_weights, float dropout,
                    std::mt19937_64* rng) {
  layers::MhaMasks masks;
  masks.key_padding = pad;
  masks.causal = causal;
  layers::mha_forward(out, w.w, x, x, x, B, L, L, masks, keep_weights ? &acts : nullptr, nullptr, dropout, rng);
}
}  // namespace

float* encoder_layer_forward(EncoderLayerActivations& k, const EncoderLayerWeights& w, const TransformerWeights& net,
                             const float* x, int64_t B, int64_t L, const uint8_t* pad, bool keep_weights,
                             std::mt19937_64* rng) {
  const TransformerConfig& c = net.c;
  const int64_t M = B * L, E = c.d_model;
  // x1 = sublayer(x, self-attention)
  const float* in = layers::sublayer_input(k.sa, x, M, E, w.norm1, c.norm_first);
  self_attention(k.sa.f_out.data(), k.self_attn, w.self_attn, in, B, L, pad, CausalAlignment::kNone, keep_weights,
                 c.attention_dropout, rng);
  layers::sublayer_output(grow(k.x1, M * E), k.sa, M, E, w.norm1, c.norm_first, c.dropout, rng);
  // x2 = sublayer(x1, feed-forward)
  in = layers::sublayer_input(k.ff, k.x1.data(), M, E, w.norm2, c.norm_first);
  layers::ff_forward(k.ff.f_out.data(), k.ffn, w.ff, in, M, net.act(), c.dropout, rng);
  layers::sublayer_output(grow(k.x2, M * E), k.ff, M, E, w.norm2, c.norm_first, c.dropout, rng);
  return k.x2.data();
}

void encoder_layer_inference(float* x, EncoderLayerActivations& k, const EncoderLayerWeights& w,
                             const TransformerWeights& net, int64_t B, int64_t L, const uint8_t* pad) {
  const TransformerConfig& c = net.c;
  const int64_t M = B * L, E = c.d_model;
  layers::MhaMasks masks;
  masks.key_padding = pad;
  // x = sublayer(x, self-attention): out_proj adds into x
  layers::residual_inference(x, k.sa, M, E, w.norm1, c.norm_first, [&](const float* in, float* out) {
    layers::mha_forward(out, w.self_attn.w, in, in, in, B, L, L, masks, nullptr, nullptr, 0.0f, nullptr,
                        {.accumulate = true});
  });
  // x = sublayer(x, feed-forward)
  layers::residual_inference(x, k.ff, M, E, w.norm2, c.norm_first, [&](const float* in, float* out) {
    layers::ff_forward_accumulate(out, k.ffn, w.ff, in, M, net.act());
  });
}

namespace {
constexpr ops::GradWrite kOverwrite = ops::GradWrite::kOverwrite;

// The backward of one residual sublayer x_out = sublayer(x_in, F): dx_in = dLoss/dx_in (written over: x_in has no
// other reader) given d_out = dLoss/dx_out. F's backward runs between the two halves of the sublayer's backward and
// writes sub.d_f_in over with its first term.
template <class FBackward>
void sublayer_backward(float* dx_in, const float* d_out, layers::SublayerActivations& sub,
                       const layers::LnWeights& norm, const TransformerConfig& c, int64_t M, FBackward&& f_backward) {
  const float* df = layers::sublayer_backward_output(dx_in, d_out, sub, M, c.d_model, norm, c.norm_first, c.dropout);
  f_backward(df);  // writes sub.d_f_in over
  layers::sublayer_backward_input(dx_in, sub, M, c.d_model, norm, c.norm_first);
}
}  // namespace

void encoder_layer_backward(float* dx, EncoderLayerActivations& k, const EncoderLayerWeights& w,
                            const TransformerWeights& net, int64_t B, int64_t L, TransformerBackwardBuffers& s) {
  const TransformerConfig& c = net.c;
  const int64_t M = B * L, E = c.d_model;
  float* dx1 = grow(s.d1, M * E);
  // x2 = sublayer(x1, feed-forward)
  sublayer_backward(dx1, dx, k.ff, w.norm2, c, M, [&](const float* df) {
    layers::ff_backward(k.ff.d_f_in.data(), df, k.ffn, w.ff, M, net.act(), c.dropout, s.blocks, kOverwrite);
  });
  // x1 = sublayer(x, self-attention)
  sublayer_backward(dx, dx1, k.sa, w.norm1, c, M, [&](const float* df) {
    float* d_in = k.sa.d_f_in.data();
    layers::mha_backward(d_in, d_in, d_in, w.self_attn.g, df, k.self_attn, w.self_attn.w, B, L, L, kOverwrite);
  });
}

float* decoder_layer_forward(DecoderLayerActivations& k, const DecoderLayerWeights& w, const TransformerWeights& net,
                             const float* y, const float* mem, int64_t B, int64_t Lt, int64_t Ls,
                             const uint8_t* tgt_pad, const uint8_t* src_pad, bool keep_weights, std::mt19937_64* rng) {
  const TransformerConfig& c = net.c;
  const int64_t M = B * Lt, E = c.d_model;
  k.mem = mem;
  // x1 = sublayer(y, masked self-attention)
  const float* in = layers::sublayer_input(k.sa, y, M, E, w.norm1, c.norm_first);
  self_attention(k.sa.f_out.data(), k.self_attn, w.self_attn, in, B, Lt, tgt_pad, CausalAlignment::kTopLeft,
                 keep_weights, c.attention_dropout, rng);
  layers::sublayer_output(grow(k.x1, M * E), k.sa, M, E, w.norm1, c.norm_first, c.dropout, rng);
  // x2 = sublayer(x1, cross-attention over mem)
  in = layers::sublayer_input(k.ca, k.x1.data(), M, E, w.norm2, c.norm_first);
  layers::MhaMasks masks;
  masks.key_padding = src_pad;
  layers::mha_forward(k.ca.f_out.data(), w.cross_attn.w, in, mem, mem, B, Lt, Ls, masks,
                      keep_weights ? &k.cross_attn : nullptr, nullptr, c.attention_dropout, rng);
  layers::sublayer_output(grow(k.x2, M * E), k.ca, M, E, w.norm2, c.norm_first, c.dropout, rng);
  // x3 = sublayer(x2, feed-forward)
  in = layers::sublayer_input(k.ff, k.x2.data(), M, E, w.norm3, c.norm_first);
  layers::ff_forward(k.ff.f_out.data(), k.ffn, w.ff, in, M, net.act(), c.dropout, rng);
  layers::sublayer_output(grow(k.x3, M * E), k.ff, M, E, w.norm3, c.norm_first, c.dropout, rng);
  return k.x3.data();
}

void decoder_layer_backward(float* dy, float* dmem, DecoderLayerActivations& k, const DecoderLayerWeights& w,
                            const TransformerWeights& net, int64_t B, int64_t Lt, int64_t Ls,
                            TransformerBackwardBuffers& s) {
  const TransformerConfig& c = net.c;
  const int64_t M = B * Lt, E = c.d_model;
  float *dx2 = grow(s.d2, M * E), *dx1 = grow(s.d1, M * E);
  // x3 = sublayer(x2, feed-forward)
  sublayer_backward(dx2, dy, k.ff, w.norm3, c, M, [&](const float* df) {
    layers::ff_backward(k.ff.d_f_in.data(), df, k.ffn, w.ff, M, net.act(), c.dropout, s.blocks, kOverwrite);
  });
  // x2 = sublayer(x1, cross-attention over mem): dmem accumulates over the decoder's layers
  sublayer_backward(dx1, dx2, k.ca, w.norm2, c, M, [&](const float* df) {
    layers::mha_backward(k.ca.d_f_in.data(), dmem, dmem, w.cross_attn.g, df, k.cross_attn, w.cross_attn.w, B, Lt, Ls,
                         kOverwrite);
  });
  // x1 = sublayer(y, masked self-attention)
  sublayer_backward(dy, dx1, k.sa, w.norm1, c, M, [&](const float* df) {
    float* d_in = k.sa.d_f_in.data();
    layers::mha_backward(d_in, d_in, d_in, w.self_attn.g, df, k.self_attn, w.self_attn.w, B, Lt, Lt, kOverwrite);
  });
}

}  // namespace attn::models
