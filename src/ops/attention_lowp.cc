// scaled_dot_product_attention on bfloat16/float16 inputs: the dtype checks and the choice of path.
//   fused (kAuto, kFused) without weights: the 16-bit kernel (cpu/attention_lowp_kernels.cc), float32 sums
//   reference, unfused, or weights asked for: the float32 path on the inputs widened (exact), the output
//     rounded to the input dtype; weights and lse stay float32
// The output has the inputs' dtype (as PyTorch's); lse and weights are float32; masks and ALiBi slopes stay
// bool/float32.
#include <string>

#include "attn/error.h"
#include "cpu/attention_lowp.h"
#include "ops/attention_problem.h"

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
  const bool widened =
      options.return_weights || options.impl == AttentionImpl::kReference || options.impl == AttentionImpl::kUnfused;
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
  result.output = Tensor({lp.p.B, lp.p.H, lp.p.Lq, lp.p.Dv}, dt);
  lp.o = static_cast<uint16_t*>(result.output.raw());
  if (options.return_lse) {
    result.lse = Tensor({lp.p.B, lp.p.H, lp.p.Lq});
    lp.p.lse = result.lse.f32();
  }
  attention_lowp(lp);
  return result;
}

}  // namespace attn::detail

namespace attn {
const char* fused_kernel_isa(DType dtype) {
  if (dtype == DType::kBFloat16) return detail::lowp_kernel_name(detail::LowpType::kBFloat16);
  return fused_kernel_isa();
}
}  // namespace attn
