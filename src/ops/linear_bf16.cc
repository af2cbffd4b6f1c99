// Projections with bfloat16 weights through oneDNN's matmul primitive (Debian's libdnnl): one primitive per
// weight matrix with the row count M a runtime dimension, the weights reordered once into the layout it prefers.
// Chosen over OpenBLAS's sbgemm, which Debian's OpenBLAS 0.3.21 does not build (bench/bf16_gemm_bench.cc,
// docs/performance/low_precision.md: 1.7-2.6x float32 SGEMM on the models' projection shapes).
#include <omp.h>

#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/half.h"
#include "ops/clones.h"
#include "ops/nn.h"
#include "ops/onednn.h"

namespace attn::ops {

namespace {

using onednn::MemoryDesc;

void check(dnnl_status_t s, const char* what) { onednn::check(s, "linear_forward_bf16", what); }

dnnl_engine_t engine() {
  static dnnl_engine_t e = [] {
    dnnl_engine_t made;
    check(dnnl_engine_create(&made, dnnl_cpu, 0), "engine");
    return made;
  }();
  return e;
}

// out[0, n) = x rounded to bfloat16; a copy per instruction set, chosen at load time (the rest of ops/ is built for
// plain x86-64).
ATTN_VECTOR_CLONES void round_to_bf16(uint16_t* out, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(x[i]);
}

// out[0, n) = x rounded to bfloat16 and widened back (the values a bfloat16 GEMM multiplies)
ATTN_VECTOR_CLONES void round_through_bf16(float* out, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(float_to_bf16(x[i]));
}

// A thread's oneDNN stream on engine(), made on its first bf16 product and destroyed when the thread ends.
struct ThreadStream {
  dnnl_stream_t stream = nullptr;
  ThreadStream() { check(dnnl_stream_create(&stream, engine(), dnnl_stream_default_flags), "stream"); }
  ~ThreadStream() { dnnl_stream_destroy(stream); }
  ThreadStream(const ThreadStream&) = delete;
  ThreadStream& operator=(const ThreadStream&) = delete;
};

// oneDNN has no bfloat16 matmul on this processor (dnnl_unimplemented)
struct Bf16Unsupported {};

}  // namespace

// One primitive per thread count: oneDNN fixes a primitive's thread count when it is created (from
// omp_get_max_threads()), so a model loaded with every core and run with num_threads = 1 gets a primitive of its
// own for 1 thread, created on first use.
struct Bf16Variant {
  int threads = 0;
  dnnl_primitive_t prim = nullptr;
  dnnl_memory_t weights = nullptr;  // [K, N] in this primitive's layout
  MemoryDesc scratch_md;            // its scratchpad, given per call from a per-thread buffer (oneDNN's own
                                    // would be allocated and freed, mmap and munmap, on every call)
};

struct Bf16Matmul {
  int64_t N = 0, K = 0;
  std::vector<uint16_t> w;  // [N, K] the weights rounded to bfloat16
  // [N, K] w widened to float32, where oneDNN has no bfloat16 matmul (before AVX-512: Debian's oneDNN 2.6 needs
  // avx512_core): the same products then come from OpenBLAS's SGEMM on the rounded values (exact widening, float32
  // sums), at float32 speed; empty elsewhere
  std::vector<float> widened;
  std::vector<float> zeros;           // [N] the bias of a call without one (the primitive always adds one)
  dnnl_memory_t zero_bias = nullptr;  // over zeros
  MemoryDesc bias_md;                 // [1, N] float32
  mutable std::mutex mutex;
  mutable std::deque<Bf16Variant> variants;  // a deque: references stay valid while others are added
  Bf16Matmul() = default;
  Bf16Matmul(const Bf16Matmul&) = delete;
  Bf16Matmul& operator=(const Bf16Matmul&) = delete;
  ~Bf16Matmul() {
    for (Bf16Variant& v : variants) {
      if (v.weights) dnnl_memory_destroy(v.weights);
      if (v.prim) dnnl_primitive_destroy(v.prim);
    }
    if (zero_bias) dnnl_memory_destroy(zero_bias);
  }
  const Bf16Variant& variant(int threads) const;
};

// The primitive for `threads` (omp_get_max_threads() now), created and its weights reordered on first use.
const Bf16Variant& Bf16Matmul::variant(int threads) const {
  const std::lock_guard<std::mutex> lock(mutex);
  for (const Bf16Variant& v : variants)
    if (v.threads == threads) return v;
  Bf16Variant v;
  v.threads = threads;
  // y[M, N] = x[M, K] · Wᵀ + b, Wᵀ [K, N] seen through W's rows ([N, K] row-major is [K, N] with tag ba)
  const MemoryDesc a_md(DNNL_RUNTIME_DIM_VAL, K, dnnl_bf16, dnnl_ab), b_plain(K, N, dnnl_bf16, dnnl_ba),
      b_any(K, N, dnnl_bf16, dnnl_format_tag_any), c_md(DNNL_RUNTIME_DIM_VAL, N, dnnl_f32, dnnl_ab);
  dnnl_primitive_attr_t attr;
  check(dnnl_primitive_attr_create(&attr), "attributes");
  check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode");
  dnnl_primitive_desc_t pd;  // the bias added in the GEMM
  const dnnl_status_t pd_made = onednn::matmul_primitive_desc(&pd, engine(), a_md, b_any, &bias_md, c_md, attr);
  dnnl_primitive_attr_destroy(attr);
  if (pd_made == dnnl_unimplemented) throw Bf16Unsupported{};
  check(pd_made, "matmul primitive desc");
  v.scratch_md = MemoryDesc::queried(pd, dnnl_query_scratchpad_md);
  const MemoryDesc w_md = MemoryDesc::queried(pd, dnnl_query_weights_md);
  const dnnl_status_t made = dnnl_primitive_create(&v.prim, pd);
  dnnl_primitive_desc_destroy(pd);
  check(made, "matmul primitive");
  // the bfloat16 weights reordered into the primitive's layout
  check(dnnl_memory_create(&v.weights, w_md.desc(), engine(), DNNL_MEMORY_ALLOCATE), "weights memory");
  dnnl_memory_t plain;
  check(dnnl_memory_create(&plain, b_plain.desc(), engine(), const_cast<uint16_t*>(w.data())), "plain weights memory");
  dnnl_primitive_desc_t rpd;
  check(dnnl_reorder_primitive_desc_create(&rpd, b_plain.desc(), engine(), w_md.desc(), engine(), nullptr),
        "reorder desc");
  dnnl_primitive_t reorder;
  const dnnl_status_t rmade = dnnl_primitive_create(&reorder, rpd);
  dnnl_primitive_desc_destroy(rpd);
  check(rmade, "reorder");
  dnnl_stream_t stream;
  check(dnnl_stream_create(&stream, engine(), dnnl_stream_default_flags), "stream");
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, plain}, {DNNL_ARG_TO, v.weights}};
  const dnnl_status_t ran = dnnl_primitive_execute(reorder, stream, 2, args);
  dnnl_stream_wait(stream);
  dnnl_stream_destroy(stream);
  dnnl_primitive_destroy(reorder);
  dnnl_memory_destroy(plain);
  check(ran, "reorder run");
  variants.push_back(std::move(v));
  return variants.back();
}

QuantizedMatrix bf16_rows(const float* w, int64_t N, int64_t K) {
  QuantizedMatrix m;
  m.N = N, m.K = K;
  auto mm = std::make_shared<Bf16Matmul>();
  mm->N = N, mm->K = K;
  mm->w.resize(static_cast<size_t>(N * K));
  for (size_t i = 0; i < mm->w.size(); ++i) mm->w[i] = float_to_bf16(w[i]);
  mm->zeros.assign(static_cast<size_t>(N), 0.0f);
  mm->bias_md = MemoryDesc(1, N, dnnl_f32, dnnl_ab);
  check(dnnl_memory_create(&mm->zero_bias, mm->bias_md.desc(), engine(), mm->zeros.data()), "bias memory");
  try {
    mm->variant(omp_get_max_threads());  // the primitive for the current thread count, now rather than mid-call
  } catch (const Bf16Unsupported&) {
    mm->widened.resize(mm->w.size());
    for (size_t i = 0; i < mm->w.size(); ++i) mm->widened[i] = bf16_to_float(mm->w[i]);
  }
  m.small_bf16 = small_gemm_bf16(mm->w.data(), N, K);
  m.bf16 = std::move(mm);
  return m;
}

void linear_forward_bf16(float* y, const float* x, const QuantizedMatrix& w, const float* b, int64_t M,
                         LinearEpilogue epilogue) {
  const Bf16Matmul& mm = *w.bf16;
  const int64_t N = mm.N, K = mm.K;
  if (M == 0 || N == 0) return;
  if (epilogue.relu && epilogue.accumulate)
    throw ArgumentError("linear_forward_bf16: a ReLU epilogue does not accumulate");
  if (w.small_bf16 && M >= 8) {               // libxsmm's AVX512_BF16 kernels where it has them (linear_small.cc)
    thread_local std::vector<uint16_t> rows;  // [M, K] x rounded to bfloat16
    if (static_cast<int64_t>(rows.size()) < M * K) rows.resize(static_cast<size_t>(M * K));
    round_to_bf16(rows.data(), x, M * K);
    if (small_gemm_bf16_run(y, rows.data(), *w.small_bf16, b, M, epilogue)) return;
  }
  if (!mm.widened.empty()) {             // no bfloat16 matmul here: x rounded to bfloat16, float32 GEMM
    thread_local std::vector<float> xr;  // [M, K]
    if (static_cast<int64_t>(xr.size()) < M * K) xr.resize(static_cast<size_t>(M * K));
    round_through_bf16(xr.data(), x, M * K);
    linear_forward(y, xr.data(), mm.widened.data(), b, M, N, K, epilogue);
    return;
  }
  const Bf16Variant& v = mm.variant(omp_in_parallel() ? 1 : omp_get_max_threads());
  thread_local std::vector<float> product;  // [M, N] when accumulating into y
  float* out = y;
  if (epilogue.accumulate) {
    if (static_cast<int64_t>(product.size()) < M * N) product.resize(static_cast<size_t>(M * N));
    out = product.data();
  }
  thread_local std::vector<uint16_t> xb;  // [M, K] x rounded to bfloat16
  if (static_cast<int64_t>(xb.size()) < M * K) xb.resize(static_cast<size_t>(M * K));
  uint16_t* xbp = xb.data();
  round_to_bf16(xbp, x, M * K);
  const MemoryDesc a_md(M, K, dnnl_bf16, dnnl_ab), c_md(M, N, dnnl_f32, dnnl_ab);
  thread_local const ThreadStream thread_stream;  // destroyed with its thread (a pool's worker, a Python thread)
  const dnnl_stream_t stream = thread_stream.stream;
  dnnl_memory_t src, dst, bias = mm.zero_bias;
  check(dnnl_memory_create(&src, a_md.desc(), engine(), xbp), "src memory");
  check(dnnl_memory_create(&dst, c_md.desc(), engine(), out), "dst memory");
  if (b) check(dnnl_memory_create(&bias, mm.bias_md.desc(), engine(), const_cast<float*>(b)), "bias memory");
  thread_local std::vector<uint8_t> scratch;
  const size_t scratch_bytes = dnnl_memory_desc_get_size(v.scratch_md.desc());
  if (scratch.size() < scratch_bytes + 64) scratch.resize(scratch_bytes + 64);
  dnnl_memory_t pad;
  check(dnnl_memory_create(&pad, v.scratch_md.desc(), engine(), scratch.data()), "scratchpad memory");
  dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, src},
                             {DNNL_ARG_WEIGHTS, v.weights},
                             {DNNL_ARG_BIAS, bias},
                             {DNNL_ARG_DST, dst},
                             {DNNL_ARG_SCRATCHPAD, pad}};
  const dnnl_status_t ran = dnnl_primitive_execute(v.prim, stream, 5, args);
  const dnnl_status_t waited = dnnl_stream_wait(stream);
  dnnl_memory_destroy(src);
  dnnl_memory_destroy(dst);
  if (b) dnnl_memory_destroy(bias);
  dnnl_memory_destroy(pad);
  check(ran, "matmul run");
  check(waited, "stream wait");
  if (epilogue.accumulate) {
#pragma omp simd
    for (int64_t i = 0; i < M * N; ++i) y[i] += out[i];
  }
  if (epilogue.relu) {
#pragma omp simd
    for (int64_t i = 0; i < M * N; ++i) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
  }
}

}  // namespace attn::ops
