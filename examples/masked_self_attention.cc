// Masked self-attention: self-attention plus a causal mask, so no position sees the future.
#include "example_util.h"

int main() {
  attn::MultiHeadAttentionConfig config;
  config.embed_dim = 8;
  config.num_heads = 2;
  const attn::MultiHeadAttention layer(config, 9);
  const attn::Tensor x = random_tensor({1, 5, 8}, 10);
  attn::MhaOptions options;
  options.need_weights = true;
  const attn::MhaOutput r = layer.masked_self_attention(x, options);  // weights [1, 5, 5], lower-triangular
  print_weights("masked self-attention weights (zero above the diagonal):", r.weights.f32(), 5, 5);
  for (int i = 0; i < 5; ++i)
    for (int j = i + 1; j < 5; ++j)
      if (r.weights.f32()[i * 5 + j] != 0.0f) return 1;
  // The same with the general function: causal alignment named explicitly.
  attn::AttentionOptions o;
  o.causal = attn::CausalAlignment::kTopLeft;
  const attn::AttentionResult s = attn::scaled_dot_product_attention(
      random_tensor({1, 1, 5, 4}, 11), random_tensor({1, 1, 5, 4}, 12), random_tensor({1, 1, 5, 4}, 13), o);
  return s.output.shape() == attn::Shape{1, 1, 5, 4} ? 0 : 1;
}
