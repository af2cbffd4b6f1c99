// The float32 linear map of an inference-only model whose weight matrices fit in the L2 cache (the shipped
// translation model's are 16-192 KB), through libxsmm's just-in-time small-matrix kernels (Debian's
// libxsmm-dev) instead of OpenBLAS's SGEMM.
//
// Why: at decoding's row counts (one row per live hypothesis, 1-256) OpenBLAS spends a fifth of each call
// packing the weight matrix it has just packed the step before (sgemm_incopy was 13% of greedy translation's
// time) and runs at 80-90% of the FMA peak; libxsmm's kernels read the operands where they lie and ran at
// 99-100% of it on the model's shapes (M = 16-256 rows of 128-384 columns: 1.2-1.7x OpenBLAS; bench numbers
// in docs/performance/translation.md). They want the weights as the column-major left operand, i.e. W transposed, so
// the model keeps that copy, made on first use (inference only: a model that trains would make it stale;
// Transformer::quantize).
// The kernels' sums run in the same k order as any GEMM's but with other partial sums than OpenBLAS's, so
// results differ from the float32 training path in the last bits. Without AVX-512 the projections stay with
// OpenBLAS (use_libxsmm says why), which is handed the same transposed copy from 4 rows on (detail::kBlasGemvRows:
// below it sgemv on W).
//
// libxsmm's generated code keeps the stack pointer where it belongs (the oneDNN kernels that ruled out
// oneDNN's f32 matmul, src/ops/linear.cc, do not): tests/task_test.cc translates under a profiling timer.
#include <libxsmm.h>

#include <immintrin.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <vector>

#include "attn/error.h"
#include "cpu/attention_fused.h"
#include "ops/blas_call.h"
#include "ops/nn.h"

#include <omp.h>

namespace attn::ops {

namespace {

constexpr int64_t kMaxWeightFloats = 64 * 1024;  // 256 KB: the copy stays in L2 while the rows stream past
constexpr int64_t kRowBlock = 16;                // rows per kernel call (the last call takes the remainder)
constexpr int64_t kMinRows = 8;                  // fewer rows: OpenBLAS (no kernel to generate for a GEMV)
// From detail::kBlasGemvRows rows OpenBLAS takes the transposed copy (wt [K, N], not transposed in the call) rather
// than W: its packing of a [K, N] operand is faster, and the sums were the same bits on Zen 3's kernels (2–8% on the
// model's shapes, 1 thread: M 64, N 128 72.5 → 75.3 GFLOP/s; M 16 54.8 → 59.2). Below it the rows go through sgemv
// on W (ops/blas.cc).

// libxsmm's kernels while AVX-512 is in use (ATTN_SIMD and the tests' forced levels choose it for our own kernels,
// call by call), OpenBLAS elsewhere. Not libxsmm's AVX2 ("hsw") kernels: on an AVX2-only AMD
// Zen 3 they ran at 60–75% of the FMA peak on the translation model's shapes (rows 4–64 per call alike), OpenBLAS's at
// 78–88% from 64 rows, weights packing included (docs/performance/zen3.md); `attn bench translate --threads 1` on
// OpenBLAS: greedy 2550 → 2950 sentences/s, beam 4 975 → 1080.
bool use_libxsmm() {
  if (detail::simd_level_active() != detail::SimdLevel::kAvx512) return false;
  static const bool initialised = (libxsmm_init(), true);
  return initialised;
}

// y rows [rows, N] += x rows [rows, K] · wt [K, N]: column-major C (N × rows) += A (N × K) · B (K × rows), the
// kernel libxsmm's `dispatch` (libxsmm_smmdispatch for float32, libxsmm_bsmmdispatch for bfloat16) makes for it.
template <class Dispatch>
auto small_kernel(Dispatch dispatch, int flags, int64_t N, int64_t rows, int64_t K) {
  const float alpha = 1.0f, beta = 1.0f;
  const int prefetch = LIBXSMM_PREFETCH_NONE;
  const libxsmm_blasint lda = N, ldb = K, ldc = N;
  return dispatch(static_cast<libxsmm_blasint>(N), static_cast<libxsmm_blasint>(rows), static_cast<libxsmm_blasint>(K),
                  &lda, &ldb, &ldc, &alpha, &beta, &flags, &prefetch);
}
libxsmm_smmfunction small_gemm_kernel(int64_t N, int64_t rows, int64_t K) {
  return small_kernel(libxsmm_smmdispatch, LIBXSMM_GEMM_FLAG_NONE, N, rows, K);
}

// libxsmm's kernels return with the upper halves of the vector registers dirty (no vzeroupper): the SSE code
// after them (this library's baseline build) would then pay for the transition on every instruction.
__attribute__((target("avx"))) void clear_upper_vector_state() { _mm256_zeroupper(); }

// run(r0, last) for the blocks of kRowBlock rows of M (the last one the remainder), in parallel when there is
// work for more than one thread (2^20 FLOPs: ~10 µs), else with no parallel region at all (ops::layer_norm_forward
// says why); the vector state cleared after each kernel call.
template <class Run>
void for_row_blocks(int64_t M, int64_t flops, const Run& run) {
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  const auto block = [&](int64_t blk) {
    run(blk * kRowBlock, blk + 1 == blocks);
    clear_upper_vector_state();
  };
  if (blocks > 1 && flops >= (int64_t{1} << 20) && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) block(blk);
  } else {
    for (int64_t blk = 0; blk < blocks; ++blk) block(blk);
  }
}

}  // namespace

struct SmallGemmWeights {
  explicit SmallGemmWeights(const float* weights) : w(weights) {}
  const float* w;  // [N, K]: the parameter itself
  std::once_flag transposed;
  std::vector<float> wt;  // [K, N], once a call had enough rows
};

QuantizedMatrix small_gemm_weights(const float* w, int64_t N, int64_t K) {
  QuantizedMatrix m;
  if (N * K > kMaxWeightFloats || N <= 0 || K <= 0) return m;
  m.N = N, m.K = K;
  m.small = std::make_shared<SmallGemmWeights>(w);
  return m;
}

void linear_forward_small(float* y, const float* x, const QuantizedMatrix& w, const float* b, int64_t M,
                          LinearEpilogue epilogue) {
  if (epilogue.relu && epilogue.accumulate)
    throw ArgumentError("linear_forward_small: a ReLU epilogue does not accumulate");
  const int64_t N = w.N, K = w.K;
  if (M == 0 || N == 0) return;
  linear_prologue(y, N, b, M, N, epilogue.accumulate);  // y = b (or y + b), then y += x·Wᵀ
  libxsmm_smmfunction full = nullptr, last = nullptr;
  if (M >= kMinRows && use_libxsmm()) {
    full = small_gemm_kernel(N, std::min(M, kRowBlock), K);
    last = M % kRowBlock == 0 ? full : small_gemm_kernel(N, M % kRowBlock, K);
  }
  const bool with_libxsmm = full != nullptr && last != nullptr;
  if (!with_libxsmm && M < detail::kBlasGemvRows) {  // a few rows (sgemv per row, ops/blas.cc): W as it is
    detail::blas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w.small->w, K, 1.0f, y, N,
                       "linear_forward_small");
    if (epilogue.relu) relu_rows(y, N, M, N);
    return;
  }
  SmallGemmWeights& s = *w.small;
  std::call_once(s.transposed, [&] {
    s.wt.resize(static_cast<size_t>(N * K));
    constexpr int64_t kTile = 32;  // tile by tile: both sides stay in cache lines already fetched
    for (int64_t n0 = 0; n0 < N; n0 += kTile)
      for (int64_t k0 = 0; k0 < K; k0 += kTile)
        for (int64_t n = n0; n < std::min(N, n0 + kTile); ++n)
          for (int64_t k = k0; k < std::min(K, k0 + kTile); ++k) s.wt[static_cast<size_t>(k * N + n)] = s.w[n * K + k];
  });
  const float* wt = s.wt.data();
  if (with_libxsmm)
    for_row_blocks(M, 2 * M * N * K,
                   [&](int64_t r0, bool last_block) { (last_block ? last : full)(wt, x + r0 * K, y + r0 * N); });
  else  // OpenBLAS (no AVX-512, or libxsmm declined the shape): the same sums as from W, packed faster
    detail::blas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, x, K, wt, N, 1.0f, y, N,
                       "linear_forward_small");
  if (epilogue.relu) relu_rows(y, N, M, N);
}

// ---- bfloat16 weights (Quantization::kBFloat16): libxsmm's AVX512_BF16 kernels (vdpbf16ps) --------------------

struct SmallGemmBf16 {
  int64_t N = 0, K = 0;
  std::vector<libxsmm_bfloat16> a;  // [K/2, N, 2]: Wᵀ rounded to bfloat16 in libxsmm's VNNI layout
};

namespace {
bool bf16_kernels() { return use_libxsmm() && libxsmm_get_target_archid() >= LIBXSMM_X86_AVX512_CPX; }

libxsmm_bsmmfunction small_bf16_kernel(int64_t N, int64_t rows, int64_t K) {  // Wᵀ in the VNNI layout
  return small_kernel(libxsmm_bsmmdispatch, LIBXSMM_GEMM_FLAG_VNNI_A, N, rows, K);
}
}  // namespace

std::shared_ptr<const SmallGemmBf16> small_gemm_bf16(const uint16_t* w, int64_t N, int64_t K) {
  if (N * K > kMaxWeightFloats || N <= 0 || K <= 0 || K % 2 != 0 || !bf16_kernels()) return nullptr;
  auto m = std::make_shared<SmallGemmBf16>();
  m->N = N, m->K = K;
  m->a.resize(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) m->a[static_cast<size_t>((k / 2) * N * 2 + n * 2 + k % 2)] = w[n * K + k];
  return m;
}

bool small_gemm_bf16_run(float* y, const uint16_t* xb, const SmallGemmBf16& w, const float* b, int64_t M,
                         LinearEpilogue epilogue) {
  const int64_t N = w.N, K = w.K;
  if (M < kMinRows) return false;
  const libxsmm_bsmmfunction full = small_bf16_kernel(N, std::min(M, kRowBlock), K);
  const libxsmm_bsmmfunction last = M % kRowBlock == 0 ? full : small_bf16_kernel(N, M % kRowBlock, K);
  if (full == nullptr || last == nullptr) return false;
  linear_prologue(y, N, b, M, N, epilogue.accumulate);  // y = b (or y + b), then y += xb·Wᵀ
  const auto* rows = reinterpret_cast<const libxsmm_bfloat16*>(xb);
  for_row_blocks(M, M * N * K, [&](int64_t r0, bool last_block) {  // (half a float32 FMA's time per product)
    (last_block ? last : full)(w.a.data(), rows + r0 * K, y + r0 * N);
  });
  if (epilogue.relu) relu_rows(y, N, M, N);
  return true;
}

}  // namespace attn::ops
