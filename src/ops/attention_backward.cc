// Backward of scaled dot-product attention: validation and dispatch, and the readable spec of the math.
// With S = scale·Q·Kᵀ + M, P = softmax(S), the dropout mask Z and its scale c = 1/(1 − p), P̃ = c·Z ⊙ P,
// O = P̃·V:
//   dV = P̃ᵀ·dO                          from  O = P̃·V
//   dP = c·Z ⊙ (dO·Vᵀ)                  from  O = P̃·V
//   dS = P ⊙ (dP − rowsum(P ⊙ dP))      from  P = softmax(S)   (the mask M is a constant)
//   dQ = scale·dS·K,  dK = scale·dSᵀ·Q  from  S = scale·Q·Kᵀ
// Hidden keys have P = 0, hence dS = 0: they receive no gradient. The fast path is the fused kernel
// (cpu/attention_backward_kernels.cc), which recomputes P from the forward's lse.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attn/error.h"
#include "cpu/attention_fused.h"
#include "ops/attention_problem.h"

namespace attn::detail {

// Plain loops in double precision, one query row at a time; a term is only added where its weight is
// nonzero (the non-finite rule of attn/attention.h).
void attention_backward_reference(const AttentionProblem& p, const AttentionGradients& g) {
  const double kHidden = -std::numeric_limits<double>::infinity();
  std::vector<double> dq(static_cast<size_t>(p.B * p.H * p.Lq * p.D), 0.0);
  std::vector<double> dk(static_cast<size_t>(p.B * p.Hkv * p.Lk * p.D), 0.0);
  std::vector<double> dv(static_cast<size_t>(p.B * p.Hkv * p.Lk * p.Dv), 0.0);
  std::vector<double> s(static_cast<size_t>(p.Lk)), P(static_cast<size_t>(p.Lk)), dP(static_cast<size_t>(p.Lk));
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t kvh = p.kv_head(h);
      for (int64_t i = 0; i < p.Lq; ++i) {
        // P_i = softmax of the row, exactly as attention_reference computes it
        double m = kHidden;
        bool any_nan = false;
        for (int64_t j = 0; j < p.Lk; ++j) {
          s[j] = reference_score(p, b, h, i, j);
          if (s[j] > m) m = s[j];
          any_nan |= std::isnan(s[j]);
        }
        const bool empty = m == kHidden && !any_nan;
        double sum = 0.0;
        for (int64_t j = 0; j < p.Lk; ++j) {
          P[j] = empty || s[j] == kHidden ? 0.0 : std::exp(s[j] - m);
          sum += P[j];
        }
        for (int64_t j = 0; j < p.Lk; ++j) P[j] = P[j] == 0.0 ? 0.0 : P[j] / sum;
        const float* qi = p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl;
        const float* dOi = g.d_out + b * p.o_sb + h * p.o_sh + i * p.o_sl;
        // dP_j = c·Z_j · dO_i·v_j and dV_j += P̃_j · dO_i, over the keys with P_j ≠ 0
        double delta = 0.0;
        for (int64_t j = 0; j < p.Lk; ++j) {
          dP[j] = 0.0;
          if (P[j] == 0.0) continue;
          const bool kept = !p.dropout.active() || dropout_keeps(p.dropout, b, h, i, j);
          if (!kept) continue;
          const double c = p.dropout.active() ? p.dropout.scale : 1.0;
          const float* vj = p.v + b * p.v_sb + kvh * p.v_sh + j * p.v_sl;
          double dot = 0.0;
          for (int64_t d = 0; d < p.Dv; ++d) dot += static_cast<double>(dOi[d]) * vj[d];
          dP[j] = c * dot;
          delta += P[j] * dP[j];
          double* dvj = dv.data() + ((b * p.Hkv + kvh) * p.Lk + j) * p.Dv;
          for (int64_t d = 0; d < p.Dv; ++d) dvj[d] += c * P[j] * dOi[d];
        }
        // dS_j = P_j (dP_j − Δ); dQ_i += scale·dS_j·k_j; dK_j += scale·dS_j·q_i
        double* dqi = dq.data() + ((b * p.H + h) * p.Lq + i) * p.D;
        for (int64_t j = 0; j < p.Lk; ++j) {
          if (P[j] == 0.0) continue;
          const double ds = static_cast<double>(p.scale) * P[j] * (dP[j] - delta);
          const float* kj = p.k + b * p.k_sb + kvh * p.k_sh + j * p.k_sl;
          double* dkj = dk.data() + ((b * p.Hkv + kvh) * p.Lk + j) * p.D;
          for (int64_t d = 0; d < p.D; ++d) {
            dqi[d] += ds * kj[d];
            dkj[d] += ds * qi[d];
          }
        }
      }
    }
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t i = 0; i < p.Lq; ++i)
        for (int64_t d = 0; d < p.D; ++d)
          g.dq[b * p.q_sb + h * p.q_sh + i * p.q_sl + d] =
              static_cast<float>(dq[static_cast<size_t>(((b * p.H + h) * p.Lq + i) * p.D + d)]);
    for (int64_t h = 0; h < p.Hkv; ++h)
      for (int64_t j = 0; j < p.Lk; ++j) {
        for (int64_t d = 0; d < p.D; ++d)
          g.dk[b * p.k_sb + h * p.k_sh + j * p.k_sl + d] =
              static_cast<float>(dk[static_cast<size_t>(((b * p.Hkv + h) * p.Lk + j) * p.D + d)]);
        for (int64_t d = 0; d < p.Dv; ++d)
          g.dv[b * p.v_sb + h * p.v_sh + j * p.v_sl + d] =
              static_cast<float>(dv[static_cast<size_t>(((b * p.Hkv + h) * p.Lk + j) * p.Dv + d)]);
      }
  }
}

void run_backward(const AttentionProblem& p, const AttentionGradients& g, AttentionImpl impl) {
  // dQ, dK and dV hold no element: nothing to write (the kernels had walked every pair anyway, or every head)
  const bool no_dq = p.B == 0 || p.H == 0 || p.Lq == 0 || p.D == 0;
  if (no_dq && (p.B == 0 || p.Hkv == 0 || p.Lk == 0 || (p.D == 0 && p.Dv == 0))) return;
  if (impl == AttentionImpl::kReference)
    attention_backward_reference(p, g);
  else
    attention_backward_fused(p, g);
}

}  // namespace attn::detail

namespace attn {
namespace {

void check_float(const Tensor& t, const Shape& shape, const char* who, const char* arg) {
  if (t.defined() && t.dtype() != DType::kFloat32)
    throw DTypeError(std::string(who) + ": " + arg + " must be float32, got " + dtype_name(t.dtype()) + " with shape " +
                     shape_str(t.shape()));
  if (!t.defined() || t.dtype() != DType::kFloat32 || t.shape() != shape)
    throw ShapeError(std::string(who) + ": " + arg + " has shape " + (t.defined() ? shape_str(t.shape()) : "(none)") +
                     (t.defined() ? std::string(" and dtype ") + dtype_name(t.dtype()) : std::string()) +
                     " but must be float32 " + shape_str(shape));
}

}  // namespace

AttentionGrads scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& out, const Tensor& lse, const Tensor& d_out,
                                                     const AttentionOptions& options) {
  const char* who = "scaled_dot_product_attention_backward";
  if (detail::is_lowp(q.dtype()) || detail::is_lowp(k.dtype()) || detail::is_lowp(v.dtype()))
    return detail::scaled_dot_product_attention_backward_lowp(q, k, v, out, lse, d_out, options);
  detail::AttentionProblem p = detail::make_problem(q, k, v, options, who);
  const Shape out_shape = {p.B, p.H, p.Lq, p.Dv};
  check_float(d_out, out_shape, who, "d_out");
  if (options.impl != AttentionImpl::kReference) {
    check_float(out, out_shape, who, "out");
    check_float(lse, {p.B, p.H, p.Lq}, who, "lse");
  }
  AttentionGrads grads{Tensor(q.shape()), Tensor(k.shape()), Tensor(v.shape())};
  detail::AttentionGradients g;
  // the fused backward reads out and lse; the reference ignores them, whatever they are
  const bool kept = options.impl != AttentionImpl::kReference;
  g.out = kept ? out.f32() : nullptr;
  g.lse = kept ? lse.f32() : nullptr;
  g.d_out = d_out.f32();
  g.dq = grads.dq.f32(), g.dk = grads.dk.f32(), g.dv = grads.dv.f32();
  detail::run_backward(p, g, options.impl);
  return grads;
}

AttentionGrads scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& d_out, const AttentionOptions& options) {
  if (options.impl == AttentionImpl::kReference)
    return scaled_dot_product_attention_backward(q, k, v, Tensor(), Tensor(), d_out, options);
  if (q.rank() == 4 && v.rank() == 4 && q.dim(3) == 0 && v.dim(3) == 0) {  // no gradient element: no forward either
    AttentionOptions none = options;
    none.impl = AttentionImpl::kReference;  // (which takes no out and lse; run_backward then returns at once)
    return scaled_dot_product_attention_backward(q, k, v, Tensor(), Tensor(), d_out, none);
  }
  AttentionOptions forward = options;
  forward.return_weights = false;
  forward.return_lse = true;
  const AttentionResult r = scaled_dot_product_attention(q, k, v, forward);
  return scaled_dot_product_attention_backward(q, k, v, r.output, r.lse, d_out, options);
}

}  // namespace attn
