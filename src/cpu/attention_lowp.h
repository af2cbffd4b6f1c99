// Internal: the bfloat16/float16 attention kernel (src/cpu/attention_lowp_kernels.cc), one entry point per
// compiled instruction set, and the choice between them.
//
// Q, K, V and the output are 16-bit (all bfloat16 or all float16); the masks, the ALiBi slopes, lse and
// every sum stay float32: S = Q·Kᵀ accumulates in float32, the online softmax runs in float32, and the
// output is rounded once at the end (round to nearest even). Two ways to multiply:
//   dot      (bfloat16 on AVX512_BF16: vdpbf16ps) Q·Kᵀ on bfloat16 pairs; P rounded to bfloat16 for P·V,
//            as PyTorch's CPU kernel does; float32 accumulators
//   convert  (everything else) tiles widened to float32 as they are packed, then fp32 FMA micro-kernels
//            (tile_kernels.h): float16 through F16C vcvtph2ps, bfloat16 by a 16-bit shift
#pragma once

#include <cstdint>

#include "cpu/attention_fused.h"
#include "cpu/attention_problem.h"

namespace attn::detail {

enum class LowpType : uint8_t { kBFloat16, kFloat16 };

// The fp32 problem's sizes, strides, masks and options, with 16-bit q, k, v and output in its layouts
// (p.q, p.k, p.v, p.o are null; p.lse is float32 when asked for; weights are never asked for here).
struct LowpAttentionProblem {
  AttentionProblem p;
  LowpType type = LowpType::kBFloat16;
  const uint16_t* q = nullptr;  // [B, H, Lq, D]     with p's q strides
  const uint16_t* k = nullptr;  // [B, Hkv, Lk, D]   with p's k strides
  const uint16_t* v = nullptr;  // [B, Hkv, Lk, Dv]  with p's v strides
  uint16_t* o = nullptr;        // [B, H, Lq, Dv]    with p's o strides
};

// The bfloat16 backward's problem: the forward's sizes, strides and options (p), its bfloat16 q, k, v, output and
// output gradient (out, d_out with p's o strides), its float32 lse [B, H, Lq], and the bfloat16 gradients dq, dk, dv
// in q's, k's and v's layouts.
struct LowpBackwardProblem {
  AttentionProblem p;
  const uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *d_out = nullptr;
  const float* lse = nullptr;
  uint16_t *dq = nullptr, *dk = nullptr, *dv = nullptr;
};

namespace scalar {
void attention_lowp(const LowpAttentionProblem& lp);
}
namespace avx2 {
void attention_lowp(const LowpAttentionProblem& lp);
}
namespace avx512 {
void attention_lowp(const LowpAttentionProblem& lp);
}
namespace avx512bf16 {  // the avx512 kernel with vdpbf16ps for bfloat16 (float16 as avx512)
void attention_lowp(const LowpAttentionProblem& lp);
// The bfloat16 backward on vdpbf16ps (attention_lowp_backward_kernels.cc); false, with nothing written, when an
// input holds NaN or Inf or D or Dv is 0 (the caller then runs the float32 backward on the widened tensors).
bool attention_backward_bf16(const LowpBackwardProblem& bp);
}  // namespace avx512bf16

// Does this processor have AVX512_BF16 (and AVX-512)?
bool bf16_dot_supported();
// Whether bfloat16 uses vdpbf16ps at the avx512 level: where supported, unless ATTN_BF16_DOT=0 or
// force_bf16_dot(false) (tests, benchmarks) turned it off. force_bf16_dot returns the setting it replaced.
bool bf16_dot_active();
bool force_bf16_dot(bool on);
// How many backward calls the vdpbf16ps kernel has completed (it declines non-finite input and D or Dv = 0, and the
// widened float32 backward runs instead): the tests' witness that it ran.
void count_bf16_backward_run();
uint64_t bf16_backward_runs();
// The kernel attention_lowp runs for `type` now: "avx512-bf16" | "avx512" | "avx2" | "scalar".
const char* lowp_kernel_name(LowpType type);
// Runs the kernel of simd_level_active() (and bf16_dot_active()).
void attention_lowp(const LowpAttentionProblem& lp);

}  // namespace attn::detail
