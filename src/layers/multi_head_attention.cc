// MultiHeadAttention: projections through BLAS, heads read in place by the attention kernel.
//
// Layout: the projections write Q as [B·Lq, H·Dh], i.e. [B, Lq, H, Dh]; head h of batch b is the
// strided view q[b, :, h, :], which the kernel reads through AttentionProblem's strides. The kernel
// writes its output the same way, [B, Lq, H, Dh] = [B·Lq, E], which is the input of out_proj: no
// transposing copy anywhere.
#include "attn/layers/multi_head_attention.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "attn/error.h"
#include "attn/io/safetensors.h"
#include "cpu/threads.h"
#include "layers/mha_layer.h"

namespace attn {
namespace {

const char* kWho = "MultiHeadAttention";

void check_config(MultiHeadAttentionConfig& c) {
  if (c.num_kv_heads == 0) c.num_kv_heads = c.num_heads;
  if (c.kdim == 0) c.kdim = c.embed_dim;
  if (c.vdim == 0) c.vdim = c.embed_dim;
  if (c.embed_dim <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.kdim <= 0 || c.vdim <= 0)
    throw ArgumentError(std::string(kWho) +
                        ": embed_dim, num_heads, num_kv_heads, kdim and vdim must be positive (E = " +
                        std::to_string(c.embed_dim) + ", H = " + std::to_string(c.num_heads) + ")");
  if (c.embed_dim % c.num_heads != 0)
    throw ArgumentError(std::string(kWho) + ": embed_dim E = " + std::to_string(c.embed_dim) +
                        " is not divisible by num_heads H = " + std::to_string(c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0)
    throw ArgumentError(std::string(kWho) + ": num_heads H = " + std::to_string(c.num_heads) +
                        " is not a multiple of num_kv_heads Hkv = " + std::to_string(c.num_kv_heads));
  // every weight matrix within 2^40 elements, as the Transformer's tables (embed_dim 2^20 had asked for 4 TiB, and
  // past 2^61 E + 2·kv had overflowed)
  constexpr int64_t kMaxElements = int64_t{1} << 40;
  const int64_t widest = std::max({c.embed_dim, c.kdim, c.vdim});
  if (c.embed_dim > kMaxElements || widest > kMaxElements / (3 * c.embed_dim))
    throw ArgumentError(std::string(kWho) + ": embed_dim E = " + std::to_string(c.embed_dim) +
                        ", kdim = " + std::to_string(c.kdim) + ", vdim = " + std::to_string(c.vdim) +
                        ": a projection of 3E rows by max(E, kdim, vdim) would pass 2^40 elements");
}

Tensor xavier_uniform(Shape shape, int64_t fan_in, int64_t fan_out, std::mt19937_64& rng) {
  const float bound = std::sqrt(6.0f / static_cast<float>(fan_in + fan_out));
  std::uniform_real_distribution<float> dist(-bound, bound);
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

const Tensor& take(const std::map<std::string, Tensor>& tensors, const std::string& name, const Shape& shape) {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    std::string have;
    for (const auto& [n, t] : tensors) have += (have.empty() ? "" : ", ") + n;
    throw MissingTensorError(std::string(kWho) + ": the weights lack '" + name +
                             "' (they have: " + (have.empty() ? "nothing" : have) + ")");
  }
  if (it->second.dtype() != DType::kFloat32)
    throw DTypeError(std::string(kWho) + ": '" + name + "' is " + dtype_name(it->second.dtype()) + " with shape " +
                     shape_str(it->second.shape()) + " but the config needs float32 " + shape_str(shape));
  if (it->second.shape() != shape)
    throw ShapeError(std::string(kWho) + ": '" + name + "' has shape " + shape_str(it->second.shape()) + " (" +
                     dtype_name(it->second.dtype()) + ") but the config needs float32 " + shape_str(shape));
  return it->second;
}

// Rows [r0, r0 + n) of a [R, C] tensor, copied.
Tensor rows(const Tensor& t, int64_t r0, int64_t n) {
  const int64_t C = t.dim(1);
  Tensor out({n, C});
  std::copy(t.f32() + r0 * C, t.f32() + (r0 + n) * C, out.f32());
  return out;
}

Tensor concat_rows(const std::vector<const Tensor*>& parts) {
  int64_t R = 0;
  for (const Tensor* p : parts) R += p->dim(0);
  Shape shape = parts[0]->shape();
  shape[0] = R;
  Tensor out(shape);
  float* dst = out.f32();
  for (const Tensor* p : parts) dst = std::copy(p->f32(), p->f32() + p->numel(), dst);
  return out;
}

void require_input(const Tensor& t, const char* arg, int64_t B, int64_t width, const char* width_name) {
  if (!t.defined()) throw ArgumentError(std::string(kWho) + ": " + arg + " is missing");
  if (t.dtype() != DType::kFloat32)
    throw DTypeError(std::string(kWho) + ": " + arg + " must be float32, got " + dtype_name(t.dtype()) +
                     " with shape " + shape_str(t.shape()));
  if (t.rank() != 3 || (B >= 0 && t.dim(0) != B) || t.dim(2) != width)
    throw ShapeError(std::string(kWho) + ": " + arg + " has shape " + shape_str(t.shape()) + " but must be [B" +
                     (B >= 0 ? " = " + std::to_string(B) : std::string()) + ", L, " + width_name + " = " +
                     std::to_string(width) + "] (batch first)");
}

// The layer's view of the module's parameters.
layers::MhaWeights weights_of(const MultiHeadAttention& m) {
  const MultiHeadAttentionConfig& c = m.config();
  // the public fields as the config implies them: one replaced by another shape had been read past its end, an
  // undefined bias dropped in silence
  const int64_t E = c.embed_dim, kv = c.num_kv_heads * m.head_dim();
  const auto check = [&](const char* name, const Tensor& t, const Shape& shape) {
    if (!t.defined() || t.dtype() != DType::kFloat32 || t.shape() != shape)
      throw ShapeError(
          std::string(kWho) + ": the field " + name + " is " +
          (t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape()) : std::string("undefined")) +
          ", expected float32 " + shape_str(shape));
  };
  check("w_q", m.w_q, {E, E}), check("w_k", m.w_k, {kv, c.kdim}), check("w_v", m.w_v, {kv, c.vdim});
  check("w_o", m.w_o, {E, E});
  if (c.bias) check("b_q", m.b_q, {E}), check("b_k", m.b_k, {kv}), check("b_v", m.b_v, {kv}), check("b_o", m.b_o, {E});
  layers::MhaWeights w;
  w.w_q = m.w_q.f32(), w.w_k = m.w_k.f32(), w.w_v = m.w_v.f32(), w.w_o = m.w_o.f32();
  if (c.bias) w.b_q = m.b_q.f32(), w.b_k = m.b_k.f32(), w.b_v = m.b_v.f32(), w.b_o = m.b_o.f32();
  w.E = c.embed_dim, w.H = c.num_heads, w.Hkv = c.num_kv_heads, w.kdim = c.kdim, w.vdim = c.vdim;
  return w;
}

}  // namespace

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttentionConfig& config, uint64_t seed) : config_(config) {
  check_config(config_);
  const int64_t E = config_.embed_dim, kv = config_.num_kv_heads * head_dim();
  std::mt19937_64 rng(seed);
  // nn.MultiheadAttention's bounds: one Xavier-uniform over the packed in_proj_weight [E + 2·kv, E] when kdim = vdim
  // = E, else one per projection; out_proj keeps nn.Linear's default, U(±1/√E) (Xavier had been 1.7× wider)
  const bool packed = config_.kdim == E && config_.vdim == E;
  w_q = xavier_uniform({E, E}, E, packed ? E + 2 * kv : E, rng);
  w_k = xavier_uniform({kv, config_.kdim}, config_.kdim, packed ? E + 2 * kv : kv, rng);
  w_v = xavier_uniform({kv, config_.vdim}, config_.vdim, packed ? E + 2 * kv : kv, rng);
  w_o = Tensor({E, E});
  std::uniform_real_distribution<float> linear_default(-1.0f / std::sqrt(static_cast<float>(E)),
                                                       1.0f / std::sqrt(static_cast<float>(E)));
  for (int64_t i = 0; i < w_o.numel(); ++i) w_o.f32()[i] = linear_default(rng);
  if (config_.bias) {
    b_q = Tensor({E});
    b_k = Tensor({kv});
    b_v = Tensor({kv});
    b_o = Tensor({E});
  }
}

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttentionConfig& config, Uninitialised) : config_(config) {
  check_config(config_);
}

// Every tensor is checked against the config before any parameter is allocated (a header-only file that declared a
// huge embed_dim had first allocated and filled four E×E random matrices), and none is initialised twice.
MultiHeadAttention MultiHeadAttention::from_state_dict(const std::map<std::string, Tensor>& tensors,
                                                       const MultiHeadAttentionConfig& config,
                                                       const std::string& prefix) {
  MultiHeadAttention m(config, Uninitialised{});
  const MultiHeadAttentionConfig& c = m.config_;
  const int64_t E = c.embed_dim, kv = c.num_kv_heads * m.head_dim();
  if (tensors.count(prefix + "in_proj_weight")) {
    if (c.kdim != E || c.vdim != E)
      throw ShapeError(std::string(kWho) + ": '" + prefix + "in_proj_weight' needs kdim = vdim = E, but kdim = " +
                       std::to_string(c.kdim) + ", vdim = " + std::to_string(c.vdim) + ", E = " + std::to_string(E));
    const Tensor& w = take(tensors, prefix + "in_proj_weight", {E + 2 * kv, E});
    m.w_q = rows(w, 0, E);
    m.w_k = rows(w, E, kv);
    m.w_v = rows(w, E + kv, kv);
  } else {
    m.w_q = take(tensors, prefix + "q_proj_weight", {E, E}).clone();
    m.w_k = take(tensors, prefix + "k_proj_weight", {kv, c.kdim}).clone();
    m.w_v = take(tensors, prefix + "v_proj_weight", {kv, c.vdim}).clone();
  }
  m.w_o = take(tensors, prefix + "out_proj.weight", {E, E}).clone();
  if (c.bias) {
    const Tensor& b = take(tensors, prefix + "in_proj_bias", {E + 2 * kv});
    m.b_q = Tensor::from_floats({E}, std::vector<float>(b.f32(), b.f32() + E));
    m.b_k = Tensor::from_floats({kv}, std::vector<float>(b.f32() + E, b.f32() + E + kv));
    m.b_v = Tensor::from_floats({kv}, std::vector<float>(b.f32() + E + kv, b.f32() + E + 2 * kv));
    m.b_o = take(tensors, prefix + "out_proj.bias", {E}).clone();
  } else {  // a state dict with biases loaded into a layer without: refused (they had been dropped, silently)
    for (const char* name : {"in_proj_bias", "out_proj.bias"})
      if (tensors.count(prefix + name))
        throw ArgumentError(std::string(kWho) + ": the state dict has '" + prefix + name +
                            "' but the config says bias = false (its outputs would differ from the state dict's "
                            "layer); set bias = true");
  }
  return m;
}

MultiHeadAttention MultiHeadAttention::load(const std::string& path, const MultiHeadAttentionConfig& config,
                                            const std::string& prefix) {
  io::Safetensors st = io::read_safetensors(path, prefix);  // this layer's tensors only
  io::widen_to_float32(st.tensors);
  return from_state_dict(st.tensors, config, prefix);
}

std::map<std::string, Tensor> MultiHeadAttention::state_dict(const std::string& prefix) const {
  std::map<std::string, Tensor> out;
  if (config_.kdim == config_.embed_dim && config_.vdim == config_.embed_dim) {
    out[prefix + "in_proj_weight"] = concat_rows({&w_q, &w_k, &w_v});
  } else {
    out[prefix + "q_proj_weight"] = w_q;
    out[prefix + "k_proj_weight"] = w_k;
    out[prefix + "v_proj_weight"] = w_v;
  }
  out[prefix + "out_proj.weight"] = w_o;
  if (config_.bias) {
    out[prefix + "in_proj_bias"] = concat_rows({&b_q, &b_k, &b_v});
    out[prefix + "out_proj.bias"] = b_o;
  }
  return out;
}

void MultiHeadAttention::save(const std::string& path) const { io::write_safetensors(path, state_dict()); }

MhaOutput MultiHeadAttention::self_attention(const Tensor& x, const MhaOptions& options) const {
  return attention(x, x, x, options);
}

MhaOutput MultiHeadAttention::masked_self_attention(const Tensor& x, MhaOptions options) const {
  options.causal = true;
  return attention(x, x, x, options);
}

MhaOutput MultiHeadAttention::cross_attention(const Tensor& x, const Tensor& memory, const MhaOptions& options) const {
  return attention(x, memory, memory, options);
}

MhaOutput MultiHeadAttention::attention(const Tensor& query, const Tensor& key, const Tensor& value,
                                        const MhaOptions& options) const {
  const MultiHeadAttentionConfig& c = config_;
  const int64_t E = c.embed_dim, H = c.num_heads;
  require_input(query, "query", -1, E, "E");
  const int64_t B = query.dim(0), Lq = query.dim(1);
  require_input(key, "key", B, c.kdim, "kdim");
  require_input(value, "value", B, c.vdim, "vdim");
  const int64_t Lk = key.dim(1);
  if (value.dim(1) != Lk)
    throw ShapeError(std::string(kWho) + ": key " + shape_str(key.shape()) + " and value " + shape_str(value.shape()) +
                     " have different lengths");

  // Masks in SDPA's terms: bool attn_mask flips polarity (true = masked out → false = may not attend);
  // a float key_padding_mask is folded into a float mask [B, 1 or H, Lq, Lk].
  for (const auto& [m, arg] :
       {std::pair{&options.attn_mask, "attn_mask"}, {&options.key_padding_mask, "key_padding_mask"}})
    if (m->defined() && m->dtype() != DType::kBool && m->dtype() != DType::kFloat32)
      throw DTypeError(std::string(kWho) + ": " + arg + " must be bool or float32, got " + dtype_name(m->dtype()) +
                       " with shape " + shape_str(m->shape()));
  Tensor mask;
  const Tensor& am = options.attn_mask;
  if (am.defined()) {
    if (am.rank() == 2 && (am.dim(0) != Lq || am.dim(1) != Lk))
      throw ShapeError(std::string(kWho) + ": attn_mask has shape " + shape_str(am.shape()) +
                       " but must be [Lq, Lk] = " + shape_str({Lq, Lk}) +
                       " or [B·H, Lq, Lk] = " + shape_str({B * H, Lq, Lk}));
    if (am.rank() == 3 && (am.dim(0) != B * H || am.dim(1) != Lq || am.dim(2) != Lk))
      throw ShapeError(std::string(kWho) + ": attn_mask has shape " + shape_str(am.shape()) +
                       " but must be [Lq, Lk] = " + shape_str({Lq, Lk}) +
                       " or [B·H, Lq, Lk] = " + shape_str({B * H, Lq, Lk}));
    if (am.rank() != 2 && am.rank() != 3)
      throw ShapeError(std::string(kWho) + ": attn_mask has shape " + shape_str(am.shape()) +
                       "; it must be [Lq, Lk] or [B·H, Lq, Lk]");
    mask = am.rank() == 3 ? am.reshape({B, H, Lq, Lk}) : am;
    if (am.dtype() == DType::kBool) {
      mask = mask.clone();
      for (int64_t i = 0; i < mask.numel(); ++i) mask.b8()[i] = !mask.b8()[i];
    }
  }
  const uint8_t* key_padding = nullptr;  // [B, Lk], 1 = padding
  const Tensor& kpm = options.key_padding_mask;
  if (kpm.defined()) {
    if (kpm.rank() != 2 || kpm.dim(0) != B || kpm.dim(1) != Lk)
      throw ShapeError(std::string(kWho) + ": key_padding_mask has shape " + shape_str(kpm.shape()) +
                       " but must be [B, Lk] = " + shape_str({B, Lk}));
    if (kpm.dtype() == DType::kBool) {
      key_padding = kpm.b8();
    } else if (!mask.defined()) {  // [B, 1, 1, Lk], broadcast over heads and queries: O(B·Lk), not O(B·Lq·Lk)
      mask = kpm.reshape({B, 1, 1, Lk});
    } else {
      const int64_t Hm = mask.rank() == 4 ? H : 1;
      Tensor merged({B, Hm, Lq, Lk});
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hm; ++h)
          for (int64_t i = 0; i < Lq; ++i)
            for (int64_t j = 0; j < Lk; ++j) {
              const int64_t at = mask.rank() == 4 ? ((b * H + h) * Lq + i) * Lk + j : i * Lk + j;
              const float base = mask.dtype() == DType::kBool ? (mask.b8()[at] ? 0.0f : -INFINITY) : mask.f32()[at];
              merged.f32()[((b * Hm + h) * Lq + i) * Lk + j] = base + kpm.f32()[b * Lk + j];
            }
      mask = merged;
    }
  }
  layers::MhaMasks masks;
  masks.mask = mask;
  masks.key_padding = key_padding;
  masks.causal = options.causal ? CausalAlignment::kTopLeft : CausalAlignment::kNone;
  masks.impl = options.impl;
  if (options.num_threads < 0)
    throw ArgumentError(std::string(kWho) + ": num_threads must be >= 0, got " + std::to_string(options.num_threads));
  masks.num_threads = options.num_threads;
  const detail::ThreadScope threads(options.num_threads);  // the projections' GEMMs (OpenBLAS's pool) too

  // out = MHA(query, key, value) : [B, Lq, E]; per-head weights [B, H, Lq, Lk] only when asked for
  MhaOutput out;
  Tensor per_head;
  if (options.need_weights) per_head = Tensor({B, H, Lq, Lk});
  out.output = Tensor({B, Lq, E});
  layers::mha_forward(out.output.f32(), weights_of(*this), query.f32(), key.f32(), value.f32(), B, Lq, Lk, masks,
                      nullptr, options.need_weights ? per_head.f32() : nullptr);
  if (options.need_weights) {
    if (!options.average_attn_weights) {
      out.weights = per_head;
    } else {
      out.weights = Tensor({B, Lq, Lk});
      const float inv = 1.0f / static_cast<float>(H);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h) {
          const float* src = per_head.f32() + (b * H + h) * Lq * Lk;
          float* dst = out.weights.f32() + b * Lq * Lk;
          for (int64_t i = 0; i < Lq * Lk; ++i) dst[i] += src[i] * inv;
        }
    }
  }
  return out;
}

}  // namespace attn
