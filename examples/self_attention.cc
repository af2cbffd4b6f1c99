// Self-attention: Q, K and V all come from the same sequence X through learned W_Q, W_K, W_V.
#include "example_util.h"

int main() {
  attn::MultiHeadAttentionConfig config;
  config.embed_dim = 8;  // E
  config.num_heads = 1;  // one head: plain self-attention
  const attn::MultiHeadAttention layer(config, /*seed=*/42);
  const attn::Tensor x = random_tensor({1, 4, 8}, 5);  // x: [B=1, L=4, E=8]
  attn::MhaOptions options;
  options.need_weights = true;
  const attn::MhaOutput r = layer.self_attention(x, options);  // output [1, 4, 8], weights [1, 4, 4]
  print_weights("self-attention weights (each token against every token):", r.weights.f32(), 4, 4);
  return r.output.shape() == x.shape() ? 0 : 1;
}
