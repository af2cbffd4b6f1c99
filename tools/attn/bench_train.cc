// attn bench train: target tokens per second of a whole training step (forward, label-smoothed
// cross-entropy, backward, clipping, AdamW) of a randomly initialised encoder-decoder Transformer on
// synthetic token batches. No data is read: every batch is B sentences of exactly src-len / tgt-len random
// tokens (no padding), drawn once, so the timed steps measure the model and the optimizer only.
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attn/blas.h"
#include "attn/error.h"
#include "attn/models/transformer.h"
#include "attn/train/trainer.h"
#include "common.h"

namespace attn::cli {
namespace {

struct TrainBench {
  // The shipped model's shape (models/numbers-en-zh/config.json) and vocabularies, and attn train's batch.
  TransformerConfig model = [] {
    TransformerConfig c;
    c.d_model = 128, c.num_heads = 4, c.d_ff = 256;
    c.num_encoder_layers = 3, c.num_decoder_layers = 3;
    c.src_vocab = 35, c.tgt_vocab = 19, c.dropout = 0.1f;
    return c;
  }();
  int64_t layers = 3, vocab = 0, batch = 64;
  // numbers-en-zh's mean lengths in attn train: 6.6 source tokens (words + EOS), 8.4 target tokens (characters
  // + EOS); its batches are bucketed by length, so they carry little padding
  int64_t src_len = 7, tgt_len = 8;
  int threads = 0, steps = 10, warmup = 3, repeat = 5;
  bool json = false;
};

// Random tokens in [3, V): never pad (0), BOS (1) or EOS (2), so no position is masked.
TokenBatch random_tokens(int64_t B, int64_t L, int64_t V, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> id(3, static_cast<int32_t>(V) - 1);
  TokenBatch t{std::vector<int32_t>(static_cast<size_t>(B * L)), B, L};
  for (int32_t& x : t.ids) x = id(rng);
  return t;
}

void run_train_bench(TrainBench a) {
  TransformerConfig& c = a.model;
  c.num_encoder_layers = c.num_decoder_layers = a.layers;
  if (a.vocab > 0) c.src_vocab = c.tgt_vocab = a.vocab;
  if (c.src_vocab < 4 || c.tgt_vocab < 4) throw ArgumentError("--vocab must be at least 4 (3 special tokens + 1)");
  if (a.src_len < 1 || a.tgt_len < 1) throw ArgumentError("--src-len and --tgt-len must be positive");
  if (c.src_vocab > std::numeric_limits<int32_t>::max())  // token ids are int32
    throw ArgumentError("--vocab " + std::to_string(c.src_vocab) + " is more than int32 token ids hold");
  // the batches' tokens: never a wrapped size (2^62 sentences had wrapped to an empty batch and crashed)
  constexpr int64_t kMaxTokens = int64_t{1} << 32;
  if (a.batch > kMaxTokens / std::max(a.src_len, a.tgt_len))
    throw ArgumentError("--batch " + std::to_string(a.batch) + " x --src-len " + std::to_string(a.src_len) +
                        " / --tgt-len " + std::to_string(a.tgt_len) + " is more than 2^32 tokens");
  c.max_len = std::max<int64_t>({c.max_len, a.src_len, a.tgt_len});
  const int threads = a.threads > 0 ? a.threads : omp_get_max_threads();
  omp_set_num_threads(threads);

  Transformer model(c, 1);
  train::TrainingStep step(model, train::StepOptions{});
  std::mt19937_64 data_rng(2), dropout_rng(3);
  const TokenBatch src = random_tokens(a.batch, a.src_len, c.src_vocab, data_rng);
  TokenBatch tgt_in = random_tokens(a.batch, a.tgt_len, c.tgt_vocab, data_rng);
  std::vector<int32_t> tgt_out(tgt_in.ids.size());
  for (int64_t b = 0; b < a.batch; ++b) {  // tgt_in = BOS y1 .. y(n-1); tgt_out = y1 .. yn
    int32_t* in = tgt_in.ids.data() + b * a.tgt_len;
    int32_t* out = tgt_out.data() + b * a.tgt_len;
    std::copy(in, in + a.tgt_len, out);
    std::copy_backward(in, in + a.tgt_len - 1, in + a.tgt_len);
    in[0] = c.bos_id;
  }
  const float lr = 1e-4f;
  float loss = 0.0f;
  for (int s = 0; s < a.warmup; ++s) loss = step.run(src, tgt_in, tgt_out, lr, dropout_rng);
  std::vector<double> per_s;
  const double tokens = static_cast<double>(a.batch * a.tgt_len) * a.steps;
  for (int r = 0; r < a.repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < a.steps; ++s) loss = step.run(src, tgt_in, tgt_out, lr, dropout_rng);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    per_s.push_back(tokens / seconds);
  }
  std::sort(per_s.begin(), per_s.end());
  const size_t n = per_s.size();
  const double median = n % 2 ? per_s[n / 2] : 0.5 * (per_s[n / 2 - 1] + per_s[n / 2]);
  const double step_ms = 1e3 * static_cast<double>(a.batch * a.tgt_len) / median;
  const std::string blas = blas_kernels();
  if (a.json) {
    std::printf(
        "{\"bench\": \"train\", \"d_model\": %lld, \"heads\": %lld, \"d_ff\": %lld, \"layers\": %lld, \"src_vocab\": "
        "%lld, \"tgt_vocab\": %lld, \"batch\": %lld, \"src_len\": %lld, \"tgt_len\": %lld, \"dropout\": %g, "
        "\"attention_dropout\": %g, \"threads\": %d, \"steps\": %d, \"repeat\": %d, \"parameters\": %lld, "
        "\"target_tokens_per_s\": %.1f, "
        "\"min_tokens_per_s\": %.1f, \"max_tokens_per_s\": %.1f, \"step_ms\": %.3f, \"loss\": %.4f, \"blas\": "
        "\"%s\"}\n",
        static_cast<long long>(c.d_model), static_cast<long long>(c.num_heads), static_cast<long long>(c.d_ff),
        static_cast<long long>(a.layers), static_cast<long long>(c.src_vocab), static_cast<long long>(c.tgt_vocab),
        static_cast<long long>(a.batch), static_cast<long long>(a.src_len), static_cast<long long>(a.tgt_len),
        static_cast<double>(c.dropout), static_cast<double>(c.attention_dropout), threads, a.steps, a.repeat,
        static_cast<long long>(model.num_parameters()), median, per_s.front(), per_s.back(), step_ms,
        static_cast<double>(loss), blas.c_str());
  } else {
    std::printf(
        "train step (forward, loss, backward, AdamW): d_model %lld, %lld heads, d_ff %lld, %lld+%lld layers, "
        "%lld parameters\n  batch %lld x (src %lld, tgt %lld) tokens, dropout %g (attention %g), %d threads, %d steps "
        "x %d "
        "repeats\n"
        "  median %.1f target tokens/s (min %.1f, max %.1f), %.2f ms a step   blas %s\n",
        static_cast<long long>(c.d_model), static_cast<long long>(c.num_heads), static_cast<long long>(c.d_ff),
        static_cast<long long>(a.layers), static_cast<long long>(a.layers),
        static_cast<long long>(model.num_parameters()), static_cast<long long>(a.batch),
        static_cast<long long>(a.src_len), static_cast<long long>(a.tgt_len), static_cast<double>(c.dropout),
        static_cast<double>(c.attention_dropout), threads, a.steps, a.repeat, median, per_s.front(), per_s.back(),
        step_ms, blas.c_str());
  }
  // The linear layers' GEMMs are most of a step: say when OpenBLAS runs less than the processor has
  if (!blas_kernels_match_cpu()) {
    const char* coretype = std::getenv("OPENBLAS_CORETYPE");
    std::fprintf(stderr,
                 "note: OpenBLAS runs its %s kernels (OPENBLAS_CORETYPE=%s) on a processor with AVX-512: its AVX-512 "
                 "ones (OPENBLAS_CORETYPE=SkylakeX or Cooperlake, or its own choice) may be up to twice as fast "
                 "(attn/blas.h)\n",
                 blas.c_str(), coretype != nullptr ? coretype : "unset");
  }
}

}  // namespace

void add_bench_train(CLI::App& bench) {
  auto a = std::make_shared<TrainBench>();
  CLI::App* tr = bench.add_subcommand(
      "train",
      "target tokens/s of a training step (forward, backward, AdamW) of a random Transformer on synthetic batches");
  tr->add_option("--d-model", a->model.d_model, "embedding size (default: the shipped model's)")
      ->check(CLI::PositiveNumber);
  tr->add_option("--heads", a->model.num_heads, "attention heads")->check(CLI::PositiveNumber);
  tr->add_option("--d-ff", a->model.d_ff, "feed-forward size")->check(CLI::PositiveNumber);
  tr->add_option("--layers", a->layers, "encoder layers and decoder layers (each)")->check(CLI::NonNegativeNumber);
  tr->add_option("--vocab", a->vocab, "source and target vocabulary size (default: the shipped 35 and 19)")
      ->check(CLI::NonNegativeNumber);
  tr->add_option("--batch", a->batch, "sentences per batch (attn train's default)")->check(CLI::PositiveNumber);
  tr->add_option("--src-len", a->src_len, "source tokens per sentence")->check(CLI::PositiveNumber);
  tr->add_option("--tgt-len", a->tgt_len, "target tokens per sentence (the tokens counted)")
      ->check(CLI::PositiveNumber);
  tr->add_option("--dropout", a->model.dropout, "dropout on residuals, feed-forward and embeddings")
      ->check(CLI::Range(0.0, 0.99));
  tr->add_option("--attention-dropout", a->model.attention_dropout, "dropout on attention weights")
      ->check(CLI::Range(0.0, 0.99));
  tr->add_option("--threads", a->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  tr->add_option("--steps", a->steps, "training steps per timed run")->check(CLI::PositiveNumber);
  tr->add_option("--warmup", a->warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  tr->add_option("--repeat", a->repeat, "timed runs (the median is printed)")->check(CLI::PositiveNumber);
  tr->add_flag("--json", a->json, "one JSON line");
  tr->callback([a] { run_train_bench(*a); });
}

}  // namespace attn::cli
