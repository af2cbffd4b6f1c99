// Internal: float32 ↔ bfloat16/float16 conversions of the 16-bit kernels (the forward, attention_lowp_kernels.cc; the
// bfloat16 backward's gradients, attention_lowp_backward_kernels.cc), vectorised for the target it is compiled for
// (ATTN_TARGET: AVX-512, AVX2 with F16C, or scalar), and the NaN/Inf test on 16-bit rows.
#pragma once

#include <cstdint>

#include "attn/half.h"
#include "cpu/attention_lowp.h"
#include "cpu/simd.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512bf16|avx512|avx2|scalar"
#endif

namespace attn::detail::ATTN_TARGET {

template <LowpType T>
inline float widen(uint16_t h) {
  if constexpr (T == LowpType::kBFloat16) return bf16_to_float(h);
  return f16_to_float(h);
}

template <LowpType T>
inline uint16_t narrow(float f) {
  if constexpr (T == LowpType::kBFloat16) return float_to_bf16(f);
  return float_to_f16(f);
}

// W values at p widened to float32.
template <LowpType T>
inline Vec load_wide(const uint16_t* p) {
#if defined(__AVX512F__)
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (T == LowpType::kBFloat16)
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  else
    return {_mm512_cvtph_ps(h)};
#elif defined(__AVX2__)
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (T == LowpType::kBFloat16)
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  else
    return {_mm256_cvtph_ps(h)};
#else
  float buf[W];
  for (int i = 0; i < W; ++i) buf[i] = widen<T>(p[i]);
  return Vec::load(buf);
#endif
}

// dst[0, n) = src[0, n) widened.
template <LowpType T>
inline void widen_row(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + W <= n; i += W) load_wide<T>(src + i).store(dst + i);
  for (; i < n; ++i) dst[i] = widen<T>(src[i]);
}

// dst[0, n) = round16(src[0, n) · mul), to nearest even, NaN kept (the same bits as attn/half.h).
template <LowpType T>
inline void narrow_row(const float* src, int64_t n, float mul, uint16_t* dst) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    // mul = 1 is not multiplied: under flush-to-zero a product would flush a subnormal that float_to_bf16 keeps
    const __m512 x =
        mul == 1.0f ? _mm512_loadu_ps(src + i) : _mm512_mul_ps(_mm512_loadu_ps(src + i), _mm512_set1_ps(mul));
    __m256i h;
    if constexpr (T == LowpType::kFloat16) {
      h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m512i u = _mm512_castps_si512(x);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
      h = _mm512_cvtepi32_epi16(r);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
  }
#elif defined(__AVX2__)
  if constexpr (T == LowpType::kFloat16)
    for (; i + 8 <= n; i += 8) {
      const __m256 x =
          mul == 1.0f ? _mm256_loadu_ps(src + i) : _mm256_mul_ps(_mm256_loadu_ps(src + i), _mm256_set1_ps(mul));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
  for (; i < n; ++i) dst[i] = narrow<T>(mul == 1.0f ? src[i] : src[i] * mul);
}

// Does any of the n × width 16-bit values (row stride rs) hold NaN or Inf (an all-ones exponent)?
template <LowpType T>
inline bool any_nonfinite(const uint16_t* x, int64_t rs, int64_t n, int64_t width) {
  constexpr uint16_t kExp = T == LowpType::kBFloat16 ? 0x7f80 : 0x7c00;
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = x + j * rs;
    int64_t d = 0;
#if defined(__AVX512BW__)
    const __m512i e = _mm512_set1_epi16(static_cast<short>(kExp));
    for (; d + 32 <= width; d += 32)
      if (_mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_loadu_si512(row + d), e), e)) return true;
#elif defined(__AVX2__)
    const __m256i e = _mm256_set1_epi16(static_cast<short>(kExp));
    for (; d + 16 <= width; d += 16)
      if (_mm256_movemask_epi8(_mm256_cmpeq_epi16(
              _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + d)), e), e)))
        return true;
#endif
    for (; d < width; ++d)
      if ((row[d] & kExp) == kExp) return true;
  }
  return false;
}

}  // namespace attn::detail::ATTN_TARGET
