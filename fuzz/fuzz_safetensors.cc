// libFuzzer target: the .safetensors parser must return tensors or throw attn::FormatError on any bytes; what it
// returns holds no more bytes than the file (every tensor's bytes are its own; F64/I64/I32 only shrink to float32),
// and writing it and reading that back gives the same tensors and metadata.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attn/error.h"
#include "attn/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attn::io::Safetensors st;
  try {
    st = attn::io::parse_safetensors(data, size, "fuzz");
  } catch (const attn::FormatError&) {
    return 0;
  }
  size_t held = 0;
  for (const auto& [name, t] : st.tensors) held += t.nbytes();
  if (held > size) std::abort();  // allocated what the file does not back
  std::vector<uint8_t> again;
  try {
    again = attn::io::encode_safetensors(st.tensors, st.metadata);
  } catch (const attn::ArgumentError&) {
    return 0;  // a name the writer refuses (not UTF-8 is caught by the JSON parser first; kept for safety)
  }
  const attn::io::Safetensors back = attn::io::parse_safetensors(again.data(), again.size(), "fuzz round trip");
  if (back.metadata != st.metadata || back.tensors.size() != st.tensors.size()) std::abort();
  for (const auto& [name, t] : st.tensors) {
    const attn::Tensor& u = back.tensors.at(name);
    if (u.shape() != t.shape() || u.dtype() != t.dtype() ||
        (t.nbytes() != 0 && std::memcmp(u.raw(), t.raw(), t.nbytes()) != 0))
      std::abort();
  }
  return 0;
}
