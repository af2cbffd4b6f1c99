// Internal: the ops layer is compiled for the baseline x86-64 (SSE2) so that one libattn runs everywhere; its
// few hot element loops (LayerNorm, the int8 projection's quantisation and scaling, a linear map's bias and ReLU
// passes, rounding to bfloat16, dropout masks, GELU) are compiled again for x86-64-v3 (AVX2 with FMA) and
// x86-64-v4 (AVX-512 F/BW/DQ/VL) by GCC's function multi-versioning, and the loader picks the processor's best (an
// ifunc). The same source, so the same results up to the order of the double-precision LayerNorm sums' lanes
// and, in float, the multiply-adds GCC fuses where FMA exists (a last bit; never in the integer dropout hash).
// (A plain "avx2" clone has no FMA: GELU ran 28% slower in it on Zen 4.)
// A test run sees only the copy its processor picks; scripts/sanitize.sh builds with ATTN_NO_VECTOR_CLONES, so CI
// runs the whole suite once more through the baseline copy (the one an old or unknown x86-64 would take).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(ATTN_NO_VECTOR_CLONES)
#define ATTN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ATTN_VECTOR_CLONES
#endif
