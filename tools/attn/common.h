// Shared helpers of the attn subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <utility>
#include <vector>

#include "attn/attention.h"
#include "attn/tensor.h"

namespace attn::cli {

// Reads a .npy given on the command line; errors name the flag ("--q Q.npy: ...").
Tensor load_npy_flag(const std::string& flag, const std::string& path);

// Writes every (path, tensor) pair or none: all go to temporary files first, then are renamed into
// place; on any failure the temporaries are removed and the error is rethrown.
void write_outputs(const std::vector<std::pair<std::string, Tensor>>& outputs);


// Display width of a UTF-8 string in a terminal (CJK characters take two columns).
int display_width(const std::string& utf8);
// Pads to `width` columns on the right (or left when right_align).
std::string pad(const std::string& utf8, int width, bool right_align = false);

// Prints an attention-weight matrix with row and column labels, a shade per cell and the value.
void print_weight_matrix(const float* w, int64_t rows, int64_t cols, const std::vector<std::string>& row_labels,
                         const std::vector<std::string>& col_labels);

// The subcommands; each adds itself to `app`.
void add_explain(CLI::App& app);
void add_sdpa(CLI::App& app);
void add_mha(CLI::App& app);
void add_bench(CLI::App& app);
void add_translate(CLI::App& app);  // translate and eval
void add_train(CLI::App& app);
void add_viz(CLI::App& app);
void add_embed(CLI::App& app);  // embed and similar

}  // namespace attn::cli
