// attn/models/transformer.h: the encoder–decoder Transformer ("Attention Is All You Need") in which
// the five mechanisms work together:
//   encoder layer: multi-head self-attention -> feed-forward
//   decoder layer: masked multi-head self-attention -> cross-attention over the encoder -> feed-forward
// with token embeddings (× √d_model), sinusoidal (or learned) positions, post-norm (the paper) or
// pre-norm, ReLU or GELU, dropout on attention weights and residuals (training only), padding masks
// in every attention, and final encoder/decoder LayerNorms as torch.nn.Transformer has them.
//
// Parameters use torch.nn.Transformer's names ("encoder.layers.0.self_attn.in_proj_weight",
// "decoder.layers.1.multihead_attn.out_proj.weight", "encoder.norm.weight", ...), plus
// "src_embed.weight" [Vs, E], "tgt_embed.weight" [Vt, E], "generator.weight" [Vt, E] (absent when
// tied to tgt_embed), "generator.bias" [Vt] and, with learned positions, "pos_embed.weight" [max_len, E].
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attn/activation.h"
#include "attn/tensor.h"

namespace attn {


struct TransformerConfig {
  int64_t src_vocab = 0, tgt_vocab = 0;
  int64_t d_model = 128, num_heads = 4, d_ff = 512;
  int64_t num_encoder_layers = 2, num_decoder_layers = 2;
  int64_t max_len = 64;  // longest source or target sequence, BOS/EOS included
  bool norm_first = false;
  Activation activation = Activation::kRelu;
  bool tie_embeddings = true;
  bool learned_positions = false;
  float dropout = 0.1f;            // residuals, feed-forward and embeddings
  float attention_dropout = 0.0f;  // attention weights
  int32_t pad_id = 0, bos_id = 1, eos_id = 2;

  std::string to_json() const;
  static TransformerConfig from_json(const std::string& text);  // throws FormatError
};

// A batch of token ids, row-major [B, L], padded with pad_id.
struct TokenBatch {
  std::vector<int32_t> ids;
  int64_t B = 0, L = 0;
  int32_t at(int64_t b, int64_t i) const { return ids[static_cast<size_t>(b * L + i)]; }
};

struct TransformerCache;  // activations kept by forward for backward

class Transformer {
 public:
  // Parameters initialised as PyTorch initialises them (Xavier-uniform matrices, N(0, 1/E) embeddings,
  // zero biases, unit LayerNorm weights), from `seed`.
  explicit Transformer(const TransformerConfig& config, uint64_t seed = 0);
  ~Transformer();
  Transformer(Transformer&&) noexcept;
  Transformer& operator=(Transformer&&) noexcept;

  const TransformerConfig& config() const { return config_; }

  // Teacher-forced forward: src [B, Ls], tgt_in [B, Lt] -> logits [B, Lt, Vt]. With training = true,
  // dropout is applied from `rng` and the activations are kept for backward().
  Tensor forward(const TokenBatch& src, const TokenBatch& tgt_in, bool training = false, std::mt19937_64* rng = nullptr);
  // Accumulates dLoss/dParameter into grads() given dLoss/dlogits [B, Lt, Vt]. Needs forward(training).
  void backward(const Tensor& dlogits);
  void zero_grad();

  std::map<std::string, Tensor>& params() { return params_; }
  const std::map<std::string, Tensor>& params() const { return params_; }
  std::map<std::string, Tensor>& grads() { return grads_; }
  int64_t num_parameters() const;

  // The attention weights of the last forward(), exactly as computed, by name:
  //   "encoder.layers.L.self_attn"        [B, H, Ls, Ls]
  //   "decoder.layers.L.self_attn"        [B, H, Lt, Lt]   (masked: zero above the diagonal)
  //   "decoder.layers.L.multihead_attn"   [B, H, Lt, Ls]   (cross-attention)
  std::map<std::string, Tensor> attention_maps() const;

  // Encoder output [B, Ls, E] (inference).
  Tensor encode(const TokenBatch& src) const;

  // Generation with incremental decoding: a preallocated KV cache for masked self-attention, the
  // encoder's K/V for cross-attention computed once and shared by all beams. Returns, per sentence,
  // the best target ids (without BOS/EOS). beam = 1 is greedy. Length penalty: GNMT's
  // ((5 + len) / 6)^alpha divides the log-probability.
  std::vector<std::vector<int32_t>> generate(const TokenBatch& src, int beam = 1, float length_penalty = 0.6f,
                                             int64_t max_len = 0) const;
  // Greedy decoding that recomputes the whole decoder for every prefix (no cache): the reference the
  // incremental path is tested against. Also returns each step's logits [steps, Vt] per sentence.
  std::vector<std::vector<int32_t>> generate_full_recompute(const TokenBatch& src, int64_t max_len = 0,
                                                            std::vector<std::vector<float>>* step_logits = nullptr) const;
  // The same as generate(beam = 1) but also returning the step logits, for the test above.
  std::vector<std::vector<int32_t>> generate_greedy_logits(const TokenBatch& src, int64_t max_len,
                                                           std::vector<std::vector<float>>* step_logits) const;

  // A directory with model.safetensors and config.json.
  void save(const std::string& dir) const;
  static Transformer load(const std::string& dir);

 private:
  TransformerConfig config_;
  std::map<std::string, Tensor> params_, grads_;
  std::unique_ptr<TransformerCache> cache_;
};

}  // namespace attn
