// attn/translator.h: the one translation path (the CLI, Python, the examples and `attn eval` use it):
// a model directory, its vocabulary, input normalisation and validation, batches and beam search.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "attn/generation.h"
#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"

namespace attn {

struct TranslateOptions {
  int beam = 1;                 // 1 = greedy
  float length_penalty = 0.6f;  // GNMT's alpha (beam search)
  // Longest output in target tokens, EOS included; 0 = derived from each sentence: 2 × its source tokens
  // (EOS included) + 8, capped at the model's max_len (64 for the shipped model; the longest number, 27
  // words, gives at most 17 characters). Each sentence has its own limit, whatever its batch.
  int64_t max_length = 0;
  // Sentences decoded together, at most; batches are formed by source length. At most 64 hypotheses (sentences ×
  // beam) decode at a time, greedy included (beam 4: 16 sentences; beam > 64: one sentence): a step reads every
  // hypothesis' caches, and more than 64 of them decoded slower (greedy at 256: 0.82–0.88× the speed at 64).
  int64_t batch_size = 64;
  // OpenMP threads (the kernels' and, with OpenBLAS's OpenMP build, BLAS's) while translating; 0 = the current
  // setting. It is the calling thread's setting: concurrent translations from several threads may use different
  // values (OpenBLAS keeps one global count, which attn changes only while no other GEMM of its own is running).
  int num_threads = 0;
  KVCacheType kv_cache = KVCacheType::kFloat32;  // how decoding stores keys and values (int8: 4x fewer bytes)
};

// Its const methods may run on one Translator from several threads at once (their scratch and KV caches are per
// thread; each thread that decodes keeps its cache pool, up to 256 MiB, for its next call: the calling threads and,
// where batches decode in parallel, the OpenMP workers each one's calls start, which live as long as it does). The
// same OpenBLAS used by another library at another thread count during a call is outside that promise (OpenBLAS
// keeps one global count).
class Translator {
 public:
  // model_dir holds config.json and model.safetensors, and vocab.json (else the numbers task's
  // vocabulary). Throws FormatError naming the directory for a missing or bad file (a FileError, the
  // FormatError with the errno, where the system refused to open or read one).
  // quantization kInt8: int8 projections (Transformer::quantize).
  static Translator load(const std::string& model_dir, Quantization quantization = Quantization::kNone);
  Translator(Transformer model, tasks::Vocab vocab);
  // A translator over a model it does not own (the trainer's, while it trains): keep `model` alive.
  static Translator borrowing(const Transformer& model, tasks::Vocab vocab);

  // The source ids of one sentence, normalised first (tasks::normalize_source: lower case, single spaces);
  // throws ArgumentError naming the unknown word, an empty sentence or one longer than the model takes.
  std::vector<int32_t> encode(const std::string& sentence) const;
  // One translation per sentence, in input order. Sentences are decoded in batches of similar source length
  // (less padding, and a batch ends when its longest output does). Throws as encode() does for the first bad
  // sentence, before any work.
  std::vector<std::string> translate(const std::vector<std::string>& sentences,
                                     const TranslateOptions& options = {}) const;
  std::string translate(const std::string& sentence, const TranslateOptions& options = {}) const;
  // translate({"one", "two"}) (a brace list would otherwise also read as std::string's iterator pair)
  std::vector<std::string> translate(std::initializer_list<std::string> sentences,
                                     const TranslateOptions& options = {}) const {
    return translate(std::vector<std::string>(sentences), options);
  }

  const Transformer& model() const { return *model_; }
  const tasks::Vocab& vocab() const { return vocab_; }

 private:
  Translator(std::shared_ptr<const Transformer> model, tasks::Vocab vocab);
  std::shared_ptr<const Transformer> model_;
  tasks::Vocab vocab_;
};

}  // namespace attn
