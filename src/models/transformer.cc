// The encoder–decoder Transformer: parameters, teacher-forced forward, backward, save/load.
// Incremental decoding with a KV cache lives in transformer_decoder.cc.
#include "attn/models/transformer.h"

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/safetensors.h"
#include "io/json_fields.h"
#include "models/transformer_internal.h"

namespace attn {

using layers::Buf;
using layers::grow;
using layers::grow_zeroed;

// ---------------------------------------------------------------- config
std::string TransformerConfig::to_json() const {
  nlohmann::json j = {{"src_vocab", src_vocab},
                      {"tgt_vocab", tgt_vocab},
                      {"d_model", d_model},
                      {"num_heads", num_heads},
                      {"d_ff", d_ff},
                      {"num_encoder_layers", num_encoder_layers},
                      {"num_decoder_layers", num_decoder_layers},
                      {"max_len", max_len},
                      {"norm_first", norm_first},
                      {"activation", activation_name(activation)},
                      {"tie_embeddings", tie_embeddings},
                      {"learned_positions", learned_positions},
                      {"dropout", dropout},
                      {"attention_dropout", attention_dropout},
                      {"pad_id", pad_id},
                      {"bos_id", bos_id},
                      {"eos_id", eos_id}};
  return j.dump(2);
}

TransformerConfig TransformerConfig::from_json(const std::string& text) {
  TransformerConfig c;
  try {
    const nlohmann::json j = io::parse_json(text, "");
    if (!j.is_object()) throw FormatError("expected a JSON object");
    const nlohmann::json known = nlohmann::json::parse(TransformerConfig{}.to_json());
    for (const auto& [key, value] : j.items())  // a misspelt key would otherwise be silently a default
      if (!known.contains(key)) throw FormatError("unknown key \"" + io::text_excerpt(key) + "\"");
    for (const auto& [key, field] : {std::pair<const char*, int64_t*>{"src_vocab", &c.src_vocab},
                                     {"tgt_vocab", &c.tgt_vocab},
                                     {"d_model", &c.d_model},
                                     {"num_heads", &c.num_heads},
                                     {"d_ff", &c.d_ff},
                                     {"num_encoder_layers", &c.num_encoder_layers},
                                     {"num_decoder_layers", &c.num_decoder_layers},
                                     {"max_len", &c.max_len}})
      io::read_integer(j, key, *field);
    c.norm_first = j.at("norm_first");
    c.activation = parse_activation(j.at("activation").get<std::string>());
    c.tie_embeddings = j.at("tie_embeddings"), c.learned_positions = j.at("learned_positions");
    c.dropout = j.at("dropout"), c.attention_dropout = j.at("attention_dropout");
    io::read_integer(j, "pad_id", c.pad_id), io::read_integer(j, "bos_id", c.bos_id);
    io::read_integer(j, "eos_id", c.eos_id);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(std::string("model config: ") + e.what());
  } catch (const FormatError& e) {  // not an object, an unknown key, a size not whole or too large
    throw FormatError(std::string("model config: ") + e.what());
  } catch (const ArgumentError& e) {  // an unknown activation: never silently another one
    throw FormatError(std::string("model config: \"activation\": ") + e.what());
  }
  return c;
}

namespace {

constexpr int64_t kMaxLayers = 4096;  // per stack: far deeper than any trained model, and never a runaway loop
constexpr int64_t kMaxPositions = int64_t{1} << 20;      // max_len: a million positions
constexpr int64_t kMaxPositionTable = int64_t{1} << 28;  // floats of a sinusoidal table (1 GiB)

void check_config(const TransformerConfig& c) {
  auto bad = [](const std::string& m) { throw ArgumentError("TransformerConfig: " + m); };
  if (c.src_vocab <= 0 || c.tgt_vocab <= 0) bad("src_vocab and tgt_vocab must be positive");
  if (c.d_model <= 0 || c.num_heads <= 0 || c.d_model % c.num_heads != 0)
    bad("d_model = " + std::to_string(c.d_model) +
        " must be a positive multiple of num_heads = " + std::to_string(c.num_heads));
  if (c.d_ff <= 0 || c.max_len <= 0 || c.num_encoder_layers < 0 || c.num_decoder_layers < 0)
    bad("sizes must be positive");
  if (c.activation != Activation::kRelu && c.activation != Activation::kGelu)  // (it had run GELU and saved "relu")
    bad("activation " + std::to_string(static_cast<int>(c.activation)) + " is neither relu nor gelu");
  if (c.num_encoder_layers > kMaxLayers || c.num_decoder_layers > kMaxLayers)
    bad("num_encoder_layers = " + std::to_string(c.num_encoder_layers) + " and num_decoder_layers = " +
        std::to_string(c.num_decoder_layers) + " must be at most " + std::to_string(kMaxLayers));
  for (const Shape& table : {Shape{c.max_len, c.d_model}, Shape{c.src_vocab, c.d_model}, Shape{c.tgt_vocab, c.d_model},
                             Shape{c.d_ff, c.d_model}}) {  // the tables the model allocates: never a wrapped size
    if (table[0] > (int64_t{1} << 40) / table[1])
      bad("a [" + std::to_string(table[0]) + ", " + std::to_string(table[1]) +
          "] table (max_len, a vocabulary or d_ff by d_model) would take more than 2^40 elements");
  }
  if (c.d_model > (int64_t{1} << 40) / (3 * c.d_model))  // in_proj [3E, E] too (the tables bound d_model by 2^40)
    bad("d_model = " + std::to_string(c.d_model) +
        ": the attention's in_proj [3 d_model, d_model] would take more than 2^40 elements");
  // the sinusoidal position table is computed, not read: no file's size bounds it (config.json's "max_len":
  // 8589934592 had asked for 4 TiB); learned positions are a [max_len, d_model] tensor the file must hold
  if (c.max_len > kMaxPositions || (!c.learned_positions && c.max_len * c.d_model > kMaxPositionTable))
    bad("max_len = " + std::to_string(c.max_len) + " must be at most " + std::to_string(kMaxPositions) +
        (c.learned_positions
             ? std::string()
             : ", and max_len · d_model (the sinusoidal table) at most 2^28 = " + std::to_string(kMaxPositionTable)));
  if (c.bos_id < 0 || c.bos_id >= c.tgt_vocab || c.eos_id < 0 || c.eos_id >= c.tgt_vocab)
    bad("bos_id = " + std::to_string(c.bos_id) + " and eos_id = " + std::to_string(c.eos_id) +
        " must be target tokens, in [0, tgt_vocab = " + std::to_string(c.tgt_vocab) + ")");
  // pad_id marks padding in both sequences (the key padding masks); it had gone unchecked: generate() wrote past its
  // candidate table for one outside the target vocabulary, and one equal to bos_id hid every target's first key
  // from the teacher-forced decoder (not from the cached one)
  if (c.pad_id < 0 || c.pad_id >= c.src_vocab || c.pad_id >= c.tgt_vocab || c.pad_id == c.bos_id)
    bad("pad_id = " + std::to_string(c.pad_id) + " must be a source and a target token, in [0, " +
        std::to_string(std::min(c.src_vocab, c.tgt_vocab)) + "), other than bos_id = " + std::to_string(c.bos_id));
  // eos_id equal to pad_id or bos_id could never be chosen (search suppresses both): every output ran to max_length
  if (c.eos_id == c.pad_id || c.eos_id == c.bos_id)
    bad("eos_id = " + std::to_string(c.eos_id) + " must differ from pad_id = " + std::to_string(c.pad_id) +
        " and bos_id = " + std::to_string(c.bos_id));
  if (!(c.dropout >= 0 && c.dropout < 1 && c.attention_dropout >= 0 && c.attention_dropout < 1))  // NaN too
    bad("dropout must be in [0, 1)");
}

// Transformer::gradient_ready_groups(): the parameter names by the prefixes the backward finishes one after another.
std::vector<std::vector<std::string>> ready_groups(const TransformerConfig& c,
                                                   const std::map<std::string, Tensor>& params) {
  std::vector<std::vector<std::string>> groups;
  auto group = [&](std::initializer_list<std::string> prefixes) {
    std::vector<std::string>& names = groups.emplace_back();
    for (const std::string& prefix : prefixes)
      for (const auto& [name, t] : params)
        if (name.rfind(prefix, 0) == 0) names.push_back(name);
  };
  group({"generator."});
  group({"decoder.norm."});
  for (int64_t l = c.num_decoder_layers - 1; l >= 0; --l) group({"decoder.layers." + std::to_string(l) + "."});
  group({"tgt_embed."});
  group({"encoder.norm."});
  for (int64_t l = c.num_encoder_layers - 1; l >= 0; --l) group({"encoder.layers." + std::to_string(l) + "."});
  group({"src_embed.", "pos_embed."});
  size_t named = 0;
  for (const auto& names : groups) named += names.size();
  if (named != params.size())  // a parameter added without a place in the backward's order
    throw Error("Transformer: the gradient-ready groups name " + std::to_string(named) + " of " +
                std::to_string(params.size()) + " parameters");
  return groups;
}

// One parameter of a config's model: its name, shape and initialisation ('x' Xavier-uniform, 'e' normal with std
// 1/√E, '1' ones, '0' zeros).
struct ParameterSpec {
  std::string name;
  Shape shape;
  char init;
};

// Every parameter of a model of config c, in the order the constructor draws their initial values.
std::vector<ParameterSpec> parameter_specs(const TransformerConfig& c) {
  const int64_t E = c.d_model, F = c.d_ff;
  std::vector<ParameterSpec> specs;
  auto add = [&](const std::string& name, Shape shape, char init) { specs.push_back({name, std::move(shape), init}); };
  auto attention = [&](const std::string& p) {
    add(p + "in_proj_weight", {3 * E, E}, 'x');
    add(p + "in_proj_bias", {3 * E}, '0');
    add(p + "out_proj.weight", {E, E}, 'x');
    add(p + "out_proj.bias", {E}, '0');
  };
  auto feed_forward_and_norms = [&](const std::string& p, int norms) {
    add(p + "linear1.weight", {F, E}, 'x');
    add(p + "linear1.bias", {F}, '0');
    add(p + "linear2.weight", {E, F}, 'x');
    add(p + "linear2.bias", {E}, '0');
    for (int n = 1; n <= norms; ++n) {
      add(p + "norm" + std::to_string(n) + ".weight", {E}, '1');
      add(p + "norm" + std::to_string(n) + ".bias", {E}, '0');
    }
  };
  add("src_embed.weight", {c.src_vocab, E}, 'e');
  add("tgt_embed.weight", {c.tgt_vocab, E}, 'e');
  if (c.learned_positions) add("pos_embed.weight", {c.max_len, E}, 'e');
  for (int64_t l = 0; l < c.num_encoder_layers; ++l) {
    const std::string p = "encoder.layers." + std::to_string(l) + ".";
    attention(p + "self_attn.");
    feed_forward_and_norms(p, 2);
  }
  add("encoder.norm.weight", {E}, '1');
  add("encoder.norm.bias", {E}, '0');
  for (int64_t l = 0; l < c.num_decoder_layers; ++l) {
    const std::string p = "decoder.layers." + std::to_string(l) + ".";
    attention(p + "self_attn.");
    attention(p + "multihead_attn.");
    feed_forward_and_norms(p, 3);
  }
  add("decoder.norm.weight", {E}, '1');
  add("decoder.norm.bias", {E}, '0');
  if (!c.tie_embeddings) add("generator.weight", {c.tgt_vocab, E}, 'x');
  add("generator.bias", {c.tgt_vocab}, '0');
  return specs;
}

void xavier(Tensor& t, std::mt19937_64& rng) {
  const float bound = std::sqrt(6.0f / static_cast<float>(t.dim(0) + t.dim(1)));
  std::uniform_real_distribution<float> u(-bound, bound);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = u(rng);
}

// params and grads hold every parameter of config c, float32 of its shape: checked before the named fields are bound
// again to tensors someone replaced (one of another shape had been bound as it was, and the forward read past it).
void check_replaced_tensors(const TransformerConfig& c, const std::map<std::string, Tensor>& params,
                            const std::map<std::string, Tensor>& grads) {
  const std::vector<ParameterSpec> specs = parameter_specs(c);
  for (const auto& [what, tensors] : {std::pair{"parameter", &params}, std::pair{"gradient", &grads}})
    for (const auto& entry : *tensors)  // one added (the optimizer had met it as a std::out_of_range)
      if (std::none_of(specs.begin(), specs.end(), [&](const ParameterSpec& s) { return s.name == entry.first; }))
        throw ArgumentError(std::string("Transformer: a ") + what + " '" + entry.first +
                            "' was added; this model has no such parameter");
  for (const ParameterSpec& spec : specs)
    for (const auto& [what, tensors] : {std::pair{"parameter", &params}, std::pair{"gradient", &grads}}) {
      const auto it = tensors->find(spec.name);
      if (it == tensors->end())
        throw MissingTensorError(std::string("Transformer: the ") + what + " '" + spec.name + "' is missing");
      if (it->second.dtype() != DType::kFloat32 || it->second.shape() != spec.shape)
        throw ShapeError(std::string("Transformer: the ") + what + " '" + spec.name + "' was replaced by " +
                         dtype_name(it->second.dtype()) + " " + shape_str(it->second.shape()) + ", expected float32 " +
                         shape_str(spec.shape));
    }
}

}  // namespace

// ---------------------------------------------------------------- parameters
Transformer::Transformer(const TransformerConfig& config, uint64_t seed) : Transformer(config, seed, true) {}

Transformer::Transformer(const TransformerConfig& config, uint64_t seed, bool initialise) : config_(config) {
  check_config(config_);
  const int64_t E = config_.d_model;
  std::mt19937_64 rng(seed);
  for (const ParameterSpec& spec : parameter_specs(config_)) {
    Tensor t(spec.shape);
    const char init = initialise ? spec.init : '0';  // load() overwrites every parameter: zeros (fresh pages) do
    if (init == 'x') xavier(t, rng);
    if (init == '1') std::fill(t.f32(), t.f32() + t.numel(), 1.0f);
    if (init == 'e') {
      std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(static_cast<float>(E)));
      for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = n(rng);
    }
    params_[spec.name] = t;
  }
  for (const auto& [name, t] : params_) grads_[name] = Tensor(t.shape());
  ready_groups_ = ready_groups(config_, params_);
  weights_ = std::make_shared<const models::TransformerWeights>(models::bind(config_, params_, grads_));
  activations_ = std::make_unique<TransformerActivations>();
}

Transformer::~Transformer() = default;
Transformer::Transformer(Transformer&&) noexcept = default;
Transformer& Transformer::operator=(Transformer&&) noexcept = default;

int64_t Transformer::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_) n += t.numel();
  return n;
}

void Transformer::zero_grad() {
  // streaming stores: the backward reads the gradients back from memory later, in reverse order (ops::zero_streaming)
  for (auto& [name, g] : grads_) ops::zero_streaming(g.f32(), g.numel());
}

// ---------------------------------------------------------------- forward / backward
void models::encode_impl(const TransformerWeights& net, TransformerActivations& k, const TokenBatch& src,
                         bool keep_weights, std::mt19937_64* r) {
  const TransformerConfig& c = net.c;
  const int64_t B = src.B, Ls = src.L, E = c.d_model;
  k.B = B, k.Ls = Ls, k.src = src;
  models::padding_mask(k.src_pad, src, c.pad_id);
  // x = dropout(E_src[src]·√E + PE) ; encoder layers ; mem = LN_enc(x)
  float* x = models::embed_forward(k.src_emb, k.src_keep, net, net.src_embed, src, r);
  k.enc.resize(static_cast<size_t>(c.num_encoder_layers));
  for (auto& layer : k.enc) layer.self_attn.record_weights = !k.training;  // attention_maps() after inference
  const bool inference = !keep_weights && r == nullptr;                    // nothing kept: the layers run in place on x
  for (int64_t l = 0; l < c.num_encoder_layers; ++l)
    if (inference)
      models::encoder_layer_inference(x, k.enc[l], net.enc[l], net, B, Ls, k.src_pad.data());
    else
      x = models::encoder_layer_forward(k.enc[l], net.enc[l], net, x, B, Ls, k.src_pad.data(), keep_weights, r);
  k.enc_out_pre = x;
  float* mem = grow(k.mem, B * Ls * E);
  ops::layer_norm_forward(mem, grow(k.mem_mean, B * Ls), grow(k.mem_rstd, B * Ls), x, net.enc_norm.w, net.enc_norm.b,
                          B * Ls, E);
}

Tensor models::forward_impl(const TransformerWeights& net, TransformerActivations& k, const TokenBatch& src,
                            const TokenBatch& tgt_in, bool training, std::mt19937_64* rng, bool keep_weights) {
  const TransformerConfig& c = net.c;
  models::check_tokens(c, src, c.src_vocab, "src");
  models::check_tokens(c, tgt_in, c.tgt_vocab, "tgt_in");
  if (src.B != tgt_in.B)
    throw ShapeError("Transformer::forward: src has " + std::to_string(src.B) + " sentences but tgt_in has " +
                     std::to_string(tgt_in.B));
  if (training && rng == nullptr && (c.dropout > 0.0f || c.attention_dropout > 0.0f))
    throw ArgumentError("Transformer::forward: training with dropout needs an rng");
  k.training = training;
  std::mt19937_64* r = training ? rng : nullptr;
  encode_impl(net, k, src, keep_weights, r);
  const int64_t B = src.B, Ls = src.L, Lt = tgt_in.L, E = c.d_model;
  k.Lt = Lt, k.tgt = tgt_in;
  models::padding_mask(k.tgt_pad, tgt_in, c.pad_id);

  // decoder
  float* y = models::embed_forward(k.tgt_emb, k.tgt_keep, net, net.tgt_embed, tgt_in, r);
  k.dec.resize(static_cast<size_t>(c.num_decoder_layers));
  for (auto& layer : k.dec) layer.self_attn.record_weights = layer.cross_attn.record_weights = !training;
  for (int64_t l = 0; l < c.num_decoder_layers; ++l)
    y = models::decoder_layer_forward(k.dec[l], net.dec[l], net, y, k.mem.data(), B, Lt, Ls, k.tgt_pad.data(),
                                      k.src_pad.data(), keep_weights, r);
  k.dec_out_pre = y;
  float* yn = grow(k.dec_out, B * Lt * E);
  ops::layer_norm_forward(yn, grow(k.dec_mean, B * Lt), grow(k.dec_rstd, B * Lt), y, net.dec_norm.w, net.dec_norm.b,
                          B * Lt, E);

  // logits = LN(y)·W_genᵀ + b_gen, into the last forward's storage when no one holds it any more and it is not more
  // than twice the size needed (one large evaluation batch does not pin its logits for the model's lifetime)
  const int64_t n = B * Lt * c.tgt_vocab;
  const bool reuse = k.logits && k.logits.use_count() == 1 && k.logits->numel() >= n && k.logits->numel() <= 2 * n;
  // (the last holder may have let go on another thread: its reads of the logits come before these writes)
  std::atomic_thread_fence(std::memory_order_acquire);
  if (!reuse) k.logits = std::make_shared<Tensor>(Shape{n});
  ops::linear_forward(k.logits->f32(), yn, net.gen_w, net.gen_q, net.gen_b, B * Lt, c.tgt_vocab, E);
  return Tensor::borrow({B, Lt, c.tgt_vocab}, DType::kFloat32, k.logits->f32(), k.logits);
}

Tensor Transformer::forward(const TokenBatch& src, const TokenBatch& tgt_in, bool training, std::mt19937_64* rng) {
  if (training && quantization_ != Quantization::kNone)
    throw ArgumentError("Transformer::forward: a quantised model does not train (quantize(Quantization::kNone) first)");
  return models::forward_impl(weights(), *activations_, src, tgt_in, training, rng);
}

const models::TransformerWeights& Transformer::weights() {
  if (!weights_->bound_to(params_, grads_)) {
    check_replaced_tensors(config_, params_, grads_);
    weights_ =
        std::make_shared<const models::TransformerWeights>(models::bind(config_, params_, grads_, quantization_));
  }
  return *weights_;
}

void Transformer::quantize(Quantization quantization) {
  check_replaced_tensors(config_, params_, grads_);
  quantization_ = quantization;
  weights_ = std::make_shared<const models::TransformerWeights>(models::bind(config_, params_, grads_, quantization_));
}

const char* quantization_name(Quantization q) {
  switch (q) {
    case Quantization::kInt8: return "int8";
    case Quantization::kBFloat16: return "bf16";
    case Quantization::kFloat32: return "float32";
    case Quantization::kNone: break;
  }
  return "none";
}

Quantization parse_quantization(const std::string& name) {
  if (name == "none") return Quantization::kNone;
  if (name == "int8") return Quantization::kInt8;
  if (name == "bf16") return Quantization::kBFloat16;
  if (name == "float32") return Quantization::kFloat32;
  throw ArgumentError("quantization must be \"none\", \"int8\", \"bf16\" or \"float32\", got \"" + name + "\"");
}

const models::TransformerWeights& Transformer::weights() const {
  if (!weights_->bound_to(params_, grads_))
    throw ArgumentError(
        "Transformer: a parameter or gradient tensor was replaced instead of updated in place; call forward() or "
        "load the model again");
  return *weights_;
}

Tensor Transformer::logits(const TokenBatch& src, const TokenBatch& tgt_in) const {
  TransformerActivations k;
  return models::forward_impl(weights(), k, src, tgt_in, false, nullptr, /*keep_weights=*/false);
}

TransformerActivations& models::inference_activations() {
  thread_local TransformerActivations k;
  return k;
}

Tensor Transformer::encode(const TokenBatch& src) const {
  models::check_tokens(config_, src, config_.src_vocab, "src");
  TransformerActivations& k = models::inference_activations();
  models::encode_impl(weights(), k, src, /*keep_weights=*/false, nullptr);
  Tensor mem({src.B, src.L, config_.d_model});
  std::copy_n(k.mem.data(), mem.numel(), mem.f32());
  return mem;
}

void Transformer::backward(const Tensor& dlogits, const BackwardOptions& options) {
  const TransformerConfig& c = config_;
  TransformerActivations& k = *activations_;
  if (!k.training) throw ArgumentError("Transformer::backward: call forward(..., training = true) first");
  const int64_t B = k.B, Ls = k.Ls, Lt = k.Lt, E = c.d_model;
  if (dlogits.shape() != Shape{B, Lt, c.tgt_vocab})
    throw ShapeError("Transformer::backward: dlogits has shape " + shape_str(dlogits.shape()) +
                     " but the forward gave " + shape_str({B, Lt, c.tgt_vocab}));
  if (dlogits.dtype() != DType::kFloat32)
    throw DTypeError("Transformer::backward: dlogits must be float32, got " + std::string(dtype_name(dlogits.dtype())));
  const models::TransformerWeights& net = weights();
  TransformerBackwardBuffers& s = k.back;  // allocated once per batch shape, reused from step to step
  // the next group of gradient_ready_groups() is final: tell the caller
  size_t next_group = 0;
  auto finished_group = [&] {
    if (options.on_gradients_ready) options.on_gradients_ready(ready_groups_[next_group]);
    ++next_group;
  };
  // logits = yn·W_genᵀ + b_gen
  float* dyn = grow(s.d_dec_out, B * Lt * E);
  ops::linear_backward(dyn, net.gen_dw, net.gen_db, dlogits.f32(), k.dec_out.data(), net.gen_w, B * Lt, c.tgt_vocab, E,
                       ops::GradWrite::kOverwrite);
  finished_group();  // generator.* (generator.weight is tgt_embed's gradient when tied: not yet final, not in it)
  // yn = LN_dec(y)
  float* dy = grow(s.d_dec, B * Lt * E);
  ops::layer_norm_backward(dy, net.dec_norm.dw, net.dec_norm.db, dyn, k.dec_out_pre, net.dec_norm.w, k.dec_mean.data(),
                           k.dec_rstd.data(), B * Lt, E, ops::GradWrite::kOverwrite);
  finished_group();  // decoder.norm.*
  float* dmem = grow_zeroed(s.d_mem, B * Ls * E);
  for (int64_t l = c.num_decoder_layers - 1; l >= 0; --l) {
    models::decoder_layer_backward(dy, dmem, k.dec[l], net.dec[l], net, B, Lt, Ls, s);
    finished_group();  // decoder.layers.l.*
  }
  models::embed_backward(net, net.tgt_embed_d, k.tgt, k.tgt_keep, dy);
  finished_group();  // tgt_embed.weight (with the tied generator's contribution); pos_embed waits for the source
  // mem = LN_enc(x)
  float* dx = grow(s.d_enc, B * Ls * E);
  ops::layer_norm_backward(dx, net.enc_norm.dw, net.enc_norm.db, dmem, k.enc_out_pre, net.enc_norm.w, k.mem_mean.data(),
                           k.mem_rstd.data(), B * Ls, E, ops::GradWrite::kOverwrite);
  finished_group();  // encoder.norm.*
  for (int64_t l = c.num_encoder_layers - 1; l >= 0; --l) {
    models::encoder_layer_backward(dx, k.enc[l], net.enc[l], net, B, Ls, s);
    finished_group();  // encoder.layers.l.*
  }
  models::embed_backward(net, net.src_embed_d, k.src, k.src_keep, dx);
  finished_group();  // src_embed.weight, pos_embed.weight
}

std::map<std::string, Tensor> Transformer::attention_maps() const {
  const TransformerActivations& k = *activations_;
  const int64_t H = config_.num_heads;
  std::map<std::string, Tensor> out;
  if (k.training || k.enc.empty())
    throw ArgumentError("Transformer::attention_maps: needs an inference forward() first (training keeps no weights)");
  auto copy = [&](const std::string& name, const layers::Buf& w, int64_t Lq, int64_t Lk) {
    Tensor t({k.B, H, Lq, Lk});
    std::copy_n(w.data(), t.numel(), t.f32());
    out[name] = t;
  };
  for (size_t l = 0; l < k.enc.size(); ++l)
    copy("encoder.layers." + std::to_string(l) + ".self_attn", k.enc[l].self_attn.weights, k.Ls, k.Ls);
  for (size_t l = 0; l < k.dec.size(); ++l) {
    copy("decoder.layers." + std::to_string(l) + ".self_attn", k.dec[l].self_attn.weights, k.Lt, k.Lt);
    copy("decoder.layers." + std::to_string(l) + ".multihead_attn", k.dec[l].cross_attn.weights, k.Lt, k.Ls);
  }
  return out;
}

// ---------------------------------------------------------------- save / load
void Transformer::save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw FileError(dir + ": cannot create the model directory (" + ec.message() + ")", ec.value());
  io::FileSet files;
  stage(files, dir);
  files.commit();
}

void Transformer::stage(io::FileSet& files, const std::string& dir,
                        const std::map<std::string, std::string>& metadata) const {
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "attn-transformer-1";
  files.add("model.safetensors", dir + "/model.safetensors", io::encode_safetensors(params_, meta));
  const std::string config = config_.to_json() + "\n";
  files.add("config.json", dir + "/config.json", std::vector<uint8_t>(config.begin(), config.end()));
}

Transformer Transformer::load(const std::string& dir) {
  std::string text;
  try {
    text = io::read_text(dir + "/config.json");
  } catch (const FileError& e) {
    throw FileError(dir + "/config.json: cannot open (is " + dir + " a model directory?)", e.error_number());
  }
  const TransformerConfig config = TransformerConfig::from_json(text);
  check_config(config);
  io::Safetensors st = io::read_safetensors(dir + "/model.safetensors");
  io::widen_to_float32(st.tensors);
  // The file and the config agree, tensor for tensor, before the model allocates anything: a config that names more
  // layers than the file holds fails here, not after allocating them (as load_state_dict's strict mode, a tensor the
  // config has no place for is an error too: a config.json of another model had run with half its weights).
  std::set<std::string> needed;
  for (const ParameterSpec& spec : parameter_specs(config)) {
    const auto found = st.tensors.find(spec.name);
    if (found == st.tensors.end())
      throw MissingTensorError(dir + "/model.safetensors: has no '" + spec.name +
                               "', which a model of its config.json needs");
    const Tensor& src = found->second;
    if (src.dtype() != DType::kFloat32 || src.shape() != spec.shape)
      throw ShapeError(dir + "/model.safetensors: '" + spec.name + "' has shape " + shape_str(src.shape()) +
                       " but the config needs " + shape_str(spec.shape));
    needed.insert(spec.name);
  }
  for (const auto& [name, t] : st.tensors)
    if (!needed.count(name))
      throw FormatError(dir + "/model.safetensors: has '" + name + "' " + shape_str(t.shape()) +
                        ", which a model of its config.json does not (does config.json belong to this file?)");
  Transformer m(config, 0, /*initialise=*/false);
  for (auto& [name, t] : m.params_) t = std::move(st.tensors.at(name));  // the file's tensors, no copy
  m.weights_ = std::make_shared<const models::TransformerWeights>(models::bind(m.config_, m.params_, m.grads_));
  return m;
}

}  // namespace attn
