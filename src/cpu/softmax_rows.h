// Internal: the row operations of the fused forward's online softmax (attention_fused_kernels.cc's softmax_tile),
// compiled once per instruction set: included by the kernel file, which defines ATTN_TARGET; Vec, W and the tile
// sizes are that target's. A row's scores are in base 2 (K carries scale·log2 e); its maxima and sums are
// returned lane by lane (W partial results) and reduced by the caller only when it needs a scalar.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cpu/dropout.h"
#include "cpu/simd.h"
#include "cpu/tile_kernels.h"
#include "cpu/tile_traits.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512|avx2|scalar"
#endif

namespace attn::detail::ATTN_TARGET {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// x[0] ∘ x[1] ∘ … ∘ x[N − 1] as a balanced tree ((x0 ∘ x1) ∘ (x2 ∘ x3)) ∘ …, unrolled at compile time so
// that the operands stay in registers (a `step *= 2` loop over an array compiled to a loop through the
// stack: a third of the softmax's time at D = 64).
template <int N, class Op>
[[gnu::always_inline]] inline Vec tree_reduce(const Vec* x, Op op) {
  if constexpr (N == 1) {
    return x[0];
  } else {
    return op(tree_reduce<N / 2>(x, op), tree_reduce<N - N / 2>(x + N / 2, op));
  }
}

// The first W lanes at s[j] of a row of n floats (lanes from n on: 0), without reading past n.
[[gnu::always_inline]] inline Vec load_lanes(const float* s, int64_t j, int64_t n) {
  if (j + W <= n) return Vec::load(s + j);
  float buf[W] = {};
  std::copy(s + j, s + n, buf);
  return Vec::load(buf);
}

// Lane by lane, the largest of s[0, n) (lane i: of s[i], s[i + W], …; −inf where none), left unreduced: the
// lazy rescaling of softmax_tile reduces it only when the row's max must move. (NaN lanes may be skipped: a
// NaN row is caught by row_state_finite.)
[[gnu::always_inline]] inline Vec row_max_lanes(const float* s, int64_t n) {
  constexpr int kVecs = Tiles::kBk / W;
  if (n == Tiles::kBk) {  // a whole tile: constant trip counts, a tree of maxima
    Vec x[kVecs];
    for (int v = 0; v < kVecs; ++v) x[v] = Vec::load(s + v * W);
    return tree_reduce<kVecs>(x, [](Vec a, Vec b) { return Vec::max(a, b); });
  }
  int64_t j = 0;
  Vec mx = Vec::set1(kNegInf);
  for (; j + W <= n; j += W) mx = Vec::max(mx, Vec::load(s + j));
  if (j < n) mx = Vec::max(mx, Vec::first_lanes(load_lanes(s, j, n), static_cast<int>(n - j), Vec::set1(kNegInf)));
  return mx;
}

// Dropout applied as P is written (exp2_row's kDropout): the keep masks of the row's 128-key group, the
// tile's first key's place in it (a multiple of W) and 1/(1 − p).
struct RowDropout {
  const uint16_t* keep = nullptr;
  int64_t offset = 0;
  float scale = 1.0f;
  // weights e of the tile's keys [j, j + W) as P holds them: dropped (0) or scaled
  Vec apply(Vec e, int64_t j) const {
    return Vec::masked_mul(dropout_lane_bits(keep, offset + j), e, Vec::set1(scale));
  }
};

// s[0, n) = 2^(s − m) in place; returns their sum lane by lane (see row_max_lanes). kFinite: every s is finite (no
// masked key; see simd::exp2_finite for what an infinite input does then). kDropout: each weight is stored dropped (0)
// or scaled by the same masked product as dropout_row_segment's, while the sum counts every weight (one pass over the
// row where a separate dropout pass reloaded it: the forward's dropout cost 13.7% → 5.6%, L 2048).
template <bool kFinite, bool kDropout>
[[gnu::always_inline]] inline Vec exp2_row(float* s, int64_t n, float m, const RowDropout& drop) {
  const auto exp2 = [](Vec x) { return kFinite ? simd::exp2_finite(x) : simd::exp2(x); };
  const auto stored = [&](Vec e, int64_t j) { return kDropout ? drop.apply(e, j) : e; };  // P at keys [j, j + W)
  constexpr int kVecs = Tiles::kBk / W;
  const Vec mv = Vec::set1(m);
  if (n == Tiles::kBk) {         // a whole tile: kVecs independent exponentials
    if constexpr (kVecs <= 8) {  // all in registers (AVX-512: 8 of 32), a tree of sums
      Vec e[kVecs];
      for (int v = 0; v < kVecs; ++v) {
        e[v] = exp2(Vec::load(s + v * W) - mv);
        stored(e[v], v * W).store(s + v * W);
      }
      return tree_reduce<kVecs>(e, [](Vec a, Vec b) { return a + b; });
    } else {  // AVX2's 16 do not fit its 16 registers (they went through the stack): four running sums
      Vec sum[4] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
      for (int v = 0; v < kVecs; v += 4)
        for (int u = 0; u < 4; ++u) {
          const Vec e = exp2(Vec::load(s + (v + u) * W) - mv);
          stored(e, (v + u) * W).store(s + (v + u) * W);
          sum[u] = sum[u] + e;
        }
      return tree_reduce<4>(sum, [](Vec a, Vec b) { return a + b; });
    }
  }
  Vec sum = Vec::zero();
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const Vec e = exp2(Vec::load(s + j) - mv);
    stored(e, j).store(s + j);
    sum = sum + e;
  }
  if (j < n) {  // the last, partial vector: its lanes from n on count for nothing
    const int count = static_cast<int>(n - j);
    const Vec e = Vec::first_lanes(exp2(Vec::first_lanes(load_lanes(s, j, n), count, Vec::set1(kNegInf)) - mv), count,
                                   Vec::zero());
    float kept[W];
    stored(e, j).store(kept);
    std::copy(kept, kept + count, s + j);
    sum = sum + e;
  }
  return sum;
}

// row_max_lanes of the first vis of a row's n scores (a diagonal row whose visible keys are a prefix, see
// softmax_tile): whole vectors, then the partial one with its lanes from vis on selected away.
[[gnu::always_inline]] inline Vec row_max_prefix_lanes(const float* s, int64_t vis, int64_t n) {
  const int64_t whole = vis / W * W;
  Vec m = whole > 0 ? row_max_lanes(s, whole) : Vec::set1(kNegInf);
  if (vis > whole)
    m = Vec::max(m, Vec::first_lanes(load_lanes(s, whole, n), static_cast<int>(vis - whole), Vec::set1(kNegInf)));
  return m;
}

// exp2_row for a row whose visible keys are its first vis of n (n ≤ vis rounded up to a vector): the scores
// from vis on, computed or not, finite or not, weigh exactly 0 (selected after the exponential), so no
// masking pass wrote −inf there first; the visible scores go through exp2_finite as in exp2_row<true> (finite
// unless the inputs were not: see simd::exp2_finite for what an infinite score gives, and run_tiles for the row
// redone exactly when its state comes out non-finite).
template <bool kDropout>
[[gnu::always_inline]] inline Vec exp2_prefix_row(float* s, int64_t vis, int64_t n, float m, const RowDropout& drop) {
  const int64_t whole = vis / W * W;
  Vec sum = whole > 0 ? exp2_row<true, kDropout>(s, whole, m, drop) : Vec::zero();
  if (vis > whole) {
    const Vec e = Vec::first_lanes(simd::exp2_finite(load_lanes(s, whole, n) - Vec::set1(m)),
                                   static_cast<int>(vis - whole), Vec::zero());
    sum = sum + e;
    const Vec p = kDropout ? drop.apply(e, whole) : e;
    if (n - whole >= W) {  // the row holds the whole vector (all but a last tile's odd end): no copy through a buffer
      p.store(s + whole);
    } else {
      float buf[W];
      p.store(buf);
      std::copy(buf, buf + (n - whole), s + whole);
    }
  }
  return sum;
}

}  // namespace attn::detail::ATTN_TARGET
