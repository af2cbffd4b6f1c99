// Internal: the Transformer's parameters bound to raw pointers (Net), its activation cache, and the
// layer-level forward/backward pairs (transformer_layers.cc).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "attn/models/transformer.h"
#include "models/transformer_blocks.h"

namespace attn {

struct EncoderLayerCache {
  models::SublayerCache sa, ff;
  models::MhaCache mha;
  models::FfCache ffc;
  models::Buf x1, x2;  // after the attention sublayer, after the feed-forward sublayer
};

struct DecoderLayerCache {
  models::SublayerCache sa, ca, ff;
  models::MhaCache smha, cmha;
  models::FfCache ffc;
  models::Buf x1, x2, x3;
  const float* mem = nullptr;
};

struct TransformerCache {
  bool training = false;
  int64_t B = 0, Ls = 0, Lt = 0;
  TokenBatch src, tgt;
  std::vector<uint8_t> src_pad, tgt_pad;  // [B, L], 1 = padding
  models::Buf src_emb, tgt_emb;
  std::vector<uint8_t> src_keep, tgt_keep;
  std::vector<EncoderLayerCache> enc;
  std::vector<DecoderLayerCache> dec;
  const float* enc_out_pre = nullptr;
  const float* dec_out_pre = nullptr;
  models::Buf mem, mem_mean, mem_rstd, dec_out, dec_mean, dec_rstd;
};

namespace models {

struct EncoderLayerNet {
  MhaWeights sa;
  FfWeights ff;
  LnWeights norm1, norm2;
};

struct DecoderLayerNet {
  MhaWeights sa, ca;
  FfWeights ff;
  LnWeights norm1, norm2, norm3;
};

struct Net {
  const TransformerConfig* c = nullptr;
  const float *src_embed = nullptr, *tgt_embed = nullptr, *pos_embed = nullptr;
  float *src_embed_d = nullptr, *tgt_embed_d = nullptr, *pos_embed_d = nullptr;
  std::vector<EncoderLayerNet> enc;
  std::vector<DecoderLayerNet> dec;
  LnWeights enc_norm, dec_norm;
  const float *gen_w = nullptr, *gen_b = nullptr;
  float *gen_dw = nullptr, *gen_db = nullptr;
  std::vector<float> sinusoid;  // [max_len, E] when positions are not learned
  Activation act() const { return c->activation; }
};

// Pointers into params (and grads, when given; else the gradient pointers are null).
Net bind(const TransformerConfig& c, const std::map<std::string, Tensor>& params, std::map<std::string, Tensor>* grads);

// The encoder half of forward_impl: k.mem = LN_enc(encoder(embed(src))), k.src_pad filled.
void encode_impl(const TransformerConfig& c, const Net& net, TransformerCache& k, const TokenBatch& src, std::mt19937_64* rng);

// The teacher-forced forward pass into cache k (Transformer::forward, and the no-cache reference decoder).
Tensor forward_impl(const TransformerConfig& c, const std::map<std::string, Tensor>& params,
                    std::map<std::string, Tensor>* grads, TransformerCache& k, const TokenBatch& src,
                    const TokenBatch& tgt_in, bool training, std::mt19937_64* rng);

void check_tokens(const TransformerConfig& c, const TokenBatch& t, int64_t vocab, const char* name);
void padding_mask(std::vector<uint8_t>& mask, const TokenBatch& t, int32_t pad_id);

// x = dropout(embed[ids]·√E + position)      -> [B·L, E] in buf
float* embed_forward(Buf& buf, std::vector<uint8_t>& keep, const Net& net, const float* table, const TokenBatch& ids,
                     std::mt19937_64* rng);
// One row at position `pos` for each id (inference).
void embed_rows(float* out, const Net& net, const float* table, const int32_t* ids, int64_t n, int64_t pos);
void embed_backward(const Net& net, float* dtable, const TokenBatch& ids, const std::vector<uint8_t>& keep, const float* dx);

float* encoder_layer_forward(EncoderLayerCache& k, const EncoderLayerNet& w, const Net& net, const float* x, int64_t B,
                             int64_t L, const uint8_t* pad, std::mt19937_64* rng);
void encoder_layer_backward(Buf& dx, EncoderLayerCache& k, const EncoderLayerNet& w, const Net& net, int64_t B, int64_t L);
float* decoder_layer_forward(DecoderLayerCache& k, const DecoderLayerNet& w, const Net& net, const float* y,
                             const float* mem, int64_t B, int64_t Lt, int64_t Ls, const uint8_t* tgt_pad,
                             const uint8_t* src_pad, std::mt19937_64* rng);
// dy: in = dLoss/d(layer output), out = dLoss/d(layer input); dmem accumulates.
void decoder_layer_backward(Buf& dy, float* dmem, DecoderLayerCache& k, const DecoderLayerNet& w, const Net& net, int64_t B,
                            int64_t Lt, int64_t Ls);

}  // namespace models
}  // namespace attn
