// A fixture's token ids ([B, L], held as floats in a .safetensors file) as a TokenBatch (transformer_test.cc,
// training_test.cc).
#pragma once

#include "attn/models/transformer.h"

namespace attn::test {

inline TokenBatch token_batch(const Tensor& t) {  // t: [B, L]
  TokenBatch b{{}, t.dim(0), t.dim(1)};
  for (int64_t i = 0; i < t.numel(); ++i) b.ids.push_back(static_cast<int32_t>(t.f32()[i]));
  return b;
}

}  // namespace attn::test
