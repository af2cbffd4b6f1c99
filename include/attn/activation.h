// attn/activation.h: the feed-forward activations, with their names in configs and on the command line.
#pragma once

#include <cstdint>
#include <string>

namespace attn {

enum class Activation : uint8_t {
  kRelu,  // max(x, 0)
  kGelu,  // x·Φ(x), the exact erf form (PyTorch's default)
};

// "relu" | "gelu", and the inverse, which throws ArgumentError naming the accepted values.
const char* activation_name(Activation activation);
Activation parse_activation(const std::string& name);

}  // namespace attn
