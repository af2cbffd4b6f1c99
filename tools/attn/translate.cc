// attn translate / attn eval: the numbers-en-zh translation task from the command line (attn train: train.cc).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/train/trainer.h"
#include "attn/translator.h"
#include "common.h"
#include "model_path.h"

namespace attn::cli {

std::string resolve_model_dir(const std::string& flag) {
  namespace fs = std::filesystem;
  auto is_model = [](const fs::path& p) {
    // (one it cannot examine counts: the loader then names the error, not "not a model directory")
    return io::exists_or_unexaminable((p / "config.json").string()) &&
           io::exists_or_unexaminable((p / "model.safetensors").string());
  };
  if (!flag.empty()) {
    if (!is_model(flag))
      throw ArgumentError("--model " + flag + ": not a model directory (needs config.json and model.safetensors)");
    return flag;
  }
  if (const char* env = std::getenv("ATTN_MODEL"); env && *env) {
    if (!is_model(env)) throw ArgumentError("ATTN_MODEL=" + std::string(env) + ": not a model directory");
    return env;
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed = exe.parent_path() / ".." / "share" / "attn" / "models" / "numbers-en-zh";
    if (is_model(installed)) return installed.string();
  }
  if (is_model(ATTN_SOURCE_MODEL_DIR)) return ATTN_SOURCE_MODEL_DIR;
  throw ArgumentError("no model found: pass --model DIR (the repository ships models/numbers-en-zh)");
}

namespace {

// --quantize int8 or bf16 and --dtype bf16 all pick the projections' inference copies (Quantization); --quantize bf16
// is --dtype bf16 (as attn eval and attn bench translate spell it).
Translator load_translator(const std::string& flag, const std::string& quantize, const std::string& dtype = "f32") {
  const Quantization quantization = cli_quantization(dtype, quantize);
  return Translator::load(resolve_model_dir(flag), quantization);
}

struct TranslateArgs {
  std::string model, quantize = "none", dtype = "f32", kv_cache = "f32";
  TranslateOptions options;
  bool strict = false;
  bool length_penalty_given = false;  // on the command line, not the default
  std::vector<std::string> text;
};

// Standard input: a bad line (unknown word, empty, too long) is reported with its number and gives an
// empty output line, the rest are translated, and the exit status is non-zero at the end. A phrase
// outside the task's grammar is translated with a warning. --strict: either stops before any output.
void run_translate(const TranslateArgs& a) {
  if (a.options.beam < 1 || a.options.beam > 64)
    throw ArgumentError("--beam must be in [1, 64], got " + std::to_string(a.options.beam));
  if (!std::isfinite(a.options.length_penalty))
    throw ArgumentError("--length-penalty must be finite, got " + std::to_string(a.options.length_penalty));
  if (a.length_penalty_given && a.options.beam == 1)  // greedy decoding ranks nothing (a warning, as HF's generate)
    std::fprintf(stderr,
                 "attn: warning: --length-penalty ranks beam search's hypotheses; with --beam 1 (greedy) it "
                 "has no effect\n");
  const Translator translator = load_translator(a.model, a.quantize, a.dtype);
  TranslateOptions options = a.options;
  options.kv_cache = parse_kv_cache(a.kv_cache);
  const bool from_stdin = a.text.empty();
  std::vector<std::string> lines;
  if (from_stdin) {
    lines = read_stdin_lines();
    if (lines.empty())
      throw ArgumentError("no input: give the text as an argument or one sentence per line on standard input");
  } else {  // several words given without quotes: one sentence
    std::string joined;
    for (const auto& w : a.text) joined += (joined.empty() ? "" : " ") + w;
    lines = {joined};
  }
  LineErrors errors(from_stdin ? "line" : "", a.strict, a.strict || !from_stdin);
  std::vector<std::string> good;  // the normalised lines that can be translated
  for (size_t i = 0; i < lines.size(); ++i) {
    if (const auto not_utf8 = utf8_problem(lines[i])) {  // never echoed raw to the terminal
      errors.fail(i, *not_utf8);
      continue;
    }
    const std::string text = tasks::normalize_source(lines[i]);
    const std::optional<std::string> why = tasks::grammar_problem(text);
    try {
      translator.encode(text);
    } catch (const Error& e) {  // the grammar's reason for an unknown word also says how the task writes it
      errors.fail(i, why && why->rfind("unknown word", 0) == 0 ? *why : e.what());
      continue;
    }
    if (why) errors.warn(i, *why + (a.strict ? "" : "; translated anyway, but the model never saw such a phrase"));
    good.push_back(text);
  }
  const std::vector<std::string> out = good.empty() ? std::vector<std::string>() : translator.translate(good, options);
  for (size_t i = 0, next = 0; i < lines.size(); ++i)
    std::cout << (errors.failed(i) ? std::string() : out[next++]) << "\n";
  std::cout.flush();
  errors.finish(lines.size(), "empty lines");
}

struct EvalArgs {
  std::string model, task = "numbers-en-zh", split = "test", quantize = "none";
  int beam = 1;
  int64_t count = 2000;
  uint64_t seed = 1;
  bool show_errors = false;
};

void run_eval(const EvalArgs& a) {
  if (a.task != "numbers-en-zh") throw ArgumentError("--task: only numbers-en-zh exists, got '" + a.task + "'");
  const Translator translator = load_translator(a.model, a.quantize);
  const tasks::Split split = a.split == "test"         ? tasks::Split::kTest
                             : a.split == "validation" ? tasks::Split::kValidation
                                                       : tasks::Split::kTrain;
  const auto examples = tasks::make_examples(split, a.count,
                                             a.seed + (split == tasks::Split::kValidation ? 1
                                                       : split == tasks::Split::kTest     ? 2
                                                                                          : 0));
  std::vector<std::string> got;
  const double acc = train::exact_match(translator.model(), translator.vocab(), examples, a.beam, &got);
  int64_t right = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    right += got[i] == examples[i].target;
    if (a.show_errors && got[i] != examples[i].target)
      std::cout << examples[i].source << "\t" << examples[i].target << "\tgot " << got[i] << "\n";
  }
  std::printf("numbers-en-zh %s split: exact match %.2f%% (%lld / %lld), beam %d\n", a.split.c_str(), 100.0 * acc,
              static_cast<long long>(right), static_cast<long long>(examples.size()), a.beam);
}

}  // namespace

void add_translate(CLI::App& app) {
  auto t = std::make_shared<TranslateArgs>();
  CLI::App* sub =
      app.add_subcommand("translate",
                         "Translate English number words to Chinese numerals with an encoder-decoder Transformer.\n"
                         "With no text, reads one sentence per line from standard input (at most 1 GiB, 16 M lines).");
  sub->add_option("--model", t->model,
                  "model directory (config.json, model.safetensors, vocab.json); default: the shipped model");
  sub->add_option("--beam", t->options.beam, "beam width; 1 = greedy");
  CLI::Option* length_penalty =
      sub->add_option("--length-penalty", t->options.length_penalty,
                      "GNMT's alpha: beam search ranks log P / ((5 + length) / 6)^alpha; 0 = raw log-probability "
                      "(beam search only)")
          ->capture_default_str();
  sub->add_option("--quantize", t->quantize,
                  "none, int8 (int8 weights and activations, oneDNN GEMMs) or bf16 (the same as --dtype bf16)")
      ->check(CLI::IsMember({"none", "int8", "bf16"}));
  sub->add_option("--dtype", t->dtype,
                  "f32 or bf16: bf16 rounds every projection's weights and inputs to bfloat16 (float32 sums, oneDNN's "
                  "bf16 matmul; AVX512_BF16 where the CPU has it); attention and normalisation stay float32")
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--max-length", t->options.max_length,
                  "longest output in tokens (EOS included); default per sentence: 2 x its source tokens + 8, at most "
                  "the model's max_len")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--batch-size", t->options.batch_size,
                  "most sentences decoded together (and at most 64 hypotheses: sentences x beam)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-cache", t->kv_cache,
                  "how decoding stores keys and values: f32, bf16 or int8 (a scale per token and head)")
      ->check(CLI::IsMember({"f32", "bf16", "int8"}));
  sub->add_option("--threads", t->options.num_threads, "threads; 0 = all cores (or OMP_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("text", t->text, "the sentence, e.g. \"three hundred twelve\"");
  sub->add_flag("--strict", t->strict,
                "stop at the first bad line, before printing anything, and treat a phrase outside the task's grammar "
                "(e.g. \"ninety nine hundred\") as an error; without it a bad line of standard input gives an empty "
                "output line, an error on stderr and a non-zero exit status at the end, and such a phrase a warning");
  sub->callback([t, length_penalty] {
    t->length_penalty_given = length_penalty->count() > 0;
    run_translate(*t);
  });

  auto e = std::make_shared<EvalArgs>();
  CLI::App* ev = app.add_subcommand("eval", "Exact-match accuracy of a model on a split of the task");
  ev->add_option("--task", e->task, "the task (numbers-en-zh)");
  ev->add_option("--model", e->model, "model directory; default: the shipped model");
  ev->add_option("--split", e->split, "test, validation or train")
      ->check(CLI::IsMember({"test", "validation", "train"}));
  ev->add_option("--count", e->count, "examples")->check(CLI::Range(int64_t{1}, kMaxCount));
  ev->add_option("--beam", e->beam, "beam width; 1 = greedy")->check(CLI::Range(1, 64));  // as translate's
  ev->add_option("--quantize", e->quantize, "none, int8 or bf16")->check(CLI::IsMember({"none", "int8", "bf16"}));
  ev->add_option("--seed", e->seed, "data seed")->check(CLI::NonNegativeNumber);
  ev->add_flag("--show-errors", e->show_errors, "print the examples it gets wrong");
  ev->callback([e] { run_eval(*e); });
}

}  // namespace attn::cli
