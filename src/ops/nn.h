// Internal: the neural-net primitives every layer is built from, as forward/backward pairs (llm.c's
// layout): outputs first, then inputs, then sizes; gradients are prefixed d and ACCUMULATED (+=) into, so a tensor used
// twice (a residual) simply receives both contributions. The backward quotes the forward line it
// differentiates. All tensors are row-major float32.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "attn/activation.h"

namespace attn::ops {

// How a backward op writes its input gradient dx: added to what dx holds (the rule above), or written over it, for a
// buffer that op alone fills: no zeroing pass before it (Transformer-base's training step had zeroed ~270 MB of
// activation gradients a step), and for the element-wise ops dx may then be dout itself (in place).
enum class GradWrite { kAccumulate, kOverwrite };

// out = (x − mean) · rstd · w + b, per row of C.        out, x: [M, C]; w, b: [C]; mean, rstd: [M]
void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t M,
                        int64_t C, float eps = 1e-5f);
// (dw, db accumulate either way; dx_write: see GradWrite)
void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                         const float* mean, const float* rstd, int64_t M, int64_t C,
                         GradWrite dx_write = GradWrite::kAccumulate);

// What a linear map does beside the product (one or the other, not both).
struct LinearEpilogue {
  bool relu = false;        // y = max(x·Wᵀ + b, 0)
  bool accumulate = false;  // y += x·Wᵀ + b, the residual of a sublayer, instead of y = x·Wᵀ + b
};

// y = x·Wᵀ + b (nn.Linear's layout) with the epilogue, through OpenBLAS (src/ops/linear.cc says why not oneDNN).
// y: [M, N]; x: [M, K]; w: [N, K]; b: [N] or nullptr
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K,
                    LinearEpilogue epilogue = {});
// The same with rows ldy / ldx apart (a head block inside a wider row).
void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, const float* b, int64_t M,
                    int64_t N, int64_t K, LinearEpilogue epilogue = {});
// The passes around a linear map's GEMM: y = b, y += b (accumulate) or y = 0 before it; y = max(y, 0) after.
// y: [M, N] with rows ldy apart; b: [N] or nullptr
void linear_prologue(float* y, int64_t ldy, const float* b, int64_t M, int64_t N, bool accumulate);
void relu_rows(float* y, int64_t ldy, int64_t M, int64_t N);
// (dW, db accumulate either way; dx_write: see GradWrite)
void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t M,
                     int64_t N, int64_t K, GradWrite dx_write = GradWrite::kAccumulate);

// out = a + b, element by element (out may be a or b)                                [n]
void add(float* out, const float* a, const float* b, int64_t n);

// out = act(x), GELU the exact erf form (PyTorch's default)                        [n]
void activation_forward(float* out, const float* x, int64_t n, Activation act);
void activation_backward(float* dx, const float* dout, const float* x, int64_t n, Activation act,
                         GradWrite write = GradWrite::kAccumulate);

// out = x · keep / (1 − p), keep ~ Bernoulli(1 − p), stored as a 0/1 byte mask       [n]
// The mask comes from a counter-based generator keyed by one draw of rng: element i's bits depend on (key, i)
// only, so the mask is the same for any thread count. out may be x (in place).
void dropout_forward(float* out, uint8_t* keep, const float* x, int64_t n, float p, std::mt19937_64& rng);
void dropout_backward(float* dx, const float* dout, const uint8_t* keep, int64_t n, float p,
                      GradWrite write = GradWrite::kAccumulate);

// Cross-entropy with label smoothing ε, averaged over the rows whose target is not ignore_index
// (PyTorch's CrossEntropyLoss(label_smoothing=ε, ignore_index=...)). logits: [M, V], targets: [M].
// Returns the loss; dlogits (if not null) receives its gradient (written, not accumulated).
float cross_entropy_forward_backward(float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V,
                                     float smoothing, int32_t ignore_index, int64_t* counted = nullptr);

// z = z − logsumexp(z) row by row, in place (log-softmax: a decoder's log-probabilities). z: [rows, V]. A row with a
// NaN or +inf entry, or all −inf, comes out NaN.
void log_softmax_rows(float* z, int64_t rows, int64_t V);

struct Bf16Matmul;        // src/ops/linear_bf16.cc: oneDNN's bf16 matmul over one weight matrix
struct SmallGemmWeights;  // src/ops/linear_small.cc: a float32 matrix and, built on first use, its transpose
struct SmallGemmBf16;     // src/ops/linear_small.cc: bfloat16 weights in libxsmm's VNNI layout

// A projection's inference copy. Int8 weights, one scale per output row (CTranslate2's scheme):
// w[n, k] ≈ scale[n] · q[n, k], |q| ≤ 127; or (bf16 set) bfloat16 weights in oneDNN's layout; or (small set)
// the float32 weights for libxsmm's small-matrix kernels, transposed on first use (src/ops/linear_small.cc).
struct QuantizedMatrix {
  std::vector<int8_t> q;     // [N, K]
  std::vector<float> scale;  // [N]
  // [N]: −128 · Σ_k q[n, k], the C offset of the product with activations shifted to u8 (linear_forward_int8)
  std::vector<int32_t> u8_offset;
  int64_t N = 0, K = 0;
  std::shared_ptr<const Bf16Matmul> bf16;           // instead of q and scale
  std::shared_ptr<const SmallGemmBf16> small_bf16;  // beside bf16, where libxsmm has AVX512_BF16 kernels
  std::shared_ptr<SmallGemmWeights> small;          // instead of q and scale
};
// w: [N, K] float32 (not copied: it must outlive the result) -> its small-GEMM form when it has at most 64 Ki
// floats (its transpose stays in L2 while the rows stream past); else an empty one (N = 0): such a matrix
// stays with OpenBLAS. The transpose is made by the first call with enough rows to use it (8 for libxsmm, 4 for
// OpenBLAS: see linear_forward_small).
QuantizedMatrix small_gemm_weights(const float* w, int64_t N, int64_t K);
// y = x·Wᵀ + b with W given transposed: libxsmm's kernels over blocks of 16 rows (in parallel when large
// enough); OpenBLAS below 8 rows, without AVX-512 or where libxsmm has no kernel (on the transposed copy from 4 rows,
// one sgemv per row on W below). y: [M, N]; x: [M, K]; b: [N] or nullptr
void linear_forward_small(float* y, const float* x, const QuantizedMatrix& w, const float* b, int64_t M,
                          LinearEpilogue epilogue = {});
// bfloat16 weights w [N, K] in libxsmm's VNNI layout for its AVX512_BF16 kernels (2x its float32 ones), when
// the matrix fits in L2, K is even and the processor has AVX512_BF16 (and ATTN_SIMD allows AVX-512); else null.
std::shared_ptr<const SmallGemmBf16> small_gemm_bf16(const uint16_t* w, int64_t N, int64_t K);
// y = xb · Wᵀ + b with the epilogue (xb: [M, K] bfloat16 rows, y: [M, N], float32 sums) in blocks of 16 rows;
// false, y untouched, below 8 rows or where libxsmm has no kernel.
bool small_gemm_bf16_run(float* y, const uint16_t* xb, const SmallGemmBf16& w, const float* b, int64_t M,
                         LinearEpilogue epilogue);
// w: [N, K] float32 -> bfloat16 (round to nearest even), reordered once for oneDNN's bf16 x bf16 -> f32 matmul.
QuantizedMatrix bf16_rows(const float* w, int64_t N, int64_t K);
// y = x·Wᵀ + b with W bfloat16: x rounded to bfloat16 on the fly, float32 sums (AVX512_BF16 where the
// processor has it; oneDNN chooses). y: [M, N]; x: [M, K]; b: [N] or nullptr
void linear_forward_bf16(float* y, const float* x, const QuantizedMatrix& w, const float* b, int64_t M,
                         LinearEpilogue epilogue = {});
// w: [N, K] float32 -> per-row int8 (scale = max|w[n, :]| / 127, round to nearest; / 63 on processors
// without VNNI, where oneDNN's int8 GEMM would otherwise saturate).
QuantizedMatrix quantize_rows(const float* w, int64_t N, int64_t K);

// y = x·Wᵀ + b with W int8: x is quantised per row on the fly (int8, scale max|x[m, :]| / 127), the product
// accumulates in int32 (oneDNN's gemm_s8s8s32: VNNI where the processor has it) and is scaled back. Below
// AVX-512 the activations are stored shifted to u8 (x + 128) for oneDNN's u8s8s32 kernels, w.u8_offset taking the
// shift back out: gemm_s8s8s32 did that shift itself on every call, in plain loops (29% of int8 translation).
// y: [M, N]; x: [M, K]; b: [N] or nullptr
void linear_forward_int8(float* y, const float* x, const QuantizedMatrix& w, const float* b, int64_t M,
                         LinearEpilogue epilogue = {});
// The projection every layer runs: int8, bf16 or transposed float32 when qw is given (an inference-only model),
// else float32 through OpenBLAS.
inline void linear_forward(float* y, const float* x, const float* w, const QuantizedMatrix* qw, const float* b,
                           int64_t M, int64_t N, int64_t K, LinearEpilogue epilogue = {}) {
  if (qw && qw->bf16)
    linear_forward_bf16(y, x, *qw, b, M, epilogue);
  else if (qw && qw->small)
    linear_forward_small(y, x, *qw, b, M, epilogue);
  else if (qw)
    linear_forward_int8(y, x, *qw, b, M, epilogue);
  else
    linear_forward(y, x, w, b, M, N, K, epilogue);
}

// Grows b to at least n floats (never shrinks, so a buffer reused across calls is allocated once) and
// returns its data.
inline float* grow(std::vector<float>& b, int64_t n) {
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// p[0, n) = 0 for a buffer used next right away (it stays in the caches), split over the threads from
// kParallelZeroFloats on: a backward's activation gradients of a few MB, which one thread had zeroed while the others
// waited.                                                                             [n]
void zero_fill(float* p, int64_t n);
// p[0, n) = 0 through streaming stores, which write whole cache lines to memory without first reading them in, split
// over the threads: for buffers larger than the caches that are read again only later (a model's gradients, zeroed
// before its forward). Transformer-base's 176 MB of gradients (the shipped vocabularies: tensors of at most 4 MB):
// memset, tensor by tensor below glibc's non-temporal threshold, 12.9 ms on Zen 3; streaming 4–5 ms. Buffers under
// 2 MB take zero_fill (regular stores).                                                [n]
void zero_streaming(float* p, int64_t n);

// grow(b, n) with its first n floats set to zero: a gradient buffer about to be accumulated into.
inline float* grow_zeroed(std::vector<float>& b, int64_t n) {
  float* p = grow(b, n);
  zero_fill(p, n);
  return p;
}

// A per-thread scratch buffer that only grows: slot s (0..7) holds at least n floats, reused across calls
// and layers so the hot path touches no fresh pages.
float* scratch(int slot, int64_t n);

}  // namespace attn::ops
