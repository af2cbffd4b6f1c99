// Attention (scaled dot-product): Q, K and V may come from different sequences.
//   out = softmax(Q·Kᵀ/√D) · V
#include "example_util.h"

int main() {
  std::printf("attn %s\n", attn::version());
  // q: [B=1, H=2, Lq=3, D=4]   k: [1, 2, Lk=5, 4]   v: [1, 2, 5, Dv=6]
  const attn::Tensor q = random_tensor({1, 2, 3, 4}, 1), k = random_tensor({1, 2, 5, 4}, 2),
                     v = random_tensor({1, 2, 5, 6}, 3);
  attn::AttentionOptions options;
  options.return_weights = true;
  const attn::AttentionResult r = attn::scaled_dot_product_attention(q, k, v, options);
  // output: [1, 2, 3, 6], weights: [1, 2, 3, 5]
  std::printf("output %s, weights %s\n", attn::shape_str(r.output.shape()).c_str(),
              attn::shape_str(r.weights.shape()).c_str());
  print_weights("head 0 weights (queries x keys):", r.weights.f32(), 3, 5);
  try {  // a mismatch is a typed error naming the argument and the shapes
    attn::scaled_dot_product_attention(q, random_tensor({1, 2, 5, 7}, 4), v);
    return 1;
  } catch (const attn::ShapeError& e) {
    std::printf("as expected: %s\n", e.what());
  }
  return r.output.shape() == attn::Shape{1, 2, 3, 6} ? 0 : 1;
}
