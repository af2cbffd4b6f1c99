// Which OpenBLAS kernels run (attn/blas.h).
#include "attn/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cctype>
#include <string>

#include "cpu/attention_fused.h"

namespace attn {

std::string blas_kernels() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "";
}

bool blas_kernels_match_cpu() {
  if (detail::simd_level_active() != detail::SimdLevel::kAvx512) return true;
  std::string name = blas_kernels();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  // OpenBLAS 0.3.21's AVX-512 families on x86-64 (Sapphire Rapids adds AMX bf16 kernels to Cooper Lake's)
  return name == "skylakex" || name == "cooperlake" || name == "sapphirerapids";
}

}  // namespace attn
