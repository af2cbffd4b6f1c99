#include "attn/models/bert.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/safetensors.h"
#include "cpu/threads.h"
#include "io/json_fields.h"
#include "layers/mha_layer.h"
#include "ops/nn.h"
#include "tensor_unfilled.h"

namespace attn {
using io::read_text;

BertConfig BertConfig::from_hf_json(const std::string& text) {
  BertConfig c;
  try {
    const nlohmann::json j = io::parse_json(text, "");
    if (!j.is_object()) throw FormatError("expected a JSON object");
    io::read_integer(j, "vocab_size", c.vocab_size), io::read_integer(j, "hidden_size", c.hidden_size);
    io::read_integer(j, "num_hidden_layers", c.num_layers), io::read_integer(j, "num_attention_heads", c.num_heads);
    io::read_integer(j, "intermediate_size", c.intermediate_size);
    io::read_integer_if_present(j, "max_position_embeddings", c.max_position);
    io::read_integer_if_present(j, "type_vocab_size", c.type_vocab_size);
    // read as a double: one past float's range (1e300) had become inf, a negative one NaN embeddings
    const double eps = j.value("layer_norm_eps", 1e-12);
    if (!(eps >= 0.0 && eps <= 1.0)) throw FormatError("layer_norm_eps " + std::to_string(eps) + " must be in [0, 1]");
    c.layer_norm_eps = static_cast<float>(eps);
    // another architecture of BERT's weight names (RoBERTa's positions start at pad_id + 1: it had loaded and given
    // other embeddings than sentence-transformers' without a word)
    const std::string type = j.value("model_type", std::string("bert"));
    if (type != "bert") throw FormatError("model_type '" + io::text_excerpt(type) + "' is not supported (bert)");
    const std::string act = j.value("hidden_act", std::string("gelu"));
    if (act != "gelu") throw FormatError("hidden_act '" + io::text_excerpt(act) + "' is not supported (gelu)");
    // relative position embeddings (relative_key, ...) had loaded and run with absolute ones
    const std::string positions = j.value("position_embedding_type", std::string("absolute"));
    if (positions != "absolute")
      throw FormatError("position_embedding_type '" + io::text_excerpt(positions) + "' is not supported (absolute)");
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(std::string("config.json: ") + e.what());
  } catch (const FormatError& e) {
    throw FormatError(std::string("config.json: ") + e.what());
  }
  // every table the model reads has at least one row (type_vocab_size 0 would leave token type 0 unread memory)
  if (c.vocab_size <= 0 || c.max_position <= 0 || c.type_vocab_size <= 0 || c.intermediate_size <= 0 ||
      c.num_layers < 0 || c.num_layers > 4096)
    throw FormatError("config.json: vocab_size " + std::to_string(c.vocab_size) + ", max_position_embeddings " +
                      std::to_string(c.max_position) + ", type_vocab_size " + std::to_string(c.type_vocab_size) +
                      " and intermediate_size " + std::to_string(c.intermediate_size) +
                      " must be positive, num_hidden_layers " + std::to_string(c.num_layers) + " in [0, 4096]");
  if (c.hidden_size <= 0 || c.num_heads <= 0 || c.hidden_size % c.num_heads != 0)
    throw FormatError("config.json: hidden_size " + std::to_string(c.hidden_size) +
                      " is not a multiple of num_attention_heads " + std::to_string(c.num_heads));
  // sizes the weights back only where there are layers (with none, intermediate_size 2^60 had sized a buffer)
  if (c.hidden_size > (int64_t{1} << 20) || c.intermediate_size > (int64_t{1} << 20))
    throw FormatError("config.json: hidden_size " + std::to_string(c.hidden_size) + " and intermediate_size " +
                      std::to_string(c.intermediate_size) + " must be at most 2^20");
  return c;
}

namespace {

nlohmann::json read_json_object(const std::string& path) {
  const nlohmann::json j = io::parse_json(read_text(path), path, false);
  if (!j.is_object()) throw FormatError(path + ": expected a JSON object");
  return j;
}

// key's value: true, false, or nullopt where it is absent or null (tokenizer files write null for "unset")
std::optional<bool> read_optional_bool(const nlohmann::json& j, const std::string& path, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_boolean()) throw FormatError(path + ": " + key + " must be true, false or null");
  return j[key].get<bool>();
}

// 1_Pooling/config.json: "pooling_mode" (a name or a list of names), or sentence-transformers' older booleans,
// which it reads in this order (none true: mean)
std::vector<Pooling> read_pooling(const std::string& path, int64_t hidden) {
  const nlohmann::json j = read_json_object(path);
  // sentence-transformers' names, and its older boolean keys in the order it reads them
  struct Mode {
    const char *name, *legacy_key;
    Pooling pooling;
  };
  static const Mode kModes[] = {{"cls", "pooling_mode_cls_token", Pooling::kCls},
                                {"max", "pooling_mode_max_tokens", Pooling::kMax},
                                {"mean", "pooling_mode_mean_tokens", Pooling::kMean},
                                {"mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens", Pooling::kMeanSqrtLen},
                                {"weightedmean", "pooling_mode_weightedmean_tokens", Pooling::kWeightedMean},
                                {"lasttoken", "pooling_mode_lasttoken", Pooling::kLastToken}};
  for (const char* key : {"embedding_dimension", "word_embedding_dimension"})
    if (j.contains(key) && !(j[key].is_number_integer() && j[key].get<int64_t>() == hidden))
      throw FormatError(path + ": " + key + " " + io::json_excerpt(j[key]) + " is not the model's hidden_size " +
                        std::to_string(hidden));
  std::vector<Pooling> modes;
  if (j.contains("pooling_mode")) {
    const nlohmann::json& m = j["pooling_mode"];
    const nlohmann::json names = m.is_array() ? m : nlohmann::json::array({m});
    for (const nlohmann::json& name : names) {
      const auto it = std::find_if(std::begin(kModes), std::end(kModes), [&](const Mode& mode) {
        return name.is_string() && name.get<std::string>() == mode.name;
      });
      if (it == std::end(kModes))
        throw FormatError(path + ": pooling_mode " + io::json_excerpt(name) +
                          " is not one of cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken");
      // a mode listed twice would only repeat columns (a million "mean"s had made each embedding 384 M floats)
      if (std::find(modes.begin(), modes.end(), it->pooling) != modes.end())
        throw FormatError(path + ": pooling_mode lists " + io::json_excerpt(name) + " twice");
      modes.push_back(it->pooling);
    }
    if (modes.empty()) throw FormatError(path + ": pooling_mode names no mode");
  } else {
    for (const Mode& m : kModes)
      if (read_optional_bool(j, path, m.legacy_key).value_or(false)) modes.push_back(m.pooling);
    if (modes.empty()) modes.push_back(Pooling::kMean);
  }
  return modes;
}

// a module's "path" in modules.json: a folder inside the model's directory ("" for the directory itself)
std::string module_folder(const nlohmann::json& m, const std::string& path, size_t i) {
  if (!m.contains("path")) return "";
  if (!m["path"].is_string())
    throw FormatError(path + ": module " + std::to_string(i) + "'s \"path\" must be a string, got " +
                      io::json_excerpt(m["path"]));
  const std::filesystem::path sub(m["path"].get<std::string>());
  for (const auto& part : sub)
    if (part == "..")
      throw FormatError(path + ": module " + std::to_string(i) + "'s \"path\" " + io::json_excerpt(m["path"]) +
                        " leaves the model's directory");
  if (sub.is_absolute())
    throw FormatError(path + ": module " + std::to_string(i) + "'s \"path\" " + io::json_excerpt(m["path"]) +
                      " must be relative to the model's directory");
  return sub.string();
}

std::string inside(const std::string& dir, const std::string& sub) { return sub.empty() ? dir : dir + "/" + sub; }

// modules.json: Transformer, Pooling, then Normalize or nothing, checked in that order
struct SentenceModules {
  std::string transformer;  // the Transformer's folder inside the model's directory: its config.json, vocab.txt,
                            // model.safetensors and tokenizer settings ("" as saved today; "0_Transformer" in older
                            // sentence-transformers saves)
  std::string pooling;      // the Pooling module's folder (its config.json)
  bool normalize = false;
};

SentenceModules read_modules(const std::string& dir) {
  const std::string path = dir + "/modules.json";
  const nlohmann::json j = io::parse_json(read_text(path), path, false);
  if (!j.is_array()) throw FormatError(path + ": expected a JSON array of modules");
  SentenceModules modules;
  bool pooled = false;
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& m = j[i];
    if (!m.is_object() || !m.contains("type") || !m["type"].is_string())
      throw FormatError(path + ": module " + std::to_string(i) + " has no \"type\"");
    const std::string type = m["type"].get<std::string>();
    const std::string kind = type.substr(type.rfind('.') + 1);  // sentence_transformers.models.Pooling -> Pooling
    const bool in_order =
        (kind == "Transformer" && i == 0) || (kind == "Pooling" && i == 1) || (kind == "Normalize" && i == 2 && pooled);
    if (!in_order)
      throw FormatError(path + ": module " + std::to_string(i) + " is " + type +
                        "; attn runs Transformer, Pooling and an optional Normalize, in this order");
    if (kind == "Transformer") modules.transformer = module_folder(m, path, i);
    if (kind == "Pooling") modules.pooling = module_folder(m, path, i), pooled = true;
    modules.normalize = modules.normalize || kind == "Normalize";
  }
  if (!pooled) throw FormatError(path + ": no Pooling module after the Transformer");
  return modules;
}

}  // namespace

namespace models {

struct BertLayerWeights {
  layers::MhaWeights attention;        // query/key/value/output dense [Hd, Hd] and biases
  const float *attn_ln_w, *attn_ln_b;  // attention.output.LayerNorm [Hd]
  const float *w1, *b1, *w2, *b2;      // intermediate.dense [F, Hd], [F]; output.dense [Hd, F], [Hd]
  const ops::QuantizedMatrix *qw1 = nullptr, *qw2 = nullptr;  // bf16 or int8 copies of w1, w2 (load's quantization)
  const float *out_ln_w, *out_ln_b;                           // output.LayerNorm [Hd]
};

struct BertWeights {
  const float *word, *position, *token_type;  // [V, Hd], [max_position, Hd], [type_vocab, Hd]
  const float *emb_ln_w, *emb_ln_b;           // embeddings.LayerNorm [Hd]
  std::vector<BertLayerWeights> layers;
  std::deque<ops::QuantizedMatrix> inference;  // the dense layers' bf16 or int8 copies (a deque: pointers stay valid)
};

}  // namespace models

SentenceEncoder SentenceEncoder::load(const std::string& dir, DType dtype) {
  if (dtype != DType::kFloat32 && dtype != DType::kBFloat16)
    throw DTypeError(std::string("SentenceEncoder::load: dtype must be float32 or bfloat16, got ") + dtype_name(dtype));
  return load(dir, dtype == DType::kBFloat16 ? Quantization::kBFloat16 : Quantization::kNone);
}

SentenceEncoder SentenceEncoder::load(const std::string& dir, Quantization quantization) {
  SentenceEncoder e;
  // modules.json: the pipeline after the Transformer, and where the Transformer's files are; a plain BERT directory
  // (no modules.json) is mean-pooled without normalising, as sentence-transformers builds it
  std::optional<SentenceModules> modules;
  if (io::exists_or_unexaminable(dir + "/modules.json")) modules = read_modules(dir);
  const std::string model_dir = inside(dir, modules ? modules->transformer : std::string());
  const std::string config_text = read_text(model_dir + "/config.json");  // (its errors name the path)
  try {  // (the parser's messages begin "config.json: "; the folder named, now that modules.json may choose it)
    e.config_ = BertConfig::from_hf_json(config_text);
  } catch (const FormatError& err) {
    throw FormatError(model_dir + "/" + err.what());
  }
  // tokenizer_config.json: BertNormalizer's settings and the longest input (int(1e30) where unset)
  text::WordPieceOptions tok;
  int64_t model_max_length = e.config_.max_position;
  if (io::exists_or_unexaminable(
          model_dir + "/tokenizer_config.json")) {  // (one that did not parse had thrown nlohmann's type_error)
    const std::string path = model_dir + "/tokenizer_config.json";
    const nlohmann::json j = read_json_object(path);
    tok.lower_case = read_optional_bool(j, path, "do_lower_case").value_or(tok.lower_case);
    tok.strip_accents = read_optional_bool(j, path, "strip_accents");
    tok.split_cjk = read_optional_bool(j, path, "tokenize_chinese_chars").value_or(tok.split_cjk);
    if (j.contains("model_max_length")) {
      const nlohmann::json& m = j["model_max_length"];
      if (!m.is_number() || !(m.get<double>() >= 2))
        throw FormatError(path + ": model_max_length must be a number >= 2, got " + io::json_excerpt(m));
      if (m.get<double>() < static_cast<double>(model_max_length)) model_max_length = m.get<int64_t>();
    }
  }
  // sentence_bert_config.json: max_seq_length, else min(max_position_embeddings, model_max_length), as
  // sentence-transformers; its do_lower_case puts a lower-casing step ahead of the tokenizer's own (whose accent
  // stripping still follows the tokenizer's do_lower_case)
  e.max_seq_length_ = model_max_length;
  if (io::exists_or_unexaminable(model_dir + "/sentence_bert_config.json")) {
    const std::string path = model_dir + "/sentence_bert_config.json";
    const nlohmann::json j = read_json_object(path);  // (one that did not parse had been left out in silence)
    try {
      io::read_integer_if_present(j, "max_seq_length", e.max_seq_length_);
    } catch (const Error& err) {
      throw FormatError(path + ": " + err.what());
    }
    if (e.max_seq_length_ < 2)  // [CLS] and [SEP] at least
      throw FormatError(path + ": max_seq_length must be at least 2, got " + std::to_string(e.max_seq_length_));
    e.max_seq_length_ = std::min(e.max_seq_length_, e.config_.max_position);
    if (read_optional_bool(j, path, "do_lower_case").value_or(false))
      tok.strip_accents = tok.strip_accents.value_or(tok.lower_case), tok.lower_case = true;
  }
  e.tokenizer_ = text::WordPiece::load(model_dir + "/vocab.txt", tok);
  // many older models ship their weights as pytorch_model.bin alone: a pickle, which attn does not read (a pickle runs
  // code as it loads); said so, with the one command that writes the safetensors file
  if (!io::exists_or_unexaminable(model_dir + "/model.safetensors") &&
      io::exists_or_unexaminable(model_dir + "/pytorch_model.bin"))
    throw FormatError(
        model_dir + ": has pytorch_model.bin but no model.safetensors; attn reads safetensors only " +
        "(a pickle runs code as it loads). Write it once with transformers: python -c \"from transformers " +
        "import AutoModel; AutoModel.from_pretrained('" + model_dir + "').save_pretrained('" + model_dir +
        "', safe_serialization=True)\"");
  e.params_ = io::read_safetensors(model_dir + "/model.safetensors").tensors;
  io::widen_to_float32(e.params_);
  std::string prefix;  // "bert." when the weights come from a BertModel inside another module
  if (!e.params_.count("embeddings.word_embeddings.weight") &&
      e.params_.count("bert.embeddings.word_embeddings.weight"))
    prefix = "bert.";
  if (modules) {
    e.pooling_ = read_pooling(inside(dir, modules->pooling) + "/config.json", e.config_.hidden_size);
    e.normalize_ = modules->normalize;
  }
  // every weight the forward pass reads, with the shape the config implies
  const BertConfig& c = e.config_;
  const int64_t Hd = c.hidden_size, F = c.intermediate_size;
  auto expect = [&](const std::string& name, const Shape& shape) {
    const auto it = e.params_.find(prefix + name);
    if (it == e.params_.end())
      throw MissingTensorError(model_dir + "/model.safetensors: no tensor named '" + prefix + name + "'");
    if (it->second.dtype() != DType::kFloat32 || it->second.shape() != shape)
      throw ShapeError(model_dir + "/model.safetensors: '" + name + "' has shape " + shape_str(it->second.shape()) +
                       ", config.json implies " + shape_str(shape));
  };
  expect("embeddings.word_embeddings.weight", {c.vocab_size, Hd});
  expect("embeddings.position_embeddings.weight", {c.max_position, Hd});
  expect("embeddings.token_type_embeddings.weight", {c.type_vocab_size, Hd});
  for (const char* n : {"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"}) expect(n, {Hd});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string L = "encoder.layer." + std::to_string(l) + ".";
    for (const char* m :
         {"attention.self.query.", "attention.self.key.", "attention.self.value.", "attention.output.dense."})
      expect(L + m + "weight", {Hd, Hd}), expect(L + m + "bias", {Hd});
    expect(L + "intermediate.dense.weight", {F, Hd}), expect(L + "intermediate.dense.bias", {F});
    expect(L + "output.dense.weight", {Hd, F}), expect(L + "output.dense.bias", {Hd});
    for (const char* n : {"attention.output.LayerNorm.", "output.LayerNorm."})
      expect(L + n + "weight", {Hd}), expect(L + n + "bias", {Hd});
  }
  // bound once: every forward reads named fields
  auto w = std::make_shared<models::BertWeights>();
  auto P = [&](const std::string& name) { return e.params_.at(prefix + name).f32(); };
  w->word = P("embeddings.word_embeddings.weight"), w->position = P("embeddings.position_embeddings.weight");
  w->token_type = P("embeddings.token_type_embeddings.weight");
  w->emb_ln_w = P("embeddings.LayerNorm.weight"), w->emb_ln_b = P("embeddings.LayerNorm.bias");
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string L = "encoder.layer." + std::to_string(l) + ".";
    models::BertLayerWeights lw;
    lw.attention.w_q = P(L + "attention.self.query.weight"), lw.attention.b_q = P(L + "attention.self.query.bias");
    lw.attention.w_k = P(L + "attention.self.key.weight"), lw.attention.b_k = P(L + "attention.self.key.bias");
    lw.attention.w_v = P(L + "attention.self.value.weight"), lw.attention.b_v = P(L + "attention.self.value.bias");
    lw.attention.w_o = P(L + "attention.output.dense.weight"), lw.attention.b_o = P(L + "attention.output.dense.bias");
    lw.attention.E = Hd, lw.attention.H = c.num_heads, lw.attention.Hkv = c.num_heads;
    lw.attention.kdim = lw.attention.vdim = Hd;
    lw.attn_ln_w = P(L + "attention.output.LayerNorm.weight"), lw.attn_ln_b = P(L + "attention.output.LayerNorm.bias");
    lw.w1 = P(L + "intermediate.dense.weight"), lw.b1 = P(L + "intermediate.dense.bias");
    lw.w2 = P(L + "output.dense.weight"), lw.b2 = P(L + "output.dense.bias");
    lw.out_ln_w = P(L + "output.LayerNorm.weight"), lw.out_ln_b = P(L + "output.LayerNorm.bias");
    if (quantization == Quantization::kBFloat16 || quantization == Quantization::kInt8) {
      auto q = [&](const float* m, int64_t rows, int64_t cols) {
        w->inference.push_back(quantization == Quantization::kInt8 ? ops::quantize_rows(m, rows, cols)
                                                                   : ops::bf16_rows(m, rows, cols));
        return &w->inference.back();
      };
      lw.attention.qw_q = q(lw.attention.w_q, Hd, Hd), lw.attention.qw_k = q(lw.attention.w_k, Hd, Hd);
      lw.attention.qw_v = q(lw.attention.w_v, Hd, Hd), lw.attention.qw_o = q(lw.attention.w_o, Hd, Hd);
      lw.qw1 = q(lw.w1, F, Hd), lw.qw2 = q(lw.w2, Hd, F);
    }
    w->layers.push_back(lw);
  }
  e.weights_ = std::move(w);
  // an embedding table larger than the vocabulary is padded (to a multiple of 8, or a tokenizer's trimmed list): its
  // spare rows are never looked up, as in Hugging Face, which loads such models
  if (e.tokenizer_.size() > c.vocab_size)
    throw FormatError(model_dir + "/vocab.txt has " + std::to_string(e.tokenizer_.size()) + " tokens, config.json's " +
                      "vocab_size " + std::to_string(c.vocab_size) + " rows: its last ids have no embedding");
  return e;
}

namespace {
// A default-constructed encoder holds no model: its calls had read through a null weights pointer.
void require_model(const std::shared_ptr<const models::BertWeights>& weights, const char* fn) {
  if (!weights)
    throw ArgumentError(std::string(fn) +
                        ": this SentenceEncoder holds no model (default-constructed); make one with "
                        "SentenceEncoder::load(dir)");
}
}  // namespace

std::vector<int32_t> SentenceEncoder::token_ids(const std::string& sentence) const {
  require_model(weights_, "token_ids");
  return tokenizer_.encode(sentence, max_seq_length_);
}

std::vector<float> SentenceEncoder::forward(const std::vector<int32_t>& ids, const std::vector<uint8_t>& pad, int64_t B,
                                            int64_t L, int num_threads, std::map<std::string, Tensor>* maps) const {
  const detail::ThreadScope threads(num_threads);  // the GEMMs' pool (OpenBLAS, oneDNN) too, not only attention's
  const BertConfig& c = config_;
  const int64_t Hd = c.hidden_size, F = c.intermediate_size, M = B * L, H = c.num_heads;
  const float eps = c.layer_norm_eps;
  const models::BertWeights& w = *weights_;
  // The real tokens' rows, packed: the embeddings, projections' inputs, feed-forward, layer norms and residual sums
  // skip the padding (a batch's short sentences padded to its longest: 82% of the rows of the MiniLM parity fixture's
  // batches, which had all gone through them), as FasterTransformer's "remove padding". The attention kernel alone
  // reads Q, K and V in the [B, L] layout (layers::mha_self_attention_packed).
  std::vector<int64_t> rows;  // [Mv]: packed row r is b·L + i
  rows.reserve(static_cast<size_t>(M));
  for (int64_t j = 0; j < M; ++j)
    if (!pad[static_cast<size_t>(j)]) rows.push_back(j);
  const int64_t Mv = static_cast<int64_t>(rows.size());
  const bool packed = Mv < M;
  std::vector<float> x(static_cast<size_t>(Mv * Hd)), mean(static_cast<size_t>(Mv)), rstd(static_cast<size_t>(Mv));
  // y and h are written whole before each read: left unfilled (their zero-fill had been 2% of int8 embeddings)
  Tensor y_storage = detail::unfilled_tensor({Mv, Hd}), h_storage = detail::unfilled_tensor({Mv, F});
  float *const y = y_storage.f32(), *const h = h_storage.f32();  // [Mv, Hd], [Mv, F]
  // attention's [B, L] layout: Q, K, V and heads, their padded rows 0 (kept so from layer to layer)
  std::vector<float> qp(packed ? static_cast<size_t>(M * Hd) : 0), kp(qp.size()), vp(qp.size()), hp(qp.size());
  const layers::PackedRows pk{rows.data(), Mv, qp.data(), kp.data(), vp.data(), hp.data()};
  const auto row_of = [&](int64_t r) { return rows[static_cast<size_t>(r)]; };
  // x = LN(word[id] + position[i] + token_type[0])
  for (int64_t r = 0; r < Mv; ++r) {
    const int64_t j = row_of(r), i = j % L;
    const float* word = w.word + ids[static_cast<size_t>(j)] * Hd;
    for (int64_t d = 0; d < Hd; ++d) y[r * Hd + d] = word[d] + w.position[i * Hd + d] + w.token_type[d];
  }
  ops::layer_norm_forward(x.data(), mean.data(), rstd.data(), y, w.emb_ln_w, w.emb_ln_b, Mv, Hd, eps);
  layers::MhaMasks masks;
  masks.key_padding = pad.data();
  masks.num_threads = num_threads;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const models::BertLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    // x = LN(x + SelfAttention(x)); the weights only for attention maps
    Tensor weights;
    if (maps) weights = Tensor({B, H, L, L});
    if (packed)
      layers::mha_self_attention_packed(y, lw.attention, x.data(), B, L, pk, masks, maps ? weights.f32() : nullptr);
    else
      layers::mha_forward(y, lw.attention, x.data(), x.data(), x.data(), B, L, L, masks, nullptr,
                          maps ? weights.f32() : nullptr);
    if (maps) (*maps)["encoder.layer." + std::to_string(l) + ".attention"] = weights;
    ops::add(y, y, x.data(), Mv * Hd);  // (threaded: a serial loop here had left the other threads waiting)
    ops::layer_norm_forward(x.data(), mean.data(), rstd.data(), y, lw.attn_ln_w, lw.attn_ln_b, Mv, Hd, eps);
    // x = LN(x + W2·gelu(W1·x))
    ops::linear_forward(h, x.data(), lw.w1, lw.qw1, lw.b1, Mv, F, Hd);
    ops::activation_forward(h, h, Mv * F, Activation::kGelu);
    ops::linear_forward(y, h, lw.w2, lw.qw2, lw.b2, Mv, Hd, F);
    ops::add(y, y, x.data(), Mv * Hd);
    ops::layer_norm_forward(x.data(), mean.data(), rstd.data(), y, lw.out_ln_w, lw.out_ln_b, Mv, Hd, eps);
  }
  if (!packed) return x;
  std::vector<float> out(static_cast<size_t>(M * Hd), 0.0f);  // [B, L, Hd] again, padding 0
  for (int64_t r = 0; r < Mv; ++r) std::copy_n(x.data() + r * Hd, Hd, out.data() + row_of(r) * Hd);
  return out;
}

namespace {

// out [Hd] = one pooling mode over x [n, Hd] (a sentence's n real tokens), in float as sentence-transformers
void pool_tokens(Pooling mode, const float* x, int64_t n, int64_t Hd, float* out) {
  switch (mode) {
    case Pooling::kCls:
    case Pooling::kLastToken: std::copy_n(x + (mode == Pooling::kCls ? 0 : n - 1) * Hd, Hd, out); return;
    case Pooling::kMax:
      std::copy_n(x, Hd, out);
      for (int64_t i = 1; i < n; ++i)
        for (int64_t d = 0; d < Hd; ++d) out[d] = std::max(out[d], x[i * Hd + d]);
      return;
    case Pooling::kMean:
    case Pooling::kMeanSqrtLen:
    case Pooling::kWeightedMean: {
      const bool weighted = mode == Pooling::kWeightedMean;
      std::fill(out, out + Hd, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        const float w = weighted ? static_cast<float>(i + 1) : 1.0f;
        for (int64_t d = 0; d < Hd; ++d) out[d] += w * x[i * Hd + d];
      }
      const float count = static_cast<float>(n);
      const float divisor = mode == Pooling::kMean          ? count
                            : mode == Pooling::kMeanSqrtLen ? std::sqrt(count)
                                                            : count * (count + 1.0f) / 2.0f;
      for (int64_t d = 0; d < Hd; ++d) out[d] /= divisor;
      return;
    }
  }
}

}  // namespace

Tensor SentenceEncoder::embed(const std::vector<std::string>& sentences, int64_t batch_size, int num_threads) const {
  require_model(weights_, "embed");
  if (batch_size <= 0) throw ArgumentError("embed: batch_size must be positive, got " + std::to_string(batch_size));
  if (num_threads < 0) throw ArgumentError("embed: num_threads must be >= 0, got " + std::to_string(num_threads));
  const int64_t N = static_cast<int64_t>(sentences.size()), Hd = config_.hidden_size, E = embedding_dim();
  Tensor out({N, E});
  // batches of similar lengths pad less (sentence-transformers sorts the same way); rows go back in order
  std::vector<std::vector<int32_t>> enc(static_cast<size_t>(N));
  std::vector<int64_t> order(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    try {
      enc[static_cast<size_t>(i)] = token_ids(sentences[static_cast<size_t>(i)]);
    } catch (const ArgumentError& e) {  // which sentence
      throw ArgumentError("embed: sentences[" + std::to_string(i) + "]: " + e.what());
    }
    order[static_cast<size_t>(i)] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return enc[static_cast<size_t>(a)].size() > enc[static_cast<size_t>(b)].size();
  });
  for (int64_t s0 = 0; s0 < N; s0 += batch_size) {
    const int64_t B = std::min(batch_size, N - s0);
    int64_t L = 0;
    for (int64_t b = 0; b < B; ++b)
      L = std::max<int64_t>(L,
                            static_cast<int64_t>(enc[static_cast<size_t>(order[static_cast<size_t>(s0 + b)])].size()));
    std::vector<int32_t> ids(static_cast<size_t>(B * L), tokenizer_.pad_id());
    std::vector<uint8_t> pad(static_cast<size_t>(B * L), 1);
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<int32_t>& e = enc[static_cast<size_t>(order[static_cast<size_t>(s0 + b)])];
      for (size_t i = 0; i < e.size(); ++i) {
        ids[static_cast<size_t>(b * L) + i] = e[i];
        pad[static_cast<size_t>(b * L) + i] = 0;
      }
    }
    const std::vector<float> x = forward(ids, pad, B, L, num_threads, nullptr);
    // each pooling mode over the real tokens, side by side, then L2 normalisation of the whole row
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = order[static_cast<size_t>(s0 + b)];
      const int64_t n = static_cast<int64_t>(enc[static_cast<size_t>(row)].size());  // >= 2: [CLS] ... [SEP]
      const float* xb = x.data() + b * L * Hd;                                       // [n, Hd] real tokens
      float* e = out.f32() + row * E;
      for (size_t k = 0; k < pooling_.size(); ++k)
        pool_tokens(pooling_[k], xb, n, Hd, e + static_cast<int64_t>(k) * Hd);
      double norm = 0.0;
      for (int64_t d = 0; d < E; ++d) norm += static_cast<double>(e[d]) * e[d];
      if (normalize_ && norm > 0.0)
        for (int64_t d = 0; d < E; ++d) e[d] = static_cast<float>(e[d] / std::sqrt(norm));
    }
  }
  return out;
}

std::map<std::string, Tensor> SentenceEncoder::attention_maps(const std::string& sentence) const {
  const std::vector<int32_t> ids = token_ids(sentence);
  std::map<std::string, Tensor> maps;
  forward(ids, std::vector<uint8_t>(ids.size(), 0), 1, static_cast<int64_t>(ids.size()), 0, &maps);
  return maps;
}

}  // namespace attn
