// The bf16 GEMM candidates for bf16 models (issue #14 item 4), on the projections' shapes: y[M, N] = x[M, K] · W[N, K]ᵀ
// with W bfloat16 (converted once, at load), x float32 rounded to bfloat16 per call, y float32:
//   sgemm    OpenBLAS cblas_sgemm, everything float32 (today's path, the baseline)
//   sbgemm   OpenBLAS cblas_sbgemm (x converted each call), looked up at run time: Debian's OpenBLAS 0.3.21 is
//            built without BUILD_BFLOAT16 and has no sbgemm (the column then says "absent")
//   onednn   oneDNN's matmul primitive, bf16 x bf16 -> f32, weights reordered once into its preferred layout,
//            the primitive created once per shape (x converted per call, as for sbgemm); and the same with the row
//            count M a runtime dimension (one primitive for every M: what a model with varying batches needs)
//   build/bench/bf16_gemm_bench [threads] [repeat]
// Prints one Markdown row per shape: medians in microseconds and the speed-ups over sgemm.
#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attn/half.h"
#include "ops/onednn.h"  // the oneDNN 2 and 3 C APIs alike

namespace {

void check(dnnl_status_t s, const char* what) {
  if (s != dnnl_success) throw std::runtime_error(std::string("oneDNN: ") + what + " failed");
}

// cblas_sbgemm's signature with the bfloat16 arguments as uint16_t.
using SbgemmFn = void (*)(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint, blasint, blasint, float,
                          const uint16_t*, blasint, const uint16_t*, blasint, float, float*, blasint);

template <class F>
double median_us(int repeat, F&& f) {
  f();
  std::vector<double> t;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct OneDnnMatmul {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  dnnl_primitive_t prim = nullptr;
  dnnl_memory_t src = nullptr, wei = nullptr, dst = nullptr;

  // x [M, K] bf16, w [N, K] bf16 (reordered once), y [M, N] f32
  // runtime_m: one primitive for every row count (DNNL_RUNTIME_DIM_VAL), as a model with varying batches needs
  OneDnnMatmul(int64_t M, int64_t N, int64_t K, const uint16_t* w, bool runtime_m = false) {
    const int64_t Mp = runtime_m ? DNNL_RUNTIME_DIM_VAL : M;
    check(dnnl_engine_create(&engine, dnnl_cpu, 0), "engine");
    check(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags), "stream");
    using attn::ops::onednn::MemoryDesc;
    const MemoryDesc a_md(Mp, K, dnnl_bf16, dnnl_ab), b_md(K, N, dnnl_bf16, dnnl_ba),  // W [N, K] = Wᵀ [K, N]
        b_any(K, N, dnnl_bf16, dnnl_format_tag_any), c_md(Mp, N, dnnl_f32, dnnl_ab);
    dnnl_primitive_desc_t pd;
    check(attn::ops::onednn::matmul_primitive_desc(&pd, engine, a_md, b_any, nullptr, c_md, nullptr), "matmul pd");
    check(dnnl_primitive_create(&prim, pd), "matmul");
    const MemoryDesc w_md = MemoryDesc::queried(pd, dnnl_query_weights_md);
    check(dnnl_memory_create(&wei, w_md.desc(), engine, DNNL_MEMORY_ALLOCATE), "weights");
    dnnl_memory_t plain;
    check(dnnl_memory_create(&plain, b_md.desc(), engine, const_cast<uint16_t*>(w)), "plain weights");
    dnnl_primitive_desc_t rpd;
    check(dnnl_reorder_primitive_desc_create(&rpd, b_md.desc(), engine, w_md.desc(), engine, nullptr), "reorder pd");
    dnnl_primitive_t reorder;
    check(dnnl_primitive_create(&reorder, rpd), "reorder");
    dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, plain}, {DNNL_ARG_TO, wei}};
    check(dnnl_primitive_execute(reorder, stream, 2, rargs), "reorder run");
    check(dnnl_stream_wait(stream), "wait");
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(plain);
    const MemoryDesc a_exec(M, K, dnnl_bf16, dnnl_ab), c_exec(M, N, dnnl_f32, dnnl_ab);  // runtime M: the real one
    check(dnnl_memory_create(&src, a_exec.desc(), engine, DNNL_MEMORY_NONE), "src");
    check(dnnl_memory_create(&dst, c_exec.desc(), engine, DNNL_MEMORY_NONE), "dst");
    dnnl_primitive_desc_destroy(pd);
  }
  void run(const uint16_t* x, float* y) {
    check(dnnl_memory_set_data_handle(src, const_cast<uint16_t*>(x)), "src handle");
    check(dnnl_memory_set_data_handle(dst, y), "dst handle");
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
    check(dnnl_primitive_execute(prim, stream, 3, args), "matmul run");
    check(dnnl_stream_wait(stream), "wait");
  }
  ~OneDnnMatmul() {
    dnnl_memory_destroy(src), dnnl_memory_destroy(wei), dnnl_memory_destroy(dst);
    dnnl_primitive_destroy(prim), dnnl_stream_destroy(stream), dnnl_engine_destroy(engine);
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1, repeat = argc > 2 ? std::atoi(argv[2]) : 21;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  struct Shape {
    const char* what;
    int64_t M, N, K;
  };
  // the shipped translation model (E = 256, FF = 1024: batch 64 decoding steps and encoder batches) and MiniLM
  // (E = 384, FF = 1536, 32 sentences of ~16 tokens)
  const Shape shapes[] = {{"translate decode step: QKV", 64, 768, 256},
                          {"translate decode step: FF1", 64, 1024, 256},
                          {"translate decode step: FF2", 64, 256, 1024},
                          {"translate encoder: QKV", 1024, 768, 256},
                          {"translate encoder: FF1", 1024, 1024, 256},
                          {"MiniLM: QKV", 512, 1152, 384},
                          {"MiniLM: FF1", 512, 1536, 384},
                          {"MiniLM: FF2", 512, 384, 1536}};
  std::printf("threads %d, medians of %d (microseconds)\n\n", threads, repeat);
  std::printf(
      "| shape | M x N x K | sgemm | sbgemm | oneDNN bf16 | oneDNN bf16, runtime M | sbgemm speed-up | oneDNN speed-up "
      "| runtime M speed-up | max rel err |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (const Shape& s : shapes) {
    std::vector<float> x(static_cast<size_t>(s.M * s.K)), w(static_cast<size_t>(s.N * s.K)),
        y(static_cast<size_t>(s.M * s.N)), y2(y.size()), y3(y.size());
    for (float& e : x) e = nd(rng);
    for (float& e : w) e = nd(rng) * 0.05f;
    std::vector<uint16_t> wb(w.size()), xb(x.size());
    for (size_t i = 0; i < w.size(); ++i) wb[i] = attn::float_to_bf16(w[i]);
    const int M = static_cast<int>(s.M), N = static_cast<int>(s.N), K = static_cast<int>(s.K);
    const double t_s = median_us(repeat, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, y.data(), N);
    });
    const auto sbgemm = reinterpret_cast<SbgemmFn>(dlsym(RTLD_DEFAULT, "cblas_sbgemm"));
    y2 = y;
    const double t_sb = sbgemm == nullptr ? NAN : median_us(repeat, [&] {
      for (size_t i = 0; i < x.size(); ++i) xb[i] = attn::float_to_bf16(x[i]);
      sbgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, xb.data(), K, wb.data(), K, 0.0f, y2.data(), N);
    });
    OneDnnMatmul mm(s.M, s.N, s.K, wb.data());
    const double t_dn = median_us(repeat, [&] {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t i = 0; i < s.M * s.K; ++i)
        xb[static_cast<size_t>(i)] = attn::float_to_bf16(x[static_cast<size_t>(i)]);
      mm.run(xb.data(), y3.data());
    });
    OneDnnMatmul mm_rt(s.M, s.N, s.K, wb.data(), true);
    std::vector<float> y4(y.size());
    const double t_rt = median_us(repeat, [&] {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t i = 0; i < s.M * s.K; ++i)
        xb[static_cast<size_t>(i)] = attn::float_to_bf16(x[static_cast<size_t>(i)]);
      mm_rt.run(xb.data(), y4.data());
    });
    double err = 0.0, ref = 0.0;
    for (size_t i = 0; i < y.size(); ++i) {
      err = std::max({err, static_cast<double>(std::fabs(y2[i] - y[i])), static_cast<double>(std::fabs(y3[i] - y[i])),
                      static_cast<double>(std::fabs(y4[i] - y[i]))});
      ref = std::max(ref, static_cast<double>(std::fabs(y[i])));
    }
    const std::string sb = std::isnan(t_sb) ? "absent" : std::to_string(static_cast<int>(t_sb));
    const std::string sb_x = std::isnan(t_sb) ? "-" : std::to_string(t_s / t_sb).substr(0, 4) + "x";
    std::printf("| %s | %lld x %lld x %lld | %.0f | %s | %.0f | %.0f | %s | %.2fx | %.2fx | %.1e |\n", s.what,
                static_cast<long long>(s.M), static_cast<long long>(s.N), static_cast<long long>(s.K), t_s, sb.c_str(),
                t_dn, t_rt, sb_x.c_str(), t_s / t_dn, t_s / t_rt, err / ref);
  }
}
