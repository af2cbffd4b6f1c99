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
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attn/activation.h"
#include "attn/attention.h"
#include "attn/io/file.h"
#include "attn/models/quantization.h"
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

struct TransformerActivations;  // what forward keeps for backward and attention_maps
namespace models {
struct TransformerWeights;  // the parameters as named fields, bound once
}

// The small interface generation needs from an encoder–decoder model: one decoder step for N current
// hypotheses, and reordering when beam search reselects them (attn/generation.h searches over it).
class StepDecoder {
 public:
  virtual ~StepDecoder() = default;
  // tokens: [N], the current token of each hypothesis at position t -> logits [N, V] of the next token
  // (the caller's to overwrite, e.g. into log-probabilities; valid until the next call).
  virtual float* step(const int32_t* tokens, int64_t t) = 0;
  // Hypothesis n continues hypothesis parent[n]: positions 0..t of the decoder state follow it.
  virtual void reorder(const std::vector<int64_t>& parent, int64_t t) = 0;
  // Finished sentences leave the batch: afterwards the decoder holds sentences.size() sentences, the i-th
  // continuing the current sentence sentences[i] (all its hypotheses), and step() takes and returns their
  // rows only. A sentence either keeps its slot (sentences[i] == i) or moves into the slot of a sentence that
  // leaves, so the state moves in place (generation fills holes from the end of the batch).
  virtual void retain(const std::vector<int64_t>& sentences) = 0;
  virtual int64_t vocab_size() const = 0;
};

// What Transformer::backward() tells its caller while it runs: data-parallel training all-reduces the gradients
// that are final while the rest of the backward goes on (attn/dist/data_parallel.h). A plain callback: the model
// knows nothing of who listens.
struct BackwardOptions {
  // Called with the names of parameters whose gradients this backward has finished (nothing later in it adds to
  // them), one group at a time, in the order of Transformer::gradient_ready_groups(): every parameter once.
  std::function<void(const std::vector<std::string>& names)> on_gradients_ready;
};

class Transformer {
 public:
  // Parameters initialised from `seed`: Xavier-uniform matrices (as nn.Transformer's _reset_parameters), N(0, 1/E)
  // embeddings, zero biases (as nn.MultiheadAttention's; nn.Linear would draw the feed-forward and generator biases
  // from U(±1/√fan_in)) and unit LayerNorm weights.
  explicit Transformer(const TransformerConfig& config, uint64_t seed = 0);
  ~Transformer();
  Transformer(Transformer&&) noexcept;
  Transformer& operator=(Transformer&&) noexcept;

  const TransformerConfig& config() const { return config_; }
  // Quantization::kInt8 (kBFloat16, kFloat32): encode, decoding and logits() run int8 (bf16, transposed
  // float32) projections; forward(training = true) and backward() then throw. kNone returns to float32 that
  // trains. The float32 parameters are kept either way.
  void quantize(Quantization quantization);
  Quantization quantization() const { return quantization_; }

  // Teacher-forced forward: src [B, Ls], tgt_in [B, Lt] -> logits [B, Lt, Vt]. With training = true,
  // dropout is applied from `rng` and the activations are kept for backward(). The model keeps the logits' storage and
  // writes the next forward's into it once the returned tensor and every copy of it are gone (a pointer into them
  // must not outlive the tensor, as always).
  Tensor forward(const TokenBatch& src, const TokenBatch& tgt_in, bool training = false,
                 std::mt19937_64* rng = nullptr);
  // Accumulates dLoss/dParameter into grads() given dLoss/dlogits [B, Lt, Vt]. Needs forward(training).
  void backward(const Tensor& dlogits, const BackwardOptions& options = {});
  // The groups of parameter names in which backward() finishes their gradients, in its order: the generator,
  // the decoder's final norm, the decoder layers last to first, tgt_embed (after its last contribution: with
  // tied embeddings it also holds the generator's), the encoder's final norm, the encoder layers last to first,
  // then src_embed with pos_embed (learned positions: both embeddings add to it). Every parameter is in one group.
  const std::vector<std::vector<std::string>>& gradient_ready_groups() const { return ready_groups_; }
  void zero_grad();

  // Parameters and gradients by torch.nn.Transformer's names. Update them in place: the model's named
  // fields point into them. A replaced tensor is noticed: forward() rebinds, the const methods throw. A quantized
  // model's projections use the copies quantize() made from the values then: call it again after changing them.
  std::map<std::string, Tensor>& params() { return params_; }
  const std::map<std::string, Tensor>& params() const { return params_; }
  std::map<std::string, Tensor>& grads() { return grads_; }
  int64_t num_parameters() const;

  // The attention weights of the last forward(), exactly as computed, by name:
  //   "encoder.layers.L.self_attn"        [B, H, Ls, Ls]
  //   "decoder.layers.L.self_attn"        [B, H, Lt, Lt]   (masked: zero above the diagonal)
  //   "decoder.layers.L.multihead_attn"   [B, H, Lt, Ls]   (cross-attention)
  std::map<std::string, Tensor> attention_maps() const;

  // Encoder output [B, Ls, E] (inference: no attention weights are computed).
  Tensor encode(const TokenBatch& src) const;
  // Teacher-forced logits [B, Lt, Vt] without keeping anything (inference; the no-cache reference decoder).
  Tensor logits(const TokenBatch& src, const TokenBatch& tgt_in) const;

  // Incremental decoding of src with `hypotheses` (beam width) per sentence for up to `positions`
  // target positions (BOS included, at most max_len): encodes once, then each step() runs the decoder for
  // one token per hypothesis with a preallocated KV cache for masked self-attention and the encoder's
  // K/V, computed once, shared by all hypotheses of a sentence for cross-attention. The decoder reads this
  // model's parameters: keep the model alive while it is used. kv_cache: how both caches store K and V.
  std::unique_ptr<StepDecoder> start_decoding(const TokenBatch& src, int64_t hypotheses, int64_t positions,
                                              KVCacheType kv_cache = KVCacheType::kFloat32) const;

  // A directory with model.safetensors and config.json (both or neither are replaced: io::FileSet).
  void save(const std::string& dir) const;
  // The same two files added to `files`, which a checkpoint commits with its own (dir must exist); metadata: more
  // __metadata__ entries for model.safetensors (a checkpoint's id).
  void stage(io::FileSet& files, const std::string& dir, const std::map<std::string, std::string>& metadata = {}) const;
  static Transformer load(const std::string& dir);

 private:
  TransformerConfig config_;
  Transformer(const TransformerConfig& config, uint64_t seed, bool initialise);  // load(): no random init
  std::map<std::string, Tensor> params_, grads_;
  std::vector<std::vector<std::string>> ready_groups_;  // see gradient_ready_groups()
  // The named fields, bound once; shared with the decoders started from this model (they stay valid if the
  // model goes away). weights() rebinds after a parameter tensor was replaced; weights() const throws then.
  std::shared_ptr<const models::TransformerWeights> weights_;
  Quantization quantization_ = Quantization::kNone;
  const models::TransformerWeights& weights();
  const models::TransformerWeights& weights() const;
  std::unique_ptr<TransformerActivations> activations_;
};

}  // namespace attn
