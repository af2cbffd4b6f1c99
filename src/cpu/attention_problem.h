// The kernel contract: an attention problem with every check done, every size resolved and every stride
// explicit, and the masking rule the fast paths share. The ops layer builds it from the public API's tensors
// (make_problem in src/ops/attention.cc); the layers and models build it from their projection buffers
// (interleaved_heads_problem). The paths (reference, unfused, fused) only read it and assume it is valid.
// Strides are in elements; the innermost (D) stride is always 1, so a head may live inside a wider row
// (the [B, L, H·D] layout of the projections needs no transposes).
// Includes only public and standard headers: this is the bottom layer.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "attn/attention.h"
#include "cpu/dropout.h"

namespace attn::detail {

struct AttentionProblem {
  int64_t B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0, Dv = 0;

  // q: [B, H, Lq, D]      element (b, h, i, d) at q[b*q_sb + h*q_sh + i*q_sl + d]
  const float* q = nullptr;
  int64_t q_sb = 0, q_sh = 0, q_sl = 0;
  // k: [B, Hkv, Lk, D]
  const float* k = nullptr;
  int64_t k_sb = 0, k_sh = 0, k_sl = 0;
  // v: [B, Hkv, Lk, Dv]
  const float* v = nullptr;
  int64_t v_sb = 0, v_sh = 0, v_sl = 0;
  // out: [B, H, Lq, Dv]
  float* o = nullptr;
  int64_t o_sb = 0, o_sh = 0, o_sl = 0;
  // weights: [B, H, Lq, Lk] contiguous, or nullptr when not requested
  float* weights = nullptr;
  // lse: [B, H, Lq] contiguous, each row's log-sum-exp, or nullptr when not requested
  float* lse = nullptr;
  // Attention-weight dropout (inactive by default); the weights above are the ones before dropout.
  DropoutParams dropout;

  float scale = 1.0f;

  // mask broadcast to [B, H, Lq, Lk] through strides (0 on a broadcast dimension); at most one of the two.
  const uint8_t* bool_mask = nullptr;  // 1 = may attend
  const float* float_mask = nullptr;   // added to the score
  int64_t m_sb = 0, m_sh = 0, m_sq = 0, m_sk = 0;
  // key_padding: [B, Lk], 1 = padding (hidden)
  const uint8_t* key_padding = nullptr;

  CausalAlignment causal = CausalAlignment::kNone;
  int64_t window = 0;                   // > 0 only with causal
  const float* alibi_slopes = nullptr;  // [H] or nullptr
  int num_threads = 0;

  int64_t group() const { return H / Hkv; }
  int64_t kv_head(int64_t h) const { return h / group(); }
  // Query i's position on the key axis: key j is causally visible iff j <= i + offset().
  int64_t offset() const { return causal == CausalAlignment::kTopLeft ? 0 : Lk - Lq; }
  bool has_mask() const { return bool_mask != nullptr || float_mask != nullptr; }
  int64_t mask_index(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * m_sb + h * m_sh + i * m_sq + j * m_sk;
  }
  // The half-open range [lo, hi) of keys that causal masking and the window leave to query i; every
  // key outside it is hidden, whatever the other masks say. Empty when lo >= hi.
  void key_range(int64_t i, int64_t* lo, int64_t* hi) const {
    *lo = 0;
    *hi = Lk;
    if (causal == CausalAlignment::kNone) return;
    const int64_t last = i + offset();  // last visible key
    *hi = last + 1 < Lk ? (last + 1 > 0 ? last + 1 : 0) : Lk;
    if (window > 0) *lo = last - window + 1 > 0 ? last - window + 1 : 0;
  }
};

// The backward's tensors beside a forward problem, in its layouts: out and d_out with o's strides, dq with
// q's, dk with k's, dv with v's. The backward writes dq, dk and dv (it does not accumulate into them).
struct AttentionGradients {
  const float* out = nullptr;    // [B, H, Lq, Dv]   the forward's output
  const float* lse = nullptr;    // [B, H, Lq]       the forward's log-sum-exp, contiguous
  const float* d_out = nullptr;  // [B, H, Lq, Dv]   dLoss/dout
  float* dq = nullptr;           // [B, H, Lq, D]
  float* dk = nullptr;           // [B, Hkv, Lk, D]
  float* dv = nullptr;           // [B, Hkv, Lk, Dv]
};

// A problem whose heads are interleaved in rows, the layout a projection writes ([B·L, H·Dh]):
// query i of batch b, head h, is q[(b·Lq + i)·H·Dh + h·Dh + d] (out likewise), and key/value j, head g,
// is k[(b·Lk + j)·Hkv·Dh + g·Dh + d]. Scale 1/√Dh. Used by MultiHeadAttention, the Transformer and BERT:
// no head is ever transposed. A caller whose rows are not packed (a KV cache with spare capacity)
// overrides the batch stride afterwards.
inline AttentionProblem interleaved_heads_problem(int64_t B, int64_t H, int64_t Hkv, int64_t Lq, int64_t Lk, int64_t Dh,
                                                  const float* q, const float* k, const float* v, float* o) {
  AttentionProblem p;
  p.B = B, p.H = H, p.Hkv = Hkv, p.Lq = Lq, p.Lk = Lk, p.D = Dh, p.Dv = Dh;
  p.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const int64_t q_row = H * Dh, kv_row = Hkv * Dh;
  p.q = q, p.q_sb = Lq * q_row, p.q_sh = Dh, p.q_sl = q_row;
  p.k = k, p.k_sb = Lk * kv_row, p.k_sh = Dh, p.k_sl = kv_row;
  p.v = v, p.v_sb = Lk * kv_row, p.v_sh = Dh, p.v_sl = kv_row;
  p.o = o, p.o_sb = Lq * q_row, p.o_sh = Dh, p.o_sl = q_row;
  return p;
}

inline namespace ATTN_SIMD_NS {  // compiled per instruction set by the kernels that include it (cpu/simd.h)

// s[j] = −inf where pad[j] != 0, for j in [0, n): W keys a step (mask_row_segment's per-key loop over the padding
// had been two thirds of the fused softmax's time in padded BERT batches).
inline void hide_padded_keys(const uint8_t* pad, float* s, int64_t n) {
  using simd::Vec;
  const Vec hidden = Vec::set1(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) Vec::select_nonzero_bytes(pad + j, Vec::load(s + j), hidden).store(s + j);
  for (; j < n; ++j)
    if (pad[j]) s[j] = -std::numeric_limits<float>::infinity();
}

// Fast-path masking of one row segment: s[j − j0] holds bias_scale·scale·q_i·k_j for keys j in [j0, j1);
// hides (−inf) what the masking rule hides and adds bias_scale × (the float mask and ALiBi bias) to the rest.
// The fused kernel keeps its scores in base 2 (bias_scale = log2(e), so that its softmax is exp2); the
// unfused path in base e (1). Shared by the unfused and the fused paths; the reference spells the same
// rule out on its own.
inline void mask_row_segment(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t j1,
                             float* s, float bias_scale = 1.0f) {
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  int64_t lo, hi;
  p.key_range(i, &lo, &hi);
  for (int64_t j = j0; j < j1 && j < lo; ++j) s[j - j0] = kHidden;
  for (int64_t j = hi > j0 ? hi : j0; j < j1; ++j) s[j - j0] = kHidden;
  const int64_t a = lo > j0 ? lo : j0, e = hi < j1 ? hi : j1;
  if (a >= e) return;
  // Per key, as attention_reference: hidden (padding, a false bool mask, a −inf float mask) whatever its score; else
  // score + mask − ALiBi in IEEE arithmetic (in float, where the reference sums in double: a sum or an ALiBi slope
  // near FLT_MAX can overflow here and not there). A score that is −inf (an infinite q or k) is not hidden: a NaN or
  // +inf mask or slope makes it NaN, as in the reference (both steps had taken any −inf score for hidden). A finite
  // mask value stays finite in base 2: beyond ±FLT_MAX / log2 e (torch.finfo(float32).min, the "masked" value of much
  // PyTorch code) bias_scale · mj had overflowed to −inf and hidden the key (a row of them had given 0, not the mean of
  // V); saturated, it weighs as in base e against finite scores, and keys that share such a value share the weight.
  constexpr float kMax = std::numeric_limits<float>::max();
  const uint8_t* pad = p.key_padding ? p.key_padding + b * p.Lk : nullptr;
  if (!p.has_mask() && p.alibi_slopes == nullptr) {  // key padding alone hides, whatever the score: whole vectors
    if (pad) hide_padded_keys(pad + a, s + (a - j0), e - a);
    return;
  }
  const uint8_t* bm = p.bool_mask ? p.bool_mask + p.mask_index(b, h, i, 0) : nullptr;
  const float* fm = p.float_mask ? p.float_mask + p.mask_index(b, h, i, 0) : nullptr;
  const float slope = p.alibi_slopes ? bias_scale * p.alibi_slopes[h] : 0.0f;
  const int64_t pos = i + p.offset();
  for (int64_t j = a; j < e; ++j) {
    float& x = s[j - j0];
    if ((pad && pad[j]) || (bm && !bm[j * p.m_sk])) {
      x = kHidden;
      continue;
    }
    if (fm) {
      const float mj = fm[j * p.m_sk];
      if (mj == kHidden) {
        x = kHidden;
        continue;
      }
      const float t = bias_scale * mj;  // (+inf and NaN stay as they are: the non-finite rule)
      x += std::fabs(mj) <= kMax && std::fabs(t) > kMax ? std::copysign(kMax, t) : t;
    }
    if (p.alibi_slopes) x -= slope * static_cast<float>(pos > j ? pos - j : j - pos);
  }
}

// True when the per-element masks (bool/float mask, padding, ALiBi) are absent, so only the causal and
// window key range hides keys: the fused kernel then skips the masking pass on interior tiles.
inline bool only_range_masking(const AttentionProblem& p) {
  return !p.has_mask() && p.key_padding == nullptr && p.alibi_slopes == nullptr;
}

// Is every key of [j0, j0 + n) padding in batch b?
inline bool all_padding(const AttentionProblem& p, int64_t b, int64_t j0, int64_t n) {
  if (p.key_padding == nullptr) return false;
  const uint8_t* pad = p.key_padding + b * p.Lk + j0;
  for (int64_t j = 0; j < n; ++j)
    if (!pad[j]) return false;
  return true;
}

// Is any key of [j0, j0 + n) padding in batch b?
inline bool any_padding(const AttentionProblem& p, int64_t b, int64_t j0, int64_t n) {
  if (p.key_padding == nullptr) return false;
  const uint8_t* pad = p.key_padding + b * p.Lk + j0;
  for (int64_t j = 0; j < n; ++j)
    if (pad[j]) return true;
  return false;
}

// How many of the keys [j0, j0 + n) rows [i0, i0 + rows) may see at most (a prefix of them: the causal range ends
// the last row's inside a tile, and the keys after it are hidden in every row, so the products that would fill them
// are skipped). With rows = 1: row i0's visible prefix on the causal diagonal.
inline int64_t visible_prefix(const AttentionProblem& p, int64_t i0, int64_t rows, int64_t j0, int64_t n) {
  int64_t lo, hi;
  p.key_range(i0 + rows - 1, &lo, &hi);
  return std::clamp<int64_t>(hi - j0, 0, n);
}

// Does the key tile [j0, j0 + n) need the masking pass for rows [i0, i0 + rows)?
inline bool tile_needs_mask(const AttentionProblem& p, int64_t b, int64_t i0, int64_t rows, int64_t j0, int64_t n) {
  if (p.has_mask() || p.alibi_slopes != nullptr) return true;
  // a tile none of whose keys is padding masks as without it (a batch's padded suffix leaves most tiles so: they had
  // run the masking pass)
  if (any_padding(p, b, j0, n)) return true;
  int64_t lo_last, hi_last, lo_first, hi_first;
  p.key_range(i0 + rows - 1, &lo_last, &hi_last);
  p.key_range(i0, &lo_first, &hi_first);
  // inside every row's [lo, hi): lo grows and hi grows with i
  return j0 < lo_last || j0 + n > hi_first;
}

}  // namespace ATTN_SIMD_NS
}  // namespace attn::detail
