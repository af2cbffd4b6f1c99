// The float32 linear map of every forward pass, y = x·Wᵀ + b (ops/nn.h), as a oneDNN matmul primitive with the
// bias, ReLU and residual accumulation fused into the product's store (nn.Linear's layout: W is [N, K]).
//
// One primitive per (N, K, strides, epilogue) and thread, with the row count M and the row strides given at
// run time, so decoding (M changes as sentences finish) builds each shape once. Weights are read in place (no
// packed copy that training could leave stale). Measured against OpenBLAS's cblas_sgemm (bias copied first,
// beta = 1) on the translation model's shapes (M = 64, N 128-384, K 128-256, one Zen 4 core): 7-10% faster
// alone, and the bias copy, ReLU and residual passes disappear (docs/PERFORMANCE.md).
#include <oneapi/dnnl/dnnl.hpp>

#include <string>
#include <vector>

#include "attn/error.h"
#include "ops/nn.h"

namespace attn::ops {
namespace {

struct MatmulKey {
  int64_t N, K;
  bool bias, relu, accumulate;
  bool operator==(const MatmulKey&) const = default;
};

struct DnnlContext {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::vector<std::pair<MatmulKey, dnnl::matmul>> matmuls;  // a handful of shapes per model
};

DnnlContext& context() {
  thread_local DnnlContext c;
  return c;
}

dnnl::matmul& matmul_for(DnnlContext& c, const MatmulKey& key) {
  for (auto& [k, m] : c.matmuls)
    if (k == key) return m;
  using dt = dnnl::memory::data_type;
  const dnnl::memory::dim rt = DNNL_RUNTIME_DIM_VAL;
  const dnnl::memory::desc src({rt, key.K}, dt::f32, {rt, 1});   // x: [M, K], rows ldx apart
  const dnnl::memory::desc wei({key.K, key.N}, dt::f32, {1, key.K});  // Wᵀ: W [N, K] read transposed
  const dnnl::memory::desc dst({rt, key.N}, dt::f32, {rt, 1});   // y: [M, N], rows ldy apart
  const dnnl::memory::desc bias = key.bias ? dnnl::memory::desc({1, key.N}, dt::f32, {key.N, 1}) : dnnl::memory::desc();
  dnnl::post_ops ops;
  if (key.relu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  if (key.accumulate) ops.append_sum(1.0f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, bias, dst), attr, c.engine);
    c.matmuls.emplace_back(key, dnnl::matmul(pd));
  } catch (const dnnl::error& e) {
    throw Error(std::string("linear_forward: oneDNN has no matmul for this shape: ") + e.what());
  }
  return c.matmuls.back().second;
}

}  // namespace

void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, const float* b, int64_t M,
                    int64_t N, int64_t K, LinearEpilogue epilogue) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // y = act(b) (+ y): no product to run
    for (int64_t i = 0; i < M; ++i)
      for (int64_t n = 0; n < N; ++n) {
        float v = b ? b[n] : 0.0f;
        if (epilogue.relu) v = v > 0.0f ? v : 0.0f;
        y[i * ldy + n] = epilogue.accumulate ? y[i * ldy + n] + v : v;
      }
    return;
  }
  DnnlContext& c = context();
  dnnl::matmul& mm = matmul_for(c, {N, K, b != nullptr, epilogue.relu, epilogue.accumulate});
  using dt = dnnl::memory::data_type;
  dnnl::memory xm({{M, K}, dt::f32, {ldx, 1}}, c.engine, const_cast<float*>(x));
  dnnl::memory wm({{K, N}, dt::f32, {1, K}}, c.engine, const_cast<float*>(w));
  dnnl::memory ym({{M, N}, dt::f32, {ldy, 1}}, c.engine, y);
  std::unordered_map<int, dnnl::memory> args = {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
  if (b) args.emplace(DNNL_ARG_BIAS, dnnl::memory({{1, N}, dt::f32, {N, 1}}, c.engine, const_cast<float*>(b)));
  mm.execute(c.stream, args);
  c.stream.wait();
}

void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K,
                    LinearEpilogue epilogue) {
  linear_forward(y, N, x, K, w, b, M, N, K, epilogue);
}

}  // namespace attn::ops
