// attn/io/safetensors.h: Hugging Face .safetensors files.
//
// Reads F32, BF16 and F16 (kept as float32, bfloat16, float16), F64, I64 and I32 (converted to float32) and
// BOOL; writes F32, BF16, F16 and BOOL. Model loaders widen BF16/F16 weights to float32 (to_dtype).
// Throws FormatError on a truncated or corrupt file: a header length past the file's end or over
// 100 MiB, invalid JSON, a header nested deeper than {name: {shape: [...]}} or with an array of more than 64
// items, a missing or mistyped field, metadata that is not a string, an unsupported dtype, data offsets
// disagreeing with the shape, tensors that do not tile the data exactly (two on the same bytes, a gap, bytes
// after the last: as the safetensors library requires); FileError (a FormatError) where the system refuses the
// file. Nothing is allocated from a size the file has not backed; a stream (a pipe) is read no further than its header
// says (8 + N + the last tensor's end). The writer throws ArgumentError for what a
// reader would refuse: a tensor named __metadata__, more than 32 dimensions, a name that is not UTF-8.
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
  std::string prefix;  // the name prefix it was read with: only tensors whose names start with it are here
};

// name_prefix: only the tensors whose names start with it are copied out (all when empty); the header is checked
// whole either way, and a mapped file's other tensors are never read (one layer out of a whole model's file).
Safetensors read_safetensors(const std::string& path, const std::string& name_prefix = "");
Safetensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what,
                              const std::string& name_prefix = "");
// The file's __metadata__ alone, after the same checks of the whole file (no tensor is copied).
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);

// Widens every bfloat16/float16 tensor of `tensors` to float32 (exact), in place: the model loaders' step,
// so a checkpoint saved in BF16 or F16 loads into float32 models.
void widen_to_float32(std::map<std::string, Tensor>& tensors);

// Writes atomically (temporary file, then rename).
void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
std::vector<uint8_t> encode_safetensors(const std::map<std::string, Tensor>& tensors,
                                        const std::map<std::string, std::string>& metadata = {});

}  // namespace attn::io
