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

// Backward of the problem: dq, dk, dv (same strides as q, k, v) += gradients, from the forward's weights
// ([B, H, Lq, Lk] contiguous) and d_out (strides o_*). With attention-weight dropout, `keep` (same shape
// as weights) and its probability p: the forward used P·keep/(1 − p) in place of P.
void attention_backward(const AttentionProblem& p, const float* weights, const float* d_out, float* dq, float* dk,
                        float* dv, const uint8_t* keep = nullptr, float dropout = 0.0f);

// Validates and resolves q/k/v/options into a problem writing into `out` ([B, H, Lq, Dv]) and
// `weights` (when requested). The single place that checks the public API's inputs.
AttentionProblem make_problem(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options,
                              const char* who);
// Checks and broadcasts `mask` against [B, H, Lq, Lk] into p (shared by the public API and MHA).
void set_mask(AttentionProblem& p, const Tensor& mask, const char* who, const char* arg);
// Checks key_padding_mask [B, Lk] and the remaining options, fills them into p.
void set_options(AttentionProblem& p, const AttentionOptions& options, const char* who);
// Runs the path that options.impl names.
void run_problem(const AttentionProblem& p, AttentionImpl impl);

}  // namespace attn::detail
