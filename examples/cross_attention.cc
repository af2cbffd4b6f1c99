// Cross-attention: Q from the decoder, K and V from the encoder's output. The output has the
// decoder's length, whatever the encoder's.
#include "example_util.h"

int main() {
  attn::MultiHeadAttentionConfig config;
  config.embed_dim = 8;
  config.num_heads = 2;
  const attn::MultiHeadAttention layer(config, 3);
  const attn::Tensor decoder = random_tensor({1, 3, 8}, 7);  // the target so far: [B, Lt=3, E]
  const attn::Tensor encoder = random_tensor({1, 5, 8}, 8);  // the encoded source: [B, Ls=5, E]
  attn::MhaOptions options;
  options.need_weights = true;
  // the source's last key is padding: true = ignore
  options.key_padding_mask = attn::Tensor::from_bools({1, 5}, {0, 0, 0, 0, 1});
  const attn::MhaOutput r = layer.cross_attention(decoder, encoder, options);  // [1, 3, 8], weights [1, 3, 5]
  print_weights("cross-attention weights (target x source; the padded key gets 0):", r.weights.f32(), 3, 5);
  return r.output.shape() == attn::Shape{1, 3, 8} && r.weights.f32()[4] == 0.0f ? 0 : 1;
}
