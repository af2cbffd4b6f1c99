// attn/half.h: the 16-bit floating-point formats, one element at a time.
//
//   bfloat16  1 sign, 8 exponent, 7 mantissa bits: float32's range, 8 significant bits (torch.bfloat16)
//   float16   1 sign, 5 exponent, 10 mantissa bits: IEEE binary16, up to 65504 (torch.float16, NumPy '<f2')
//
// Both are stored as uint16_t. Narrowing rounds to nearest, ties to even (as PyTorch's .to() and NumPy's
// astype); a NaN stays a NaN (quiet, with its sign and its payload's top bits); float16 overflows to ±inf
// from 65520 up and keeps subnormals. Widening is exact. The kernels convert whole vectors on their own
// (src/cpu/attention_lowp_kernels.cc) with the same results, with one exception: the bfloat16 kernels that run on
// AVX512_BF16 (vdpbf16ps, vcvtneps2bf16) read and write bfloat16 subnormals (|x| < 2^-126 ≈ 1.2e-38) as zero, as the
// instructions do (Intel's and AMD's, by their definition); ATTN_BF16_DOT=0 keeps them, at the widened kernels' speed.
#pragma once

#include <cstdint>
#include <cstring>

namespace attn {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) { return float_from_bits(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN: quiet it
  u += 0x7fffu + ((u >> 16) & 1u);                                                         // ties to even
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return float_from_bits(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp != 0) return float_from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13));
  // zero or subnormal: mant · 2^-24, exact in float
  const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

// ryg's float_to_half_fast3_rtne (public domain), with the NaN payload kept.
inline uint16_t float_to_f16(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t h;
  if (u >= (127u + 16u) << 23) {  // |f| >= 65536, inf or NaN
    h = u > 0x7f800000u ? 0x7e00u | ((u >> 13) & 0x3ffu) : 0x7c00u;
  } else if (u < (127u - 14u) << 23) {  // the result is subnormal or zero: let the FPU round
    const float magic = float_from_bits(((127u - 15u) + (23u - 10u) + 1u) << 23);  // 0.5
    h = float_bits(float_from_bits(u) + magic) - float_bits(magic);
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += ((15u - 127u) << 23) + 0xfffu + mant_odd;  // rebias (wraps modulo 2^32) and round
    h = u >> 13;                                    // a carry out of 65504 lands on 0x7c00: inf
  }
  return static_cast<uint16_t>(h | sign);
}

}  // namespace attn
