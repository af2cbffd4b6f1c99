// A small SIMD vocabulary for the kernels, one definition per instruction set. The file that includes
// it is compiled once per target (-mavx512f..., -mavx2 -mfma, or nothing) and `Vec` is the widest
// vector that target has; `kTargetName` names it. Kernels are written once against this vocabulary.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// The functions here differ by instruction set under the same names; each target's copies live in their
// own inline namespace (ATTN_SIMD_NS), so the linker never merges an AVX-512 copy into an AVX2 caller (or a
// scalar copy into a vector kernel). Every header whose inline functions are compiled per target uses it.
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define ATTN_SIMD_NS simd_avx512bf16
#elif defined(__AVX512F__)
#define ATTN_SIMD_NS simd_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define ATTN_SIMD_NS simd_avx2
#else
#define ATTN_SIMD_NS simd_generic
#endif

namespace attn::simd {
inline namespace ATTN_SIMD_NS {

#if defined(__AVX512F__)
inline constexpr const char* kTargetName = "avx512";
struct Vec {
  static constexpr int W = 16;
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a·b + c
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  float reduce_max() const { return _mm512_reduce_max_ps(v); }
  float reduce_add() const { return _mm512_reduce_add_ps(v); }
  // 2^n for integral-valued n in [-126, 127]
  static Vec pow2i(Vec n) {
    __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(e, 23))};
  }
  static Vec round(Vec x) { return {_mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  // y · 2^⌊x⌋ for any x (vscalefps floors its exponent operand), without range limits: 0 below the
  // denormals, inf above the floats
  static Vec scale_pow2_floor(Vec y, Vec x) { return {_mm512_scalef_ps(y.v, x.v)}; }
  // x − ⌊x⌋ in [0, 1), exact (vreduceps, AVX512DQ): one instruction for floor and subtraction
  static Vec fraction_floor(Vec x) { return {_mm512_reduce_ps(x.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)}; }
  // x < t ? 0 : y
  static Vec zero_below(Vec x, float t, Vec y) {
    __mmask16 m = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(t), _CMP_LT_OQ);
    return {_mm512_mask_blend_ps(m, y.v, _mm512_setzero_ps())};
  }
  static bool any_zero(Vec x) { return _mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_EQ_OQ) != 0; }
  static bool any_above(Vec x, float t) { return _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(t), _CMP_GT_OQ) != 0; }
  // r[i] = row i of a W × W block in, column i out (lanes and vectors swapped): 64 shuffles
  static void transpose(Vec r[W]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
    }
    for (int i = 0; i < 4; ++i) {
      const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
      const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
      r[4 * i].v = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[4 * i + 1].v = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      r[4 * i + 2].v = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
      r[4 * i + 3].v = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 4; ++j) {
        t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j].v, r[8 * i + 4 + j].v, 0x88);
        t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j].v, r[8 * i + 4 + j].v, 0xdd);
      }
    for (int j = 0; j < 8; ++j) {
      r[j].v = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
      r[8 + j].v = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    }
  }
  // lane l: bit l of `bits` set ? x·y : 0
  static Vec masked_mul(uint32_t bits, Vec x, Vec y) {
    return {_mm512_maskz_mul_ps(static_cast<__mmask16>(bits), x.v, y.v)};
  }
  // x == 0 ? 0 : y
  static Vec zero_where_zero(Vec x, Vec y) {
    __mmask16 m = _mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_EQ_OQ);
    return {_mm512_mask_blend_ps(m, y.v, _mm512_setzero_ps())};
  }
  // lane l: l < count ? x : fill (count in [0, W])
  static Vec first_lanes(Vec x, int count, Vec fill) {
    return {_mm512_mask_mov_ps(fill.v, static_cast<__mmask16>((1u << count) - 1u), x.v)};
  }
  // lane l: bytes[l] != 0 ? y : x (reads W bytes)
  static Vec select_nonzero_bytes(const uint8_t* bytes, Vec x, Vec y) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
    return {_mm512_mask_mov_ps(x.v, _mm_test_epi8_mask(b, b), y.v)};
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr const char* kTargetName = "avx2";
struct Vec {
  static constexpr int W = 8;
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
  float reduce_max() const {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  float reduce_add() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static Vec pow2i(Vec n) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
  }
  static Vec round(Vec x) { return {_mm256_round_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static Vec zero_below(Vec x, float t, Vec y) {
    __m256 m = _mm256_cmp_ps(x.v, _mm256_set1_ps(t), _CMP_LT_OQ);
    return {_mm256_andnot_ps(m, y.v)};
  }
  static bool any_zero(Vec x) { return _mm256_movemask_ps(_mm256_cmp_ps(x.v, _mm256_setzero_ps(), _CMP_EQ_OQ)) != 0; }
  static bool any_above(Vec x, float t) {
    return _mm256_movemask_ps(_mm256_cmp_ps(x.v, _mm256_set1_ps(t), _CMP_GT_OQ)) != 0;
  }
  // r[i] = row i of a W × W block in, column i out: 24 shuffles
  static void transpose(Vec r[W]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
    }
    for (int i = 0; i < 2; ++i) {
      u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
      r[j].v = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
      r[4 + j].v = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
  }
  static Vec masked_mul(uint32_t bits, Vec x, Vec y) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set =
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit), lane_bit);
    return {_mm256_and_ps(_mm256_castsi256_ps(set), _mm256_mul_ps(x.v, y.v))};
  }
  static Vec zero_where_zero(Vec x, Vec y) {
    __m256 m = _mm256_cmp_ps(x.v, _mm256_setzero_ps(), _CMP_EQ_OQ);
    return {_mm256_andnot_ps(m, y.v)};
  }
  static Vec first_lanes(Vec x, int count, Vec fill) {
    const __m256i first = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return {_mm256_blendv_ps(fill.v, x.v, _mm256_castsi256_ps(first))};
  }
  static Vec select_nonzero_bytes(const uint8_t* bytes, Vec x, Vec y) {
    const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
    const __m256i zero = _mm256_cmpeq_epi32(wide, _mm256_setzero_si256());
    return {_mm256_blendv_ps(y.v, x.v, _mm256_castsi256_ps(zero))};
  }
};
#else
inline constexpr const char* kTargetName = "scalar";
// Portable fallback: eight lanes in a plain array; the compiler vectorises what it can.
struct Vec {
  static constexpr int W = 8;
  float v[W];
  static Vec zero() { return set1(0.0f); }
  static Vec set1(float x) {
    Vec r;
    for (float& e : r.v) e = x;
    return r;
  }
  static Vec load(const float* p) {
    Vec r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  void store(float* p) const { std::memcpy(p, v, sizeof v); }
#define ATTN_LANEWISE(expr)                    \
  Vec r;                                       \
  for (int i = 0; i < W; ++i) r.v[i] = (expr); \
  return r
  friend Vec operator+(Vec a, Vec b) { ATTN_LANEWISE(a.v[i] + b.v[i]); }
  friend Vec operator-(Vec a, Vec b) { ATTN_LANEWISE(a.v[i] - b.v[i]); }
  friend Vec operator*(Vec a, Vec b) { ATTN_LANEWISE(a.v[i] * b.v[i]); }
  static Vec fmadd(Vec a, Vec b, Vec c) { ATTN_LANEWISE(std::fma(a.v[i], b.v[i], c.v[i])); }
  static Vec max(Vec a, Vec b) { ATTN_LANEWISE(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }
  static Vec min(Vec a, Vec b) { ATTN_LANEWISE(a.v[i] < b.v[i] ? a.v[i] : b.v[i]); }
  static Vec pow2i(Vec n) {
    Vec r;
    for (int i = 0; i < W; ++i) {
      const int32_t e = n.v[i] == n.v[i] ? static_cast<int32_t>(n.v[i]) : 0;  // NaN: any finite scale will do
      const uint32_t bits = static_cast<uint32_t>(e + 127) << 23;
      std::memcpy(&r.v[i], &bits, 4);
    }
    return r;
  }
  static Vec round(Vec x) { ATTN_LANEWISE(std::nearbyint(x.v[i])); }
  static Vec zero_below(Vec x, float t, Vec y) { ATTN_LANEWISE(x.v[i] < t ? 0.0f : y.v[i]); }
  static Vec zero_where_zero(Vec x, Vec y) { ATTN_LANEWISE(x.v[i] == 0.0f ? 0.0f : y.v[i]); }
  static Vec first_lanes(Vec x, int count, Vec fill) { ATTN_LANEWISE(i < count ? x.v[i] : fill.v[i]); }
  static Vec select_nonzero_bytes(const uint8_t* bytes, Vec x, Vec y) {
    ATTN_LANEWISE(bytes[i] != 0 ? y.v[i] : x.v[i]);
  }
  static Vec masked_mul(uint32_t bits, Vec x, Vec y) { ATTN_LANEWISE((bits >> i & 1u) ? x.v[i] * y.v[i] : 0.0f); }
  static bool any_zero(Vec x) {
    bool z = false;
    for (float e : x.v) z |= e == 0.0f;
    return z;
  }
  static bool any_above(Vec x, float t) {  // a lane > t (NaN lanes: no)
    bool a = false;
    for (float e : x.v) a |= e > t;
    return a;
  }
  static void transpose(Vec r[W]) {
    for (int i = 0; i < W; ++i)
      for (int j = i + 1; j < W; ++j) std::swap(r[i].v[j], r[j].v[i]);
  }
#undef ATTN_LANEWISE
  float reduce_max() const {
    float m = v[0];
    for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
  float reduce_add() const {
    float s = 0.0f;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }
};
#endif

// exp(x) for float lanes: Cody–Waite range reduction x = n·ln2 + r, |r| <= ln2/2, then a degree-6
// polynomial for e^r (Cephes' coefficients) and 2^n through the exponent bits. Relative error below
// 2e-7 wherever the result is a normal float (tested against std::exp in double over [-87, 88]);
// x < -87.3 (including −inf) gives exactly 0, so masked scores give weights that are exactly 0; a NaN
// gives NaN (the non-finite rule of attn/attention.h).
inline Vec exp(Vec x) {
  // clamp to [-87.3, 88.37]: keeps 2^n a normal float. max/min return their second operand when either
  // is NaN (x86's rule, kept by the portable Vec), so x goes second: a NaN passes through the clamp.
  const Vec xm = Vec::min(Vec::set1(88.3762626647949f), Vec::max(Vec::set1(-87.3f), x));
  const Vec n = Vec::round(xm * Vec::set1(1.44269504088896341f));
  Vec r = Vec::fmadd(n, Vec::set1(-0.693359375f), xm);
  r = Vec::fmadd(n, Vec::set1(2.12194440e-4f), r);
  Vec y = Vec::set1(1.9875691500e-4f);
  y = Vec::fmadd(y, r, Vec::set1(1.3981999507e-3f));
  y = Vec::fmadd(y, r, Vec::set1(8.3334519073e-3f));
  y = Vec::fmadd(y, r, Vec::set1(4.1665795894e-2f));
  y = Vec::fmadd(y, r, Vec::set1(1.6666665459e-1f));
  y = Vec::fmadd(y, r, Vec::set1(5.0000001201e-1f));
  y = Vec::fmadd(y * r, r, r + Vec::set1(1.0f));  // 1 + r + r²·P(r)
  return Vec::zero_below(x, -87.3f, y * Vec::pow2i(n));
}

// 1 + c[0]·r + c[1]·r² + … + c[4]·r⁵ by Horner's rule: the two degree-5 fits of 2^r below.
inline Vec poly5_one(Vec r, const float (&c)[5]) {
  Vec y = Vec::fmadd(Vec::set1(c[4]), r, Vec::set1(c[3]));
  for (int k = 2; k >= 0; --k) y = Vec::fmadd(y, r, Vec::set1(c[k]));
  return Vec::fmadd(y, r, Vec::set1(1.0f));
}

// 2^r for r in [−½, ½]: the degree-5 minimax polynomial exp2 uses (constant term exactly 1).
inline Vec exp2_fraction(Vec r) {
  static constexpr float c[5] = {0.6931470036506653f, 0.24022242426872253f, 0.05550733581185341f, 0.009671512991189957f,
                                 0.001326472731307149f};
  return poly5_one(r, c);
}

#if defined(__AVX512F__)
// 2^r for r in [0, 1): a degree-5 fit of least maximal relative error (constant term exactly 1; 1.4e-7
// relative error evaluated in float, against 1.7e-7 for exp2_fraction's), for the AVX-512 exponentials,
// which split x = ⌊x⌋ + r in one instruction (vreduceps) and take 2^⌊x⌋ from vscalefps, which floors its
// exponent itself: one instruction less than round, subtract and scale.
inline Vec exp2_unit(Vec r) {
  static constexpr float c[5] = {0.6931512951850891f, 0.24016444385051727f, 0.05579991266131401f, 0.009017028845846653f,
                                 0.001867130515165627f};
  return poly5_one(r, c);
}
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// 2^x for x in [−127, 127] or NaN, AVX2: one add rounds x to the nearest integer n in the low mantissa bits
// of t = x + (1.5·2^23 + 127) (t's ulp is 1), which then hold n + 127, 2^n's biased exponent: n = t − that
// constant, 2^n = t's bits shifted left by 23. Against round, convert, add and shift, and the compare and mask
// that zeroed x < −126: three instructions fewer of the softmax's ~15. x = −127 gives exactly 0 (biased
// exponent 0, mantissa 0): hidden keys (−inf, clamped) weigh exactly 0.
inline Vec exp2_clamped(Vec xm) {
  const __m256 shift = _mm256_set1_ps(12582912.0f + 127.0f);
  const __m256 t = _mm256_add_ps(xm.v, shift);
  const Vec n{_mm256_sub_ps(t, shift)};
  const Vec pow2n{_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23))};
  return exp2_fraction(xm - n) * pow2n;
}
#endif

// 2^x for float lanes, the softmax's exponential once log2(e) is folded into the scores' scale: x = n + r,
// n = round(x), |r| <= 1/2, 2^r by a degree-5 polynomial (relative error 1.6e-7, a minimax fit with the
// constant term exactly 1), 2^n through the exponent; on AVX-512 n = ⌊x⌋, r in [0, 1) (exp2_unit). About half
// the instructions of exp above: no Cody–Waite reduction, one polynomial term less, and on AVX-512 one
// vreduceps for r and one scalef for 2^n with its range.
// x <= −150 (AVX-512; below −126.5 on AVX2, below −126 elsewhere; −inf included) gives exactly 0, so hidden keys
// weigh exactly 0; x > 128 gives +inf (AVX-512) or 2^127's neighbourhood clamped (others); a NaN gives NaN.
inline Vec exp2(Vec x) {
#if defined(__AVX512F__)
  // scalef takes any exponent: below −149 the product rounds to 0 (2^−150 · 1 is a tie to even), so only the
  // polynomial's argument needs a finite x (x = −inf would give r = NaN)
  const Vec xm = Vec::min(Vec::set1(129.0f), Vec::max(Vec::set1(-150.0f), x));  // a NaN x passes through
  return Vec::scale_pow2_floor(exp2_unit(Vec::fraction_floor(xm)), xm);
#elif defined(__AVX2__) && defined(__FMA__)
  return exp2_clamped(Vec::min(Vec::set1(127.0f), Vec::max(Vec::set1(-127.0f), x)));  // a NaN x passes through
#else
  // 2^n through the exponent bits needs n in [−126, 127]; below −126 the result is set to 0
  const Vec xm = Vec::min(Vec::set1(127.0f), Vec::max(Vec::set1(-126.0f), x));
  const Vec n = Vec::round(xm);
  const Vec y = exp2_fraction(xm - n);
  return Vec::zero_below(x, -126.0f, y * Vec::pow2i(n));
#endif
}

// exp2 for finite x <= 127 (a softmax tile without masked keys, where x = s − m <= 8: m is the row's reference
// max, lazily rescaled): on AVX-512 without the clamps, since scalef takes any exponent (x far below −149 gives
// 0); on AVX2 without the upper one. On
// AVX-512 an infinite x gives NaN here instead of 0 or inf, which the fused kernel's check of each row's state
// catches (a row with non-finite scores is recomputed exactly); on AVX2 −inf gives exactly 0, as exp2 does.
// Elsewhere it is exp2.
inline Vec exp2_finite(Vec x) {
#if defined(__AVX512F__)
  return Vec::scale_pow2_floor(exp2_unit(Vec::fraction_floor(x)), x);
#elif defined(__AVX2__) && defined(__FMA__)
  return exp2_clamped(Vec::max(Vec::set1(-127.0f), x));
#else
  return exp2(x);
#endif
}

}  // namespace ATTN_SIMD_NS
}  // namespace attn::simd
