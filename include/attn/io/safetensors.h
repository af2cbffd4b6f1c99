// attn/io/safetensors.h: Hugging Face .safetensors files.
//
// Reads F32, BF16 and F16 (kept as float32, bfloat16, float16), F64, I64 and I32 (converted to float32) and
// BOOL; writes F32, BF16, F16 and BOOL. Model loaders widen BF16/F16 weights to float32 (to_dtype).
// Throws FormatError on a truncated or corrupt file: a header length past the file's end or over
// 100 MiB, invalid JSON, a missing or mistyped field, an unsupported dtype, data offsets outside the
// data or disagreeing with the shape. Nothing is allocated from a size the file has not backed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "attn/tensor.h"

namespace attn::io {

struct Safetensors {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" object (string values)

  // The tensor called `name`; throws MissingTensorError listing what the file has.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
  std::string source;  // the path or description it was read from, for messages
};

Safetensors read_safetensors(const std::string& path);
Safetensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what);

// Widens every bfloat16/float16 tensor of `tensors` to float32 (exact), in place: the model loaders' step,
// so a checkpoint saved in BF16 or F16 loads into float32 models.
void widen_to_float32(std::map<std::string, Tensor>& tensors);

// Writes atomically (temporary file, then rename).
void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
std::vector<uint8_t> encode_safetensors(const std::map<std::string, Tensor>& tensors,
                                        const std::map<std::string, std::string>& metadata = {});

}  // namespace attn::io
