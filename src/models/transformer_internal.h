// Internal: the Transformer's parameters as named fields bound once (TransformerWeights), the
// activations its forward keeps for the backward, and the encoder/decoder layers as forward/backward
// pairs built from layers/ (transformer_layers.cc).
#pragma once

#include <deque>
#include <map>
#include <string>
#include <vector>

#include "attn/models/transformer.h"
#include "layers/mha_layer.h"
#include "layers/transformer_blocks.h"

namespace attn {

struct EncoderLayerActivations {
  layers::SublayerActivations sa, ff;
  layers::MhaActivations self_attn;
  layers::FeedForwardActivations ffn;
  layers::Buf x1, x2;  // after the attention sublayer, after the feed-forward sublayer: [B·Ls, E]
};

struct DecoderLayerActivations {
  layers::SublayerActivations sa, ca, ff;
  layers::MhaActivations self_attn, cross_attn;
  layers::FeedForwardActivations ffn;
  layers::Buf x1, x2, x3;      // [B·Lt, E] each
  const float* mem = nullptr;  // [B·Ls, E]
};

// The backward's temporaries, grown to the largest batch shape seen and reused from step to step.
struct TransformerBackwardBuffers {
  layers::Buf d_dec_out, d_dec;  // dLoss/d LN_dec(y), dLoss/dy (the decoder's stream)    [B·Lt, E] each
  layers::Buf d_mem, d_enc;      // dLoss/dmem, dLoss/dx (the encoder's stream)           [B·Ls, E] each
  layers::Buf d1, d2;            // inside one layer's backward                           [B·L, E] each
  layers::BackwardScratch blocks;
};

struct TransformerActivations {
  bool training = false;
  int64_t B = 0, Ls = 0, Lt = 0;
  TokenBatch src, tgt;
  std::vector<uint8_t> src_pad, tgt_pad;  // [B, L], 1 = padding
  layers::Buf src_emb, tgt_emb;
  std::vector<uint8_t> src_keep, tgt_keep;
  std::vector<EncoderLayerActivations> enc;
  std::vector<DecoderLayerActivations> dec;
  const float* enc_out_pre = nullptr;
  const float* dec_out_pre = nullptr;
  layers::Buf mem, mem_mean, mem_rstd, dec_out, dec_mean, dec_rstd;
  // The storage of the logits forward_impl returns (at least B·Lt·Vt floats), reused by the next forward while no
  // tensor returned from it is still alive (the returned tensors borrow it: use_count counts them). A training step at
  // a 32000-word vocabulary had page-faulted 65 MB of fresh logits in every step.
  std::shared_ptr<Tensor> logits;
  TransformerBackwardBuffers back;
};

namespace models {

using layers::Buf;
using layers::grow;

struct AttentionWeights {  // one nn.MultiheadAttention: its parameters and their gradients
  layers::MhaWeights w;
  layers::MhaGrads g;
};

struct EncoderLayerWeights {
  AttentionWeights self_attn;
  layers::FfWeights ff;
  layers::LnWeights norm1, norm2;
};

struct DecoderLayerWeights {
  AttentionWeights self_attn, cross_attn;
  layers::FfWeights ff;
  layers::LnWeights norm1, norm2, norm3;
};

// Every parameter as a named field, bound once when the model is built (pointers into its tensors,
// which are updated in place, never replaced), and the gradients beside them.
struct TransformerWeights {
  TransformerConfig c;
  const float *src_embed = nullptr, *tgt_embed = nullptr, *pos_embed = nullptr;  // [Vs, E], [Vt, E], [max_len, E]
  float *src_embed_d = nullptr, *tgt_embed_d = nullptr, *pos_embed_d = nullptr;
  std::vector<EncoderLayerWeights> enc;
  std::vector<DecoderLayerWeights> dec;
  layers::LnWeights enc_norm, dec_norm;
  const float *gen_w = nullptr, *gen_b = nullptr;  // [Vt, E] (tgt_embed when tied), [Vt]
  float *gen_dw = nullptr, *gen_db = nullptr;
  std::vector<float> sinusoid;  // [max_len, E] when positions are not learned
  // Quantization::kInt8, kBFloat16, kFloat32: inference copies of every projection (the fields' qw_* point into them)
  // and of the generator; inference only.
  std::deque<ops::QuantizedMatrix> quantized;
  const ops::QuantizedMatrix* gen_q = nullptr;
  // Shallow copies of every bound parameter and gradient tensor (params, then grads, in map order): they
  // keep the storage the fields point into alive, and tell whether a map entry was replaced since.
  std::vector<Tensor> bound;
  bool bound_to(const std::map<std::string, Tensor>& params, const std::map<std::string, Tensor>& grads) const;
  Activation act() const { return c.activation; }
  const float* positions() const { return c.learned_positions ? pos_embed : sinusoid.data(); }  // [max_len, E]
};

// Binds params (and grads) by their torch.nn.Transformer names.
TransformerWeights bind(const TransformerConfig& c, const std::map<std::string, Tensor>& params,
                        std::map<std::string, Tensor>& grads, Quantization quantization = Quantization::kNone);

// Adds int8 or bf16 copies of every projection and of the generator (Quantization::kInt8, kBFloat16).
void quantize_projections(TransformerWeights& net, Quantization quantization);

// The encoder half of forward_impl: k.mem = LN_enc(encoder(embed(src))), k.src_pad filled. With
// keep_weights (training or attention maps) every attention keeps its weights; else none are computed.
void encode_impl(const TransformerWeights& net, TransformerActivations& k, const TokenBatch& src, bool keep_weights,
                 std::mt19937_64* rng);

// This thread's activations for inference (encode, start_decoding): grown to the largest batch seen and reused,
// so a translator encoding batch after batch allocates (and zero-fills) its buffers once. Valid until the
// thread's next inference call.
TransformerActivations& inference_activations();

// The teacher-forced forward pass into k (Transformer::forward, and the no-cache reference decoder).
// keep_weights: every attention keeps its weights (the backward and attention_maps read them).
Tensor forward_impl(const TransformerWeights& net, TransformerActivations& k, const TokenBatch& src,
                    const TokenBatch& tgt_in, bool training, std::mt19937_64* rng, bool keep_weights = true);

void check_tokens(const TransformerConfig& c, const TokenBatch& t, int64_t vocab, const char* name);
void padding_mask(std::vector<uint8_t>& mask, const TokenBatch& t, int32_t pad_id);

// x = dropout(embed[ids]·√E + position)      -> [B·L, E] in buf
float* embed_forward(Buf& buf, std::vector<uint8_t>& keep, const TransformerWeights& net, const float* table,
                     const TokenBatch& ids, std::mt19937_64* rng);
// One row at position `pos` for each id (inference).
void embed_rows(float* out, const TransformerWeights& net, const float* table, const int32_t* ids, int64_t n,
                int64_t pos);
void embed_backward(const TransformerWeights& net, float* dtable, const TokenBatch& ids,
                    const std::vector<uint8_t>& keep, const float* dx);

float* encoder_layer_forward(EncoderLayerActivations& k, const EncoderLayerWeights& w, const TransformerWeights& net,
                             const float* x, int64_t B, int64_t L, const uint8_t* pad, bool keep_weights,
                             std::mt19937_64* rng);
// Inference (no dropout, no activations kept): x [B·L, E] in place, each residual sum fused into its sublayer's
// last GEMM.
void encoder_layer_inference(float* x, EncoderLayerActivations& k, const EncoderLayerWeights& w,
                             const TransformerWeights& net, int64_t B, int64_t L, const uint8_t* pad);
// dx [B·L, E]: in = dLoss/d(layer output), out = dLoss/d(layer input).
void encoder_layer_backward(float* dx, EncoderLayerActivations& k, const EncoderLayerWeights& w,
                            const TransformerWeights& net, int64_t B, int64_t L, TransformerBackwardBuffers& buffers);
float* decoder_layer_forward(DecoderLayerActivations& k, const DecoderLayerWeights& w, const TransformerWeights& net,
                             const float* y, const float* mem, int64_t B, int64_t Lt, int64_t Ls,
                             const uint8_t* tgt_pad, const uint8_t* src_pad, bool keep_weights, std::mt19937_64* rng);
// dy [B·Lt, E]: in = dLoss/d(layer output), out = dLoss/d(layer input); dmem [B·Ls, E] accumulates.
void decoder_layer_backward(float* dy, float* dmem, DecoderLayerActivations& k, const DecoderLayerWeights& w,
                            const TransformerWeights& net, int64_t B, int64_t Lt, int64_t Ls,
                            TransformerBackwardBuffers& buffers);

}  // namespace models
}  // namespace attn
