// scaled_dot_product_attention on bfloat16/float16 inputs: the dtype checks and the choice of path.
//   fused (kAuto, kFused) without weights: the 16-bit kernel (cpu/attention_lowp_kernels.cc), float32 sums
//   reference, unfused, or weights asked for: the float32 path on the inputs widened (exact), the output
//     rounded to the input dtype; weights and lse stay float32
// The output has the inputs' dtype (as PyTorch's); lse and weights are float32; masks and ALiBi slopes stay
// bool/float32.
// The backward on bfloat16/float16 q, k, v, out, d_out (lse float32), gradients in that dtype:
//   bfloat16, fused, AVX512_BF16 active, inputs finite: the bfloat16 backward (cpu/attention_lowp_backward_kernels.cc)
//   otherwise: the float32 backward on the tensors widened (exact), the gradients rounded to the dtype
#include <cmath>
#include <string>

#include "attn/error.h"
#include "cpu/attention_lowp.h"
#include "ops/attention_problem.h"
#include "tensor_unfilled.h"

namespace attn::detail {

AttentionResult scaled_dot_product_attention_lowp(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const AttentionOptions& options) {
  constexpr const char* kWho = "scaled_dot_product_attention";
  const DType dt = is_lowp(q.dtype()) ? q.dtype() : is_lowp(k.dtype()) ? k.dtype() : v.dtype();
  for (const auto& [t, arg] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    if (!t->defined()) throw ArgumentError(std::string(kWho) + ": " + arg + " is missing");
    if (t->dtype() != dt)
      throw DTypeError(std::string(kWho) + ": q, k and v must share one dtype (float32, bfloat16 or float16); " + arg +
                       " is " + dtype_name(t->dtype()) + " with shape " + shape_str(t->shape()) + " but " +
                       dtype_name(dt) + " was given for " +
                       (is_lowp(q.dtype())   ? "q"
                        : is_lowp(k.dtype()) ? "k"
                                             : "v"));
  }
  // D = 0 with a NaN or infinite scale: every score is 0 · scale (NaN), which only the reference computes so
  const bool empty_product =
      !q.shape().empty() && q.shape().back() == 0 && options.scale && !std::isfinite(*options.scale);
  const bool widened = options.return_weights || options.impl == AttentionImpl::kReference ||
                       options.impl == AttentionImpl::kUnfused || empty_product;
  if (widened) {  // exact widening: the float32 path sees the same values
    AttentionResult r = scaled_dot_product_attention(to_dtype(q, DType::kFloat32), to_dtype(k, DType::kFloat32),
                                                     to_dtype(v, DType::kFloat32), options);
    r.output = to_dtype(r.output, dt);
    return r;
  }
  LowpAttentionProblem lp;
  lp.p = make_problem_shapes(q, k, v, options, kWho);
  lp.type = dt == DType::kBFloat16 ? LowpType::kBFloat16 : LowpType::kFloat16;
  lp.q = static_cast<const uint16_t*>(q.raw());
  lp.k = static_cast<const uint16_t*>(k.raw());
  lp.v = static_cast<const uint16_t*>(v.raw());
  AttentionResult result;
  result.output = unfilled_tensor({lp.p.B, lp.p.H, lp.p.Lq, lp.p.Dv}, dt);  // the kernel writes every element
  lp.o = static_cast<uint16_t*>(result.output.raw());
  if (options.return_lse) {
    result.lse = unfilled_tensor({lp.p.B, lp.p.H, lp.p.Lq});
    lp.p.lse = result.lse.f32();
  }
  // nothing to write (no query row; or no value column and no lse): the kernel's heads are not walked (2^60 of them)
  if (lp.p.B == 0 || lp.p.H == 0 || lp.p.Lq == 0 || (lp.p.Dv == 0 && !options.return_lse)) return result;
  attention_lowp(lp);
  return result;
}

AttentionGrads scaled_dot_product_attention_backward_lowp(const Tensor& q, const Tensor& k, const Tensor& v,
                                                          const Tensor& out, const Tensor& lse, const Tensor& d_out,
                                                          const AttentionOptions& options) {
  constexpr const char* kWho = "scaled_dot_product_attention_backward";
  const DType dt = q.dtype();
  for (const auto& [t, arg] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    if (!t->defined()) throw ArgumentError(std::string(kWho) + ": " + arg + " is missing");
  }
  for (const auto& [t, arg] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}, {&d_out, "d_out"}}) {
    if (t->defined() && t->dtype() != dt)
      throw DTypeError(std::string(kWho) + ": q, k, v, out and d_out must share one dtype; " + arg + " is " +
                       dtype_name(t->dtype()) + " with shape " + shape_str(t->shape()) + " but q is " + dtype_name(dt));
  }
  AttentionProblem p = make_problem_shapes(q, k, v, options, kWho);
  const Shape out_shape = {p.B, p.H, p.Lq, p.Dv};
  if (!d_out.defined() || d_out.shape() != out_shape)
    throw ShapeError(std::string(kWho) + ": d_out has shape " +
                     (d_out.defined() ? shape_str(d_out.shape()) : "(none)") + " but must be " + shape_str(out_shape));
  const bool fused = options.impl != AttentionImpl::kReference;
  if (fused && (!out.defined() || out.shape() != out_shape))
    throw ShapeError(std::string(kWho) + ": out has shape " + (out.defined() ? shape_str(out.shape()) : "(none)") +
                     " but must be " + shape_str(out_shape));
  if (lse.defined() && lse.dtype() != DType::kFloat32)
    throw DTypeError(std::string(kWho) + ": lse must be float32, got " + dtype_name(lse.dtype()) + " with shape " +
                     shape_str(lse.shape()));
  if (fused && (!lse.defined() || lse.shape() != Shape{p.B, p.H, p.Lq}))
    throw ShapeError(std::string(kWho) + ": lse must be float32 " + shape_str({p.B, p.H, p.Lq}) + ", got " +
                     (lse.defined() ? std::string(dtype_name(lse.dtype())) + " " + shape_str(lse.shape()) : "none"));
  if (q.numel() + k.numel() + v.numel() == 0)  // no gradient element to write (nor any head to walk)
    return {Tensor(q.shape(), dt), Tensor(k.shape(), dt), Tensor(v.shape(), dt)};
  if (fused && dt == DType::kBFloat16 && bf16_dot_active()) {
    AttentionGrads grads{Tensor(q.shape(), dt), Tensor(k.shape(), dt), Tensor(v.shape(), dt)};
    LowpBackwardProblem bp;
    bp.p = p;
    bp.p.o_sb = p.H * p.Lq * p.Dv, bp.p.o_sh = p.Lq * p.Dv, bp.p.o_sl = p.Dv;  // out, d_out: contiguous
    bp.q = static_cast<const uint16_t*>(q.raw()), bp.k = static_cast<const uint16_t*>(k.raw());
    bp.v = static_cast<const uint16_t*>(v.raw()), bp.out = static_cast<const uint16_t*>(out.raw());
    bp.d_out = static_cast<const uint16_t*>(d_out.raw()), bp.lse = lse.f32();
    bp.dq = static_cast<uint16_t*>(grads.dq.raw()), bp.dk = static_cast<uint16_t*>(grads.dk.raw());
    bp.dv = static_cast<uint16_t*>(grads.dv.raw());
    if (avx512bf16::attention_backward_bf16(bp)) {
      count_bf16_backward_run();
      return grads;
    }
  }
  const auto wide = [](const Tensor& t) { return t.defined() ? to_dtype(t, DType::kFloat32) : Tensor(); };
  AttentionGrads g =
      scaled_dot_product_attention_backward(wide(q), wide(k), wide(v), wide(out), lse, wide(d_out), options);
  return {to_dtype(g.dq, dt), to_dtype(g.dk, dt), to_dtype(g.dv, dt)};
}

}  // namespace attn::detail

namespace attn {
const char* fused_kernel_isa(DType dtype) {
  if (dtype == DType::kBFloat16) return detail::lowp_kernel_name(detail::LowpType::kBFloat16);
  return fused_kernel_isa();
}
}  // namespace attn
