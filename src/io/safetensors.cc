// .safetensors reader and writer: [u64 header length N][N bytes of JSON][data]. Every size in the JSON
// is checked against the bytes that are really there before a tensor is allocated.
#include "attn/io/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>

#include "attn/error.h"
#include "attn/io/file.h"

namespace attn::io {
namespace {

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;

struct DTypeInfo {
  const char* name;
  size_t itemsize;
  DType dtype;
};
const DTypeInfo kDTypes[] = {{"F32", 4, DType::kFloat32}, {"F16", 2, DType::kFloat16}, {"BF16", 2, DType::kBFloat16},
                             {"F64", 8, DType::kFloat32}, {"I64", 8, DType::kFloat32}, {"I32", 4, DType::kFloat32},
                             {"BOOL", 1, DType::kBool}};

}  // namespace

const Tensor& Safetensors::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::string have;
  for (const auto& [n, t] : tensors) have += (have.empty() ? "" : ", ") + n + " " + shape_str(t.shape());
  throw MissingTensorError(source + ": no tensor named '" + name + "' (the file has" +
                           (prefix.empty() ? "" : ", of the names starting with '" + prefix + "'") + ": " +
                           (have.empty() ? "nothing" : have) + ")");
}

namespace {

// The JSON header of a .safetensors image whose first `size` bytes are at data, and its length (*n): FormatError where
// the length or the JSON is wrong or runs past size.
// The header's length N: the first 8 bytes, little-endian (size >= 8).
uint64_t header_length(const uint8_t* data) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  return n;
}

nlohmann::json parse_header(const uint8_t* data, size_t size, const std::string& what, uint64_t* n_out) {
  if (size < 8) throw FormatError(what + ": not a .safetensors file (shorter than 8 bytes)");
  const uint64_t n = header_length(data);
  if (n > kMaxHeader)
    throw FormatError(what + ": .safetensors header length " + std::to_string(n) + " exceeds 100 MiB");
  if (n > size - 8)
    throw FormatError(what + ": .safetensors header length " + std::to_string(n) +
                      " runs past the end of the file (size " + std::to_string(size) + ")");
  // The header's shape is fixed: {name: {dtype, shape: [...], data_offsets: [b, e]}, __metadata__: {k: v}}, nothing
  // deeper than 3 levels, no array longer than 64 (shapes have at most 32 dimensions), no entry that is an array or a
  // scalar, no tensor entry of more than 8 keys and no metadata of more than 65536: refused while parsing, as a DOM of
  // deep or long arrays, or of many small values, costs 10-40 times the bytes of its text ({"t": [0, 0, ...]} filling
  // the 100 MiB had built 50 M values).
  int64_t items_at_depth_3 = 0, keys_at_depth_2 = 0;
  bool in_metadata = false;
  const auto bounded = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (depth > 3 || (depth == 3 && (event == E::object_start || event == E::array_start)))
      throw FormatError(what + ": .safetensors header nests deeper than {name: {shape: [...]}}");
    if (depth == 1 && event == E::key)
      in_metadata = parsed.is_string() && parsed.get_ref<const std::string&>() == "__metadata__";
    if (depth == 1 && event == E::array_start)
      throw FormatError(what + ": .safetensors header has an entry that is an array, not {dtype, shape, data_offsets}");
    if (depth == 1 && event == E::object_start) keys_at_depth_2 = 0;
    if (depth == 1 && event == E::value)
      throw FormatError(what + ": .safetensors header has an entry that is not {dtype, shape, data_offsets}");
    if (depth == 2 && event == E::key && !in_metadata && ++keys_at_depth_2 > 8)
      throw FormatError(what + ": .safetensors header has a tensor entry of more than 8 keys");
    if (depth == 2 && event == E::key && in_metadata && ++keys_at_depth_2 > 65536)  // (real files: a few hundred)
      throw FormatError(what + ": .safetensors __metadata__ has more than 65536 keys");
    if (depth == 2 && (event == E::object_start || event == E::array_start)) items_at_depth_3 = 0;
    if (depth == 3 && ++items_at_depth_3 > 64)
      throw FormatError(what + ": .safetensors header has an array of more than 64 items");
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + n, bounded);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(what + ": .safetensors header is not valid JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw FormatError(what + ": .safetensors header is not a JSON object");
  *n_out = n;
  return header;
}

}  // namespace

namespace {
// parse_safetensors, copying out the tensors whose names start with *name_prefix (none when it is null)
Safetensors parse_checked(const uint8_t* data, size_t size, const std::string& what, const std::string* name_prefix) {
  uint64_t n = 0;
  const nlohmann::json header = parse_header(data, size, what, &n);
  const uint8_t* body = data + 8 + n;
  const uint64_t body_size = size - 8 - n;
  Safetensors out;
  out.source = what;
  if (name_prefix) out.prefix = *name_prefix;
  // every tensor's entry checked before any is allocated, then their bytes must tile the data exactly (no overlap, no
  // gap, nothing after: as the safetensors library requires): tensors sharing bytes had let a 2 MiB file allocate
  // 16 GiB
  struct Entry {
    std::string name;
    const DTypeInfo* info;
    Shape shape;
    int64_t numel;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, entry] : header.items()) {
    const std::string where = what + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!entry.is_object()) throw FormatError(what + ": __metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string())
          throw FormatError(what + ": __metadata__ '" + k + "' is not a string (safetensors' metadata is str: str)");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets") ||
        !entry["dtype"].is_string() || !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2)
      throw FormatError(where + " needs 'dtype' (string), 'shape' (array) and 'data_offsets' ([begin, end])");
    const std::string dt = entry["dtype"].get<std::string>();
    const DTypeInfo* info = nullptr;
    for (const DTypeInfo& d : kDTypes)
      if (dt == d.name) info = &d;
    if (info == nullptr)
      throw FormatError(where + " has unsupported dtype " + dt + " (F32, F16, BF16, F64, I64, I32, BOOL)");
    Shape shape;
    for (const auto& s : entry["shape"]) {
      if (!s.is_number_unsigned() || shape.size() >= 32) throw FormatError(where + " has a malformed shape");
      if (s.get<uint64_t>() > uint64_t{1} << 60)  // refused, not clamped: a zero-element tensor keeps its shape exact
        throw FormatError(where + " has a dimension of " + std::to_string(s.get<uint64_t>()) + " (more than 2^60)");
      shape.push_back(static_cast<int64_t>(s.get<uint64_t>()));
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw FormatError(where + " has malformed data_offsets");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > body_size)
      throw FormatError(where + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                        "] outside the data (" + std::to_string(body_size) + " bytes)");
    int64_t numel;
    try {
      numel = shape_numel(shape);
    } catch (const ShapeError&) {
      throw FormatError(where + " has shape " + shape_str(shape) + " with too many elements");
    }
    if (static_cast<uint64_t>(numel) > (end - begin) / info->itemsize ||
        static_cast<uint64_t>(numel) * info->itemsize != end - begin)
      throw FormatError(where + " has shape " + shape_str(shape) + " of " + dt + " but " + std::to_string(end - begin) +
                        " bytes of data");
    entries.push_back({name, info, std::move(shape), numel, begin, end});
  }
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  for (const Entry* e : by_offset) {
    if (e->begin != covered)
      throw FormatError(what + ": tensor '" + e->name + "' has data_offsets [" + std::to_string(e->begin) + ", " +
                        std::to_string(e->end) + "] but the tensors before it end at " + std::to_string(covered) +
                        (e->begin < covered ? " (tensors may not share bytes)" : " (a gap)"));
    covered = e->end;
  }
  if (covered != body_size)
    throw FormatError(what + ": the tensors cover " + std::to_string(covered) + " of the " + std::to_string(body_size) +
                      " bytes of data after the header");
  for (const Entry& e : entries) {
    const std::string& name = e.name;
    if (!name_prefix || name.compare(0, name_prefix->size(), *name_prefix) != 0) continue;  // not asked for: unread
    const std::string dt = e.info->name;
    const DTypeInfo* info = e.info;
    const int64_t numel = e.numel;
    Tensor t(e.shape, info->dtype);
    const uint8_t* src = body + e.begin;
    if (info->dtype == DType::kBFloat16 || info->dtype == DType::kFloat16) {  // kept as they are
      if (numel != 0) std::memcpy(t.raw(), src, static_cast<size_t>(numel) * 2);
      out.tensors[name] = std::move(t);
      continue;
    }
    if (dt == "F32") {  // as it is (little-endian, as this library's hosts)
      if (numel != 0) std::memcpy(t.raw(), src, static_cast<size_t>(numel) * 4);
      out.tensors[name] = std::move(t);
      continue;
    }
    for (int64_t i = 0; i < numel; ++i) {
      if (dt == "I64") {  // e.g. BERT's position_ids; exact below 2^24
        int64_t v;
        std::memcpy(&v, src + 8 * i, 8);
        t.f32()[i] = static_cast<float>(v);
      } else if (dt == "I32") {
        int32_t v;
        std::memcpy(&v, src + 4 * i, 4);
        t.f32()[i] = static_cast<float>(v);
      } else if (dt == "F64") {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        t.f32()[i] = static_cast<float>(d);
      } else {
        t.b8()[i] = src[i] ? 1 : 0;
      }
    }
    out.tensors[name] = std::move(t);
  }
  return out;
}
}  // namespace

Safetensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what,
                              const std::string& name_prefix) {
  return parse_checked(data, size, what, &name_prefix);
}

void widen_to_float32(std::map<std::string, Tensor>& tensors) {
  for (auto& [name, t] : tensors)
    if (t.dtype() == DType::kBFloat16 || t.dtype() == DType::kFloat16) t = to_dtype(t, DType::kFloat32);
}

namespace {
Safetensors read_checked(const std::string& path, const std::string* name_prefix) {
  Safetensors out;
  // a stream is read as far as its header says (8 + N + the end of the last tensor's bytes; parse_safetensors checks
  // the rest): /dev/zero fails at its empty header, not when memory runs out
  const auto stated = [&](const uint8_t* data, size_t size) -> size_t {
    if (size < 8) return kSizeUnknown;
    uint64_t n = header_length(data);
    if (n <= kMaxHeader && n > size - 8) return kSizeUnknown;
    const nlohmann::json header = parse_header(data, size, path, &n);
    uint64_t end = 0;
    for (const auto& [name, entry] : header.items())
      if (name != "__metadata__" && entry.contains("data_offsets") && entry["data_offsets"].is_array() &&
          entry["data_offsets"].size() == 2 && entry["data_offsets"][1].is_number_unsigned())
        end = std::max(end, std::min(entry["data_offsets"][1].get<uint64_t>(), uint64_t{1} << 60));
    return static_cast<size_t>(8 + n + end);
  };
  with_file_bytes(
      path, [&](const uint8_t* data, size_t size) { out = parse_checked(data, size, path, name_prefix); }, stated);
  return out;
}
}  // namespace

Safetensors read_safetensors(const std::string& path, const std::string& name_prefix) {
  return read_checked(path, &name_prefix);
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  return read_checked(path, nullptr).metadata;
}

std::vector<uint8_t> encode_safetensors(const std::map<std::string, Tensor>& tensors,
                                        const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) throw ArgumentError("write_safetensors: tensor '" + name + "' is empty (undefined)");
    // what the reader (this one, and the safetensors library) would refuse is refused here
    if (name == "__metadata__")
      throw ArgumentError("write_safetensors: a tensor may not be named '__metadata__' (the header's metadata key)");
    if (t.rank() > 32)
      throw ArgumentError("write_safetensors: tensor '" + name + "' has " + std::to_string(t.rank()) + " dimensions " +
                          shape_str(t.shape()) + "; the format's readers take at most 32");
    const char* dt = t.dtype() == DType::kFloat32    ? "F32"
                     : t.dtype() == DType::kBFloat16 ? "BF16"
                     : t.dtype() == DType::kFloat16  ? "F16"
                                                     : "BOOL";
    header[name] = {{"dtype", dt}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {  // a name or a metadata string that is not UTF-8
    throw ArgumentError("write_safetensors: a tensor name or metadata string is not valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeader)
    throw ArgumentError("write_safetensors: the header would be " + std::to_string(text.size()) +
                        " bytes; readers take at most 100 MiB");
  std::vector<uint8_t> out(8 + text.size());  // sized once (GCC 12 warned about insert after a size of 8)
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  std::copy(text.begin(), text.end(), out.begin() + 8);
  for (const auto& [name, t] : tensors) {
    const auto* raw = static_cast<const uint8_t*>(t.raw());
    out.insert(out.end(), raw, raw + t.nbytes());
  }
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomically(path, encode_safetensors(tensors, metadata));
}

}  // namespace attn::io
