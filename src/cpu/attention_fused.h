// Internal: the fused attention kernel, one entry point per compiled instruction set, and the choice
// between them.
#pragma once

#include <cstdint>

#include "cpu/attention_problem.h"

namespace attn::detail {

enum class SimdLevel : uint8_t { kScalar, kAvx2, kAvx512 };

namespace scalar {
void attention_fused(const AttentionProblem& p);
}
namespace avx2 {
void attention_fused(const AttentionProblem& p);
}
namespace avx512 {
void attention_fused(const AttentionProblem& p);
}
namespace scalar {
float exp_for_test(float x);
float exp2_for_test(float x);
float exp2_finite_for_test(float x);
}  // namespace scalar
namespace avx2 {
float exp_for_test(float x);
float exp2_for_test(float x);
float exp2_finite_for_test(float x);
}  // namespace avx2
namespace avx512 {
float exp_for_test(float x);
float exp2_for_test(float x);
float exp2_finite_for_test(float x);
}  // namespace avx512
// The fused backward (FlashAttention-2's), per instruction set.
namespace scalar {
void attention_backward_fused(const AttentionProblem& p, const AttentionGradients& g);
}
namespace avx2 {
void attention_backward_fused(const AttentionProblem& p, const AttentionGradients& g);
}
namespace avx512 {
void attention_backward_fused(const AttentionProblem& p, const AttentionGradients& g);
}
// The FMA ceiling in GFLOP/s, measured for `seconds` on `threads` threads (0 = all), per instruction set.
namespace scalar {
double fma_peak_gflops(int threads, double seconds);
}
namespace avx2 {
double fma_peak_gflops(int threads, double seconds);
}
namespace avx512 {
double fma_peak_gflops(int threads, double seconds);
}
// ... at the active level (simd_level_active()).
double fma_peak_gflops(int threads, double seconds);

// The best level this processor runs, and the one attention_fused uses: the best, unless
// force_simd_level (tests, benchmarks) or the environment variable ATTN_SIMD=scalar|avx2|avx512 says
// otherwise (never above what the processor has).
SimdLevel simd_level_supported();
SimdLevel simd_level_active();
void force_simd_level(SimdLevel level);
const char* simd_level_name(SimdLevel level);

// The fused forwards' (float32 and 16-bit) query rows per task: 0 (the default) lets each call choose (TileTraits kBq,
// or up to kBqLong where a head's K and V are long); tests force another (at most 128, or kBqLong where larger) to
// check that path on short cases.
void force_fused_query_tile(int64_t rows);
int64_t forced_fused_query_tile();

// The fused forwards' tasks packing their own head's operands (float32: FusedPlan::task_keys, 16-bit:
// LowpPlan::task_kv): false (the default) lets each call choose; tests force it on to check that path on short cases.
void force_task_keys(bool on);
bool forced_task_keys();

// The fused forwards' packed operands shared by the call's tasks (float32: K; 16-bit: K and V) with no packing pass
// before the tasks: every tile packed by the first task to need it (PackedOnDemand), as the tiles a late thread has not
// packed yet are. False (the default): the pass runs; tests force it on to check the tasks' packing.
void force_packing_by_tasks(bool on);
bool forced_packing_by_tasks();

// The backwards' (float32 and bfloat16) key blocks per pass over the query tiles: 0 (the default) lets each call
// choose; tests force 1 and several to check that they give the same bits.
void force_backward_span(int64_t blocks);
int64_t forced_backward_span();

// The fused path: runs the kernel of simd_level_active().
void attention_fused(const AttentionProblem& p);
// The fused backward of simd_level_active(): g.dq, g.dk, g.dv from p (its o unused), g.out, g.lse, g.d_out.
void attention_backward_fused(const AttentionProblem& p, const AttentionGradients& g);

}  // namespace attn::detail
