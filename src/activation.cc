// Names of the activations (attn/activation.h), for configs and the command line.
#include "attn/activation.h"

#include "attn/error.h"

namespace attn {

const char* activation_name(Activation activation) { return activation == Activation::kGelu ? "gelu" : "relu"; }

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  throw ArgumentError("activation must be \"relu\" or \"gelu\", got \"" + name + "\"");
}

}  // namespace attn
