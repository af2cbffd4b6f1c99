// Attention dropout from a counter-based generator: whether weight (b, h, i, j) survives is a pure
// function of (seed, b, h, i, j), so the backward regenerates exactly the forward's mask without storing
// it, every path (reference, unfused, fused, every instruction set) drops the same weights, and the
// result does not depend on the thread count or the tiling.
//
// The generator is Philox4x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
// generator of cuRAND, PyTorch's CUDA dropout and FlashAttention) with 7 rounds, as FlashAttention's dropout
// (the paper finds 7 rounds pass BigCrush; 10, cuRAND's, add margin at 10/7 the cost: dropout p = 0.1 cost
// +10.6% over p = 0 in a fused forward+backward with 10, +9.2% with 7), keyed by the 64-bit seed. One
// Philox block gives 128 bits = eight 16-bit uniforms; the keys of a row are taken in groups of 128:
//   key j:   G = j / 128, t = j % 16, e = (j % 128) / 16
//   counter  (16·G + t, i, h, b),  key (seed mod 2³², seed / 2³²)
//   u16      = half e % 2 (0 = low 16 bits) of word e / 2 of the block
// so one block per lane t and 16 lanes cover 128 consecutive keys, and each 16-bit half-word of the 16
// lanes is 16 consecutive keys: a vector compare gives a row's keep mask directly.
// The weight survives iff u16 >= threshold = round(p · 65536): the dropout probability is p rounded to a
// multiple of 2⁻¹⁶ (|error| ≤ 7.7e-6). Survivors are scaled by 1/(1 − p') with that rounded p' = threshold/65536,
// so a weight's expected value after dropout is the weight itself at every p (scaling by 1/(1 − p) had inflated
// it by 6.8% at p = 0.9999, which keeps 7 of 65536); p below 2⁻¹⁷ rounds to no dropout.
// Included by the kernels (compiled once per instruction set) and the reference (scalar).
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/simd.h"

namespace attn::detail {

struct DropoutParams {
  uint32_t threshold = 0;  // 0 = no dropout; 65536 = every weight dropped
  float scale = 1.0f;      // 65536/(65536 − threshold) = 1/(1 − p') (0 when every weight is dropped)
  uint64_t seed = 0;
  bool active() const { return threshold > 0; }
};

inline namespace ATTN_SIMD_NS {  // compiled per instruction set (cpu/simd.h)

inline DropoutParams make_dropout(float p, uint64_t seed) {
  DropoutParams d;
  d.seed = seed;
  if (!(p > 0.0f)) return d;
  const double t = std::nearbyint(static_cast<double>(p) * 65536.0);
  d.threshold = static_cast<uint32_t>(t > 65536.0 ? 65536.0 : t);
  d.scale = d.threshold == 65536u ? 0.0f : static_cast<float>(65536.0 / (65536.0 - t));
  return d;
}

inline constexpr int kPhiloxRounds = 7;

// The Philox4x32 block function with Rounds rounds: out = Philox(ctr, key) (Random123's philox4x32_R).
template <int Rounds = kPhiloxRounds>
inline void philox4x32(const uint32_t ctr[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  for (int round = 0; round < Rounds; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0, p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// The 16-bit uniform of weight (b, h, i, j), by the layout above (the readable definition).
inline uint32_t dropout_u16(uint64_t seed, int64_t b, int64_t h, int64_t i, int64_t j) {
  const uint32_t ctr[4] = {static_cast<uint32_t>(j / 128 * 16 + j % 16), static_cast<uint32_t>(i),
                           static_cast<uint32_t>(h), static_cast<uint32_t>(b)};
  uint32_t out[4];
  philox4x32(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), out);
  const int64_t e = j % 128 / 16;
  const uint32_t word = out[e / 2];
  return e % 2 == 0 ? (word & 0xFFFFu) : (word >> 16);
}

inline bool dropout_keeps(const DropoutParams& d, int64_t b, int64_t h, int64_t i, int64_t j) {
  return dropout_u16(d.seed, b, h, i, j) >= d.threshold;
}

// The keep masks of keys [128·G, 128·G + 128) of row (b, h, i): bit t of keep[e] is key 128·G + 16·e + t.
// Vectorised where the target has the instructions; the same bits as dropout_keeps everywhere.
inline void dropout_keep_group(const DropoutParams& d, int64_t b, int64_t h, int64_t i, int64_t G, uint16_t keep[8]) {
#if defined(__AVX512BW__)  // the avx512 build (its permutes and 16-bit compares are AVX512BW)
  // The 16 lanes as two vectors of eight 64-bit containers (t = 0..7 and 8..15), each lane's 32-bit words in
  // the low halves: _mm512_mul_epu32 gives the whole 64-bit product of the low halves, i.e. hi and lo at once.
  // What the upper halves hold never matters (only low halves are multiplied and compared).
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53), m1 = _mm512_set1_epi64(0xCD9E8D57);
  __m512i c0[2], c1[2], c2[2], c3[2];
  for (int half = 0; half < 2; ++half) {
    c0[half] = _mm512_add_epi64(_mm512_set1_epi64(G * 16 + half * 8), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    c1[half] = _mm512_set1_epi64(static_cast<uint32_t>(i));
    c2[half] = _mm512_set1_epi64(static_cast<uint32_t>(h));
    c3[half] = _mm512_set1_epi64(static_cast<uint32_t>(b));
  }
  uint32_t k0 = static_cast<uint32_t>(d.seed), k1 = static_cast<uint32_t>(d.seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
    for (int half = 0; half < 2; ++half) {
      const __m512i p0 = _mm512_mul_epu32(c0[half], m0), p1 = _mm512_mul_epu32(c2[half], m1);
      c0[half] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[half], key0, 0x96);  // hi1 ^ c1 ^ k0
      c1[half] = p1;                                                                          // lo1
      c2[half] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[half], key1, 0x96);  // hi0 ^ c3 ^ k1
      c3[half] = p0;                                                                          // lo0
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // Each word's 16-bit halves of the 16 lanes gathered into one vector (low halves of t = 0..15, then high
  // halves), one unsigned compare for 32 keys. threshold 65536 (p = 1) does not fit 16 bits: nothing is kept.
  alignas(64) static constexpr uint16_t kHalves[32] = {0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60,
                                                       1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61};
  const __m512i halves = _mm512_load_si512(kHalves);
  const __m512i thr = _mm512_set1_epi16(static_cast<int16_t>(static_cast<uint16_t>(d.threshold)));
  const bool none_kept = d.threshold > 0xFFFFu;
  const __m512i* words[4] = {c0, c1, c2, c3};
  for (int w = 0; w < 4; ++w) {
    const __m512i u16 = _mm512_permutex2var_epi16(words[w][0], halves, words[w][1]);
    const uint32_t kept = none_kept ? 0u : static_cast<uint32_t>(_mm512_cmpge_epu16_mask(u16, thr));
    keep[2 * w] = static_cast<uint16_t>(kept);
    keep[2 * w + 1] = static_cast<uint16_t>(kept >> 16);
  }
#elif defined(__AVX2__)
  // two halves of 8 lanes (t = 0..7, 8..15), each as the AVX-512 path above
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  auto mulhilo = [](__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  };
  for (int e = 0; e < 8; ++e) keep[e] = 0;
  for (int half = 0; half < 2; ++half) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(G * 16 + half * 8)),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(i)), c2 = _mm256_set1_epi32(static_cast<int>(h));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(b));
    uint32_t k0 = static_cast<uint32_t>(d.seed), k1 = static_cast<uint32_t>(d.seed >> 32);
    for (int round = 0; round < kPhiloxRounds; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, &hi0, &lo0);
      mulhilo(c2, m1, &hi1, &lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c1 = lo1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    // kept iff u16 >= threshold, i.e. not (threshold > u16): signed compares are exact for 17-bit values
    const __m256i low = _mm256_set1_epi32(0xFFFF), thr = _mm256_set1_epi32(static_cast<int>(d.threshold));
    const __m256i words[4] = {c0, c1, c2, c3};
    for (int w = 0; w < 4; ++w) {
      const int lo_dropped =
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(thr, _mm256_and_si256(words[w], low))));
      const int hi_dropped =
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(thr, _mm256_srli_epi32(words[w], 16))));
      keep[2 * w] = static_cast<uint16_t>(keep[2 * w] | ((~lo_dropped & 0xFF) << (8 * half)));
      keep[2 * w + 1] = static_cast<uint16_t>(keep[2 * w + 1] | ((~hi_dropped & 0xFF) << (8 * half)));
    }
  }
#else
  for (int e = 0; e < 8; ++e) keep[e] = 0;
  for (int t = 0; t < 16; ++t) {
    const uint32_t ctr[4] = {static_cast<uint32_t>(G * 16 + t), static_cast<uint32_t>(i), static_cast<uint32_t>(h),
                             static_cast<uint32_t>(b)};
    uint32_t out[4];
    philox4x32(ctr, static_cast<uint32_t>(d.seed), static_cast<uint32_t>(d.seed >> 32), out);
    for (int e = 0; e < 8; ++e) {
      const uint32_t u = e % 2 == 0 ? (out[e / 2] & 0xFFFFu) : (out[e / 2] >> 16);
      keep[e] = static_cast<uint16_t>(keep[e] | (u >= d.threshold ? 1u : 0u) << t);
    }
  }
#endif
}

// The keep masks of one row's current 128-key group, kept between the key tiles of a row that share it.
struct DropoutGroupCache {
  int64_t group = -1;
  uint16_t keep[8] = {};
};

// The keep masks of the 128-key group holding key j of row (b, h, i), generated into `cache` unless it holds
// that group already.
inline const uint16_t* dropout_group(const DropoutParams& d, int64_t b, int64_t h, int64_t i, int64_t j,
                                     DropoutGroupCache& cache) {
  if (j / 128 != cache.group) {
    cache.group = j / 128;
    dropout_keep_group(d, b, h, i, cache.group, cache.keep);
  }
  return cache.keep;
}

// The keep bits of keys [o, o + W) of a group's masks (o % 128, a multiple of W), lane t in bit t, as
// Vec::masked_mul takes them (it reads the low W bits).
inline uint32_t dropout_lane_bits(const uint16_t keep[8], int64_t o) {
  return static_cast<uint32_t>(keep[o / 16]) >> (o % 16);
}

// Whether key o of a group (o % 128) survives, by its masks.
inline bool dropout_kept(const uint16_t keep[8], int64_t o) { return (keep[o / 16] >> (o % 16) & 1u) != 0; }

// Dropout of one row segment: s[jj] for keys j0 + jj, jj < n, becomes src[jj]·scale where the weight survives
// and exactly 0 where it is dropped (a select, not a product: 0 even for a non-finite value); src = s (in
// place) unless given (the backward's P̃ written beside P without a copy first). With s2 (the backward's
// dP̃), s2 gets the same mask in place. With `cache` (the row's, reset to group −1 when the row changes), a
// group generated for one key tile is reused by the next.
inline void dropout_row_segment(const DropoutParams& d, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n,
                                float* s, float* s2 = nullptr, DropoutGroupCache* cache = nullptr,
                                const float* src = nullptr) {
  DropoutGroupCache local;
  DropoutGroupCache& c = cache ? *cache : local;
  if (src == nullptr) src = s;
  int64_t jj = 0;
  while (jj < n) {
    const int64_t j = j0 + jj;
    const uint16_t* keep = dropout_group(d, b, h, i, j, c);
    if (j % simd::Vec::W == 0 && jj + simd::Vec::W <= n) {  // a whole vector of keys: one masked product
      const uint32_t bits = dropout_lane_bits(keep, j % 128);
      const simd::Vec scale = simd::Vec::set1(d.scale);
      simd::Vec::masked_mul(bits, simd::Vec::load(src + jj), scale).store(s + jj);
      if (s2) simd::Vec::masked_mul(bits, simd::Vec::load(s2 + jj), scale).store(s2 + jj);
      jj += simd::Vec::W;
      continue;
    }
    const bool kept = dropout_kept(keep, j % 128);
    s[jj] = kept ? src[jj] * d.scale : 0.0f;
    if (s2) s2[jj] = kept ? s2[jj] * d.scale : 0.0f;
    ++jj;
  }
}

}  // namespace ATTN_SIMD_NS
}  // namespace attn::detail
