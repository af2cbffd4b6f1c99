// attn/io/file.h: whole-file reads with a size cap, and atomic writes (what the readers and writers of
// attn use; public so tools and bindings write their files the same way).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace attn::io {

// The file's bytes; FormatError if it cannot be read.
std::vector<uint8_t> read_file(const std::string& path);
// Calls f(data, size) with the whole file mapped read-only (no copy: a model file's pages come straight from
// the page cache), or read into memory where it cannot be mapped; FormatError as read_file.
void with_file_bytes(const std::string& path, const std::function<void(const uint8_t*, size_t)>& f);
// The file as text (configs, vocabularies, training state); FormatError if it cannot be read.
std::string read_text(const std::string& path);
// Writes `bytes` to path + ".tmp-XXXX" and renames it onto `path`; on failure removes the temporary
// and throws attn::Error, so `path` is either the complete new file or untouched.
void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace attn::io
