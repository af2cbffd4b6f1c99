// Multi-head self-attention: H heads attend in parallel subspaces; their outputs are concatenated and
// projected by W_O. With num_kv_heads < num_heads, groups of query heads share K/V heads (GQA).
#include "example_util.h"

int main() {
  attn::MultiHeadAttentionConfig config;
  config.embed_dim = 16;
  config.num_heads = 4;     // Dh = 4
  config.num_kv_heads = 2;  // grouped-query attention
  const attn::MultiHeadAttention layer(config, 7);
  const attn::Tensor x = random_tensor({2, 6, 16}, 6);  // [B=2, L=6, E=16]
  attn::MhaOptions options;
  options.need_weights = true;
  options.average_attn_weights = false;  // per head: [B, H, L, L]
  const attn::MhaOutput r = layer.self_attention(x, options);
  std::printf("output %s, per-head weights %s\n", attn::shape_str(r.output.shape()).c_str(),
              attn::shape_str(r.weights.shape()).c_str());
  for (int h = 0; h < 2; ++h) {
    std::printf("head %d, first row:", h);
    for (int j = 0; j < 6; ++j) std::printf(" %.3f", static_cast<double>(r.weights.f32()[h * 36 + j]));
    std::printf("\n");
  }
  // The state dict uses PyTorch's names.
  for (const auto& [name, t] : layer.state_dict())
    std::printf("  %s %s\n", name.c_str(), attn::shape_str(t.shape()).c_str());
  return r.weights.shape() == attn::Shape{2, 4, 6, 6} ? 0 : 1;
}
