// The library's translation façade (attn/translator.h) over generation (attn/generation.h).
#include "attn/translator.h"

#include <algorithm>
#include <filesystem>

#include "attn/error.h"

namespace attn {

Translator::Translator(std::shared_ptr<const Transformer> model, tasks::Vocab vocab)
    : model_(std::move(model)), vocab_(std::move(vocab)) {
  const TransformerConfig& c = model_->config();
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

Translator Translator::load(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw FormatError("model directory " + dir + " does not exist");
  tasks::Vocab vocab = tasks::Vocab::load(dir);
  try {
    return Translator(Transformer::load(dir), std::move(vocab));
  } catch (const Error& e) {
    throw FormatError("model directory " + dir + ": " + e.what());
  }
}

std::vector<int32_t> Translator::encode(const std::string& sentence) const {
  return vocab_.encode_source(tasks::normalize_source(sentence), model_->config().max_len);
}

std::vector<std::string> Translator::translate(const std::vector<std::string>& sentences,
                                               const TranslateOptions& options) const {
  if (options.beam < 1) throw ArgumentError("translate: beam must be >= 1, got " + std::to_string(options.beam));
  if (options.batch_size < 1)
    throw ArgumentError("translate: batch_size must be >= 1, got " + std::to_string(options.batch_size));
  if (options.max_length < 0)
    throw ArgumentError("translate: max_length must be >= 0, got " + std::to_string(options.max_length));
  const TransformerConfig& c = model_->config();
  std::vector<std::vector<int32_t>> ids;
  ids.reserve(sentences.size());
  for (const std::string& s : sentences) ids.push_back(encode(s));  // every sentence checked before any work
  std::vector<std::string> out;
  out.reserve(sentences.size());
  for (size_t i = 0; i < ids.size(); i += static_cast<size_t>(options.batch_size)) {
    const size_t n = std::min(ids.size() - i, static_cast<size_t>(options.batch_size));
    int64_t L = 0;
    for (size_t j = i; j < i + n; ++j) L = std::max<int64_t>(L, static_cast<int64_t>(ids[j].size()));
    // src: [n, L], padded
    TokenBatch src{std::vector<int32_t>(n * static_cast<size_t>(L), c.pad_id), static_cast<int64_t>(n), L};
    for (size_t b = 0; b < n; ++b)
      std::copy(ids[i + b].begin(), ids[i + b].end(),
                src.ids.begin() + static_cast<std::ptrdiff_t>(b * static_cast<size_t>(L)));
    GenerationOptions g;
    g.beam = options.beam;
    g.length_penalty = options.length_penalty;
    g.max_length = std::min(options.max_length > 0 ? options.max_length : 2 * L + 8, c.max_len);
    for (const std::vector<int32_t>& y : generate(*model_, src, g)) out.push_back(vocab_.decode_target(y));
  }
  return out;
}

std::string Translator::translate(const std::string& sentence, const TranslateOptions& options) const {
  return translate(std::vector<std::string>{sentence}, options)[0];
}

}  // namespace attn
