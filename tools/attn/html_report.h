// Self-contained HTML pages of attention maps (canvas + plain JavaScript, nothing fetched), and PNG
// heatmaps (libpng).
#pragma once

#include <string>
#include <vector>

#include "attn/tensor.h"

namespace attn::cli {

struct AttentionMap {
  std::string section;                  // e.g. "Encoder self-attention"
  std::string name;                     // e.g. "layer 0"
  std::vector<std::string> rows, cols;  // query tokens, key tokens
  Tensor weights;                       // [H, Lq, Lk] exact weights; the page adds the head average
  std::string note;                     // shapes, mask, Q/K/V sources (optional)
};

struct Report {
  std::string title;
  std::vector<std::string> intro;  // paragraphs
  std::vector<AttentionMap> maps;
};

// The page's bytes (ShapeError where a map's weights do not match its tokens), and the page written atomically
// (temporary file + rename).
std::vector<uint8_t> html_report_bytes(const Report& report);
void write_html_report(const std::string& path, const Report& report);

// A single heatmap, weights [rows, cols], as the bytes of a PNG, `cell` pixels per weight (white = 0 to dark blue =
// 1). ArgumentError for an empty map or one over 16384 pixels a side.
std::vector<uint8_t> heatmap_png_bytes(const float* weights, int64_t rows, int64_t cols, int cell);

}  // namespace attn::cli
