// attn/models/bert.h: a BERT encoder as sentence-transformers uses it (e.g. all-MiniLM-L6-v2):
//   x = LayerNorm(word[id] + position[i] + token_type[0])
//   per layer (post-norm): x = LN(x + SelfAttention(x)); x = LN(x + W2·gelu(W1·x))   (padding masked)
//   embedding = L2-normalise(pooled x over the real tokens: the mean for all-MiniLM-L6-v2)
// Loaded from any directory with a Hugging Face BERT config.json, vocab.txt and model.safetensors
// (names "embeddings.*", "encoder.layer.N.*", optionally under a "bert." prefix); sizes come from the
// config, nothing is hard-coded for one model. Read when present, as sentence-transformers reads them:
//   tokenizer_config.json: do_lower_case, strip_accents, tokenize_chinese_chars, model_max_length;
//   sentence_bert_config.json: max_seq_length, do_lower_case (lower-cases ahead of the tokenizer's own settings);
//   modules.json: Transformer, then Pooling (its config.json: pooling_mode, or the older pooling_mode_* keys), then
//   an optional Normalize. Any other module (Dense, LayerNorm, ...) is a FormatError, not left out in silence. The
//   Transformer's "path" (older saves: "0_Transformer") is the folder inside `dir` that holds the files above.
// Without modules.json a directory is a plain BERT: mean pooling, no normalisation, as sentence-transformers builds it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attn/models/quantization.h"
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

// sentence-transformers' pooling modes (its names: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken);
// several are concatenated in the order the Pooling config lists them, each hidden_size wide.
enum class Pooling {
  kCls,           // the first token ([CLS])
  kMax,           // the largest value of each dimension over the real tokens
  kMean,          // their mean
  kMeanSqrtLen,   // their sum over √(number of tokens) ("mean_sqrt_len_tokens")
  kWeightedMean,  // Σ (i + 1)·x_i / Σ (i + 1): later tokens weigh more
  kLastToken,     // the last real token ([SEP])
};

// Its const methods may run on one encoder from several threads at once (their scratch is per thread).
class SentenceEncoder {
 public:
  // dtype kBFloat16: the dense layers (attention projections, feed-forward) run bfloat16 weights and inputs with
  // float32 sums (oneDNN's bf16 matmul); embeddings, attention and LayerNorm stay float32. kFloat32 otherwise;
  // anything else throws DTypeError.
  static SentenceEncoder load(const std::string& dir, DType dtype = DType::kFloat32);
  // The same with the dense layers' inference copies named as the Translator's: kBFloat16 is dtype kBFloat16;
  // kInt8: int8 weights with a scale per output row, activations quantised per row on the fly, int32 sums (oneDNN;
  // Transformer::quantize's int8); kNone and kFloat32: float32.
  static SentenceEncoder load(const std::string& dir, Quantization quantization);

  // [N, embedding_dim()] sentence embeddings in input order (pooled as the directory's Pooling module says,
  // L2-normalised when its modules.json lists a Normalize module), computed in batches of batch_size sentences
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
  const std::vector<Pooling>& pooling() const { return pooling_; }
  int64_t embedding_dim() const { return config_.hidden_size * static_cast<int64_t>(pooling_.size()); }

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
  std::vector<Pooling> pooling_{Pooling::kMean};
};

}  // namespace attn
