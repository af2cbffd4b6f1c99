// Shared helpers of the attn subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attn/attention.h"
#include "attn/tensor.h"
#include "attn/text/wordpiece.h"

namespace attn::cli {

// The most sentences a --count may ask for (eval, bench translate, bench embed): 2^24, far past any test split,
// and never a size that fails inside std::vector ("vector::reserve").
inline constexpr int64_t kMaxCount = int64_t{1} << 24;

// Reads a .npy given on the command line; errors name the flag ("--q Q.npy: ...").
Tensor load_npy_flag(const std::string& flag, const std::string& path);

// One .npy output of a command: the flag that named it, its path, the tensor.
struct OutputFile {
  std::string flag, path;
  Tensor tensor;
};
// Writes every output or none (io::FileSet): all go to temporary files first, then are renamed into place; on any
// failure the temporaries are removed and the error is rethrown. Two outputs naming one file, or a directory, are
// refused before anything is written (commands also call io::check_output_paths before their work).
void write_outputs(const std::vector<OutputFile>& outputs);

// Standard input's lines (a "\r\n" ending too; a last line without a newline counts). At most kMaxStdinBytes and
// kMaxStdinLines: past either an error, where an endless source (`< /dev/zero`, `yes |`) had been read until
// the machine ran out of memory.
inline constexpr size_t kMaxStdinBytes = size_t{1} << 30;
inline constexpr size_t kMaxStdinLines = size_t{1} << 24;
std::vector<std::string> read_stdin_lines();
// The same for a file (`what` names it in errors).
std::vector<std::string> read_lines(const std::string& path, const std::string& what);

// Why `s` is not valid UTF-8 (the first bad byte and its offset), or nullopt when it is (the library's).
using text::utf8_problem;

// Inputs read one per line, where a bad one costs only itself. Every problem goes to stderr as it is
// found, numbered by `unit` ("attn: error: line 2: ...", "attn: warning: line 3: ..."; no number when
// unit is empty); the command writes a placeholder in each failed item's place and calls finish(),
// which ends it with a non-zero exit status if any item failed. stop_at_error (--strict, or inputs given
// as arguments): the first error throws ArgumentError at once, before anything is written;
// strict_warnings (--strict): so does the first warning.
class LineErrors {
 public:
  LineErrors(std::string unit, bool strict_warnings, bool stop_at_error)
      : unit_(std::move(unit)), strict_warnings_(strict_warnings), stop_at_error_(stop_at_error) {}
  void fail(size_t i, const std::string& why);  // item i (0-based) is unusable
  void warn(size_t i, const std::string& why);  // item i is usable but suspect
  bool failed(size_t i) const { return i < failed_.size() && failed_[i]; }
  // Throws ArgumentError naming the failed items of `count` and what stands in their place ("empty lines").
  void finish(size_t count, const std::string& placeholder) const;

 private:
  std::string where(size_t i) const;
  std::string unit_;
  bool strict_warnings_, stop_at_error_;
  std::vector<bool> failed_;  // [items seen], true where fail() was called
};

// A message for the terminal: C0 controls other than tab and newline, DEL and the C1 controls (U+0080..U+009F) escaped
// as \xNN / \uNNNN, so that text from the input (an unknown word holding ESC [2J) cannot drive the terminal.
std::string terminal_safe(const std::string& message);

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
void add_bench_train(CLI::App& bench);  // attn bench train (bench_train.cc)
void add_translate(CLI::App& app);      // translate and eval
void add_train(CLI::App& app);
void add_viz(CLI::App& app);
void add_embed(CLI::App& app);  // embed and similar

// Benchmarks: a tensor of uniform [-1, 1) floats drawn from `seed`, and this process's peak resident set in MB.
Tensor random_tensor(Shape shape, uint64_t seed);
double peak_rss_mb();

}  // namespace attn::cli
