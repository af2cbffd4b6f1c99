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

// Writes the page atomically (temporary file + rename).
void write_html_report(const std::string& path, const Report& report);

// A single heatmap [rows, cols] as a PNG, `cell` pixels per weight (white = 0 to dark blue = 1).
void write_heatmap_png(const std::string& path, const float* weights, int64_t rows, int64_t cols, int cell);

}  // namespace attn::cli
