// libFuzzer target: the .safetensors parser must return tensors or throw attn::FormatError on any bytes.
#include <cstddef>
#include <cstdint>

#include "attn/error.h"
#include "attn/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    attn::io::parse_safetensors(data, size, "fuzz");
  } catch (const attn::FormatError&) {
  }
  return 0;
}
