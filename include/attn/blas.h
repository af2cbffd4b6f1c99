// attn/blas.h: the SGEMM kernels behind attn's linear layers (OpenBLAS's, chosen by OpenBLAS when it loads).
#pragma once

#include <string>

namespace attn {

// The kernel family OpenBLAS runs: "Haswell", "SkylakeX", "Cooperlake", … (openblas_get_corename()). OpenBLAS
// chooses it once, when it loads, from the processor or from the environment variable OPENBLAS_CORETYPE.
std::string blas_kernels();

// False when attn's own kernels run AVX-512 but OpenBLAS's do not (typically OPENBLAS_CORETYPE=Haswell set in the
// environment): on a core with full-width AVX-512 FMAs (AMD Zen 5, Intel Xeon) that halves the linear layers' FMA
// peak (SGEMM 512×2048×512 on one Zen 5 core: 122 GFLOP/s with Haswell's kernels, 228 with Cooperlake's; on a
// Zen 4, whose AVX-512 FMAs are double-pumped, the two peak alike). attn leaves the choice to OpenBLAS and the
// environment; `attn bench train` prints the family and this warning.
bool blas_kernels_match_cpu();

}  // namespace attn
