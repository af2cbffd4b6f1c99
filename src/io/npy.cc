// .npy reader and writer. The header is a Python dict literal; we parse exactly the subset NumPy
// writes ({'descr': str, 'fortran_order': bool, 'shape': tuple of ints}) and trust none of it until the
// byte count it implies matches the bytes the file really has.
#include "attn/io/npy.h"

#include <cctype>
#include <cstring>
#include <string_view>

#include "attn/error.h"
#include "attn/io/file.h"

namespace attn::io {
namespace {

constexpr size_t kMaxHeader = 1 << 20;

class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  void parse(std::string* descr, bool* fortran, Shape* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = string_literal();
      expect(':');
      if ((key == "descr" && have_descr) || (key == "fortran_order" && have_fortran) || (key == "shape" && have_shape))
        fail("'" + key + "' given twice");
      if (key == "descr") {
        *descr = string_literal();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran = boolean();
        have_fortran = true;
      } else if (key == "shape") {
        *shape = tuple();
        have_shape = true;
      } else {
        fail("unknown key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      if (peek() != '}') fail("expected ',' or '}'");
    }
    ++pos_;  // the '}'; after it only the padding (spaces, a final newline), as NumPy's literal_eval takes it
    skip_ws();
    if (pos_ != s_.size()) fail("bytes after the closing '}'");
    if (!have_descr || !have_fortran || !have_shape) fail("the header lacks 'descr', 'fortran_order' or 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw FormatError(what_ + ": malformed .npy header (" + why + " at offset " + std::to_string(pos_) + ")");
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string string_literal() {
    skip_ws();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a string");
    const size_t end = s_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_ws();
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  Shape tuple() {
    expect('(');
    Shape shape;
    bool comma_after_last = false;
    while (true) {
      skip_ws();
      if (peek() == ')') {
        if (shape.size() == 1 && !comma_after_last) fail("(n) is not a tuple; NumPy writes (n,)");
        ++pos_;
        return shape;
      }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a non-negative integer in the shape");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (v > (int64_t{1} << 50)) fail("a size in the shape is too large");
        v = v * 10 + (s_[pos_++] - '0');
      }
      if (shape.size() >= 32) fail("more than 32 dimensions");
      shape.push_back(v);
      skip_ws();
      comma_after_last = peek() == ',';
      if (comma_after_last)
        ++pos_;
      else if (peek() != ')')
        fail("expected ',' or ')' in the shape");
    }
  }

  std::string_view s_;
  const std::string& what_;
  size_t pos_ = 0;
};

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

namespace {

// Where the header ends (the data's offset): the magic, version and header length of the first 10 or 12 bytes
// (size >= 10). FormatError for a bad magic, an unknown version or a header longer than 1 MiB.
size_t npy_data_offset(const uint8_t* data, size_t size, const std::string& what, size_t* prefix_out = nullptr) {
  static const uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(data, kMagic, 6) != 0)
    throw FormatError(what + ": not a .npy file (bad magic or shorter than 10 bytes; size " + std::to_string(size) +
                      ")");
  const int major = data[6];
  if (major < 1 || major > 3) throw FormatError(what + ": unsupported .npy format version " + std::to_string(major));
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix = 8 + len_bytes;
  if (size < prefix) throw FormatError(what + ": truncated .npy header");
  const size_t header_len = read_le(data + 8, static_cast<int>(len_bytes));
  if (header_len > kMaxHeader)
    throw FormatError(what + ": .npy header length " + std::to_string(header_len) + " exceeds 1 MiB");
  if (prefix_out != nullptr) *prefix_out = prefix;
  return prefix + header_len;
}

struct NpyHeader {
  size_t data_offset = 0;
  std::string descr;
  Shape shape;
  size_t itemsize = 0;
  DType dtype = DType::kFloat32;
  int64_t numel = 0;
};

// The header of a .npy image whose first `size` bytes are at data; FormatError where it is malformed, unsupported or
// runs past size.
NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& what) {
  NpyHeader h;
  size_t prefix = 0;  // the magic, version and header length
  h.data_offset = npy_data_offset(data, size, what, &prefix);
  const size_t header_len = h.data_offset - prefix;
  if (header_len > size - prefix)
    throw FormatError(what + ": .npy header length " + std::to_string(header_len) +
                      " runs past the end of the file (size " + std::to_string(size) + ")");
  bool fortran = false;
  HeaderParser(std::string_view(reinterpret_cast<const char*>(data + prefix), header_len), what)
      .parse(&h.descr, &fortran, &h.shape);
  if (fortran)
    throw FormatError(what + ": Fortran-order .npy arrays are not supported; save with np.ascontiguousarray");
  if (h.descr == "<f4")
    h.itemsize = 4, h.dtype = DType::kFloat32;
  else if (h.descr == "<f8")
    h.itemsize = 8, h.dtype = DType::kFloat32;
  else if (h.descr == "<f2")
    h.itemsize = 2, h.dtype = DType::kFloat16;
  else if (h.descr == "|b1")
    h.itemsize = 1, h.dtype = DType::kBool;
  else
    throw FormatError(what + ": unsupported .npy dtype '" + h.descr + "' (expected '<f4', '<f8', '<f2' or '|b1')");
  try {
    h.numel = shape_numel(h.shape);
  } catch (const ShapeError&) {
    throw FormatError(what + ": .npy shape " + shape_str(h.shape) + " has too many elements");
  }
  return h;
}

}  // namespace

Tensor parse_npy(const uint8_t* data, size_t size, const std::string& what) {
  const NpyHeader h = parse_npy_header(data, size, what);
  const size_t itemsize = h.itemsize;
  const std::string& descr = h.descr;
  const Shape& shape = h.shape;
  const int64_t numel = h.numel;
  const size_t body = size - h.data_offset;
  if (static_cast<uint64_t>(numel) > body / itemsize || static_cast<size_t>(numel) * itemsize != body)
    throw FormatError(what + ": .npy shape " + shape_str(shape) + " of '" + descr + "' needs " +
                      (static_cast<uint64_t>(numel) > (uint64_t{1} << 60) / itemsize
                           ? std::string("too many")
                           : std::to_string(numel * itemsize)) +
                      " bytes but the file holds " + std::to_string(body));
  Tensor t(shape, h.dtype);
  const uint8_t* src = data + h.data_offset;
  if (descr == "<f4" || descr == "<f2") {
    if (body != 0) std::memcpy(t.raw(), src, body);
  } else if (descr == "<f8") {
    for (int64_t i = 0; i < numel; ++i) {
      double d;
      std::memcpy(&d, src + i * 8, 8);
      t.f32()[i] = static_cast<float>(d);
    }
  } else {
    for (int64_t i = 0; i < numel; ++i) t.b8()[i] = src[i] ? 1 : 0;
  }
  return t;
}

Tensor read_npy(const std::string& path) {
  // a stream is read as far as its header says: /dev/zero fails at its magic, not when memory runs out
  const std::vector<uint8_t> bytes = read_file(path, [&](const uint8_t* data, size_t size) {
    if (size < 12 || size < npy_data_offset(data, size, path)) return kSizeUnknown;
    const NpyHeader h = parse_npy_header(data, size, path);
    if (static_cast<uint64_t>(h.numel) > (uint64_t{1} << 60) / h.itemsize) return kSizeUnknown;  // parse_npy says so
    return h.data_offset + static_cast<size_t>(h.numel) * h.itemsize;
  });
  return parse_npy(bytes.data(), bytes.size(), path);
}

std::vector<uint8_t> encode_npy(const Tensor& t) {
  if (!t.defined()) throw ArgumentError("write_npy: the tensor is empty (undefined)");
  const char* descr = t.dtype() == DType::kFloat32 ? "<f4" : t.dtype() == DType::kFloat16 ? "<f2" : "|b1";
  if (t.dtype() == DType::kBFloat16)  // NumPy has no bfloat16 ('<V2' from ml_dtypes would not round-trip)
    throw DTypeError("write_npy: .npy has no bfloat16; convert to float32 first (to_dtype), shape " +
                     shape_str(t.shape()));
  if (t.rank() > 32)  // what the reader refuses, refused here
    throw ArgumentError("write_npy: the tensor has " + std::to_string(t.rank()) + " dimensions " +
                        shape_str(t.shape()) + "; .npy readers (NumPy's, this one) take at most 32");
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  // NumPy's tuple spelling: () for a scalar, (n,) for one dimension, (a, b) otherwise
  for (int i = 0; i < t.rank(); ++i) dict += (i ? ", " : "") + std::to_string(t.shape()[static_cast<size_t>(i)]);
  dict += t.rank() == 1 ? ",)" : ")";
  dict += ", }";
  const bool v2 = dict.size() + 12 > 65535;
  const size_t prefix = v2 ? 12 : 10;
  size_t total = prefix + dict.size() + 1;
  const size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(v2 ? 2 : 1), 0};
  const size_t hl = dict.size();
  for (size_t i = 0; i < (v2 ? 4u : 2u); ++i) out.push_back(static_cast<uint8_t>(hl >> (8 * i)));
  out.insert(out.end(), dict.begin(), dict.end());
  const auto* raw = static_cast<const uint8_t*>(t.raw());
  out.insert(out.end(), raw, raw + t.nbytes());
  return out;
}

void write_npy(const std::string& path, const Tensor& t) { write_file_atomically(path, encode_npy(t)); }

}  // namespace attn::io
