// attn bench: times scaled_dot_product_attention and MultiHeadAttention on random inputs.
// Prints the median, min and max of --repeat runs (after one warm-up run) and GFLOP/s.
#include <sys/resource.h>

#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include <random>
#include <tuple>

#include "attn/attention.h"
#include "attn/error.h"
#include "attn/layers/decode_cache.h"
#include "attn/layers/multi_head_attention.h"
#include "attn/models/bert.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/translator.h"
#include "common.h"
#include "model_path.h"

namespace attn::cli {
namespace {

template <class F>
std::vector<double> time_runs(int repeat, F&& f, int warmup = 1) {
  for (int w = 0; w < warmup; ++w) f();  // warm-up: first touches, thread pool start
  std::vector<double> ms;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms;
}

// The median of sorted times (the mean of the middle two for an even count).
double median_of(const std::vector<double>& ms) {
  return ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
}

void report(const char* what, const std::string& shape, const std::vector<double>& ms, double flops, bool json,
            const std::string& extra_json, const char* isa = fused_kernel_isa()) {
  const double median = median_of(ms);
  const double gflops = flops / (median * 1e-3) / 1e9;
  if (json) {
    std::printf(
        "{\"bench\": \"%s\", %s, \"median_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"gflops\": %.2f, "
        "\"peak_rss_mb\": %.1f, \"simd\": \"%s\"%s}\n",
        what, shape.c_str(), median, ms.front(), ms.back(), gflops, peak_rss_mb(), isa, extra_json.c_str());
  } else {
    std::printf("%s  %s\n  median %.3f ms   min %.3f ms   max %.3f ms   %.1f GFLOP/s   peak RSS %.0f MB   simd %s\n",
                what, shape.c_str(), median, ms.front(), ms.back(), gflops, peak_rss_mb(), isa);
  }
}

struct SdpaBench {
  int64_t batch = 1, heads = 8, kv_heads = 0, q_len = 1024, kv_len = 0, head_dim = 64;
  bool causal = false, json = false, backward = false;
  bool no_peak = false;  // skip the 0.2 s FMA-peak measurement (and the shares): a profile then sees only the calls
  float dropout = 0.0f;
  int64_t window = 0;
  int threads = 0, repeat = 5, warmup = 1;
  std::string impl = "fused", dtype = "f32";
  std::string kv_dtype;  // f32 | bf16 | int8: decode through a DecodeCache of that type instead
};

std::string sdpa_shape_json(const SdpaBench& a, int64_t G, int64_t Lk) {
  char shape[360];
  std::snprintf(
      shape, sizeof shape,
      "\"impl\": \"%s\", \"batch\": %lld, \"heads\": %lld, \"kv_heads\": %lld, \"q_len\": %lld, \"kv_len\": %lld, "
      "\"head_dim\": %lld, \"causal\": %s, \"window\": %lld, \"threads\": %d, \"dropout\": %g, \"dtype\": \"%s\"",
      a.impl.c_str(), static_cast<long long>(a.batch), static_cast<long long>(a.heads), static_cast<long long>(G),
      static_cast<long long>(a.q_len), static_cast<long long>(Lk), static_cast<long long>(a.head_dim),
      a.causal ? "true" : "false", static_cast<long long>(a.window), a.threads, static_cast<double>(a.dropout),
      a.dtype.c_str());
  return shape;
}

// --backward: forward+backward (forward keeping lse, then the fused backward) and the backward alone.
// The forward's useful FLOPs: 4·D per (query, key) pair it attends, per head (two GEMMs of 2·D each): Lq·Lk pairs,
// halved when causal (the kernel issue's count, for Lq = Lk), and counted row by row where the causal range is not
// half the square: a window (each row its last W keys; halving had overstated the rate by about L / 2W) or
// bottom-right causal with Lq ≠ Lk (a decode row sees every key; halving had understated it up to 2×).
double sdpa_flops(const SdpaBench& a, int64_t Lk) {
  const double per_pair = 4.0 * static_cast<double>(a.head_dim) * static_cast<double>(a.batch * a.heads);
  double pairs = static_cast<double>(a.q_len) * static_cast<double>(Lk);
  if (a.causal && (a.window > 0 || a.q_len != Lk)) {
    pairs = 0.0;
    const int64_t offset = Lk - a.q_len;  // bottom-right: row i sees keys j <= i + offset (and > i + offset − W)
    for (int64_t i = 0; i < a.q_len; ++i) {
      const int64_t hi = std::min(Lk, i + offset + 1),
                    lo = a.window > 0 ? std::max<int64_t>(0, i + offset - a.window + 1) : 0;
      pairs += static_cast<double>(std::max<int64_t>(0, hi - lo));
    }
  } else if (a.causal) {
    pairs /= 2;
  }
  return per_pair * pairs;
}

// FLOPs: the forward's 4·Lq·Lk·D per head, the backward 2.5× that (its five GEMMs to the forward's two),
// halved when causal; the backward recomputes P, so it really does 3.5× the forward's FMAs. --dtype bf16: the
// bfloat16 backward (vdpbf16ps) where the CPU has AVX512_BF16; f16: the float32 backward on widened copies.
void run_sdpa_backward_bench(const SdpaBench& a, const Tensor& q, const Tensor& k, const Tensor& v,
                             AttentionOptions o) {
  const int64_t G = k.dim(1), Lk = k.dim(2);
  const Tensor d_out = to_dtype(random_tensor(q.shape(), 4), q.dtype());
  o.return_lse = true;
  AttentionResult fwd;
  const auto both = time_runs(
      a.repeat,
      [&] {
        fwd = scaled_dot_product_attention(q, k, v, o);
        scaled_dot_product_attention_backward(q, k, v, fwd.output, fwd.lse, d_out, o);
      },
      a.warmup);
  const auto bwd = time_runs(
      a.repeat, [&] { scaled_dot_product_attention_backward(q, k, v, fwd.output, fwd.lse, d_out, o); }, a.warmup);
  const double fwd_flops = sdpa_flops(a, Lk);
  const double both_gflops = 3.5 * fwd_flops / (median_of(both) * 1e-3) / 1e9;
  const double bwd_gflops = 2.5 * fwd_flops / (median_of(bwd) * 1e-3) / 1e9;
  char extra[256];
  std::snprintf(extra, sizeof extra, ", \"backward_median_ms\": %.4f, \"backward_gflops\": %.2f", median_of(bwd),
                bwd_gflops);
  std::string extra_json = extra;
  const double peak = a.no_peak ? 0.0 : measure_fma_peak(a.threads, 0.2);
  if (peak > 0.0) {
    std::snprintf(extra, sizeof extra, ", \"peak_gflops\": %.1f, \"peak_share\": %.3f, \"backward_peak_share\": %.3f",
                  peak, both_gflops / peak, bwd_gflops / peak);
    extra_json += extra;
  }
  report("sdpa-forward-backward", sdpa_shape_json(a, G, Lk), both, 3.5 * fwd_flops, a.json, extra_json);
  if (a.json) return;
  std::printf("  backward alone: median %.3f ms   %.1f GFLOP/s\n", median_of(bwd), bwd_gflops);
  if (peak > 0.0)
    std::printf(
        "  %.0f%% (forward+backward) and %.0f%% (backward) of this machine's FMA peak (%.1f GFLOP/s, measured "
        "now)\n",
        100.0 * both_gflops / peak, 100.0 * bwd_gflops / peak, peak);
}

// --kv-dtype: decoding through attn::DecodeCache (the Transformer's cache: keys transposed in blocks, stored as
// f32, bf16 or int8 with a scale per token and head): Lk cached positions, q_len new queries; the figure that
// matters is the cache's bytes read per second (decode is memory-bound).
void run_decode_cache_bench(const SdpaBench& a, int64_t G, int64_t Lk) {
  if (a.causal || a.window || a.backward || a.dropout > 0.0f || a.dtype != "f32" || a.impl != "fused")
    throw ArgumentError(
        "--kv-dtype times the decoding cache (its own kernel): no --causal, --window, --backward, --dropout, --dtype "
        "or --impl");
  DecodeCache cache(a.batch, G, a.head_dim, Lk, parse_kv_cache(a.kv_dtype));
  cache.append(random_tensor({a.batch, G, Lk, a.head_dim}, 2), random_tensor({a.batch, G, Lk, a.head_dim}, 3));
  const Tensor q = random_tensor({a.batch, a.heads, a.q_len, a.head_dim}, 1);
  const auto ms = time_runs(
      a.repeat, [&] { cache.attend(q, Tensor(), a.threads); }, a.warmup);
  const double flops = 4.0 * static_cast<double>(a.q_len) * static_cast<double>(Lk) * static_cast<double>(a.head_dim) *
                       static_cast<double>(a.batch * a.heads);
  const double median = median_of(ms), gb_s = static_cast<double>(cache.bytes()) / (median * 1e-3) / 1e9;
  char extra[160];
  std::snprintf(extra, sizeof extra, ", \"kv_dtype\": \"%s\", \"kv_bytes\": %zu, \"kv_gb_per_s\": %.2f",
                a.kv_dtype.c_str(), cache.bytes(), gb_s);
  SdpaBench shown = a;
  shown.impl = "decode-cache";  // its own kernel, not the fused one --impl names
  report("sdpa-decode", sdpa_shape_json(shown, G, Lk), ms, flops, a.json, extra, "decode");
  if (!a.json)
    std::printf("  %s cache: %.1f MB read at %.1f GB/s\n", a.kv_dtype.c_str(), static_cast<double>(cache.bytes()) / 1e6,
                gb_s);
}

void run_sdpa_bench(const SdpaBench& a) {
  const int64_t G = a.kv_heads ? a.kv_heads : a.heads, Lk = a.kv_len ? a.kv_len : a.q_len;
  if (!a.kv_dtype.empty()) return run_decode_cache_bench(a, G, Lk);
  // --dtype bf16|f16: the same random inputs rounded to it (nearest even)
  const DType dt = parse_dtype(a.dtype);
  const Tensor q = to_dtype(random_tensor({a.batch, a.heads, a.q_len, a.head_dim}, 1), dt);
  const Tensor k = to_dtype(random_tensor({a.batch, G, Lk, a.head_dim}, 2), dt);
  const Tensor v = to_dtype(random_tensor({a.batch, G, Lk, a.head_dim}, 3), dt);
  AttentionOptions o;
  o.causal = a.causal ? CausalAlignment::kBottomRight : CausalAlignment::kNone;
  o.window = a.window;
  o.num_threads = a.threads;
  o.impl = parse_impl(a.impl);
  o.dropout_p = a.dropout;
  if (a.backward) return run_sdpa_backward_bench(a, q, k, v, o);
  const auto ms = time_runs(
      a.repeat, [&] { scaled_dot_product_attention(q, k, v, o); }, a.warmup);
  const double flops = sdpa_flops(a, Lk);
  // K and V bytes read per call, for the memory-bound decode case
  const double kv_bytes =
      2.0 * static_cast<double>(a.batch * G * Lk * a.head_dim) * static_cast<double>(dtype_size(dt));
  const double median = median_of(ms);
  // the machine's FMA ceiling at the same thread count, measured now: the share of it this call reached
  const double peak = a.no_peak ? 0.0 : measure_fma_peak(a.threads, 0.2), gflops = flops / (median * 1e-3) / 1e9;
  char extra[160];
  std::snprintf(extra, sizeof extra, ", \"kv_gb_per_s\": %.2f", kv_bytes / (median * 1e-3) / 1e9);
  std::string extra_json = extra;
  // vdpbf16ps retires as many instructions per cycle as vfmadd231ps with twice the multiply-adds per lane (Zen 4,
  // measured): the bf16 dot kernel's ceiling is twice the float32 FMA peak.
  const bool dot = std::string(fused_kernel_isa(dt)) == "avx512-bf16";
  if (peak > 0.0) {
    std::snprintf(extra, sizeof extra, ", \"peak_gflops\": %.1f, \"peak_share\": %.3f", peak, gflops / peak);
    extra_json += extra;
    if (dot) extra_json += ", \"bf16_peak_share\": " + std::to_string(gflops / (2.0 * peak));
  }
  report("sdpa", sdpa_shape_json(a, G, Lk), ms, flops, a.json, extra_json, fused_kernel_isa(dt));
  if (!a.json && peak > 0.0) {
    std::printf("  %.0f%% of this machine's float32 FMA peak (%.1f GFLOP/s, measured now)", 100.0 * gflops / peak,
                peak);
    if (dot) std::printf(", %.0f%% of the vdpbf16ps ceiling (twice that)", 50.0 * gflops / peak);
    std::printf("\n");
  }
}

struct MhaBench {
  int64_t batch = 1, embed_dim = 512, heads = 8, len = 2048;
  bool causal = false, json = false;
  int threads = 0, repeat = 5;
  std::string impl = "fused";
};

void run_mha_bench(const MhaBench& a) {
  MultiHeadAttentionConfig c;
  c.embed_dim = a.embed_dim;
  c.num_heads = a.heads;
  const MultiHeadAttention mha(c, 7);
  const Tensor x = random_tensor({a.batch, a.len, a.embed_dim}, 4);
  MhaOptions o;
  o.causal = a.causal;
  o.num_threads = a.threads;
  o.impl = parse_impl(a.impl);
  const auto ms = time_runs(a.repeat, [&] { mha.self_attention(x, o); });
  const double L = static_cast<double>(a.len), E = static_cast<double>(a.embed_dim), B = static_cast<double>(a.batch);
  const double flops = B * (2.0 * L * E * E * 4.0 + 4.0 * L * L * E / (a.causal ? 2.0 : 1.0));
  char shape[200];
  std::snprintf(
      shape, sizeof shape,
      "\"impl\": \"%s\", \"batch\": %lld, \"embed_dim\": %lld, \"heads\": %lld, \"len\": %lld, \"causal\": %s, "
      "\"threads\": %d",
      a.impl.c_str(), static_cast<long long>(a.batch), static_cast<long long>(a.embed_dim),
      static_cast<long long>(a.heads), static_cast<long long>(a.len), a.causal ? "true" : "false", a.threads);
  report("mha", shape, ms, flops, a.json, "");
}

// Memory read bandwidth: sums a buffer far larger than the caches with every thread.
void run_bandwidth_bench(int64_t megabytes, int threads, int repeat, bool json) {
  const int64_t n = megabytes * (1 << 20) / 4;
  std::vector<float> buf(static_cast<size_t>(n), 1.0f);  // touched once here, not in the timed runs
  const int t = threads > 0 ? threads : omp_get_max_threads();
  volatile float sink = 0.0f;
  // Each thread keeps 16 independent sums over its whole range (vector adds, one load per 4 bytes) and reduces them
  // once: summing them into one float per 256-byte block, a chain of 16 dependent adds, had capped a thread at about
  // 19 GB/s and made this "ceiling" the adding's, not the memory's.
  const auto ms = time_runs(repeat, [&] {
    float total = 0.0f;
#pragma omp parallel num_threads(t) reduction(+ : total)
    {
      float acc[16] = {};
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < n / 64; ++blk) {
        const float* p = buf.data() + blk * 64;
        for (int r = 0; r < 4; ++r)
          for (int i = 0; i < 16; ++i) acc[i] += p[r * 16 + i];
      }
      for (float a : acc) total += a;
    }
    sink = total;
  });
  (void)sink;
  const double median = median_of(ms);
  const double gbs = static_cast<double>(n) * 4.0 / (median * 1e-3) / 1e9;
  if (json)
    std::printf(
        "{\"bench\": \"bandwidth\", \"megabytes\": %lld, \"threads\": %d, \"median_ms\": %.3f, \"gb_per_s\": %.2f}\n",
        static_cast<long long>(megabytes), t, median, gbs);
  else
    std::printf("memory read bandwidth: %.2f GB/s (%lld MB, %d threads, median of %d)\n", gbs,
                static_cast<long long>(megabytes), t, repeat);
}

// Sentence embeddings per second with a BERT encoder, batches of batch_size sentences of ~16 words.
void run_embed_bench(const std::string& model, int64_t count, int64_t batch, int threads, int repeat, bool json,
                     Quantization quantization, const std::string& sentences_file) {
  const SentenceEncoder enc = SentenceEncoder::load(resolve_minilm_dir(model), quantization);
  static const char* kWords[] = {"attention", "lets",     "each",   "position", "of",          "a",     "sequence",
                                 "take",      "weighted", "sum",    "values",   "the",         "model", "learns",
                                 "which",     "tokens",   "matter", "for",      "translation", "today"};
  std::vector<std::string> sentences;
  std::mt19937 rng(3);
  for (int64_t i = 0; i < count && sentences_file.empty(); ++i) {
    std::string s;
    const int n = 8 + static_cast<int>(rng() % 17);  // 8..24 words
    for (int w = 0; w < n; ++w) {
      if (w) s += ' ';
      s += kWords[rng() % 20];
    }
    sentences.push_back(s + ".");
  }
  if (!sentences_file.empty()) {  // a peer's own sentences (bench/compare_minilm.py): both sides embed the same text
    for (std::string& line : read_lines(sentences_file, "attn bench embed: --sentences " + sentences_file))
      if (!line.empty()) sentences.push_back(std::move(line));
    if (sentences.empty()) throw ArgumentError("attn bench embed: --sentences " + sentences_file + " holds no line");
    count = static_cast<int64_t>(sentences.size());
  }
  const auto ms = time_runs(repeat, [&] { enc.embed(sentences, batch, threads); });
  const double median = median_of(ms);
  const double per_s = static_cast<double>(count) / (median * 1e-3);
  if (json)
    std::printf(
        "{\"bench\": \"embed\", \"count\": %lld, \"batch\": %lld, \"threads\": %d, \"dtype\": \"%s\", "
        "\"quantize\": \"%s\", \"median_ms\": %.2f, \"sentences_per_s\": %.1f}\n",
        static_cast<long long>(count), static_cast<long long>(batch), threads,
        quantization == Quantization::kBFloat16 ? "bf16" : "f32", quantization_name(quantization), median, per_s);
  else
    std::printf("embed: %lld sentences in batches of %lld: median %.1f ms, %.1f sentences/s\n",
                static_cast<long long>(count), static_cast<long long>(batch), median, per_s);
}

struct TranslateBench {
  std::string model, quantize = "none", kv_cache = "f32";
  TranslateOptions options;
  int64_t count = 2000;
  int repeat = 3;
  bool json = false;
};

// Translation throughput of the shipped task's test split (the sentences attn eval uses): sentences/s and
// target tokens/s (characters + EOS), the whole Translator::translate call timed.
void run_translate_bench(const TranslateBench& a) {
  const Translator translator = Translator::load(resolve_model_dir(a.model), parse_quantization(a.quantize));
  std::vector<std::string> sentences;
  for (const tasks::Example& e : tasks::make_examples(tasks::Split::kTest, a.count, 3)) sentences.push_back(e.source);
  std::vector<std::string> out;
  TranslateOptions options = a.options;
  options.kv_cache = parse_kv_cache(a.kv_cache);
  const auto ms = time_runs(a.repeat, [&] { out = translator.translate(sentences, options); });
  int64_t tokens = 0;
  for (const std::string& t : out) tokens += static_cast<int64_t>(tasks::utf8_chars(t).size()) + 1;
  const double median = median_of(ms), seconds = median * 1e-3;
  const double per_s = static_cast<double>(sentences.size()) / seconds, tok_s = static_cast<double>(tokens) / seconds;
  const int threads = a.options.num_threads > 0 ? a.options.num_threads : omp_get_max_threads();
  if (a.json)
    std::printf(
        "{\"bench\": \"translate\", \"quantize\": \"%s\", \"kv_cache\": \"%s\", \"count\": %zu, \"beam\": %d, "
        "\"batch\": %lld, \"threads\": %d, "
        "\"median_ms\": %.2f, \"sentences_per_s\": %.1f, \"target_tokens_per_s\": %.1f}\n",
        a.quantize.c_str(), a.kv_cache.c_str(), sentences.size(), a.options.beam,
        static_cast<long long>(a.options.batch_size), threads, median, per_s, tok_s);
  else
    std::printf(
        "translate (%s, kv cache %s): %zu sentences, beam %d, batch size %lld, %d threads: median %.1f ms, "
        "%.1f sentences/s, %.1f target tokens/s\n",
        a.quantize.c_str(), a.kv_cache.c_str(), sentences.size(), a.options.beam,
        static_cast<long long>(a.options.batch_size), threads, median, per_s, tok_s);
}

// The FMA ceiling at 1 thread and at all threads (or --threads), at the fused kernel's instruction set.
void run_peak_bench(int threads, double seconds, bool json) {
  const int all = threads > 0 ? threads : omp_get_max_threads();
  const double one = measure_fma_peak(1, seconds), many = measure_fma_peak(all, seconds);
  if (json)
    std::printf(
        "{\"bench\": \"peak\", \"simd\": \"%s\", \"gflops_1_thread\": %.1f, \"threads\": %d, "
        "\"gflops\": %.1f}\n",
        fused_kernel_isa(), one, all, many);
  else
    std::printf("FMA peak (%s): %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d threads\n", fused_kernel_isa(), one, many,
                all);
}

}  // namespace

void add_bench(CLI::App& app) {
  CLI::App* bench =
      app.add_subcommand("bench", "Benchmarks on random inputs (median, min, max of --repeat runs, GFLOP/s)");
  bench->require_subcommand(1);

  auto s = std::make_shared<SdpaBench>();
  CLI::App* sdpa = bench->add_subcommand(
      "sdpa",
      "time scaled_dot_product_attention; GFLOP/s counts 4·D per attended (query, key) pair per head: "
      "4·Lq·Lk·D, halved when causal with Lq = Lk, row by row with a window or Lq != Lk");
  // sizes of at least 1: an empty batch had timed nothing, and then counted the FLOPs of any --q-len row by row (the
  // tensors' element counts are checked when they are made: "too many elements")
  sdpa->add_option("--batch", s->batch, "B")->check(CLI::PositiveNumber);
  sdpa->add_option("--heads", s->heads, "H")->check(CLI::PositiveNumber);
  sdpa->add_option("--kv-heads", s->kv_heads, "Hkv (default H)")->check(CLI::NonNegativeNumber);
  sdpa->add_option("--q-len", s->q_len, "Lq")->check(CLI::PositiveNumber);
  sdpa->add_option("--kv-len", s->kv_len, "Lk (default Lq)")->check(CLI::NonNegativeNumber);
  sdpa->add_option("--head-dim", s->head_dim, "D = Dv")->check(CLI::PositiveNumber);
  sdpa->add_flag("--causal", s->causal, "bottom-right causal mask");
  sdpa->add_option("--window", s->window, "sliding window W (with --causal)");
  sdpa->add_option("--threads", s->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  sdpa->add_option("--impl", s->impl, "auto (the dispatcher's choice), fused, unfused or reference")
      ->check(CLI::IsMember({"auto", "fused", "unfused", "reference"}));
  sdpa->add_option("--repeat", s->repeat, "timed runs after the warm-up")->check(CLI::PositiveNumber);
  sdpa->add_option("--warmup", s->warmup, "untimed runs first (default 1)")->check(CLI::NonNegativeNumber);
  sdpa->add_flag("--json", s->json, "one JSON line");
  sdpa->add_option("--kv-dtype", s->kv_dtype,
                   "f32, bf16 or int8: decode (q_len new queries) over a DecodeCache of kv_len positions stored so")
      ->check(CLI::IsMember({"f32", "bf16", "int8"}));
  sdpa->add_option("--dtype", s->dtype,
                   "f32, bf16 or f16: q, k, v in that dtype (bf16 uses vdpbf16ps where the CPU has AVX512_BF16); the "
                   "peak share is of the float32 FMA peak")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  sdpa->add_flag("--backward", s->backward, "time forward+backward and the backward alone (fused backward)");
  sdpa->add_flag("--no-peak", s->no_peak,
                 "skip measuring the FMA peak (0.2 s) and the shares of it: a profiler then sees only the calls");
  sdpa->add_option("--dropout", s->dropout, "attention dropout probability (fused into the kernels)")
      ->check(CLI::Range(0.0, 1.0));
  sdpa->callback([s] { run_sdpa_bench(*s); });

  auto m = std::make_shared<MhaBench>();
  CLI::App* mha = bench->add_subcommand("mha", "time MultiHeadAttention self-attention forward");
  mha->add_option("--batch", m->batch, "B")->check(CLI::PositiveNumber);
  mha->add_option("--embed-dim", m->embed_dim, "E")->check(CLI::PositiveNumber);
  mha->add_option("--heads", m->heads, "H")->check(CLI::PositiveNumber);
  mha->add_option("--len", m->len, "L")->check(CLI::PositiveNumber);
  mha->add_flag("--causal", m->causal, "masked self-attention");
  mha->add_option("--threads", m->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  mha->add_option("--impl", m->impl, "auto (the dispatcher's choice), fused, unfused or reference")
      ->check(CLI::IsMember({"auto", "fused", "unfused", "reference"}));
  mha->add_option("--repeat", m->repeat, "timed runs after one warm-up")->check(CLI::PositiveNumber);
  mha->add_flag("--json", m->json, "one JSON line");
  mha->callback([m] { run_mha_bench(*m); });

  auto bw = std::make_shared<std::tuple<int64_t, int, int, bool>>(1024, 0, 5, false);
  CLI::App* band =
      bench->add_subcommand("bandwidth", "measure the memory read bandwidth (the decode kernel's roofline)");
  band->add_option("--megabytes", std::get<0>(*bw), "buffer size")->check(CLI::Range(1, 1 << 20));
  band->add_option("--threads", std::get<1>(*bw), "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  band->add_option("--repeat", std::get<2>(*bw), "timed runs")->check(CLI::PositiveNumber);
  band->add_flag("--json", std::get<3>(*bw), "one JSON line");
  band->callback([bw] { run_bandwidth_bench(std::get<0>(*bw), std::get<1>(*bw), std::get<2>(*bw), std::get<3>(*bw)); });

  struct EmbedBench {
    std::string model, dtype = "f32", quantize = "none", sentences;
    int64_t count = 256, batch = 32;
    int threads = 0, repeat = 3;
    bool json = false;
  };
  auto eb = std::make_shared<EmbedBench>();
  CLI::App* emb = bench->add_subcommand("embed", "sentence embeddings per second (BERT, e.g. all-MiniLM-L6-v2)");
  emb->add_option("--model", eb->model,
                  "a Hugging Face BERT directory (or a sentence-transformers one, by its modules.json); default: "
                  "all-MiniLM-L6-v2");
  emb->add_option("--count", eb->count, "sentences (8 to 24 words)")->check(CLI::Range(int64_t{1}, kMaxCount));
  emb->add_option("--batch-size", eb->batch, "sentences per batch")->check(CLI::PositiveNumber);
  emb->add_option("--threads", eb->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  emb->add_option("--repeat", eb->repeat, "timed runs")->check(CLI::PositiveNumber);
  emb->add_flag("--json", eb->json, "one JSON line");
  emb->add_option("--sentences", eb->sentences, "a file of sentences, one a line, embedded instead of made-up ones")
      ->excludes(emb->get_option("--count"));
  emb->add_option("--dtype", eb->dtype,
                  "f32 or bf16 (dense layers in bfloat16, as attn embed --dtype; bf16 excludes --quantize int8)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  emb->add_option("--quantize", eb->quantize, "none, int8 or bf16 (as attn embed --quantize)")
      ->check(CLI::IsMember({"none", "int8", "bf16"}));
  emb->callback([eb] {
    const Quantization quantization = cli_quantization(eb->dtype, eb->quantize);  // (a usage error first)
    run_embed_bench(eb->model, eb->count, eb->batch, eb->threads, eb->repeat, eb->json, quantization, eb->sentences);
  });

  auto pk = std::make_shared<std::tuple<int, double, bool>>(0, 1.0, false);
  CLI::App* peak = bench->add_subcommand("peak", "this machine's FMA ceiling (widest vectors, 1 thread and all)");
  peak->add_option("--threads", std::get<0>(*pk), "threads for the second figure; 0 = all cores")
      ->check(CLI::NonNegativeNumber);
  peak->add_option("--seconds", std::get<1>(*pk), "seconds per measurement")->check(CLI::PositiveNumber);
  peak->add_flag("--json", std::get<2>(*pk), "one JSON line");
  peak->callback([pk] { run_peak_bench(std::get<0>(*pk), std::get<1>(*pk), std::get<2>(*pk)); });

  auto tb = std::make_shared<TranslateBench>();
  CLI::App* tr = bench->add_subcommand("translate", "translation throughput on the numbers-en-zh test split");
  tr->add_option("--model", tb->model, "model directory; default: the shipped model");
  tr->add_option("--count", tb->count, "sentences of the test split")->check(CLI::Range(int64_t{1}, kMaxCount));
  tr->add_option("--beam", tb->options.beam, "beam width; 1 = greedy")->check(CLI::Range(1, 64));
  tr->add_option("--quantize", tb->quantize, "none, int8 or bf16 (the projections' inference copies)")
      ->check(CLI::IsMember({"none", "int8", "bf16"}));
  tr->add_option("--batch-size", tb->options.batch_size,
                 "most sentences decoded together (and at most 64 hypotheses: sentences x beam)")
      ->check(CLI::PositiveNumber);
  tr->add_option("--kv-cache", tb->kv_cache, "how decoding stores keys and values: f32, bf16 or int8")
      ->check(CLI::IsMember({"f32", "bf16", "int8"}));
  tr->add_option("--threads", tb->options.num_threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  tr->add_option("--repeat", tb->repeat, "timed runs after one warm-up")->check(CLI::PositiveNumber);
  tr->add_flag("--json", tb->json, "one JSON line");
  tr->callback([tb] { run_translate_bench(*tb); });

  add_bench_train(*bench);
}

}  // namespace attn::cli
