// The library's translation façade (attn/translator.h) over generation (attn/generation.h).
#include "attn/translator.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <exception>
#include <filesystem>
#include <numeric>

#include "attn/error.h"
#include "cpu/threads.h"

namespace attn {

Translator::Translator(std::shared_ptr<const Transformer> model, tasks::Vocab vocab)
    : model_(std::move(model)), vocab_(std::move(vocab)) {
  const TransformerConfig& c = model_->config();
  if (c.pad_id != 0 || c.bos_id != 1 || c.eos_id != 2)  // the ids tasks::Vocab reads and writes
    throw FormatError("Translator: the model's pad/bos/eos ids are " + std::to_string(c.pad_id) + "/" +
                      std::to_string(c.bos_id) + "/" + std::to_string(c.eos_id) + "; the vocabulary's are 0/1/2");
  if (static_cast<int64_t>(vocab_.src.size()) != c.src_vocab || static_cast<int64_t>(vocab_.tgt.size()) != c.tgt_vocab)
    throw FormatError("Translator: the vocabulary has " + std::to_string(vocab_.src.size()) + " source and " +
                      std::to_string(vocab_.tgt.size()) + " target tokens, the model " + std::to_string(c.src_vocab) +
                      " and " + std::to_string(c.tgt_vocab));
}

Translator::Translator(Transformer model, tasks::Vocab vocab)
    : Translator(std::make_shared<const Transformer>(std::move(model)), std::move(vocab)) {}

Translator Translator::borrowing(const Transformer& model, tasks::Vocab vocab) {
  return Translator(std::shared_ptr<const Transformer>(&model, [](const Transformer*) {}), std::move(vocab));
}

Translator Translator::load(const std::string& dir, Quantization quantization) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw FileError("model directory " + dir + (fs::exists(dir, ec) ? " is not a directory" : " does not exist"),
                    fs::exists(dir, ec) ? ENOTDIR : ENOENT);
  try {
    Transformer model = Transformer::load(dir);
    // An owned model never trains: float32 takes the inference layout (Quantization::kFloat32).
    model.quantize(quantization == Quantization::kNone ? Quantization::kFloat32 : quantization);
    return Translator(std::move(model), tasks::Vocab::load(dir));
  } catch (const FileError& e) {  // the errno kept (Python: FileNotFoundError, PermissionError, ...)
    throw FileError("model directory " + dir + ": " + e.what(), e.error_number());
  } catch (const Error& e) {
    throw FormatError("model directory " + dir + ": " + e.what());
  }
}

std::vector<int32_t> Translator::encode(const std::string& sentence) const {
  return vocab_.encode_source(tasks::normalize_source(sentence), model_->config().max_len);
}

std::vector<std::string> Translator::translate(const std::vector<std::string>& sentences,
                                               const TranslateOptions& options) const {
  if (options.beam < 1 || options.beam > kMaxBeam)
    throw ArgumentError("translate: beam must be in [1, " + std::to_string(kMaxBeam) + "], got " +
                        std::to_string(options.beam));
  if (options.batch_size < 1)
    throw ArgumentError("translate: batch_size must be >= 1, got " + std::to_string(options.batch_size));
  if (options.max_length < 0)
    throw ArgumentError("translate: max_length must be >= 0, got " + std::to_string(options.max_length));
  if (options.num_threads < 0)
    throw ArgumentError("translate: num_threads must be >= 0, got " + std::to_string(options.num_threads));
  if (!std::isfinite(options.length_penalty))  // (named here, not as generate's)
    throw ArgumentError("translate: length_penalty must be finite, got " + std::to_string(options.length_penalty));
  const TransformerConfig& c = model_->config();
  std::vector<std::vector<int32_t>> ids;
  ids.reserve(sentences.size());
  for (const std::string& s : sentences) ids.push_back(encode(s));  // every sentence checked before any work
  // longest first, ties in input order: batches of similar lengths pad (and decode) less
  std::vector<size_t> order(ids.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() > ids[b].size(); });
  const detail::ThreadScope threads(options.num_threads);
  std::vector<std::string> out(sentences.size());
  // At most kStepHypotheses hypotheses (sentences × beam) decode together, greedy included (beam 4: 16
  // sentences; beam > 64: one): every step reads each one's caches, and beyond this the step's working set falls
  // out of the CPU's caches (shipped model, 1 thread: beam 4 in batches of 16 sentences 20–28% faster than in
  // batches of 64; greedy best at 64, 12–18% slower at 256).
  constexpr int64_t kStepHypotheses = 64;
  const size_t batch =
      static_cast<size_t>(std::min(options.batch_size, std::max<int64_t>(1, kStepHypotheses / options.beam)));
  const size_t batches = (order.size() + batch - 1) / batch;
  // every batch decodes with these; an <unk> would vanish from the text (decode_target shows only real characters),
  // so it is never chosen
  GenerationOptions shared;
  shared.beam = options.beam;
  shared.length_penalty = options.length_penalty;
  shared.kv_cache = options.kv_cache;
  for (size_t id = 0; id < vocab_.tgt.size(); ++id)
    if (vocab_.tgt[id] == "<unk>") shared.suppress_tokens.push_back(static_cast<int32_t>(id));
  const auto translate_batch = [&](size_t i) {  // sentences order[i, i + n)
    const size_t n = std::min(order.size() - i, batch);
    const int64_t L = static_cast<int64_t>(ids[order[i]].size());  // the longest source of the batch
    // src: [n, L], padded
    TokenBatch src{std::vector<int32_t>(n * static_cast<size_t>(L), c.pad_id), static_cast<int64_t>(n), L};
    for (size_t b = 0; b < n; ++b) {
      const std::vector<int32_t>& row = ids[order[i + b]];
      std::copy(row.begin(), row.end(), src.ids.begin() + static_cast<std::ptrdiff_t>(b * static_cast<size_t>(L)));
    }
    GenerationOptions g = shared;
    // each sentence's own limit, whatever its batch (the batch still sets the GEMMs' row counts, and with them which
    // kernel runs: sums may differ in their last bits from batch to batch, which can only matter at near-ties)
    for (size_t b = 0; b < n; ++b) {
      const int64_t Li = static_cast<int64_t>(ids[order[i + b]].size());
      g.max_lengths.push_back(std::min(options.max_length > 0 ? options.max_length : 2 * Li + 8, c.max_len));
    }
    const std::vector<std::vector<int32_t>> best = generate(*model_, src, g);
    for (size_t b = 0; b < n; ++b) out[order[i + b]] = vocab_.decode_target(best[b]);
  };
  // Several batches and threads: each thread decodes whole batches on its own (CTranslate2's inter_threads),
  // its kernels on one thread: a decoding step's operations are too small to share between threads without
  // waiting on each other more than they compute. One batch: its operations use every thread.
  const int workers = static_cast<int>(std::min<size_t>(static_cast<size_t>(omp_get_max_threads()), batches));
  if (workers <= 1) {
    for (size_t i = 0; i < order.size(); i += batch) translate_batch(i);
    return out;
  }
  std::exception_ptr error;
#pragma omp parallel num_threads(workers)
  {
    omp_set_num_threads(1);  // this thread's kernels, BLAS and oneDNN
#pragma omp for schedule(dynamic, 1)
    for (size_t k = 0; k < batches; ++k) {
      try {
        translate_batch(k * batch);
      } catch (...) {
#pragma omp critical(attn_translate_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

std::string Translator::translate(const std::string& sentence, const TranslateOptions& options) const {
  return translate(std::vector<std::string>{sentence}, options)[0];
}

}  // namespace attn
