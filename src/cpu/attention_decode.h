// Internal: the attention of incremental decoding. A few query rows per (batch, head) — the one new token of
// each hypothesis, or the K hypotheses of a sentence over its encoder output — against a cache of keys and
// values. Decoding calls it once per layer and step on problems of a few hundred FLOPs per head, so it is a
// kernel of its own: no planning, no packing, no parallel region unless the problem is large, and the keys
// stored transposed in blocks of kKeyBlock, so Q·Kᵀ is FMAs over whole vectors of keys with no horizontal sums.
// The last, incomplete block keeps its keys as rows: a step writes its key as one row (a few cache lines, not
// one line per element), and the block is transposed once, when its last key arrives.
//
//   s_j = scale · q · k_j            (hidden: key padding, and keys at or beyond Lk)
//   out = Σ_j softmax(s)_j · v_j     (0 for a row with every key hidden)
//
// Includes only public and standard headers beside the kernel contract: this is the bottom layer.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attn/half.h"

namespace attn::detail {

// Keys per block of the transposed key layout (any instruction set: 1, 2 or 16 vectors of it).
constexpr int64_t kKeyBlock = 16;

// How the cache stores keys and values: float32; bfloat16 (rounded to nearest even); or int8 with one float
// scale per (token, head) for K and for V (x ≈ scale · q, |q| ≤ 127, scale = max|x| / 127), the dequantisation
// fused into Q·Kᵀ (a key block's sums scaled once) and P·V (p_j · scale_j per key).
enum class KVType : uint8_t { kFloat32, kBFloat16, kInt8 };

inline int64_t kv_type_size(KVType t) { return t == KVType::kFloat32 ? 4 : t == KVType::kBFloat16 ? 2 : 1; }

// Stores n floats x (one head of one token) as t at out (element stride `stride`); for int8 returns the scale
// (NaN when x holds a non-finite value: the token's scores then poison the rows that see it), else 1.
inline float store_kv(const float* x, int64_t n, KVType t, void* out, int64_t stride) {
  // stride 1 (a value, or a key of the incomplete last block: most of decoding's writes) in its own loop, which
  // copies whole vectors: the strided loop ran one float at a time (half of KVCache::write's time)
  if (t == KVType::kFloat32) {
    float* o = static_cast<float*>(out);
    if (stride == 1)
      std::copy_n(x, n, o);
    else
      for (int64_t i = 0; i < n; ++i) o[i * stride] = x[i];
    return 1.0f;
  }
  if (t == KVType::kBFloat16) {
    uint16_t* o = static_cast<uint16_t*>(out);
    if (stride == 1)
      for (int64_t i = 0; i < n; ++i) o[i] = float_to_bf16(x[i]);
    else
      for (int64_t i = 0; i < n; ++i) o[i * stride] = float_to_bf16(x[i]);
    return 1.0f;
  }
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite &= std::isfinite(x[i]);
    amax = std::fabs(x[i]) > amax ? std::fabs(x[i]) : amax;
  }
  int8_t* q = static_cast<int8_t*>(out);
  if (!finite || amax == 0.0f) {
    for (int64_t i = 0; i < n; ++i) q[i * stride] = 0;
    return finite ? 1.0f : std::nanf("");
  }
  // inv in double: 127 / amax overflows float for amax below ~3.7e-37 (a row of tiny values), and x · inf had no
  // defined conversion to int8
  const float scale = amax / 127.0f;
  const double inv = 127.0 / amax;
  for (int64_t i = 0; i < n; ++i) q[i * stride] = static_cast<int8_t>(std::lrint(x[i] * inv));
  return scale;
}

struct DecodeProblem {
  int64_t B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0, Dv = 0;
  // q: [B, H, Lq, D]       element (b, h, i, d) at q[b*q_sb + h*q_sh + i*q_sl + d]
  const float* q = nullptr;
  int64_t q_sb = 0, q_sh = 0, q_sl = 0;
  // The cache's element type (kt and v), and for int8 the scales. Strides count elements of kv_type.
  KVType kv_type = KVType::kFloat32;
  // kt: [B, Hkv, ⌈Lk / kKeyBlock⌉, D, kKeyBlock]: key j of head g, element d at
  //     kt[b*kt_sb + g*kt_sh + key_block_index(D, j, d, Lk)]: in a complete block (j < ⌊Lk / kKeyBlock⌋ ·
  //     kKeyBlock) at (j / kKeyBlock)*D*kKeyBlock + d*kKeyBlock + j % kKeyBlock, transposed; in the last,
  //     incomplete block at (j / kKeyBlock)*D*kKeyBlock + (j % kKeyBlock)*D + d, a row
  //     (the last block's slots beyond Lk may hold anything: they are never read as keys)
  const void* kt = nullptr;
  int64_t kt_sb = 0, kt_sh = 0;
  // v: [B, Hkv, Lk, Dv]    element (b, g, j, e) at v[b*v_sb + g*v_sh + j*v_sl + e]
  const void* v = nullptr;
  int64_t v_sb = 0, v_sh = 0, v_sl = 0;
  // int8 only: k_scale, v_scale [B, Hkv, Lk]: token j of head g at scale[b*s_sb + g*s_sh + j]
  const float *k_scale = nullptr, *v_scale = nullptr;
  int64_t s_sb = 0, s_sh = 0;
  // Paged caches (layers/kv_cache.h): block_table [B, ⌈Lk / kKeyBlock⌉] (rows table_sb apart) names the block
  // of pools kt, v, k_scale, v_scale that holds batch b's positions [blk·kKeyBlock, (blk + 1)·kKeyBlock); the
  // strides ending in _sb then step from one block to the next, and within a block of id `id`:
  //   key j, element d:  kt[id*kt_sb + g*kt_sh + key_in_block_index(D, j, d, Lk)]
  //   value j:           v[id*v_sb + g*v_sh + (j % kKeyBlock)*v_sl + e]
  //   scale j:           scale[id*s_sb + g*s_sh + j % kKeyBlock]
  const int32_t* block_table = nullptr;
  int64_t table_sb = 0;
  // out: [B, H, Lq, Dv]
  float* o = nullptr;
  int64_t o_sb = 0, o_sh = 0, o_sl = 0;
  // key_padding: [B, Lk] (rows pad_sb apart), 1 = padding (hidden); or nullptr
  const uint8_t* key_padding = nullptr;
  int64_t pad_sb = 0;
  float scale = 1.0f;
  int num_threads = 0;  // 0: OpenMP's default; small problems run on the calling thread either way

  int64_t group() const { return H / Hkv; }
};

// The offset of key j, element d, inside the keys of one head holding Lk keys (the layout above), and the
// distance between its elements d and d + 1 (kKeyBlock in a complete block, 1 in the last, incomplete one).
inline bool key_in_complete_block(int64_t j, int64_t Lk) { return j < Lk / kKeyBlock * kKeyBlock; }
inline int64_t key_in_block_index(int64_t D, int64_t j, int64_t d, int64_t Lk) {  // from its block's start
  return key_in_complete_block(j, Lk) ? d * kKeyBlock + j % kKeyBlock : (j % kKeyBlock) * D + d;
}
inline int64_t key_block_index(int64_t D, int64_t j, int64_t d, int64_t Lk) {
  return (j / kKeyBlock) * D * kKeyBlock + key_in_block_index(D, j, d, Lk);
}
inline int64_t key_element_stride(int64_t j, int64_t Lk) { return key_in_complete_block(j, Lk) ? kKeyBlock : 1; }

// Floats one head's transposed keys take for `keys` keys: whole blocks.
inline int64_t key_block_floats(int64_t D, int64_t keys) { return (keys + kKeyBlock - 1) / kKeyBlock * D * kKeyBlock; }

// Runs the kernel of simd_level_active() (cpu/attention_fused.h).
void attention_decode(const DecodeProblem& p);

namespace scalar {
void attention_decode(const DecodeProblem& p);
}
namespace avx2 {
void attention_decode(const DecodeProblem& p);
}
namespace avx512 {
void attention_decode(const DecodeProblem& p);
}

}  // namespace attn::detail
