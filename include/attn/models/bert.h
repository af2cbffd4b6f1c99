// attn/models/bert.h: a BERT encoder as sentence-transformers uses it (e.g. all-MiniLM-L6-v2):
//   x = LayerNorm(word[id] + position[i] + token_type[0])
//   per layer (post-norm): x = LN(x + SelfAttention(x)); x = LN(x + W2·gelu(W1·x))   (padding masked)
//   embedding = L2-normalise(mean of x over the real tokens)
// Loaded from any directory with a Hugging Face BERT config.json, vocab.txt and model.safetensors
// (names "embeddings.*", "encoder.layer.N.*", optionally under a "bert." prefix); sizes come from the
// config, nothing is hard-coded for one model. sentence_bert_config.json (max_seq_length) and
// modules.json (a Normalize module) are read when present.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attn/tensor.h"
#include "attn/text/wordpiece.h"

namespace attn {

namespace models {
struct BertWeights;  // the parameters as named fields, bound once at load
}

struct BertConfig {
  int64_t vocab_size = 0, hidden_size = 0, num_layers = 0, num_heads = 0, intermediate_size = 0;
  int64_t max_position = 512, type_vocab_size = 2;
  float layer_norm_eps = 1e-12f;
  static BertConfig from_hf_json(const std::string& text);  // throws FormatError
};

// Its const methods may run on one encoder from several threads at once (their scratch is per thread).
class SentenceEncoder {
 public:
  // dtype kBFloat16: the dense layers (attention projections, feed-forward) run bfloat16 weights and inputs with
  // float32 sums (oneDNN's bf16 matmul); embeddings, attention and LayerNorm stay float32. kFloat32 otherwise;
  // anything else throws DTypeError.
  static SentenceEncoder load(const std::string& dir, DType dtype = DType::kFloat32);

  // [N, hidden_size] sentence embeddings in input order (mean pooling, L2-normalised when the directory's
  // modules.json lists a Normalize module, as sentence-transformers does), computed in batches of batch_size sentences
  // of similar length, padded to their longest, on num_threads threads (every kernel and GEMM of the call; 0: OpenMP's
  // default).
  Tensor embed(const std::vector<std::string>& sentences, int64_t batch_size = 32, int num_threads = 0) const;
  // The token ids embed() feeds the model: [CLS] ... [SEP], at most max_seq_length.
  std::vector<int32_t> token_ids(const std::string& sentence) const;
  // Every layer's attention weights for one sentence: "encoder.layer.L.attention" -> [1, H, L, L].
  std::map<std::string, Tensor> attention_maps(const std::string& sentence) const;

  const BertConfig& config() const { return config_; }
  const text::WordPiece& tokenizer() const { return tokenizer_; }
  int64_t max_seq_length() const { return max_seq_length_; }
  bool normalize() const { return normalize_; }

 private:
  // hidden states [B, L, hidden] for padded ids [B, L]; pad [B, L] (1 = padding)
  std::vector<float> forward(const std::vector<int32_t>& ids, const std::vector<uint8_t>& pad, int64_t B, int64_t L,
                             int num_threads, std::map<std::string, Tensor>* maps) const;

  BertConfig config_;
  text::WordPiece tokenizer_;
  std::map<std::string, Tensor> params_;
  std::shared_ptr<const models::BertWeights> weights_;  // views into params_
  int64_t max_seq_length_ = 512;
  bool normalize_ = false;
};

}  // namespace attn
