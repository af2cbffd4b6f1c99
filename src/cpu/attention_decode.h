// Internal: the attention of incremental decoding. A few query rows per (batch, head) — the one new token of
// each hypothesis, or the K hypotheses of a sentence over its encoder output — against a cache of keys and
// values. Decoding calls it once per layer and step on problems of a few hundred FLOPs per head, so it is a
// kernel of its own: no planning, no packing, no parallel region unless the problem is large, and the keys
// stored transposed in blocks of kKeyBlock, so Q·Kᵀ is FMAs over whole vectors of keys with no horizontal sums.
//
//   s_j = scale · q · k_j            (hidden: key padding, and keys at or beyond Lk)
//   out = Σ_j softmax(s)_j · v_j     (0 for a row with every key hidden)
//
// Includes only public and standard headers beside the kernel contract: this is the bottom layer.
#pragma once

#include <cstdint>

namespace attn::detail {

// Keys per block of the transposed key layout (any instruction set: 1, 2 or 16 vectors of it).
constexpr int64_t kKeyBlock = 16;

struct DecodeProblem {
  int64_t B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0, Dv = 0;
  // q: [B, H, Lq, D]       element (b, h, i, d) at q[b*q_sb + h*q_sh + i*q_sl + d]
  const float* q = nullptr;
  int64_t q_sb = 0, q_sh = 0, q_sl = 0;
  // kt: [B, Hkv, ⌈Lk / kKeyBlock⌉, D, kKeyBlock]: key j of head g, element d at
  //     kt[b*kt_sb + g*kt_sh + (j / kKeyBlock)*D*kKeyBlock + d*kKeyBlock + j % kKeyBlock]
  //     (the last block's keys beyond Lk may hold anything: they are never read as keys)
  const float* kt = nullptr;
  int64_t kt_sb = 0, kt_sh = 0;
  // v: [B, Hkv, Lk, Dv]    element (b, g, j, e) at v[b*v_sb + g*v_sh + j*v_sl + e]
  const float* v = nullptr;
  int64_t v_sb = 0, v_sh = 0, v_sl = 0;
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

// The offset of key j, element d, inside one head's transposed keys (the layout above).
inline int64_t key_block_index(int64_t D, int64_t j, int64_t d) {
  return (j / kKeyBlock) * D * kKeyBlock + d * kKeyBlock + j % kKeyBlock;
}

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
