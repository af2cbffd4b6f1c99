// Internal: every OpenBLAS GEMM of the library goes through blas_sgemm (cblas_sgemm's arguments). Row-major products
// of fewer than 4 rows run as one sgemv per row (see blas.cc: OpenBLAS's GEMM packs all of op(B) on every call).
//
// Sizes come as int64 and are checked against the int OpenBLAS takes (a ShapeError naming the op and them: a K of 2^32
// + 16 had been cast to 16, a silently short product).
//
// OpenBLAS's OpenMP build (Debian's 0.3.21) keeps one process-wide thread count and a buffer per thread sized by it.
// A call from outside a parallel region whose omp_get_max_threads() (2 or more) differs from that count resets both,
// freeing the buffers of the threads above the new count, under the GEMM another thread may have in flight: user
// threads calling at 2, 3 and 4 threads at once got garbage from the 4-thread one's GEMMs (5–18 of 400 256³ products
// wrong by up to 36). So calls at the count in force run side by side (a shared lock), and a call that would change
// it waits for them to finish (the exclusive lock). One-thread calls, and calls from inside a parallel region (which
// OpenBLAS runs on the calling thread), touch neither and take no lock.
#pragma once

#include <cblas.h>

#include <cstdint>

namespace attn::detail {

// Row-major products of fewer rows than this run as one sgemv per row (blas.cc says when and why).
inline constexpr int64_t kBlasGemvRows = 4;

void blas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                int64_t ldc, const char* who);  // who: the op, for the error

}  // namespace attn::detail
