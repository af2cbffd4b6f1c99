// Backward of scaled dot-product attention. With S = scale·Q·Kᵀ + M, P = softmax(S), O = P·V:
//   dV = Pᵀ·dO                       from  O = P·V
//   dP = dO·Vᵀ                       from  O = P·V
//   dS = P ⊙ (dP − rowsum(P ⊙ dP))   from  P = softmax(S)   (the mask M is a constant)
//   dQ = scale·dS·K,  dK = scale·dSᵀ·Q   from  S = scale·Q·Kᵀ
// Hidden keys have P = 0, hence dS = 0: they receive no gradient.
#include <cmath>
#include <vector>

#include "attn/error.h"
#include "cpu/threads.h"
#include "ops/attention_problem.h"

namespace attn::detail {

void attention_backward(const AttentionProblem& p, const float* weights, const float* d_out, float* dq, float* dk,
                        float* dv, const uint8_t* keep, float dropout) {
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  // One task per (batch, kv head): the query heads of a group write the same dK, dV rows.
#pragma omp parallel for schedule(dynamic, 1) num_threads(resolve_threads(p.num_threads))
  for (int64_t bg = 0; bg < p.B * p.Hkv; ++bg) {
    const int64_t b = bg / p.Hkv, g = bg % p.Hkv;
    std::vector<float> dP(static_cast<size_t>(p.Lk));
    for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h) {
      const float* K = p.k + b * p.k_sb + g * p.k_sh;
      const float* V = p.v + b * p.v_sb + g * p.v_sh;
      float* dK = dk + b * p.k_sb + g * p.k_sh;
      float* dV = dv + b * p.v_sb + g * p.v_sh;
      for (int64_t i = 0; i < p.Lq; ++i) {
        const int64_t row = (b * p.H + h) * p.Lq + i;
        const float* P = weights + row * p.Lk;
        const uint8_t* kp = keep ? keep + row * p.Lk : nullptr;
        const float* dO = d_out + b * p.o_sb + h * p.o_sh + i * p.o_sl;
        const float* qi = p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl;
        float* dqi = dq + b * p.q_sb + h * p.q_sh + i * p.q_sl;
        // dP_j = dO·v_j (through dropout: · keep_j / (1 − p)); D = Σ_j P_j dP_j
        double D = 0.0;
        for (int64_t j = 0; j < p.Lk; ++j) {
          if (P[j] == 0.0f) {
            dP[j] = 0.0f;
            continue;
          }
          const float* vj = V + j * p.v_sl;
          float s = 0.0f;
          for (int64_t d = 0; d < p.Dv; ++d) s += dO[d] * vj[d];
          dP[j] = kp ? (kp[j] ? s * keep_scale : 0.0f) : s;
          D += static_cast<double>(P[j]) * dP[j];
          // dV_j += P̃_j · dO
          const float pt = kp ? (kp[j] ? P[j] * keep_scale : 0.0f) : P[j];
          float* dvj = dV + j * p.v_sl;
          for (int64_t d = 0; d < p.Dv; ++d) dvj[d] += pt * dO[d];
        }
        for (int64_t j = 0; j < p.Lk; ++j) {
          const float dS = P[j] * (dP[j] - static_cast<float>(D)) * p.scale;
          if (dS == 0.0f) continue;
          const float* kj = K + j * p.k_sl;
          float* dkj = dK + j * p.k_sl;
          for (int64_t d = 0; d < p.D; ++d) {
            dqi[d] += dS * kj[d];
            dkj[d] += dS * qi[d];
          }
        }
      }
    }
  }
}

}  // namespace attn::detail

namespace attn {

AttentionGrads scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& weights, const Tensor& d_out,
                                                     const AttentionOptions& options) {
  const char* who = "scaled_dot_product_attention_backward";
  detail::AttentionProblem p = detail::make_problem(q, k, v, options, who);
  const Shape out_shape = {p.B, p.H, p.Lq, p.Dv}, w_shape = {p.B, p.H, p.Lq, p.Lk};
  if (!d_out.defined() || d_out.dtype() != DType::kFloat32 || d_out.shape() != out_shape)
    throw ShapeError(std::string(who) + ": d_out has shape " + shape_str(d_out.shape()) + " but must be float32 " +
                     shape_str(out_shape));
  Tensor w = weights;
  if (!w.defined()) {
    AttentionOptions o = options;
    o.return_weights = true;
    w = scaled_dot_product_attention(q, k, v, o).weights;
  } else if (w.dtype() != DType::kFloat32 || w.shape() != w_shape) {
    throw ShapeError(std::string(who) + ": weights has shape " + shape_str(w.shape()) + " but must be float32 " +
                     shape_str(w_shape));
  }
  AttentionGrads g{Tensor(q.shape()), Tensor(k.shape()), Tensor(v.shape())};
  detail::attention_backward(p, w.f32(), d_out.f32(), g.dq.f32(), g.dk.f32(), g.dv.f32());
  return g;
}

}  // namespace attn
