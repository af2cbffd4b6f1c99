// Internal: the ops-level attention entry points: validation of the public API's inputs into an
// AttentionProblem (the kernel contract, src/cpu/attention_problem.h), dispatch to a path, and the paths.
#pragma once

#include <cstdint>

#include "attn/attention.h"
#include "cpu/attention_problem.h"

namespace attn::detail {

// The three paths. Each fills p.o (and p.weights when set) for the whole problem.
void attention_reference(const AttentionProblem& p);
void attention_unfused(const AttentionProblem& p);
void attention_fused(const AttentionProblem& p);

// The score of key j for query i in double precision, or −inf when the masking rule hides it (the reference).
double reference_score(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j);

// The backward paths: g.dq, g.dk, g.dv from p, g.d_out (and g.out, g.lse for the fused path). The
// reference recomputes everything in double precision; kAuto, kFused and kUnfused run the fused kernel.
void attention_backward_reference(const AttentionProblem& p, const AttentionGradients& g);
void run_backward(const AttentionProblem& p, const AttentionGradients& g, AttentionImpl impl);

// Validates and resolves q/k/v/options into a problem writing into `out` ([B, H, Lq, Dv]) and
// `weights` (when requested). The single place that checks the public API's inputs.
AttentionProblem make_problem(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options,
                              const char* who);
// make_problem's checks of everything but the dtypes of q, k, v; their pointers are left null (the
// bfloat16/float16 entry fills its own).
AttentionProblem make_problem_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options,
                                     const char* who);
inline bool is_lowp(DType t) { return t == DType::kBFloat16 || t == DType::kFloat16; }
// scaled_dot_product_attention on bfloat16 or float16 q, k, v (src/ops/attention_lowp.cc).
AttentionResult scaled_dot_product_attention_lowp(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const AttentionOptions& options);
// scaled_dot_product_attention_backward on bfloat16 or float16 q, k, v, out and d_out (lse float32): the gradients in
// that dtype (src/ops/attention_lowp.cc).
AttentionGrads scaled_dot_product_attention_backward_lowp(const Tensor& q, const Tensor& k, const Tensor& v,
                                                          const Tensor& out, const Tensor& lse, const Tensor& d_out,
                                                          const AttentionOptions& options);
// Checks and broadcasts `mask` against [B, H, Lq, Lk] into p (shared by the public API and MHA).
void set_mask(AttentionProblem& p, const Tensor& mask, const char* who, const char* arg);
// Checks key_padding_mask [B, Lk] and the remaining options, fills them into p.
void set_options(AttentionProblem& p, const AttentionOptions& options, const char* who);
// Runs the path that options.impl names.
void run_problem(const AttentionProblem& p, AttentionImpl impl);

}  // namespace attn::detail
