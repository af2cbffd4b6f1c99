// attn/models/quantization.h: how a model's projections compute (Transformer::quantize, Translator::load,
// SentenceEncoder::load).
#pragma once

#include <cstdint>
#include <string>

namespace attn {

// How the model's projections compute: float32, or int8 weights with a scale per output row and activations
// quantised per row on the fly (inference only; CTranslate2's int8 scheme, through oneDNN), or bfloat16
// weights and activations with float32 sums (inference only; oneDNN's bf16 matmul), or float32 weights kept
// transposed beside the parameters for libxsmm's small-matrix kernels where they fit in the L2 cache
// (inference only: the same products in another summation order, 1.2x OpenBLAS at decoding's shapes;
// Translator::load uses it for kNone). SentenceEncoder::load takes kNone and kFloat32 alike: plain float32.
enum class Quantization : uint8_t { kNone, kInt8, kBFloat16, kFloat32 };
// "none" | "int8" | "bf16" | "float32", and the inverse (ArgumentError naming the accepted values).
const char* quantization_name(Quantization q);
Quantization parse_quantization(const std::string& name);

}  // namespace attn
