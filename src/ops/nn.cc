// The neural-net primitives (ops/nn.h): BLAS for the linear maps, OpenMP loops for the rest.
#include "ops/nn.h"

#include "attn/error.h"
#include "ops/blas_call.h"
#include "ops/clones.h"
#include "ops/onednn.h"

#include <omp.h>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace attn::ops {

// Below this many elements a loop stays on one thread (a parallel region costs a few microseconds).
constexpr int64_t kParallelElements = 1 << 15;

namespace {
// One row of layer_norm_forward (oi may be xi).
ATTN_VECTOR_CLONES void layer_norm_row(float* oi, float* mean, float* rstd, const float* xi, const float* w,
                                       const float* b, int64_t C, float eps) {
  // sums in double, as lanes (omp simd: the additions may be reordered, a few ulps of a double)
  double m = 0.0, v = 0.0;
#pragma omp simd reduction(+ : m)
  for (int64_t c = 0; c < C; ++c) m += xi[c];
  m /= static_cast<double>(C);
#pragma omp simd reduction(+ : v)
  for (int64_t c = 0; c < C; ++c) v += (xi[c] - m) * (xi[c] - m);
  v /= static_cast<double>(C);  // biased variance, as PyTorch
  const float s = static_cast<float>(1.0 / std::sqrt(v + eps)), mf = static_cast<float>(m);
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) oi[c] = (xi[c] - mf) * s * w[c] + b[c];
  *mean = static_cast<float>(m);
  *rstd = s;
}
}  // namespace

void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t M,
                        int64_t C, float eps) {
  // rows are independent: split them over the OpenMP pool the kernels and BLAS already use. Below the
  // threshold no parallel region at all: even an `if (false)` region costs a wake-up of the pool's idle
  // threads in libgomp once a larger team has run (one sentence's decoding: 7 ms of 20).
  if (M * C < kParallelElements) {
    for (int64_t i = 0; i < M; ++i) layer_norm_row(out + i * C, mean + i, rstd + i, x + i * C, w, b, C, eps);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) layer_norm_row(out + i * C, mean + i, rstd + i, x + i * C, w, b, C, eps);
}

namespace {

// The columns [c0, c1) of C that thread t of T owns (a contiguous share; every column belongs to one thread).
std::pair<int64_t, int64_t> column_share(int64_t C, int t, int T) { return {C * t / T, C * (t + 1) / T}; }

}  // namespace

// zero_fill splits from here (1 MB): below, a fork and join cost more than the second thread saves
constexpr int64_t kParallelZeroFloats = int64_t{1} << 18;
// zero_streaming streams from here (2 MB, four times a Zen 3 core's L2); below, zero_fill
constexpr int64_t kStreamingZeroBytes = int64_t{2} << 20;

void zero_fill(float* p, int64_t n) {
  if (n < kParallelZeroFloats || omp_get_max_threads() == 1 || omp_in_parallel()) {
    std::fill(p, p + n, 0.0f);
    return;
  }
#pragma omp parallel
  {
    const auto [i0, i1] = column_share(n, omp_get_thread_num(), omp_get_num_threads());
    std::fill(p + i0, p + i1, 0.0f);
  }
}

void zero_streaming(float* p, int64_t n) {
#if defined(__SSE__)
  // the first 16-byte boundary at or after p, and the last before p + n; a borrowed buffer may be less than 4-byte
  // aligned (Tensor::borrow takes any alignment): it takes zero_fill
  const auto address = reinterpret_cast<uintptr_t>(p);
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((16 - address % 16) % 16 / 4));
  const int64_t body = (n - head) / 4 * 4;
  if (address % 4 != 0 || body * 4 < kStreamingZeroBytes) {
    zero_fill(p, n);
    return;
  }
  std::fill(p, p + head, 0.0f);
  float* const aligned = p + head;
#pragma omp parallel if (omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    const auto [i0, i1] = column_share(body / 4, omp_get_thread_num(), omp_get_num_threads());
    for (int64_t i = i0; i < i1; ++i) _mm_stream_ps(aligned + 4 * i, _mm_setzero_ps());
    _mm_sfence();  // this thread's streaming stores before what follows (they are weakly ordered)
  }
  std::fill(aligned + body, p + n, 0.0f);
#else
  zero_fill(p, n);
#endif
}

void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                         const float* mean, const float* rstd, int64_t M, int64_t C, GradWrite dx_write) {
  const bool overwrite = dx_write == GradWrite::kOverwrite;  // (dx's old value, NaN included, does not count)
  // out = x̂ · w + b,  x̂ = (x − mean) · rstd
  // dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)),  dx̂ = dout · w
#pragma omp parallel if (M * C >= kParallelElements)
  {
    // dx: rows are independent, split over the threads; each row's two sums in double, as lanes
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      const float* xi = x + i * C;
      const float* di = dout + i * C;
      float* dxi = dx + i * C;
      const float mi = mean[i], ri = rstd[i];
      double sum_dxh = 0.0, sum_dxh_xh = 0.0;
#pragma omp simd reduction(+ : sum_dxh, sum_dxh_xh)
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (xi[c] - mi) * ri;
        const float dxh = di[c] * w[c];
        sum_dxh += dxh;
        sum_dxh_xh += dxh * xh;
      }
      const float a = static_cast<float>(sum_dxh / static_cast<double>(C)),
                  bb = static_cast<float>(sum_dxh_xh / static_cast<double>(C));
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (xi[c] - mi) * ri;
        dxi[c] = (overwrite ? 0.0f : dxi[c]) + ri * (di[c] * w[c] - a - xh * bb);
      }
    }
    // dw, db: each thread owns a share of the columns and adds their rows in row order, as one thread would,
    // so the sums are the same for any thread count
    const auto [c0, c1] = column_share(C, omp_get_thread_num(), omp_get_num_threads());
    for (int64_t i = 0; i < M; ++i) {
      const float* xi = x + i * C;
      const float* di = dout + i * C;
      const float mi = mean[i], ri = rstd[i];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        const float xh = (xi[c] - mi) * ri;
        dw[c] += di[c] * xh;
        db[c] += di[c];
      }
    }
  }
}

float* scratch(int slot, int64_t n) {
  thread_local std::array<std::vector<float>, 8> buffers;
  std::vector<float>& b = buffers.at(static_cast<size_t>(slot));
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

namespace {
// Without VNNI, oneDNN's int8 GEMM sums pairs of u8·s8 products in int16 (vpmaddubsw), which saturates
// for |w| near 127 (its input A is shifted to u8); weights of at most 63 levels keep every pair exact there.
// Whether oneDNN uses VNNI is its effective ISA, not the processor's: ONEDNN_MAX_CPU_ISA=AVX2 on a VNNI machine
// runs the vpmaddubsw kernels (127 levels had saturated there).
float weight_levels() {
  static const float levels = [] { return onednn::effective_isa_has_vnni() ? 127.0f : 63.0f; }();
  return levels;
}
}  // namespace

QuantizedMatrix quantize_rows(const float* w, int64_t N, int64_t K) {
  const float levels = weight_levels();
  QuantizedMatrix m;
  m.N = N, m.K = K;
  m.q.resize(static_cast<size_t>(N * K));
  m.scale.resize(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * K;
    float amax = 0.0f, poison = 0.0f;  // poison: NaN when the row holds a NaN or an infinity (x · 0)
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k])), poison += row[k] * 0.0f;
    // a non-finite weight makes its outputs NaN, as in float32 (std::max had skipped a NaN: the row quantized
    // without it); a subnormal maximum keeps a normal scale (amax / levels had underflowed to 0)
    const float scale = poison != 0.0f ? poison
                        : amax > 0.0f  ? std::max(amax / levels, std::numeric_limits<float>::min())
                                       : 1.0f;
    m.scale[static_cast<size_t>(n)] = scale;
    for (int64_t k = 0; k < K; ++k)  // (a NaN scale: any level will do, the scale carries the NaN)
      m.q[static_cast<size_t>(n * K + k)] =
          std::isnan(scale) ? 0 : static_cast<int8_t>(std::lrint(std::clamp(row[k] / scale, -levels, levels)));
  }
  m.u8_offset.resize(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {  // 128 · |Σ| ≤ 128 · 127 · K: int32 up to K = 132104; past it the offset wraps
                                     // as oneDNN's int32 sums do, exact wherever the true product fits in int32
    int64_t sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += m.q[static_cast<size_t>(n * K + k)];
    m.u8_offset[static_cast<size_t>(n)] = static_cast<int32_t>(-128 * sum);
  }
  return m;
}

namespace {
// f(m0, m1) over rows [0, M) of `width` elements each, split over the OpenMP pool from kParallelElements on (no
// parallel region below it: see layer_norm_forward).
template <class F>
void for_row_shares(int64_t M, int64_t width, F&& f) {
  if (M * width < kParallelElements || M < 2) {
    f(int64_t{0}, M);
    return;
  }
#pragma omp parallel
  {
    const auto [m0, m1] = column_share(M, omp_get_thread_num(), omp_get_num_threads());
    f(m0, m1);
  }
}

// x[m, :] ≈ xs[m] · (xq[m, :] − kShift) for M rows of K (scale max|x| / 127; round half away from zero: a
// truncating conversion, which vectorises). kShift 0: int8 levels; 128: the same levels shifted to u8.
template <class Level, int kShift>
ATTN_VECTOR_CLONES void quantize_activations(Level* xq, float* xs, const float* x, int64_t M, int64_t K) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    float amax = 0.0f, poison = 0.0f;  // poison: NaN when the row holds a NaN or an infinity (x · 0)
#pragma omp simd reduction(max : amax) reduction(+ : poison)
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k])), poison += row[k] * 0.0f;
    Level* q = xq + m * K;
    if (poison != 0.0f) {  // NaN (never equal): the row's outputs NaN, as float32's (a NaN had been read as 0, an
      xs[m] = poison;      // infinity converted to int past its range)
      std::fill(q, q + K, static_cast<Level>(kShift));
      continue;
    }
    const float scale = amax > 0.0f ? std::max(amax / 127.0f, std::numeric_limits<float>::min()) : 1.0f,
                inv = 1.0f / scale;
    xs[m] = scale;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const float v = row[k] * inv;
      q[k] = static_cast<Level>(static_cast<int32_t>(v + (v >= 0.0f ? 0.5f : -0.5f)) + kShift);
    }
  }
}

// y = max(xs[m] · ws[n] · acc + b, floor), or y += that when accumulating.  y, acc: [M, N]; b: [N] or nullptr
ATTN_VECTOR_CLONES void scale_int8_sums(float* y, const int32_t* acc, const float* xs, const float* ws, const float* b,
                                        int64_t M, int64_t N, float floor, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    const float s = xs[m];
    const int32_t* a = acc + m * N;
    float* out = y + m * N;
    if (accumulate) {
#pragma omp simd
      for (int64_t n = 0; n < N; ++n)
        out[n] += std::max(s * ws[n] * static_cast<float>(a[n]) + (b ? b[n] : 0.0f), floor);
    } else {
#pragma omp simd
      for (int64_t n = 0; n < N; ++n)
        out[n] = std::max(s * ws[n] * static_cast<float>(a[n]) + (b ? b[n] : 0.0f), floor);
    }
  }
}
}  // namespace

void linear_forward_int8(float* y, const float* x, const QuantizedMatrix& w, const float* b, int64_t M,
                         LinearEpilogue epilogue) {
  const int64_t N = w.N, K = w.K;
  if (M == 0 || N == 0) return;
  thread_local std::vector<uint8_t> xq;   // [M, K] int8 levels, or u8 (shifted by 128)
  thread_local std::vector<int32_t> acc;  // [M, N]
  thread_local std::vector<float> xs;     // [M]
  if (static_cast<int64_t>(xq.size()) < M * K) xq.resize(static_cast<size_t>(M * K));
  if (static_cast<int64_t>(acc.size()) < M * N) acc.resize(static_cast<size_t>(M * N));
  if (static_cast<int64_t>(xs.size()) < M) xs.resize(static_cast<size_t>(M));
  // the calling thread's buffers, as pointers: inside the row shares below, `xq` would name each worker's own
  uint8_t* const levels = xq.data();
  int32_t* const sums = acc.data();
  float* const scales = xs.data();
  // acc = xq · Wqᵀ  (row-major, int32); in u8: (xq + 128) · Wqᵀ + u8_offset, the same sums
  static const bool native_s8s8 = onednn::effective_isa_has_avx512_core();
  dnnl_status_t status;
  if (native_s8s8 || static_cast<int64_t>(w.u8_offset.size()) != N) {
    auto* xq8 = reinterpret_cast<int8_t*>(levels);
    for_row_shares(M, K, [&](int64_t m0, int64_t m1) {
      quantize_activations<int8_t, 0>(xq8 + m0 * K, scales + m0, x + m0 * K, m1 - m0, K);
    });
    const int32_t c_offset = 0;
    status = dnnl_gemm_s8s8s32('N', 'T', 'F', M, N, K, 1.0f, xq8, K, 0, w.q.data(), K, 0, 0.0f, sums, N, &c_offset);
  } else {
    for_row_shares(M, K, [&](int64_t m0, int64_t m1) {
      quantize_activations<uint8_t, 128>(levels + m0 * K, scales + m0, x + m0 * K, m1 - m0, K);
    });
    status = dnnl_gemm_u8s8s32('N', 'T', 'R', M, N, K, 1.0f, levels, K, 0, w.q.data(), K, 0, 0.0f, sums, N,
                               w.u8_offset.data());
  }
  if (status != dnnl_success)
    throw Error("linear_forward_int8: oneDNN's int8 GEMM failed (status " + std::to_string(static_cast<int>(status)) +
                ")");
  const float relu_floor = epilogue.relu ? 0.0f : -std::numeric_limits<float>::infinity();
  for_row_shares(M, N, [&](int64_t m0, int64_t m1) {
    scale_int8_sums(y + m0 * N, sums + m0 * N, scales + m0, w.scale.data(), b, m1 - m0, N, relu_floor,
                    epilogue.accumulate);
  });
}

void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t M,
                     int64_t N, int64_t K, GradWrite dx_write) {
  if (M == 0) return;
  // y = x·Wᵀ + b  =>  dx += dy·W [M, K];  dW += dyᵀ·x [N, K];  db += Σ_rows dy
  if (dx)  // (beta 0: BLAS then never reads C, whatever it held)
    detail::blas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dy, N, w, K,
                       dx_write == GradWrite::kOverwrite ? 0.0f : 1.0f, dx, K, "linear_backward: dx");
  detail::blas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dy, N, x, K, 1.0f, dw, K,
                     "linear_backward: dW");
  if (db) {  // each thread owns a share of the columns, whose rows it adds in row order: any thread count agrees
#pragma omp parallel if (M * N >= kParallelElements)
    {
      const auto [n0, n1] = column_share(N, omp_get_thread_num(), omp_get_num_threads());
      for (int64_t i = 0; i < M; ++i) {
        const float* dyi = dy + i * N;
#pragma omp simd
        for (int64_t n = n0; n < n1; ++n) db[n] += dyi[n];
      }
    }
  }
}

void add(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelElements)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

namespace {

// v where mask is all ones, +0 where it is zero (a select written as bits, which vectorises; the same value as
// `mask ? v : 0.0f`, NaN and infinities included).
inline float keep_bits(float v, uint32_t mask) { return std::bit_cast<float>(std::bit_cast<uint32_t>(v) & mask); }

// GELU's pieces in plain float and integer arithmetic, which `omp simd` vectorises (libm's erff and expf have no
// vector forms without -ffast-math: the scalar calls cost MiniLM a quarter of its 1-thread time).

// e^x for x <= 0 (x < −87 gives 0): x = n·ln 2 + r with n rounded by adding 1.5·2^23 (its ulp is 1), r by
// Cody–Waite's two-part ln 2, e^r by Cephes' degree-6 polynomial, 2^n through the exponent bits (simd::exp's
// algorithm, written per lane). An x below −87 computes garbage that the last step masks out as bits: with a
// clamp, or a `?:` there, GCC moved the float operations behind a branch, and float operations under a branch
// (they may trap) keep the AVX2 copy from vectorising (the AVX-512 one masks them).
inline float exp_nonpositive(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5·2^23, bits 0x4B400000
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t biased = std::bit_cast<int32_t>(t) - 0x4B400000 + 127;  // n + 127, in [1, 127] when x >= −87
  const float e = y * std::bit_cast<float>(biased << 23);
  return keep_bits(e, x < -87.0f ? 0U : 0xffffffffU);  // x NaN: e is NaN
}

// Φ(x) = ½(1 + erf(x/√2)), erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7; PyTorch's vectorised erf is
// the same formula): erf(a) = 1 − t·(a1 + t·(a2 + t·(a3 + t·(a4 + t·a5))))·e^(−a²), t = 1/(1 + p·a), a >= 0.
inline float normal_cdf(float x) {
  const float a = std::fabs(x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float half_erfc = 0.5f * poly * t * exp_nonpositive(-a * a);  // ½(1 − erf(a))
  // ½(1 + erf(a)) = 1 − half_erfc for x >= 0, half_erfc below: selects of constants only, so that every float
  // operation runs unconditionally (a conditional one, which may trap, keeps the AVX2 copy from vectorising)
  const float base = x >= 0.0f ? 1.0f : 0.0f, sign = x >= 0.0f ? -1.0f : 1.0f;
  return base + sign * half_erfc;  // x NaN: NaN
}

ATTN_VECTOR_CLONES void gelu_range(float* out, const float* x, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) out[i] = x[i] * normal_cdf(x[i]);  // out may be x
}

// d/dx x·Φ(x) = Φ(x) + x·φ(x)
ATTN_VECTOR_CLONES void gelu_backward_range(float* dx, const float* dout, const float* x, int64_t begin, int64_t end,
                                            bool overwrite) {
  // two loops: a select on `overwrite` inside one had left every clone scalar
  if (overwrite) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float pdf = 0.39894228040143268f * exp_nonpositive(-0.5f * x[i] * x[i]);
      dx[i] = 0.0f + dout[i] * (normal_cdf(x[i]) + x[i] * pdf);  // (0 + v: the bits of adding to a zeroed dx)
    }
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float pdf = 0.39894228040143268f * exp_nonpositive(-0.5f * x[i] * x[i]);
      dx[i] += dout[i] * (normal_cdf(x[i]) + x[i] * pdf);
    }
  }
}

}  // namespace

void activation_forward(float* out, const float* x, int64_t n, Activation act) {
  if (act == Activation::kRelu) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelElements)
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 0.0f ? x[i] : 0.0f;
  } else {  // gelu(x) = x · Φ(x)
#pragma omp parallel if (n >= kParallelElements / 4)
    {
      const auto [begin, end] = column_share(n, omp_get_thread_num(), omp_get_num_threads());
      gelu_range(out, x, begin, end);
    }
  }
}

void activation_backward(float* dx, const float* dout, const float* x, int64_t n, Activation act, GradWrite write) {
  const bool overwrite = write == GradWrite::kOverwrite;
  if (act == Activation::kRelu) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelElements)
    for (int64_t i = 0; i < n; ++i) {
      const float d = dout[i];  // loaded unconditionally: the select vectorises
      dx[i] = (overwrite ? 0.0f : dx[i]) + (x[i] > 0.0f ? d : 0.0f);
    }
  } else {
#pragma omp parallel if (n >= kParallelElements / 4)
    {
      const auto [begin, end] = column_share(n, omp_get_thread_num(), omp_get_num_threads());
      gelu_backward_range(dx, dout, x, begin, end, overwrite);
    }
  }
}

namespace {

// A 32-bit bijection with full avalanche (Wellons' lowbias32): the counter-based dropout generator's mixer.
inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}

// Element i of a dropout keyed by (k0, k1): 32 random bits that depend only on the key and i, never on the order
// or the thread the elements are drawn in. Plain 32-bit arithmetic, so the loops around it vectorise.
inline uint32_t dropout_bits(uint32_t k0, uint32_t k1, int64_t i) {
  const uint64_t u = static_cast<uint64_t>(i);
  return mix32(mix32(static_cast<uint32_t>(u) ^ k0) + (k1 ^ static_cast<uint32_t>(u >> 32)));
}

}  // namespace

namespace {

// Elements [begin, end) of dropout_forward, multi-versioned (ops/clones.h: a native 32-bit vector multiply from
// AVX2 on); integer hashing and one float multiply give the same bits on every copy.
ATTN_VECTOR_CLONES void dropout_range(float* out, uint8_t* keep, const float* x, int64_t begin, int64_t end,
                                      uint32_t k0, uint32_t k1, uint32_t threshold, float s) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {  // out may be x: each element reads and writes only itself
    const uint32_t mask = dropout_bits(k0, k1, i) >= threshold ? 0xffffffffU : 0U;
    keep[i] = static_cast<uint8_t>(mask & 1U);
    out[i] = keep_bits(x[i] * s, mask);
  }
}

}  // namespace

void dropout_forward(float* out, uint8_t* keep, const float* x, int64_t n, float p, std::mt19937_64& rng) {
  if (p <= 0.0f) {
    if (out != x) std::copy(x, x + n, out);
    std::fill(keep, keep + n, uint8_t{1});
    return;
  }
  // One draw from rng keys the whole call; element i is kept when its 32 counter-based bits reach p·2^32.
  const uint64_t key = rng();
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  const float s = 1.0f / (1.0f - p);
  const uint32_t threshold = static_cast<uint32_t>(std::min(static_cast<double>(p) * 4294967296.0, 4294967295.0));
#pragma omp parallel if (n >= kParallelElements)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    dropout_range(out, keep, x, n * t / T, n * (t + 1) / T, k0, k1, threshold, s);
  }
}

void dropout_backward(float* dx, const float* dout, const uint8_t* keep, int64_t n, float p, GradWrite write) {
  // out = x · keep / (1 − p)
  const float s = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
  const bool overwrite = write == GradWrite::kOverwrite;
#pragma omp parallel for simd schedule(static) if (n >= kParallelElements)
  for (int64_t i = 0; i < n; ++i)
    dx[i] = (overwrite ? 0.0f : dx[i]) + keep_bits(dout[i] * s, 0U - static_cast<uint32_t>(keep[i] != 0));
}

namespace {

// The largest of z[0, V), NaNs skipped (−inf where there is no other), for a row of logits: 16 running maxima side by
// side, which the vector clones compute in two registers (an `omp simd reduction(max)` had stayed one scalar vmaxss
// a logit: the cross-entropy of 512 × 32000 logits took 22.8 ms, now 20.4).
[[gnu::always_inline]] inline float row_max(const float* z, int64_t V) {
  constexpr int kLanes = 16;
  float lanes[kLanes];
  for (float& l : lanes) l = -std::numeric_limits<float>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= V; c += kLanes)
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) lanes[j] = lanes[j] < z[c + j] ? z[c + j] : lanes[j];
  for (; c < V; ++c) lanes[0] = lanes[0] < z[c] ? z[c] : lanes[0];
  float m = lanes[0];
  for (int j = 1; j < kLanes; ++j) m = m < lanes[j] ? lanes[j] : m;
  return m;
}

// Row i of the label-smoothed cross-entropy: its loss term (1 − ε)·(lse − z_y) + ε·mean_c(lse − z_c), and, where dz is
// not null, dloss/dz_c = (p_c − (1 − ε)·[c = y] − ε / V) / n. The exponentials e^(z_c − m) in float (exp_nonpositive:
// z_c − m ≤ 0; Cephes' expf polynomial, which `omp simd` vectorises), their sum and Σ z in double lanes: libm's scalar
// double exp had taken 15–30% of a training step at V = 32000 (`attn bench train --vocab 32000`). Any NaN logit makes
// the row's loss and gradient NaN; a +inf logit too (z − m = NaN).
// The exponentials go to dz itself, scaled there afterwards; to `scratch` ([V]) for the loss alone.
ATTN_VECTOR_CLONES double cross_entropy_row(float* dz, float* scratch, const float* z, int64_t V, int32_t y,
                                            double smoothing, int64_t n) {
  const float m = row_max(z, V);
  float* const e = dz != nullptr ? dz : scratch;
  double s = 0.0, sum_z = 0.0;
#pragma omp simd reduction(+ : s, sum_z)
  for (int64_t c = 0; c < V; ++c) {
    e[c] = exp_nonpositive(z[c] - m);
    s += static_cast<double>(e[c]);
    sum_z += static_cast<double>(z[c]);
  }
  const double lse = static_cast<double>(m) + std::log(s);
  // (no smoothing term without smoothing: a −inf logit makes it 0·inf, and PyTorch's loss stays finite)
  const double loss = (1.0 - smoothing) * (lse - static_cast<double>(z[y])) +
                      (smoothing == 0.0 ? 0.0 : smoothing * (lse - sum_z / static_cast<double>(V)));
  if (dz != nullptr) {
    const double dn = static_cast<double>(n);
    const float a = static_cast<float>(1.0 / (s * dn)), b = static_cast<float>(smoothing / static_cast<double>(V) / dn);
    const double e_y = dz[y];
#pragma omp simd
    for (int64_t c = 0; c < V; ++c) dz[c] = dz[c] * a - b;
    // the target's entry in double: p_y − (1 − ε) cancels where the model is right
    dz[y] = static_cast<float>((e_y / s - (1.0 - smoothing) - smoothing / static_cast<double>(V)) / dn);
  }
  return loss;
}

}  // namespace

float cross_entropy_forward_backward(float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V,
                                     float smoothing, int32_t ignore_index, int64_t* counted) {
  int64_t n = 0;
  for (int64_t i = 0; i < M; ++i) n += targets[i] != ignore_index;
  if (counted) *counted = n;
  // rows are independent: each writes its loss term, and the terms are added in row order afterwards (the same
  // sum for any thread count)
  thread_local std::vector<double> row_loss;
  if (static_cast<int64_t>(row_loss.size()) < M) row_loss.resize(static_cast<size_t>(M));
  double* terms = row_loss.data();
#pragma omp parallel if (M * V >= kParallelElements / 8)
  {
    thread_local std::vector<float> e;  // [V] the row's exponentials, for the loss alone (no dlogits)
    if (!dlogits && static_cast<int64_t>(e.size()) < V) e.resize(static_cast<size_t>(V));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      float* dz = dlogits ? dlogits + i * V : nullptr;
      terms[i] = 0.0;
      if (targets[i] == ignore_index || n == 0) {
        if (dz) std::fill(dz, dz + V, 0.0f);
        continue;
      }
      terms[i] = cross_entropy_row(dz, e.data(), logits + i * V, V, targets[i], smoothing, n);
    }
  }
  double loss = 0.0;
  for (int64_t i = 0; i < M; ++i)
    if (targets[i] != ignore_index) loss += terms[i];
  return n ? static_cast<float>(loss / static_cast<double>(n)) : 0.0f;
}

namespace {

// One row of log_softmax_rows: the exponentials in float lanes (cross_entropy_row's), their sum in double.
ATTN_VECTOR_CLONES void log_softmax_row(float* z, int64_t V) {
  const float m = row_max(z, V);
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < V; ++v) s += static_cast<double>(exp_nonpositive(z[v] - m));
  const float lse = m + static_cast<float>(std::log(s));
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) z[v] -= lse;
}

}  // namespace

void log_softmax_rows(float* z, int64_t rows, int64_t V) {
  if (V <= 0) return;
  for (int64_t r = 0; r < rows; ++r) log_softmax_row(z + r * V, V);
}

}  // namespace attn::ops
