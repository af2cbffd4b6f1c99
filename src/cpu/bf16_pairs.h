// Internal: vdpbf16ps micro-kernels and the bfloat16 pairs layout they read, for the 16-bit forward
// (attention_lowp_kernels.cc) and the bfloat16 backward (attention_lowp_backward_kernels.cc). Included by kernel
// files compiled with ATTN_TARGET; everything is there only in the AVX512_BF16 build (ATTN_LOWP_DOT).
//
// vdpbf16ps multiplies 16 lanes of bfloat16 pairs: acc[l] += a[2l]·b[2l] + a[2l+1]·b[2l+1], products exact in float32.
// So a product C = A·B runs over pairs of its reduction index: A's element pairs are uint32 words (broadcast one at a
// time) and B's pairs are interleaved along each column: B packed [pairs, columns, 2].
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "attn/half.h"
#include "cpu/tile_kernels.h"
#include "cpu/tile_traits.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512bf16|avx512|avx2|scalar"
#endif

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define ATTN_LOWP_DOT 1
#else
#define ATTN_LOWP_DOT 0
#endif

namespace attn::detail::ATTN_TARGET {

#if ATTN_LOWP_DOT
// c[r·c_rs + col] = mul · Σ_d a(r, d)·bt(d, col) for R rows, `cols` columns (a multiple of C·16): a holds each
// row's bfloat16 pairs (d, d+1) as uint32 (a_rs pairs a row), bt the pairs [pairs, bt_cols, 2].
template <int R, int C>
inline void dot_scores_tile(const uint32_t* a, int64_t a_rs, const uint16_t* bt, int64_t bt_cols, int64_t pairs,
                            int64_t cols, float mul, float* c, int64_t c_rs) {
  for (int64_t c0 = 0; c0 < cols; c0 += C * 16) {
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < C; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int64_t d2 = 0; d2 < pairs; ++d2) {
      __m512i b[C];
      for (int v = 0; v < C; ++v) b[v] = _mm512_loadu_si512(bt + (d2 * bt_cols + c0 + v * 16) * 2);
      for (int r = 0; r < R; ++r) {
        const __m512i ab = _mm512_set1_epi32(static_cast<int>(a[r * a_rs + d2]));
        for (int v = 0; v < C; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)ab, (__m512bh)b[v]);
      }
    }
    const __m512 m = _mm512_set1_ps(mul);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < C; ++v) _mm512_storeu_ps(c + r * c_rs + c0 + v * 16, _mm512_mul_ps(acc[r][v], m));
  }
}

// S[rows, cols] = mul · A · Bᵀ in the pairs layout (bt: [pairs, bt_cols, 2]); cols a multiple of kScoreVecs·16.
inline void dot_scores(const uint32_t* a, int64_t a_rs, const uint16_t* bt, int64_t bt_cols, int64_t pairs,
                       int64_t rows, int64_t cols, float mul, float* c, int64_t c_rs) {
  constexpr int R = Tiles::kScoreRows, C = Tiles::kScoreVecs;
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    dot_scores_tile<R, C>(a + r * a_rs, a_rs, bt, bt_cols, pairs, cols, mul, c + r * c_rs, c_rs);
  if (r < rows)
    with_const<R>(static_cast<int>(rows - r), [&](auto RR) {
      dot_scores_tile<decltype(RR)::value, C>(a + r * a_rs, a_rs, bt, bt_cols, pairs, cols, mul, c + r * c_rs, c_rs);
    });
}

// acc[r, v·16 ...] += Σ_j2 A(r, pair j2) · B(pair j2, v·16 ...): A's pairs as uint32 at A[r·a_rs + j2·a_js], B as
// [pairs, vecs·16, 2] (vb_rs = 2·vecs·16 values a pair row).
template <int R, int C>
inline void dot_pv_tile(const uint32_t* A, int64_t a_rs, int64_t a_js, int64_t pairs, const uint16_t* vb, int64_t vb_rs,
                        float* acc, int64_t acc_rs) {
  __m512 a[R][C];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) a[r][v] = _mm512_loadu_ps(acc + r * acc_rs + v * 16);
  for (int64_t j2 = 0; j2 < pairs; ++j2) {
    __m512i b[C];
    for (int v = 0; v < C; ++v) b[v] = _mm512_loadu_si512(vb + j2 * vb_rs + v * 32);
    for (int r = 0; r < R; ++r) {
      const __m512i ab = _mm512_set1_epi32(static_cast<int>(A[r * a_rs + j2 * a_js]));
      for (int v = 0; v < C; ++v) a[r][v] = _mm512_dpbf16_ps(a[r][v], (__m512bh)ab, (__m512bh)b[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) _mm512_storeu_ps(acc + r * acc_rs + v * 16, a[r][v]);
}

// acc[rows, vecs·16] += A[rows, 2·pairs] · B in register tiles of kRows × kVecs (see dot_pv_tile; the forward's P·V:
// Tiles::kBf16PvRows × kBf16PvVecs, the backward's updates: kUpdateRows × kUpdateVecs).
template <int kRows, int kVecs>
inline void dot_pv(const uint32_t* A, int64_t a_rs, int64_t a_js, int64_t rows, int64_t pairs, const uint16_t* vb,
                   int64_t vecs, float* acc, int64_t acc_rs) {
  for_each_register_tile<kRows, kVecs>(rows, vecs, [&](auto RR, auto CC, int64_t r, int64_t c) {
    dot_pv_tile<decltype(RR)::value, decltype(CC)::value>(A + r * a_rs, a_rs, a_js, pairs, vb + c * 32, vecs * 32,
                                                          acc + r * acc_rs + c * 16, acc_rs);
  });
}

// out[0, 2·width) = the pairs (lo[c], hi[c]) of two bfloat16 rows for c < n, zero from n to width (hi null: zero);
// width a multiple of 16 at least n. The B operand's packing: two rows of the reduction index per pair row.
inline void interleave_rows(const uint16_t* lo, const uint16_t* hi, int64_t n, int64_t width, uint16_t* out) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512i first = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + c)));
    const __m512i second = hi ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi + c)))
                              : _mm512_setzero_si512();
    _mm512_storeu_si512(out + 2 * c, _mm512_or_si512(first, _mm512_slli_epi32(second, 16)));
  }
  for (; c < width; ++c) {
    out[2 * c] = c < n ? lo[c] : uint16_t{0};
    out[2 * c + 1] = c < n && hi ? hi[c] : uint16_t{0};
  }
}

// 16 × 16 uint32: out[c · out_rs + r] = in[r · in_rs + c] (in_rs, out_rs in uint32), through Vec::transpose's register
// shuffles (which move the 32-bit lanes' bits as they are).
inline void transpose_16x16(const uint32_t* in, int64_t in_rs, uint32_t* out, int64_t out_rs) {
  static_assert(W == 16);
  Vec r[16];
  for (int i = 0; i < 16; ++i) r[i] = {_mm512_castsi512_ps(_mm512_loadu_si512(in + i * in_rs))};
  Vec::transpose(r);
  for (int c = 0; c < 16; ++c) _mm512_storeu_si512(out + c * out_rs, _mm512_castps_si512(r[c].v));
}

// Rows [0, n) of X (bfloat16, row stride x_rs, depth values each) transposed into the pairs [Dp/2, cols, 2]: the
// pair (d, d+1) of row j is the uint32 at (d/2)·cols + j; zero for d ≥ depth and j ≥ n (Dp: depth rounded up to
// even). The Bᵀ operand of dot_scores: Kᵀ for S = Q·Kᵀ, Vᵀ for dP = dO·Vᵀ. 16 rows × 16 pairs at a time
// (transpose_16x16, where each row's pairs are whole uint32: an even stride); the rest pair by pair. Zen 5, against
// pair by pair throughout: bfloat16 backward L 128 +11–14%, forward B·H 512, L 128 +8–10%, L 1024 +2%.
inline void pack_transposed_pairs(const uint16_t* x, int64_t x_rs, int64_t n, int64_t depth, int64_t Dp, int64_t cols,
                                  uint16_t* out) {
  const auto put = [&](int64_t j, int64_t d2) {
    const uint16_t* xj = x + j * x_rs;
    const uint32_t pair = xj[2 * d2] | (2 * d2 + 1 < depth ? static_cast<uint32_t>(xj[2 * d2 + 1]) << 16 : 0u);
    std::memcpy(out + (d2 * cols + j) * 2, &pair, 4);
  };
  // 16 × 16 blocks where the rows are whole pairs at 4-byte steps (x 4-byte aligned, x_rs even) and out's too
  const bool blocks =
      reinterpret_cast<uintptr_t>(x) % 4 == 0 && x_rs % 2 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0;
  const int64_t n16 = blocks ? n / 16 * 16 : 0, d16 = blocks ? depth / 2 / 16 * 16 : 0;
  for (int64_t j = 0; j < n16; j += 16)
    for (int64_t d2 = 0; d2 < d16; d2 += 16)
      transpose_16x16(reinterpret_cast<const uint32_t*>(x + j * x_rs + 2 * d2), x_rs / 2,
                      reinterpret_cast<uint32_t*>(out) + d2 * cols + j, cols);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d2 = j < n16 ? d16 : 0; d2 < Dp / 2; ++d2) put(j, d2);
  for (int64_t d2 = 0; d2 < Dp / 2; ++d2)  // the padding columns
    std::fill(out + (d2 * cols + n) * 2, out + (d2 * cols + cols) * 2, uint16_t{0});
}
#endif

}  // namespace attn::detail::ATTN_TARGET
