// Chooses the bfloat16/float16 kernel: the fused kernel's instruction set (simd_level_active), and at the
// avx512 level the vdpbf16ps variant for bfloat16 where the processor has AVX512_BF16.
#include "cpu/attention_lowp.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace attn::detail {

bool bf16_dot_supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return simd_level_supported() == SimdLevel::kAvx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

namespace {
std::atomic<bool>& bf16_dot_flag() {  // (atomic: a test may switch it while another thread's call reads it)
  static std::atomic<bool> on = [] {
    const char* env = std::getenv("ATTN_BF16_DOT");
    return bf16_dot_supported() && !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return on;
}
std::atomic<uint64_t> bf16_backward_count{0};
}  // namespace

bool bf16_dot_active() { return bf16_dot_flag() && simd_level_active() == SimdLevel::kAvx512; }
bool force_bf16_dot(bool on) { return bf16_dot_flag().exchange(on && bf16_dot_supported()); }
void count_bf16_backward_run() { bf16_backward_count.fetch_add(1, std::memory_order_relaxed); }
uint64_t bf16_backward_runs() { return bf16_backward_count.load(std::memory_order_relaxed); }

const char* lowp_kernel_name(LowpType type) {
  if (type == LowpType::kBFloat16 && bf16_dot_active()) return "avx512-bf16";
  return simd_level_name(simd_level_active());
}

void attention_lowp(const LowpAttentionProblem& lp) {
  switch (simd_level_active()) {
    case SimdLevel::kAvx512:
      if (lp.type == LowpType::kBFloat16 && bf16_dot_active()) return avx512bf16::attention_lowp(lp);
      return avx512::attention_lowp(lp);
    case SimdLevel::kAvx2: return avx2::attention_lowp(lp);
    case SimdLevel::kScalar: return scalar::attention_lowp(lp);
  }
}

}  // namespace attn::detail
