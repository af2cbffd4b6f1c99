// src/io/json_fields.h: whole-number fields of JSON files, read exactly. nlohmann's own conversion truncates
// 2.5 to 2 and wraps 4294967297 to 1 in an int32; here a number that is not whole, or that does not fit the
// field's type, is a FormatError naming the key and the value.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "attn/error.h"

namespace attn::io {

// The nesting any configuration file (config.json, train_state.json, vocab.json, tokenizer settings) may have: their
// real depth is 1-3. nlohmann parses and destroys without recursion, but dump() and copies recurse once a level, so a
// file of 10^6 '[' had overflowed the stack (a crash no catch stops) when an error message printed the value.
inline constexpr int kMaxJsonDepth = 64;

// nlohmann::json::parse(text, ..., allow_exceptions) for a configuration file (`what` names it; empty where the
// caller adds the name): nesting deeper than kMaxJsonDepth is a FormatError while parsing; otherwise as nlohmann's (its
// parse_error, or a discarded value without exceptions).
inline nlohmann::json parse_json(const std::string& text, const std::string& what, bool allow_exceptions = true) {
  const auto bounded = [&what](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxJsonDepth)
      throw FormatError((what.empty() ? "" : what + ": ") + "JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                        " levels");
    return true;
  };
  return nlohmann::json::parse(text, bounded, allow_exceptions);
}

// Text from a file or a user for an error message: whole up to 80 bytes, else its first `keep` bytes (cut before a
// UTF-8 character that would not fit whole) and how long it was (a file's value is untrusted: it may be a string of
// megabytes, which had been echoed whole).
inline std::string text_excerpt(const std::string& text, size_t keep = 72) {
  if (text.size() <= 80) return text;
  size_t cut = keep;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "... (" + std::to_string(text.size()) + " bytes)";
}

// v as JSON text for an error message, excerpted as text_excerpt does.
inline std::string json_excerpt(const nlohmann::json& v) { return text_excerpt(v.dump()); }

// out = j[key] (which must exist: nlohmann's out_of_range otherwise, as j.at(key)).
template <class Int>
void read_integer(const nlohmann::json& j, const std::string& key, Int& out) {
  using Limits = std::numeric_limits<Int>;
  const nlohmann::json& v = j.at(key);
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(Limits::max())) {
      out = static_cast<Int>(u);
      return;
    }
  } else if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i >= static_cast<int64_t>(Limits::min()) &&
        (i < 0 || static_cast<uint64_t>(i) <= static_cast<uint64_t>(Limits::max()))) {
      out = static_cast<Int>(i);
      return;
    }
  } else if (v.is_number_float()) {  // 512.0 is 512; 2.5, 1e300 and NaN are refused below
    const double d = v.get<double>();
    if (d == std::floor(d) && d >= static_cast<double>(Limits::min()) && d <= static_cast<double>(Limits::max()) &&
        std::fabs(d) < 0x1p53) {
      out = static_cast<Int>(d);
      return;
    }
  }
  throw FormatError("\"" + key + "\" must be a whole number in [" + std::to_string(Limits::min()) + ", " +
                    std::to_string(Limits::max()) + "], got " + json_excerpt(v));
}

// out = j[key] when j has it; out keeps its value otherwise.
template <class Int>
void read_integer_if_present(const nlohmann::json& j, const std::string& key, Int& out) {
  if (j.contains(key)) read_integer(j, key, out);
}

}  // namespace attn::io
