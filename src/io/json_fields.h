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
                    std::to_string(Limits::max()) + "], got " + v.dump());
}

// out = j[key] when j has it; out keeps its value otherwise.
template <class Int>
void read_integer_if_present(const nlohmann::json& j, const std::string& key, Int& out) {
  if (j.contains(key)) read_integer(j, key, out);
}

}  // namespace attn::io
