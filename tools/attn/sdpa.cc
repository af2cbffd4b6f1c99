// attn sdpa: scaled_dot_product_attention on .npy files.
#include <memory>

#include "attn/attention.h"
#include "attn/error.h"
#include "attn/io/file.h"
#include "common.h"
#include "dist_cli.h"

namespace attn::cli {
namespace {

struct SdpaArgs {
  std::string q, k, v, out, mask, key_padding_mask, causal = "none", weights, alibi, impl = "auto", dtype;
  std::optional<float> scale;
  int64_t window = 0;
  int threads = 0;
  bool ring = false;
  std::string ring_layout;
};

void run_sdpa_on_ring(const SdpaArgs& a) {
  for (const auto& [flag, given] : {std::pair{"--mask", !a.mask.empty()},
                                    {"--weights", !a.weights.empty()},
                                    {"--alibi-slopes", !a.alibi.empty()},
                                    {"--window", a.window != 0}})
    if (given) throw ArgumentError(std::string(flag) + " is not supported with --ring");
  RingSdpaArgs r;
  r.q = a.q, r.k = a.k, r.v = a.v, r.out = a.out, r.key_padding_mask = a.key_padding_mask, r.causal = a.causal;
  r.impl = a.impl, r.layout = a.ring_layout, r.scale = a.scale, r.threads = a.threads;
  run_sdpa_ring(r);
}

void run_sdpa(const SdpaArgs& a) {
  if (a.ring && !a.dtype.empty()) throw ArgumentError("--dtype is not supported with --ring");
  if (a.out.empty()) throw ArgumentError("--out: an empty path; name the file to write");  // (it had failed at the end)
  // (with --ring only rank 0 writes: another rank's machine need not have the folder)
  io::check_output_paths({{"--out", a.out}, {"--weights", a.weights}},
                         launcher_rank0() ? io::OutputFolders::kMustExist : io::OutputFolders::kMayBeCreated);
  if (a.ring) return run_sdpa_on_ring(a);
  if (!a.ring_layout.empty()) throw ArgumentError("--ring-layout applies with --ring only");
  Tensor q = load_npy_flag("--q", a.q), k = load_npy_flag("--k", a.k), v = load_npy_flag("--v", a.v);
  if (!a.dtype.empty()) {  // float32 (or float16) inputs rounded to the compute dtype, nearest even
    const DType dt = parse_dtype(a.dtype);
    q = to_dtype(q, dt), k = to_dtype(k, dt), v = to_dtype(v, dt);
  }
  AttentionOptions o;
  if (!a.mask.empty()) o.mask = load_npy_flag("--mask", a.mask);
  if (!a.key_padding_mask.empty()) o.key_padding_mask = load_npy_flag("--key-padding-mask", a.key_padding_mask);
  if (!a.alibi.empty()) o.alibi_slopes = load_npy_flag("--alibi-slopes", a.alibi);
  o.causal = parse_causal(a.causal);
  o.scale = a.scale;
  o.window = a.window;
  o.return_weights = !a.weights.empty();
  o.impl = parse_impl(a.impl);
  o.num_threads = a.threads;
  const AttentionResult r = scaled_dot_product_attention(q, k, v, o);
  // With --dtype the file holds the low-precision result widened to float32 (exact).
  const Tensor out = a.dtype.empty() ? r.output : to_dtype(r.output, DType::kFloat32);
  std::vector<OutputFile> outputs = {{"--out", a.out, out}};
  if (!a.weights.empty()) outputs.push_back({"--weights", a.weights, r.weights});
  write_outputs(outputs);
}

}  // namespace

void add_sdpa(CLI::App& app) {
  auto args = std::make_shared<SdpaArgs>();
  CLI::App* sub = app.add_subcommand(
      "sdpa",
      "Scaled dot-product attention on .npy files, as torch.nn.functional.scaled_dot_product_attention:\n"
      "  out = softmax(scale · Q·Kᵀ + M) · V\n"
      "Q [B, H, Lq, D], K [B, Hkv, Lk, D], V [B, Hkv, Lk, Dv] -> out [B, H, Lq, Dv]; H must be a multiple of Hkv\n"
      "(grouped-query attention: query head h uses K/V head h / (H / Hkv)).\n"
      "A query row whose keys are all masked gets output 0 and weights 0 (never NaN).");
  sub->add_option("--q", args->q, "queries Q [B, H, Lq, D] (.npy, float32, float64 or float16)")->required();
  sub->add_option("--k", args->k, "keys K [B, Hkv, Lk, D] (.npy)")->required();
  sub->add_option("--v", args->v, "values V [B, Hkv, Lk, Dv] (.npy)")->required();
  sub->add_option(
         "--out", args->out,
         "output [B, H, Lq, Dv] (.npy: float32, or float16 for float16 inputs); written only if everything succeeds")
      ->required();
  sub->add_option("--mask", args->mask,
                  "mask broadcastable to [B, H, Lq, Lk] (.npy). bool: TRUE = MAY ATTEND (PyTorch SDPA polarity), "
                  "false = hidden. float: added to the scores (-inf hides a key)");
  sub->add_option("--key-padding-mask", args->key_padding_mask,
                  "[B, Lk] bool (.npy): TRUE = PADDING, the key is ignored");
  sub->add_option("--causal", args->causal,
                  "causal mask: top-left (query i sees keys j <= i, PyTorch's is_causal) or bottom-right "
                  "(query i sees keys j <= i + Lk - Lq, for incremental decoding); default none")
      ->check(CLI::IsMember({"none", "top-left", "bottom-right"}));
  sub->add_option("--scale", args->scale, "multiplies Q·Kᵀ; default 1/sqrt(D)");
  sub->add_option("--window", args->window, "sliding window: with --causal, each query sees only its last W keys");
  sub->add_option("--alibi-slopes", args->alibi,
                  "[H] float (.npy): ALiBi, adds -slope_h·|i + offset - j| to the scores");
  sub->add_option("--weights", args->weights, "also write the attention weights [B, H, Lq, Lk] (.npy)");
  sub->add_option("--impl", args->impl,
                  "implementation: auto (fused), fused, unfused (BLAS) or reference (double loops)")
      ->check(CLI::IsMember({"auto", "fused", "unfused", "reference"}));
  sub->add_option("--threads", args->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  sub->add_option("--dtype", args->dtype,
                  "compute in f32, bf16 or f16: q, k and v are rounded to it first (nearest even), the kernel sums "
                  "in float32, and --out holds the bf16/f16 result as float32. Masks stay bool/float32. Without it, "
                  "inputs are used as read (float16 .npy files compute in float16 and write float16)")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  sub->add_flag("--ring", args->ring,
                "ring attention under mpirun (mpirun -np N attn sdpa ... --ring): every rank reads the inputs and "
                "keeps its chunk of the sequence, K/V chunks travel around the ranks, rank 0 writes the output. "
                "Supports --causal, --key-padding-mask, --scale, grouped-query K/V");
  sub->add_option("--ring-layout", args->ring_layout,
                  "with --ring: contiguous (rank r holds the r-th chunk) or zigzag (chunks r and 2N-1-r: balanced "
                  "causal work); default zigzag with --causal, else contiguous")
      ->check(CLI::IsMember({"contiguous", "zigzag"}));
  sub->callback([args] { run_sdpa(*args); });
}

}  // namespace attn::cli
