#include "common.h"

#include <sys/resource.h>

#include <cstdio>
#include <iostream>
#include <random>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/npy.h"

namespace attn::cli {

Tensor load_npy_flag(const std::string& flag, const std::string& path) {
  try {
    return io::read_npy(path);
  } catch (const AllocationError& e) {  // (exit status 3, as any exhausted memory: not a bad file)
    throw AllocationError(flag + " " + path + ": " + e.what());
  } catch (const Error& e) {
    throw FormatError(flag + " " + path + ": " + e.what());
  }
}

void write_outputs(const std::vector<OutputFile>& outputs) {
  io::FileSet files;
  for (const OutputFile& o : outputs) files.add(o.flag, o.path, io::encode_npy(o.tensor));
  files.commit();
}

namespace {
std::vector<std::string> split_lines(const std::string& text, const std::string& what) {
  std::vector<std::string> lines;
  // a UTF-8 byte-order mark (files saved by some editors) is not part of line 1 (it had made "one" an unknown word)
  const size_t start = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  for (size_t at = start; at < text.size();) {  // a last line without a newline counts
    if (lines.size() >= kMaxStdinLines)
      throw ArgumentError(what + ": more than " + std::to_string(kMaxStdinLines) + " lines; give them in parts");
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(at, end - at);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    at = end + 1;
  }
  return lines;
}
}  // namespace

// (descriptor 0 itself: /dev/stdin reopened had failed for a socket, and had started a half-read file over)
std::vector<std::string> read_stdin_lines() {
  return split_lines(io::read_standard_input(kMaxStdinBytes), "standard input");
}

std::vector<std::string> read_lines(const std::string& path, const std::string& what) {
  // io::read_text reads a pipe to its end too, and stops past its cap (a FormatError naming the path)
  return split_lines(io::read_text(path, kMaxStdinBytes), what);
}

std::string LineErrors::where(size_t i) const {
  return unit_.empty() ? std::string() : unit_ + " " + std::to_string(i + 1) + ": ";
}

std::string terminal_safe(const std::string& message) {
  std::string out;
  out.reserve(message.size());
  char code[8];
  for (size_t i = 0; i < message.size(); ++i) {
    const auto c = static_cast<unsigned char>(message[i]);
    const auto next = i + 1 < message.size() ? static_cast<unsigned char>(message[i + 1]) : 0;
    if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) {
      std::snprintf(code, sizeof code, "\\x%02X", c);
      out += code;
    } else if (c == 0xC2 && next >= 0x80 && next <= 0x9F) {  // a C1 control in UTF-8
      std::snprintf(code, sizeof code, "\\u%04X", next);
      out += code;
      ++i;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void LineErrors::fail(size_t i, const std::string& why) {
  if (stop_at_error_) throw ArgumentError(where(i) + why);
  std::cerr << "attn: error: " << terminal_safe(where(i) + why) << "\n";
  if (failed_.size() <= i) failed_.resize(i + 1, false);
  failed_[i] = true;
}

void LineErrors::warn(size_t i, const std::string& why) {
  if (strict_warnings_) throw ArgumentError(where(i) + why + " (an error under --strict)");
  std::cerr << "attn: warning: " << terminal_safe(where(i) + why) << "\n";
}

void LineErrors::finish(size_t count, const std::string& placeholder) const {
  std::string list;
  size_t n = 0;
  for (size_t i = 0; i < failed_.size(); ++i) {
    if (!failed_[i]) continue;
    if (++n <= 10)
      list += (list.empty() ? "" : ", ") + std::to_string(i + 1);
    else if (n == 11)
      list += ", ...";
  }
  if (n == 0) return;
  throw ArgumentError(std::to_string(n) + " of " + std::to_string(count) + " " + unit_ + "s failed (" + unit_ +
                      (n > 1 ? "s " : " ") + list + "), reported above; " + placeholder + " stand in their place");
}

int display_width(const std::string& s) {
  int w = 0;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp = c;
    int len = 1;
    if (c >= 0xF0)
      len = 4, cp = c & 0x07;
    else if (c >= 0xE0)
      len = 3, cp = c & 0x0F;
    else if (c >= 0xC0)
      len = 2, cp = c & 0x1F;
    for (int k = 1; k < len && i + static_cast<size_t>(k) < s.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3F);
    i += static_cast<size_t>(len);
    // East Asian wide ranges (CJK, Hangul, full-width forms)
    const bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) ||
                      (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
                      (cp >= 0xFF00 && cp <= 0xFF60) || (cp >= 0xFFE0 && cp <= 0xFFE6);
    w += wide ? 2 : 1;
  }
  return w;
}

std::string pad(const std::string& s, int width, bool right_align) {
  const int fill = width - display_width(s);
  if (fill <= 0) return s;
  return right_align ? std::string(static_cast<size_t>(fill), ' ') + s
                     : s + std::string(static_cast<size_t>(fill), ' ');
}

void print_weight_matrix(const float* w, int64_t rows, int64_t cols, const std::vector<std::string>& row_labels,
                         const std::vector<std::string>& col_labels) {
  static const char* kShades[] = {" ", "░", "▒", "▓", "█"};
  int label_w = 0;
  for (const auto& l : row_labels) label_w = std::max(label_w, display_width(l));
  const int cell = 8;  // "  " + two shade glyphs + "0.00"
  std::cout << "      " << pad("", label_w);
  for (int64_t j = 0; j < cols; ++j) std::cout << pad(col_labels[static_cast<size_t>(j)], cell, true);
  std::cout << "\n";
  for (int64_t i = 0; i < rows; ++i) {
    std::cout << "      " << pad(row_labels[static_cast<size_t>(i)], label_w);
    for (int64_t j = 0; j < cols; ++j) {
      const float v = w[i * cols + j];
      const int shade = v <= 0.0f ? 0 : std::min(4, 1 + static_cast<int>(v * 4.0f));
      char num[16];
      std::snprintf(num, sizeof num, "%.2f", static_cast<double>(v));
      std::cout << "  " << kShades[shade] << kShades[shade] << num;
    }
    std::cout << "\n";
  }
}

Tensor random_tensor(Shape shape, uint64_t seed) {
  Tensor t(std::move(shape));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

}  // namespace attn::cli
