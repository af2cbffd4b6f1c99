// Chooses the fused and decoding kernels compiled for the best instruction set the processor has.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu/attention_decode.h"
#include "cpu/attention_fused.h"

namespace attn::detail {

SimdLevel simd_level_supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // each build may use every extension it is compiled with (CMakeLists.txt: the avx512 one -mavx512f/dq/bw/vl, which
  // GCC takes to imply F16C; the avx2 one -mavx2 -mfma -mf16c, whose 16-bit kernels convert with vcvtph2ps): a
  // virtual machine can hide any of them
  const bool f16c = __builtin_cpu_supports("f16c");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && f16c)
    return SimdLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return SimdLevel::kAvx2;
#endif
  return SimdLevel::kScalar;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512: return "avx512";
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kScalar: return "scalar";
  }
  return "?";
}

namespace {
SimdLevel clamp_to_supported(SimdLevel level) {
  const SimdLevel best = simd_level_supported();
  return static_cast<int>(level) > static_cast<int>(best) ? best : level;
}

SimdLevel initial_level() {
  const char* env = std::getenv("ATTN_SIMD");
  if (env != nullptr) {
    if (std::strcmp(env, "scalar") == 0) return clamp_to_supported(SimdLevel::kScalar);
    if (std::strcmp(env, "avx2") == 0) return clamp_to_supported(SimdLevel::kAvx2);
  }
  return simd_level_supported();
}

// Atomic, as the forced choices below: a test (or a program) may set it while another thread's call reads it.
std::atomic<SimdLevel>& active_level() {
  static std::atomic<SimdLevel> level{initial_level()};
  return level;
}
}  // namespace

SimdLevel simd_level_active() { return active_level().load(std::memory_order_relaxed); }
void force_simd_level(SimdLevel level) { active_level().store(clamp_to_supported(level), std::memory_order_relaxed); }

namespace {
// The tests' forced tile choices (0: each call chooses); constant-initialised, so safe before main.
std::atomic<int64_t> forced_query_rows{0}, forced_span_blocks{0};
std::atomic<bool> forced_own_keys{false}, forced_tasks_pack{false};
constexpr auto kRelaxed = std::memory_order_relaxed;
}  // namespace
void force_packing_by_tasks(bool on) { forced_tasks_pack.store(on, kRelaxed); }
bool forced_packing_by_tasks() { return forced_tasks_pack.load(kRelaxed); }
void force_task_keys(bool on) { forced_own_keys.store(on, kRelaxed); }
bool forced_task_keys() { return forced_own_keys.load(kRelaxed); }
void force_fused_query_tile(int64_t rows) { forced_query_rows.store(rows, kRelaxed); }
int64_t forced_fused_query_tile() { return forced_query_rows.load(kRelaxed); }
void force_backward_span(int64_t blocks) { forced_span_blocks.store(blocks, kRelaxed); }
int64_t forced_backward_span() { return forced_span_blocks.load(kRelaxed); }

double fma_peak_gflops(int threads, double seconds) {
  switch (simd_level_active()) {
    case SimdLevel::kAvx512: return avx512::fma_peak_gflops(threads, seconds);
    case SimdLevel::kAvx2: return avx2::fma_peak_gflops(threads, seconds);
    case SimdLevel::kScalar: return scalar::fma_peak_gflops(threads, seconds);
  }
  return 0.0;
}

void attention_fused(const AttentionProblem& p) {
  switch (simd_level_active()) {
    case SimdLevel::kAvx512: avx512::attention_fused(p); return;
    case SimdLevel::kAvx2: avx2::attention_fused(p); return;
    case SimdLevel::kScalar: scalar::attention_fused(p); return;
  }
}

void attention_decode(const DecodeProblem& p) {
  switch (simd_level_active()) {
    case SimdLevel::kAvx512: avx512::attention_decode(p); return;
    case SimdLevel::kAvx2: avx2::attention_decode(p); return;
    case SimdLevel::kScalar: scalar::attention_decode(p); return;
  }
}

void attention_backward_fused(const AttentionProblem& p, const AttentionGradients& g) {
  switch (simd_level_active()) {
    case SimdLevel::kAvx512: avx512::attention_backward_fused(p, g); return;
    case SimdLevel::kAvx2: avx2::attention_backward_fused(p, g); return;
    case SimdLevel::kScalar: scalar::attention_backward_fused(p, g); return;
  }
}

}  // namespace attn::detail
