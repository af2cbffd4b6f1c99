// attn/cuda.h: scaled dot-product attention on NVIDIA GPUs (FlashAttention-2's algorithm on tensor cores),
// over device memory the caller owns. Built when CMake finds nvcc (option ATTN_WITH_CUDA); the library is
// libattn_cuda, separate from libattn (it needs only the CUDA runtime, linked statically).
//
// The same semantics as attn::scaled_dot_product_attention (attn/attention.h) for what it supports:
//   out = softmax(scale · Q·Kᵀ + M) · V,   bfloat16 or float16 in and out, float32 accumulation
// with grouped-query attention (H a multiple of Hkv, K/V never copied), causal masking in both alignments, a
// sliding window, a key-padding mask; a row whose keys are all hidden gives 0 (lse −inf). Head size D ∈ {64,
// 128} and Dv = D. Not on the GPU: boolean/float masks, ALiBi, dropout, attention weights.
// Non-finite inputs: as on the CPU, except that a NaN/Inf in the value of a key hidden only by the causal or
// window range inside a diagonal tile reaches the rows it is hidden from as 0·NaN (as in PyTorch's kernels), a
// poisoned row's lse is −inf rather than NaN (its output is NaN, as on the CPU), and in the backward a NaN/Inf
// query (or a row whose output is NaN) makes dK NaN for every key of the 128-key blocks it meets, hidden keys
// included (the CPU's dK is NaN only for the keys the row sees). Padding keys (key_padding_mask) are loaded as
// zeros, so whatever their K and V hold reaches no output or gradient, as on the CPU.
//
// Every function validates its arguments and throws attn::ShapeError / attn::ArgumentError /
// attn::DTypeError naming the argument and the shapes, and attn::Error for a CUDA failure. Kernels are queued
// on `stream` (the caller's cudaStream_t; nullptr = the default stream) and not waited for.
#pragma once

#include <cstdint>
#include <optional>

#include "attn/attention.h"
#include "attn/error.h"

namespace attn::cuda {

enum class DType : uint8_t { kBFloat16, kFloat16 };

// A [B, heads, L, D] tensor in device memory: element (b, h, l, d) at data[b·sb + h·sh + l·sl + d] (strides in
// elements; d is contiguous). The base must be 16-byte aligned and sb, sh, sl multiples of 8 elements.
struct DeviceTensor {
  void* data = nullptr;
  int64_t sb = 0, sh = 0, sl = 0;
};

// One attention problem over device memory. H and Hkv are positive; B, Lq and Lk may be 0, as on the CPU (Lk = 0: every
// row sees no key and gives 0, lse −inf; B = 0 or Lq = 0: nothing to write but dk, dv = 0), and an empty tensor's data
// may be null.
struct DeviceAttention {
  int64_t B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  DType dtype = DType::kBFloat16;
  DeviceTensor q;  // q: [B, H, Lq, D]     (read)
  DeviceTensor k;  // k: [B, Hkv, Lk, D]   (read)
  DeviceTensor v;  // v: [B, Hkv, Lk, D]   (read)
  DeviceTensor o;  // o: [B, H, Lq, D]     (written by the forward)
  // lse: [B, H, Lq] float32, contiguous: each row's natural-log log-sum-exp of its scaled, masked scores (−inf for
  // a row with no visible key). Written by the forward when not null; read by the backward (required there).
  float* lse = nullptr;
  const uint8_t* key_padding = nullptr;  // [B, Lk] contiguous, 1 = padding (hidden), or null
  CausalAlignment causal = CausalAlignment::kNone;
  int64_t window = 0;          // > 0 only with causal: each query sees its last `window` keys
  std::optional<float> scale;  // default 1/√D; must be finite and > 0
  void* stream = nullptr;      // cudaStream_t
};

// The backward's tensors, in device memory, each with its own strides.
struct DeviceAttentionGrads {
  DeviceTensor out;    // out: [B, H, Lq, D]    the forward's output (read)
  DeviceTensor d_out;  // d_out: [B, H, Lq, D]  dLoss/dout (read)
  DeviceTensor dq;     // dq: [B, H, Lq, D]     (written)
  DeviceTensor dk;     // dk: [B, Hkv, Lk, D]   summed over each group's query heads (written)
  DeviceTensor dv;     // dv: [B, Hkv, Lk, D]   (written)
};

// The forward: writes p.o (and p.lse when not null). A GPU whose shared memory per block is too small for a kernel
// (the D = 128 backward needs 145 KB: sm_80 and sm_90 have it, sm_86/89/120 do not) gets an attn::Error saying so.
void attention_forward(const DeviceAttention& p);
// The backward (FlashAttention-2's: the weights recomputed from lse tile by tile, dQ accumulated in float32):
// writes g.dq, g.dk, g.dv. Takes float32 workspace of B·H·Lq·(D + 1) floats from the stream-ordered allocator.
void attention_backward(const DeviceAttention& p, const DeviceAttentionGrads& g);

// Number of CUDA devices visible (0 when there is no GPU or no driver; never throws).
int device_count();

}  // namespace attn::cuda
