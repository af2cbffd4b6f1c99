// libFuzzer target: the .npy parser must return a tensor or throw attn::FormatError on any bytes; the tensor holds no
// more bytes than the file (float64 only shrinks to float32), and writing it and reading that back gives it again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attn/error.h"
#include "attn/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attn::Tensor t;
  try {
    t = attn::io::parse_npy(data, size, "fuzz");
  } catch (const attn::FormatError&) {
    return 0;
  }
  if (t.nbytes() > size) std::abort();  // allocated what the file does not back
  const std::vector<uint8_t> again = attn::io::encode_npy(t);
  const attn::Tensor back = attn::io::parse_npy(again.data(), again.size(), "fuzz round trip");
  if (back.shape() != t.shape() || back.dtype() != t.dtype() ||
      (t.nbytes() != 0 && std::memcmp(back.raw(), t.raw(), t.nbytes()) != 0))
    std::abort();
  return 0;
}
