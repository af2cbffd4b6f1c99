// attn/attention.h: scaled dot-product attention, the general form the whole family derives from.
//
//   out = softmax(scale · Q·Kᵀ + M) · V
//
// with PyTorch's semantics (torch.nn.functional.scaled_dot_product_attention), grouped-query attention
// (H a multiple of Hkv, as PyTorch's enable_gqa=True, without copying K/V), named causal alignment, a
// key-padding mask, optional attention weights, a sliding window and ALiBi biases.
//
// Masking rule, the same on every path (reference, unfused, fused):
//   key j is hidden from query i when any of these hold:
//     - the boolean `mask` is false at (b, h, i, j)              (true = may attend, as PyTorch's SDPA)
//     - `key_padding_mask` is true at (b, j)                     (true = padding, as nn.MultiheadAttention)
//     - causal: j > i + offset, offset = 0 (kTopLeft) or Lk − Lq (kBottomRight)
//     - window W > 0 (needs causal): j <= i + offset − W          (each query sees its last W keys)
//   the score of a visible key is  scale · q_i·k_j + float mask(b, h, i, j) − slope_h · |i + offset − j|
//   (the last term only with ALiBi slopes), in IEEE arithmetic. A key whose whole score is −inf weighs 0, as a
//   hidden one.
// A row in which every key is hidden gives output 0 and weights 0, never NaN: "attends to nothing", as PyTorch
// does since 2.5 on every backend (its math backend returned NaN there before).
//
// Non-finite values, the same on every path, instruction set, forward and backward (tests/nonfinite_test.cc):
// IEEE arithmetic over the keys the masks leave visible.
//   - A key a mask hides (boolean mask false, padding, causal/window range, float mask −inf) never
//     influences any output, whatever its key, value or score holds (NaN included): its weight is 0 and a
//     value is only ever multiplied by a nonzero weight. So skipping hidden tiles is always correct.
//   - A NaN anywhere a visible score depends on (the query row, a visible key, a visible float-mask entry,
//     the scale) makes the row's output and its visible weights NaN; so does a +inf score (exp(inf − inf)),
//     e.g. from an infinite query. A score of −inf weighs 0, as a −inf mask entry does, unless a NaN or +inf float-mask
//     entry or ALiBi term meets it (−inf + NaN, −inf + inf: NaN, so the row is NaN).
//   - A NaN or ±Inf in a visible value reaches the output columns it touches as IEEE sums do (Inf, or NaN
//     for Inf − Inf).
//   - A row whose keys are all hidden stays 0, whatever the hidden keys hold.
// Where PyTorch differs: its CPU flash kernel gives 0 (not NaN) for a NaN query, and both its kernels
// spread a NaN from a value that a mask hides (0·NaN); attn follows the rule above.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "attn/error.h"  // what the functions below throw
#include "attn/tensor.h"

namespace attn {

// Which keys a causal mask lets query i see.
enum class CausalAlignment : uint8_t {
  kNone,         // no causal mask
  kTopLeft,      // key j <= i: PyTorch's is_causal=True (torch.ones(Lq, Lk).tril(0))
  kBottomRight,  // key j <= i + Lk − Lq: the last query sees every key (incremental decoding, KV cache)
};

// Which implementation computes the attention.
enum class AttentionImpl : uint8_t {
  kAuto,       // the fastest path for the problem (the fused kernel)
  kFused,      // tiled online-softmax kernel: never materialises [Lq, Lk]
  kUnfused,    // BLAS GEMMs around a materialised [Lq, Lk] score matrix
  kReference,  // plain loops in double precision: the readable spec
};

struct AttentionOptions {
  // Multiplies Q·Kᵀ. Default 1/√D. A NaN or infinite scale follows the non-finite rule above.
  std::optional<float> scale;
  // mask: broadcastable to [B, H, Lq, Lk] (rank 1 to 4, right-aligned as in NumPy).
  // bool: true = may attend (PyTorch SDPA polarity). float32: added to the scores (−inf hides a key).
  Tensor mask;
  // key_padding_mask: [B, Lk] bool, true = this key is padding and is ignored.
  Tensor key_padding_mask;
  CausalAlignment causal = CausalAlignment::kNone;
  // Sliding window: with causal set, each query sees only its last `window` keys. 0 = no window.
  int64_t window = 0;
  // ALiBi: alibi_slopes [H] float32; adds −slope_h · |i + offset − j| to each score (offset Lk − Lq unless kTopLeft,
  // without a causal mask too: FlashAttention's positions, queries aligned to the keys' end).
  Tensor alibi_slopes;
  // Attention-weight dropout (training), as PyTorch's dropout_p: after the softmax each weight is zeroed
  // with probability dropout_p and the survivors are scaled by 1/(1 − dropout_p). Which weights survive is a
  // pure function of (dropout_seed, b, h, i, j) (Philox4x32-7, src/cpu/dropout.h): the same on every path,
  // instruction set and thread count, and the backward regenerates it from the same options. dropout_p is
  // rounded to a multiple of 2⁻¹⁶, p', and the survivors' scale is 1/(1 − p'), so dropout leaves each weight's
  // expected value as it was (below 2⁻¹⁷: no dropout). Must be in [0, 1]; 1 gives output 0.
  float dropout_p = 0.0f;
  uint64_t dropout_seed = 0;
  // Also return the attention weights [B, H, Lq, Lk] (exact, from the row log-sum-exp; before dropout).
  bool return_weights = false;
  // Also return each row's log-sum-exp [B, H, Lq]: what the backward needs besides the output.
  bool return_lse = false;
  AttentionImpl impl = AttentionImpl::kAuto;
  // Threads for the kernels; 0 = the OpenMP default (all cores).
  int num_threads = 0;
};

struct AttentionResult {
  Tensor output;   // [B, H, Lq, Dv]
  Tensor weights;  // [B, H, Lq, Lk] when options.return_weights, else undefined
  // [B, H, Lq] when options.return_lse: lse_i = log Σ_j exp(s_ij) over the visible keys of row i (s the masked,
  // scaled scores); −inf for a row with no visible key, NaN for a row the non-finite rule poisons.
  Tensor lse;
};

// q: [B, H, Lq, D]  k: [B, Hkv, Lk, D]  v: [B, Hkv, Lk, Dv]   (H % Hkv == 0; query head h reads kv
// head h / (H / Hkv), as PyTorch's enable_gqa)
// Throws ShapeError, DTypeError or ArgumentError naming the argument and the shapes.
AttentionResult scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const AttentionOptions& options = {});

struct AttentionGrads {
  Tensor dq;  // [B, H, Lq, D]
  Tensor dk;  // [B, Hkv, Lk, D]   (summed over the query heads of each group)
  Tensor dv;  // [B, Hkv, Lk, Dv]
};

// The backward pass (FlashAttention-2's): gradients of a loss with respect to q, k and v, given the
// forward's output `out` [B, H, Lq, Dv] and log-sum-exp `lse` [B, H, Lq] (AttentionResult with
// return_lse) and d_out = dLoss/dOutput [B, H, Lq, Dv]. Pass the forward's options unchanged (masks,
// dropout_p and dropout_seed included): the weights are recomputed tile by tile from lse, never stored,
// and dropout regenerates the forward's mask. Memory O(L). Hidden keys receive no gradient, a fully masked
// row passes none. The result is bitwise the same from run to run for a given num_threads.
// With impl = kReference, plain loops in double precision (the readable spec), which ignore out and lse.
// dtypes: q, k, v, out and d_out all float32, or all bfloat16 or all float16 (lse float32); the gradients have
// their dtype. bfloat16 runs a bfloat16 backward (vdpbf16ps: P̃ and dS rounded to bfloat16 for their products,
// float32 sums) where the processor has AVX512_BF16; otherwise 16-bit inputs go through the float32 backward,
// widened exactly, and the gradients are rounded once.
// A limit every flash backward shares (PyTorch's CPU one too): lse is one float, so a row whose every visible key
// carries a huge finite float mask (|lse| ≳ 1e7: −1e9 or torch.finfo(float32).min on each key of a padded query row)
// has lost log Σ exp in it, and that row's weights recomputed from lse are wrong (0, or the row's key count times
// too large), so are its contributions to the gradients when its d_out is not 0. Padded rows get d_out 0 in
// training (nothing flows from them); hide keys with −inf or a boolean or key-padding mask to avoid the question.
// The reference (kReference) is exact there, in double.
// Throws ShapeError, DTypeError or ArgumentError naming the argument and the shapes.
AttentionGrads scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& out, const Tensor& lse, const Tensor& d_out,
                                                     const AttentionOptions& options = {});
// The same when the forward's output and lse were not kept: runs the forward first.
AttentionGrads scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& d_out, const AttentionOptions& options = {});

// Names of the implementations and alignments, for messages, the command line and Python, and their
// inverses: "auto" | "fused" | "unfused" | "reference"; "none" | "top-left" | "bottom-right".
// The parsers throw ArgumentError naming the accepted values.
const char* impl_name(AttentionImpl impl);
const char* causal_name(CausalAlignment causal);
AttentionImpl parse_impl(const std::string& name);
CausalAlignment parse_causal(const std::string& name);

// The instruction set the fused kernel runs on here: "avx512" | "avx2" | "scalar" (the best this processor
// has, unless the environment variable ATTN_SIMD=scalar|avx2 lowers it).
const char* fused_kernel_isa();
// The same for the kernel scaled_dot_product_attention runs on `dtype` inputs: for bfloat16 "avx512-bf16"
// where the processor has AVX512_BF16 (vdpbf16ps; ATTN_BF16_DOT=0 turns it off), else the level above.
const char* fused_kernel_isa(DType dtype);
// This machine's FMA ceiling in GFLOP/s at the fused kernel's instruction set: independent vector FMA
// chains on registers for `seconds` on `threads` threads (0 = all cores). Benchmarks report shares of it.
double measure_fma_peak(int threads = 0, double seconds = 0.2);

// How incremental decoding stores its keys and values (attn/layers/decode_cache.h, the Transformer's generation):
// float32, bfloat16, or int8 with a scale per (token, head), the dequantisation fused into the decoding kernel
// (fewer bytes per key for the memory-bound decode).
enum class KVCacheType : uint8_t { kFloat32, kBFloat16, kInt8 };
// "f32" | "bf16" | "int8", and the inverse (ArgumentError naming the accepted values).
const char* kv_cache_name(KVCacheType t);
KVCacheType parse_kv_cache(const std::string& name);

}  // namespace attn
