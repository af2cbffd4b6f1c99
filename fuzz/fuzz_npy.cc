// libFuzzer target: the .npy parser must return a tensor or throw attn::FormatError on any bytes.
#include <cstddef>
#include <cstdint>

#include "attn/error.h"
#include "attn/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    attn::io::parse_npy(data, size, "fuzz");
  } catch (const attn::FormatError&) {
  }
  return 0;
}
