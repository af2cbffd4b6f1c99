// attn/layers/multi_head_attention.h: multi-head attention with nn.MultiheadAttention's semantics.
//
//   out = concat_h( softmax(Q_h·K_hᵀ/√Dh + M) · V_h ) · W_Oᵀ + b_O
//   Q = query·W_Qᵀ + b_Q   K = key·W_Kᵀ + b_K   V = value·W_Vᵀ + b_V      (Dh = E / H)
//
// Inputs are batch-first: query [B, Lq, E], key [B, Lk, kdim], value [B, Lk, vdim]. With
// num_kv_heads < num_heads, K and V have num_kv_heads heads shared by groups of query heads
// (grouped-query / multi-query attention), which nn.MultiheadAttention does not have.
// Weights load from and save to PyTorch state-dict names in .safetensors files:
//   in_proj_weight [3E, E] and in_proj_bias [3E]         (when kdim = vdim = E; with GQA
//                                                        [E + 2·Hkv·Dh, E])
//   q_proj_weight [E, E], k_proj_weight [Hkv·Dh, kdim], v_proj_weight [Hkv·Dh, vdim]   (otherwise)
//   out_proj.weight [E, E], out_proj.bias [E]
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "attn/attention.h"
#include "attn/tensor.h"

namespace attn {

struct MultiHeadAttentionConfig {
  int64_t embed_dim = 0;     // E
  int64_t num_heads = 1;     // H; must divide E
  int64_t num_kv_heads = 0;  // Hkv; 0 = num_heads; must divide num_heads
  int64_t kdim = 0;          // key input size; 0 = E
  int64_t vdim = 0;          // value input size; 0 = E
  bool bias = true;          // in_proj_bias and out_proj.bias
};

struct MhaOptions {
  // attn_mask: [Lq, Lk] or [B·H, Lq, Lk]. bool: true = NOT allowed to attend (nn.MultiheadAttention's
  // polarity, the opposite of scaled_dot_product_attention's); float32: added to the scores.
  Tensor attn_mask;
  // key_padding_mask: [B, Lk]. bool: true = padding, ignored; float32: added to the scores.
  Tensor key_padding_mask;
  // Adds a causal mask (query i sees keys j <= i, top-left) on top of any attn_mask.
  bool causal = false;
  // Also return the attention weights: [B, Lq, Lk] averaged over heads, or [B, H, Lq, Lk].
  bool need_weights = false;
  bool average_attn_weights = true;
  AttentionImpl impl = AttentionImpl::kAuto;
  // threads of the whole call (the projections' GEMMs too); 0: OpenMP's default (OMP_NUM_THREADS or all cores)
  int num_threads = 0;
};

struct MhaOutput {
  Tensor output;   // [B, Lq, E]
  Tensor weights;  // [B, Lq, Lk] or [B, H, Lq, Lk] when need_weights, else undefined
};

class MultiHeadAttention {
 public:
  // Weights drawn from nn.MultiheadAttention's distributions (Xavier-uniform input projections, packed when
  // kdim = vdim = embed_dim; out_proj U(±1/√E), nn.Linear's; zero biases), from a fixed seed.
  explicit MultiHeadAttention(const MultiHeadAttentionConfig& config, uint64_t seed = 0);

  // From PyTorch state-dict tensors, names under `prefix` (e.g. "self_attn."), copied (the layer keeps no reference to
  // them: they may be views of a caller's memory, as the Python module's are). Throws
  // MissingTensorError for a missing name, DTypeError for one that is not float32 and ShapeError for a wrong shape.
  static MultiHeadAttention from_state_dict(const std::map<std::string, Tensor>& tensors,
                                            const MultiHeadAttentionConfig& config, const std::string& prefix = "");
  static MultiHeadAttention load(const std::string& safetensors_path, const MultiHeadAttentionConfig& config,
                                 const std::string& prefix = "");
  // The weights under PyTorch's names (packed in_proj_* when kdim = vdim = E, as PyTorch does). Like torch's, some
  // entries share the layer's storage (out_proj.weight, q/k/v_proj_weight) and others are built (in_proj_*): clone()
  // before writing into one.
  std::map<std::string, Tensor> state_dict(const std::string& prefix = "") const;
  void save(const std::string& safetensors_path) const;

  // The mechanisms of the family, by name:
  // x: [B, L, E]: Q, K and V all from x.
  MhaOutput self_attention(const Tensor& x, const MhaOptions& options = {}) const;
  // x: [B, L, E]: self-attention in which position i sees no position after it.
  MhaOutput masked_self_attention(const Tensor& x, MhaOptions options = {}) const;
  // x: [B, Lq, E] (the decoder), memory: [B, Lk, kdim = vdim] (the encoder): Q from x, K and V from memory.
  MhaOutput cross_attention(const Tensor& x, const Tensor& memory, const MhaOptions& options = {}) const;
  // The general form: query [B, Lq, E], key [B, Lk, kdim], value [B, Lk, vdim].
  MhaOutput attention(const Tensor& query, const Tensor& key, const Tensor& value,
                      const MhaOptions& options = {}) const;

  const MultiHeadAttentionConfig& config() const { return config_; }
  int64_t head_dim() const { return config_.embed_dim / config_.num_heads; }

  // Parameters (PyTorch layout [out, in]).
  Tensor w_q, w_k, w_v, w_o;  // [E, E], [Hkv·Dh, kdim], [Hkv·Dh, vdim], [E, E]
  Tensor b_q, b_k, b_v, b_o;  // [E], [Hkv·Dh], [Hkv·Dh], [E]   (undefined without bias)

 private:
  struct Uninitialised {};
  // parameters left undefined: from_state_dict fills them (after checking every tensor's shape)
  MultiHeadAttention(const MultiHeadAttentionConfig& config, Uninitialised);
  MultiHeadAttentionConfig config_;
};

}  // namespace attn
