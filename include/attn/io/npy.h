// attn/io/npy.h: NumPy .npy files (format versions 1, 2 and 3).
//
// Reads little-endian float32 ('<f4'), float64 ('<f8', converted to float32), float16 ('<f2', kept as
// float16) and bool ('|b1'), C order. Writes float32, float16 or bool, format version 1 (version 2 when the
// header needs it); bfloat16 has no NumPy dtype and throws DTypeError.
// Throws FormatError on anything else: a bad magic, an unsupported dtype or Fortran order, a header
// that is malformed (bytes after its '}', (n) for (n,), a key given twice) or longer than 1 MiB, a shape whose
// byte count disagrees with the file's size (the header is checked against the real size before anything is
// allocated; a stream, a pipe, is read no further than the size its header states); FileError (a FormatError) where the
// system refuses the file. write_npy throws ArgumentError for
// more than 32 dimensions (NumPy's limit).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "attn/tensor.h"

namespace attn::io {

Tensor read_npy(const std::string& path);
// Parses an in-memory .npy image; `what` names it in error messages.
Tensor parse_npy(const uint8_t* data, size_t size, const std::string& what);

// Writes atomically: a temporary file renamed into place, so a failure leaves no partial file.
void write_npy(const std::string& path, const Tensor& tensor);
std::vector<uint8_t> encode_npy(const Tensor& tensor);

}  // namespace attn::io
