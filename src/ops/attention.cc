// scaled_dot_product_attention: shape checks and dispatch. The only place that validates its inputs;
// the paths in attention_reference.cc, attention_unfused.cc and cpu/ assume a valid AttentionProblem.
#include <algorithm>
#include <cmath>
#include <string>

#include "attn/error.h"
#include "cpu/attention_fused.h"
#include "ops/attention_problem.h"
#include "tensor_unfilled.h"

namespace attn {

const char* fused_kernel_isa() { return detail::simd_level_name(detail::simd_level_active()); }

double measure_fma_peak(int threads, double seconds) {
  if (threads < 0) throw ArgumentError("measure_fma_peak: threads must be >= 0, got " + std::to_string(threads));
  if (!(seconds > 0.0 && seconds <= 60.0))  // an infinite one had never returned
    throw ArgumentError("measure_fma_peak: seconds must be in (0, 60], got " + std::to_string(seconds));
  return detail::fma_peak_gflops(threads, seconds);
}

const char* impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::kAuto: return "auto";
    case AttentionImpl::kFused: return "fused";
    case AttentionImpl::kUnfused: return "unfused";
    case AttentionImpl::kReference: return "reference";
  }
  return "?";
}

const char* causal_name(CausalAlignment causal) {
  switch (causal) {
    case CausalAlignment::kNone: return "none";
    case CausalAlignment::kTopLeft: return "top-left";
    case CausalAlignment::kBottomRight: return "bottom-right";
  }
  return "?";
}

AttentionImpl parse_impl(const std::string& name) {
  for (AttentionImpl i :
       {AttentionImpl::kAuto, AttentionImpl::kFused, AttentionImpl::kUnfused, AttentionImpl::kReference})
    if (name == impl_name(i)) return i;
  throw ArgumentError("implementation must be auto, fused, unfused or reference, got '" + name + "'");
}

CausalAlignment parse_causal(const std::string& name) {
  for (CausalAlignment c : {CausalAlignment::kNone, CausalAlignment::kTopLeft, CausalAlignment::kBottomRight})
    if (name == causal_name(c)) return c;
  throw ArgumentError("causal alignment must be none, top-left or bottom-right, got '" + name + "'");
}

namespace detail {
namespace {

[[noreturn]] void shape_fail(const char* who, const std::string& msg) {
  throw ShapeError(std::string(who) + ": " + msg);
}

void require_float(const Tensor& t, const char* who, const char* arg) {
  if (!t.defined()) throw ArgumentError(std::string(who) + ": " + arg + " is missing");
  if (t.dtype() != DType::kFloat32)
    throw DTypeError(std::string(who) + ": " + arg + " must be float32, got " + dtype_name(t.dtype()) + " with shape " +
                     shape_str(t.shape()));
}

}  // namespace

void set_mask(AttentionProblem& p, const Tensor& mask, const char* who, const char* arg) {
  if (!mask.defined()) return;
  const Shape target = {p.B, p.H, p.Lq, p.Lk};
  if (mask.rank() < 1 || mask.rank() > 4)
    shape_fail(who, std::string(arg) + " has shape " + shape_str(mask.shape()) +
                        "; it must have rank 1 to 4 and broadcast to [B, H, Lq, Lk] = " + shape_str(target));
  // Right-aligned broadcasting: pad the mask's shape with leading 1s to rank 4.
  int64_t sizes[4] = {1, 1, 1, 1};
  for (int i = 0; i < mask.rank(); ++i) sizes[4 - mask.rank() + i] = mask.shape()[static_cast<size_t>(i)];
  int64_t strides[4];
  int64_t s = 1;
  for (int i = 3; i >= 0; --i) {
    if (sizes[i] != 1 && sizes[i] != target[static_cast<size_t>(i)])
      shape_fail(who, std::string(arg) + " has shape " + shape_str(mask.shape()) +
                          ", which does not broadcast to [B, H, Lq, Lk] = " + shape_str(target));
    strides[i] = sizes[i] == 1 ? 0 : s;
    s *= sizes[i];
  }
  p.m_sb = strides[0];
  p.m_sh = strides[1];
  p.m_sq = strides[2];
  p.m_sk = strides[3];
  if (mask.dtype() != DType::kBool && mask.dtype() != DType::kFloat32)
    throw DTypeError(std::string(who) + ": " + arg + " must be bool or float32, got " + dtype_name(mask.dtype()) +
                     " with shape " + shape_str(mask.shape()));
  if (mask.dtype() == DType::kBool)
    p.bool_mask = mask.b8();
  else
    p.float_mask = mask.f32();
}

void set_options(AttentionProblem& p, const AttentionOptions& options, const char* who) {
  if (options.key_padding_mask.defined()) {
    const Tensor& kpm = options.key_padding_mask;
    if (kpm.dtype() != DType::kBool)
      throw DTypeError(std::string(who) + ": key_padding_mask must be bool (true = padding), got " +
                       dtype_name(kpm.dtype()) + " with shape " + shape_str(kpm.shape()));
    if (kpm.rank() != 2 || kpm.dim(0) != p.B || kpm.dim(1) != p.Lk)
      shape_fail(who, "key_padding_mask has shape " + shape_str(kpm.shape()) +
                          " but must be [B, Lk] = " + shape_str({p.B, p.Lk}));
    p.key_padding = kpm.b8();
  }
  // enums from outside the library's values: an unknown impl had run no kernel and returned zeros, an unknown
  // alignment had been taken for bottom-right
  if (static_cast<unsigned>(options.impl) > static_cast<unsigned>(AttentionImpl::kReference))
    throw ArgumentError(std::string(who) + ": impl " + std::to_string(static_cast<unsigned>(options.impl)) +
                        " is not an AttentionImpl");
  if (static_cast<unsigned>(options.causal) > static_cast<unsigned>(CausalAlignment::kBottomRight))
    throw ArgumentError(std::string(who) + ": causal " + std::to_string(static_cast<unsigned>(options.causal)) +
                        " is not a CausalAlignment");
  p.causal = options.causal;
  if (options.window < 0)
    throw ArgumentError(std::string(who) + ": window must be >= 0, got " + std::to_string(options.window));
  if (options.window > 0 && options.causal == CausalAlignment::kNone)
    throw ArgumentError(std::string(who) + ": window = " + std::to_string(options.window) +
                        " needs a causal alignment (top-left or bottom-right)");
  // a window past every key is no limit at all: clamped, so key_range's last − window + 1 never overflows
  p.window = std::min(options.window, p.Lq + p.Lk + 1);
  if (options.alibi_slopes.defined()) {
    require_float(options.alibi_slopes, who, "alibi_slopes");
    if (options.alibi_slopes.rank() != 1 || options.alibi_slopes.dim(0) != p.H)
      shape_fail(who, "alibi_slopes has shape " + shape_str(options.alibi_slopes.shape()) + " but must be [H] = [" +
                          std::to_string(p.H) + "]");
    p.alibi_slopes = options.alibi_slopes.f32();
  }
  if (!(options.dropout_p >= 0.0f && options.dropout_p <= 1.0f))
    throw ArgumentError(std::string(who) + ": dropout_p must be in [0, 1], got " + std::to_string(options.dropout_p));
  p.dropout = make_dropout(options.dropout_p, options.dropout_seed);
  if (options.num_threads < 0)
    throw ArgumentError(std::string(who) + ": num_threads must be >= 0, got " + std::to_string(options.num_threads));
  p.num_threads = options.num_threads;
}

AttentionProblem make_problem(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options,
                              const char* who) {
  require_float(q, who, "q");
  require_float(k, who, "k");
  require_float(v, who, "v");
  AttentionProblem p = make_problem_shapes(q, k, v, options, who);
  p.q = q.f32();
  p.k = k.f32();
  p.v = v.f32();
  return p;
}

namespace {

// A tensor with a 0 in its shape holds no numbers, so the tensors' sizes bound neither the work nor the other
// dimensions: q [1, 1, 2^52, 0] beside k [1, 1, 1024, 0] (128-byte .npy files) asked for 2^62 scores, a loop that
// never ended, and strides and FLOP counts that overflowed int64. Refused: a dimension past 2^60 (so sums of two
// never overflow), more than 2^50 (query, key) pairs, or more than 2^60 multiply-adds, or a per-batch size past 2^62.
void check_work(const AttentionProblem& p, const char* who, const std::string& shapes) {
  constexpr int64_t kMaxPairs = int64_t{1} << 50, kMaxWork = int64_t{1} << 60, kMaxSize = int64_t{1} << 62;
  for (const int64_t d : {p.B, p.H, p.Hkv, p.Lq, p.Lk, p.D, p.Dv})
    if (d > kMaxWork) throw ArgumentError(std::string(who) + ": a dimension exceeds 2^60" + shapes);
  const int64_t pairs = product_within({p.B, p.H, p.Lq, std::max<int64_t>(p.Lk, 1)}, kMaxPairs);
  if (pairs < 0 || product_within({pairs, std::max<int64_t>(p.D + p.Dv, 1)}, kMaxWork) < 0)
    throw ArgumentError(std::string(who) + ": B·H·Lq·Lk = " + std::to_string(p.B) + "·" + std::to_string(p.H) + "·" +
                        std::to_string(p.Lq) + "·" + std::to_string(p.Lk) +
                        " (query, key) pairs is more work than attn takes (2^50 pairs, 2^60 multiply-adds)" + shapes);
  // (each factor at least 1: the strides are these products, computed before anything looks for a 0 in them; q of
  // [0, 2^40, 2^40, 0] holds nothing but its batch stride H·Lq·D would overflow on the way)
  const auto at_least_1 = [](int64_t x) { return std::max<int64_t>(x, 1); };
  const int64_t H = at_least_1(p.H), Hkv = at_least_1(p.Hkv), Lq = at_least_1(p.Lq), Lk = at_least_1(p.Lk);
  const int64_t D = at_least_1(p.D), Dv = at_least_1(p.Dv);
  for (const int64_t size : {product_within({H, Lq, D}, kMaxSize), product_within({Hkv, Lk, D}, kMaxSize),
                             product_within({Hkv, Lk, Dv}, kMaxSize), product_within({H, Lq, Dv}, kMaxSize),
                             product_within({H, Lq, Lk}, kMaxSize)})
    if (size < 0) throw ArgumentError(std::string(who) + ": a batch entry's size exceeds 2^62 elements" + shapes);
}

}  // namespace

AttentionProblem make_problem_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options,
                                     const char* who) {
  const std::string shapes =
      " (q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " + shape_str(v.shape()) + ")";
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4)
    shape_fail(who, "q, k and v must be [B, H, Lq, D], [B, Hkv, Lk, D], [B, Hkv, Lk, Dv]" + shapes);
  AttentionProblem p;
  p.B = q.dim(0);
  p.H = q.dim(1);
  p.Lq = q.dim(2);
  p.D = q.dim(3);
  p.Hkv = k.dim(1);
  p.Lk = k.dim(2);
  p.Dv = v.dim(3);
  if (k.dim(0) != p.B || v.dim(0) != p.B) shape_fail(who, "batch sizes differ" + shapes);
  if (v.dim(1) != p.Hkv) shape_fail(who, "k and v have different head counts" + shapes);
  if (v.dim(2) != p.Lk) shape_fail(who, "k and v have different lengths Lk" + shapes);
  if (k.dim(3) != p.D) shape_fail(who, "q and k have different head dimensions D" + shapes);
  if (p.Hkv == 0 || p.H % p.Hkv != 0)
    throw ArgumentError(std::string(who) + ": the query heads H = " + std::to_string(p.H) +
                        " must be a multiple of the key/value heads Hkv = " + std::to_string(p.Hkv) + shapes);
  if (p.D == 0 && !options.scale) throw ArgumentError(std::string(who) + ": D = 0 needs an explicit scale" + shapes);
  check_work(p, who, shapes);
  const float scale = options.scale ? *options.scale : 1.0f / std::sqrt(static_cast<float>(p.D));
  p.scale = scale;
  p.q_sl = p.D, p.q_sh = p.Lq * p.D, p.q_sb = p.H * p.Lq * p.D;
  p.k_sl = p.D, p.k_sh = p.Lk * p.D, p.k_sb = p.Hkv * p.Lk * p.D;
  p.v_sl = p.Dv, p.v_sh = p.Lk * p.Dv, p.v_sb = p.Hkv * p.Lk * p.Dv;
  p.o_sl = p.Dv, p.o_sh = p.Lq * p.Dv, p.o_sb = p.H * p.Lq * p.Dv;
  set_mask(p, options.mask, who, "mask");
  set_options(p, options, who);
  return p;
}

void run_problem(const AttentionProblem& p, AttentionImpl impl) {
  // D = 0 with a NaN or infinite scale: every score is scale · 0 = NaN (as PyTorch's q @ kᵀ · scale), which the fast
  // paths, skipping the empty product, had taken for 0; the reference computes it, and costs nothing here
  if (p.D == 0 && !std::isfinite(p.scale)) impl = AttentionImpl::kReference;
  // No output element, and neither weights nor lse asked for: nothing to compute (q, k, v of [1, 1, 2^25, 0] had
  // walked 2^50 empty (query, key) pairs)
  if (p.Dv == 0 && p.weights == nullptr && p.lse == nullptr) return;
  if (p.B == 0 || p.H == 0 || p.Lq == 0) return;  // no query row: the output, weights and lse hold no element
  switch (impl) {
    case AttentionImpl::kReference: attention_reference(p); return;
    case AttentionImpl::kUnfused: attention_unfused(p); return;
    case AttentionImpl::kAuto:
    case AttentionImpl::kFused: attention_fused(p); return;
  }
}

}  // namespace detail

AttentionResult scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const AttentionOptions& options) {
  if (detail::is_lowp(q.dtype()) || detail::is_lowp(k.dtype()) || detail::is_lowp(v.dtype()))
    return detail::scaled_dot_product_attention_lowp(q, k, v, options);
  detail::AttentionProblem p = detail::make_problem(q, k, v, options, "scaled_dot_product_attention");
  AttentionResult result;
  result.output = detail::unfilled_tensor({p.B, p.H, p.Lq, p.Dv});  // every path writes every element
  p.o = result.output.f32();
  if (options.return_weights) {
    result.weights = detail::unfilled_tensor({p.B, p.H, p.Lq, p.Lk});
    p.weights = result.weights.f32();
  }
  if (options.return_lse) {
    result.lse = detail::unfilled_tensor({p.B, p.H, p.Lq});  // as the output: every path writes every row's
    p.lse = result.lse.f32();
  }
  detail::run_problem(p, options.impl);
  return result;
}

const char* kv_cache_name(KVCacheType t) {
  return t == KVCacheType::kInt8 ? "int8" : t == KVCacheType::kBFloat16 ? "bf16" : "f32";
}

KVCacheType parse_kv_cache(const std::string& name) {
  if (name == "f32") return KVCacheType::kFloat32;
  if (name == "bf16") return KVCacheType::kBFloat16;
  if (name == "int8") return KVCacheType::kInt8;
  throw ArgumentError("kv cache must be \"f32\", \"bf16\" or \"int8\", got \"" + name + "\"");
}

}  // namespace attn
