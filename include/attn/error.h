// attn/error.h: the typed exceptions every public function throws.
//
// Every message names the argument at fault and the shapes involved, e.g.
//   "scaled_dot_product_attention: k has shape [1, 2, 5, 8] but q has D = 16; k must be [B, Hkv, Lk, D]"
#pragma once

#include <stdexcept>
#include <string>

namespace attn {

// Base of every error attn throws on bad input.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A tensor has the wrong rank or sizes, or two tensors' sizes do not agree.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A tensor has the wrong element type (float32 where bool was needed, ...).
class DTypeError : public Error {
 public:
  using Error::Error;
};

// A value is out of range or an option is inconsistent (scale <= 0, heads not dividing, ...).
class ArgumentError : public Error {
 public:
  using Error::Error;
};

// A file is unreadable, truncated, corrupt, or its header lies about its contents.
class FormatError : public Error {
 public:
  using Error::Error;
};

// The operating system refused a file: it cannot be opened, read, created, written or renamed; error_number() is
// the errno that said why (ENOENT, EACCES, EISDIR, ...). A FormatError, as code that caught an unreadable file as
// one before this type existed still does. (Python: OSError, FileNotFoundError for ENOENT.)
class FileError : public FormatError {
 public:
  FileError(const std::string& what, int error_number) : FormatError(what), error_number_(error_number) {}
  int error_number() const { return error_number_; }

 private:
  int error_number_;
};

// Memory for a tensor could not be had (a shape too large for this machine): the message names the shape, the element
// type and the bytes asked for. (Python: MemoryError; the attn tool exits with status 3, as on any exhausted memory.)
class AllocationError : public Error {
 public:
  using Error::Error;
};

// A named tensor is missing from a weights file.
class MissingTensorError : public Error {
 public:
  using Error::Error;
};

}  // namespace attn
