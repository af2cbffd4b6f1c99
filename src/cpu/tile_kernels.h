// The two register-tiled micro-kernels every attention kernel is built from, compiled once per
// instruction set (included by the kernel files, which define ATTN_TARGET; Vec and the tile sizes are that
// target's):
//   gemm_abt_panels  C = A · Bᵀ with Bᵀ packed in panels (pack_panels): the scores S = Q·Kᵀ (forward,
//                 backward, the float16 path) and dP = dO·Vᵀ
//   rank_update   Acc += A · B with A read through any strides: O += P·V, dV += Pᵀ·dO, dK += dSᵀ·Q,
//                 dQ += dS·K (a transposed A costs nothing: its elements are broadcast one at a time)
// rank_update_nonzero sums the same terms in the same order but skips the zero elements of A, so a NaN or
// Inf in a row of B that a zero weight multiplies never reaches Acc (the non-finite rule of attn/attention.h);
// where everything is finite its results are bitwise those of rank_update.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "cpu/simd.h"
#include "cpu/tile_traits.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512|avx2|scalar"
#endif

namespace attn::detail::ATTN_TARGET {

using simd::Vec;
inline constexpr int W = Vec::W;
static_assert(Tiles::kLanes == W, "this target's tile traits describe another vector width");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Scores are kept in base 2 (simd::exp2 is cheaper than exp): the factor scale·log2(e) (ScoreScaling below).
inline constexpr float kLog2e = 1.44269504088896341f;

// Calls f(std::integral_constant<int, n>) for a runtime n in [1, N].
template <int N, class F>
inline void with_const(int n, F&& f) {
  if constexpr (N >= 1) {
    if (n == N) return f(std::integral_constant<int, N>{});
    with_const<N - 1>(n, f);
  }
}

// c[r·c_rs + col] = Σ_d a[r·a_rs + d] · bt[d·bt_rs + col] for R rows and `cols` columns (a multiple of C·W).
// Kept out of line: when GCC inlined it into the backward's query loop, it ran out of general registers for
// the R row pointers and kept some in vector registers and on the stack inside the FMA loop (out of line:
// backward L 1024, D 64, 1 thread 55.4 → 53.3 ms).
template <int R, int C>
[[gnu::noinline]] void gemm_abt_tile(const float* a, int64_t a_rs, const float* bt, int64_t bt_rs, int64_t depth,
                                     int64_t cols, float* c, int64_t c_rs) {
  for (int64_t c0 = 0; c0 < cols; c0 += C * W) {
    Vec acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < C; ++v) acc[r][v] = Vec::zero();
    for (int64_t d = 0; d < depth; ++d) {
      Vec b[C];
      for (int v = 0; v < C; ++v) b[v] = Vec::load(bt + d * bt_rs + c0 + v * W);
      for (int r = 0; r < R; ++r) {
        const Vec ab = Vec::set1(a[r * a_rs + d]);
        for (int v = 0; v < C; ++v) acc[r][v] = Vec::fmadd(ab, b[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < C; ++v) acc[r][v].store(c + r * c_rs + c0 + v * W);
  }
}

// Bᵀ packed in panels, the layout the Q·Kᵀ and dO·Vᵀ products stream: a [depth, total] matrix (total a
// multiple of W) cut into panels of kPanel columns, panel p (columns [p·kPanel, p·kPanel + w_p), w_p =
// min(kPanel, total − p·kPanel)) stored [depth, w_p] at offset p·kPanel·depth. One column step of the
// micro-kernel reads one panel front to back, where with the whole [depth, total] rows it read depth rows a
// stride of total floats apart (512 bytes for 128 keys: a few L1 sets for all of them; the AVX2 forward was
// 5.7% slower so at L 1024, D 64).
inline constexpr int64_t kPanel = Tiles::kScoreVecs * W;

// c[rows, cols] = a[rows, depth] · bt[depth, cols] with bt packed in panels of a [depth, total] matrix (cols
// ≤ total, both multiples of W): whole panels with the kScoreRows × kScoreVecs tile, the columns of a partial
// panel one vector at a time.
inline void gemm_abt_panels(const float* a, int64_t a_rs, const float* bt, int64_t total, int64_t depth, int64_t rows,
                            int64_t cols, float* c, int64_t c_rs) {
  constexpr int R = Tiles::kScoreRows, C = Tiles::kScoreVecs;
  const auto row_block = [&](auto RR, int64_t r) {
    constexpr int kR = decltype(RR)::value;
    for (int64_t c0 = 0; c0 < cols; c0 += kPanel) {
      const float* panel = bt + c0 * depth;
      const int64_t width = std::min(kPanel, total - c0), used = std::min(kPanel, cols - c0);
      if (used == kPanel) {
        gemm_abt_tile<kR, C>(a + r * a_rs, a_rs, panel, width, depth, kPanel, c + r * c_rs + c0, c_rs);
      } else {
        for (int64_t v = 0; v < used; v += W)
          gemm_abt_tile<kR, 1>(a + r * a_rs, a_rs, panel + v, width, depth, W, c + r * c_rs + c0 + v, c_rs);
      }
    }
  };
  int64_t r = 0;
  for (; r + R <= rows; r += R) row_block(std::integral_constant<int, R>{}, r);
  if (r < rows) with_const<R>(static_cast<int>(rows - r), [&](auto RR) { row_block(RR, r); });
}

// acc[r·acc_rs + v·W ...] += Σ_j A[r·a_rs + j·a_js] · B[j·b_rs + v·W ...] for R rows, C vectors, n terms.
template <int R, int C>
inline void rank_update_tile(const float* A, int64_t a_rs, int64_t a_js, int64_t n, const float* B, int64_t b_rs,
                             float* acc, int64_t acc_rs) {
  Vec a[R][C];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) a[r][v] = Vec::load(acc + r * acc_rs + v * W);
  for (int64_t j = 0; j < n; ++j) {
    Vec b[C];
    for (int v = 0; v < C; ++v) b[v] = Vec::load(B + j * b_rs + v * W);
    for (int r = 0; r < R; ++r) {
      const Vec ab = Vec::set1(A[r * a_rs + j * a_js]);
      for (int v = 0; v < C; ++v) a[r][v] = Vec::fmadd(ab, b[v], a[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < C; ++v) a[r][v].store(acc + r * acc_rs + v * W);
}

// Calls tile(std::integral_constant<int, R>, std::integral_constant<int, C>, r, c) for the register tiles of
// kRows × kVecs (R × C at the edges) that cover rows × vecs: row r, vector column c. Always inlined: left to GCC, the
// backwards (float32 and bfloat16) and the causal forward at D 64 ran 3–5% slower than with the loops written out.
template <int kRows, int kVecs, class F>
[[gnu::always_inline]] inline void for_each_register_tile(int64_t rows, int64_t vecs, F&& tile) {
  for (int64_t r = 0; r < rows; r += kRows)
    for (int64_t c = 0; c < vecs; c += kVecs)
      with_const<kRows>(static_cast<int>(std::min<int64_t>(kRows, rows - r)), [&](auto RR) {
        with_const<kVecs>(static_cast<int>(std::min<int64_t>(kVecs, vecs - c)), [&](auto CC) { tile(RR, CC, r, c); });
      });
}

// acc[rows, vecs·W] += A[rows, n] · B[n, vecs·W], A's element (r, j) at A[r·a_rs + j·a_js], in register
// tiles of kRows × kVecs (the forward's P·V: Tiles::kPvRows × kPvVecs or kRowPvRows × kRowPvVecs; the backward's
// updates: kUpdateRows × kUpdateVecs).
template <int kRows, int kVecs>
inline void rank_update(const float* A, int64_t a_rs, int64_t a_js, int64_t rows, int64_t n, const float* B,
                        int64_t b_rs, int64_t vecs, float* acc, int64_t acc_rs) {
  for_each_register_tile<kRows, kVecs>(rows, vecs, [&](auto RR, auto CC, int64_t r, int64_t c) {
    rank_update_tile<decltype(RR)::value, decltype(CC)::value>(A + r * a_rs, a_rs, a_js, n, B + c * W, b_rs,
                                                               acc + r * acc_rs + c * W, acc_rs);
  });
}

// rank_update over the terms with A(r, j) ≠ 0 only, each column's sum in the same order.
inline void rank_update_nonzero(const float* A, int64_t a_rs, int64_t a_js, int64_t rows, int64_t n, const float* B,
                                int64_t b_rs, int64_t vecs, float* acc, int64_t acc_rs) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < vecs; ++c) {
      Vec a = Vec::load(acc + r * acc_rs + c * W);
      for (int64_t j = 0; j < n; ++j) {
        const float x = A[r * a_rs + j * a_js];
        if (x != 0.0f) a = Vec::fmadd(Vec::set1(x), Vec::load(B + j * b_rs + c * W), a);
      }
      a.store(acc + r * acc_rs + c * W);
    }
}

// Is any of rows × n values (row stride s_rs) exactly 0?
inline bool any_zero(const float* s, int64_t s_rs, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = s + r * s_rs;
    int64_t j = 0;
    for (; j + W <= n; j += W)
      if (Vec::any_zero(Vec::load(x + j))) return true;
    for (; j < n; ++j)
      if (x[j] == 0.0f) return true;
  }
  return false;
}

// Are the n rows × width values (row stride x_rs) all finite? Σ x·0 is 0 while every x is finite and NaN once
// one is not, summed in 8 independent chains (two rows at a time, 4 vectors of each): with one chain the check ran at
// an FMA's latency, 1024 dependent FMAs for a 128 × 128 value tile, ~2% of the causal forward at L 1024 (perf). The
// chains are named registers: held in arrays passed to a lambda, GCC kept them on the stack, each FMA a store and a
// reload (causal L 256: 2% of the forward).
inline bool all_finite(const float* x, int64_t x_rs, int64_t n, int64_t width) {
  const Vec zero = Vec::zero();
  Vec e0 = zero, e1 = zero, e2 = zero, e3 = zero, o0 = zero, o1 = zero, o2 = zero, o3 = zero;
  const int64_t wide = width / (4 * W) * (4 * W), whole = width / W * W;
  float tail = 0.0f;
  for (int64_t j = 0; j < n; j += 2) {
    const float* r0 = x + j * x_rs;
    const float* r1 = j + 1 < n ? r0 + x_rs : r0;  // an odd last row is checked twice
    for (int64_t d = 0; d < wide; d += 4 * W) {
      e0 = Vec::fmadd(Vec::load(r0 + d), zero, e0);
      e1 = Vec::fmadd(Vec::load(r0 + d + W), zero, e1);
      e2 = Vec::fmadd(Vec::load(r0 + d + 2 * W), zero, e2);
      e3 = Vec::fmadd(Vec::load(r0 + d + 3 * W), zero, e3);
      o0 = Vec::fmadd(Vec::load(r1 + d), zero, o0);
      o1 = Vec::fmadd(Vec::load(r1 + d + W), zero, o1);
      o2 = Vec::fmadd(Vec::load(r1 + d + 2 * W), zero, o2);
      o3 = Vec::fmadd(Vec::load(r1 + d + 3 * W), zero, o3);
    }
    for (int64_t d = wide; d < whole; d += W) {
      e1 = Vec::fmadd(Vec::load(r0 + d), zero, e1);
      o1 = Vec::fmadd(Vec::load(r1 + d), zero, o1);
    }
    for (int64_t d = whole; d < width; ++d) tail += r0[d] * 0.0f + r1[d] * 0.0f;
  }
  return !std::isnan(((e0 + e1) + (e2 + e3) + ((o0 + o1) + (o2 + o3))).reduce_add() + tail);
}

// Rows [0, rows) of `row_elems` elements (float, or 16-bit), `stride` elements apart, asked into the L2 (prefetcht1).
template <class E>
inline void prefetch_rows(const E* x, int64_t rows, int64_t row_elems, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = 0; e < row_elems; e += 64 / static_cast<int64_t>(sizeof(E)))
      __builtin_prefetch(x + r * stride + e, 0, 2);
}

// Would x · f overflow for a finite element x of the [B, H, L, D] tensor at `x` (strides sb, sh, sl)?
inline bool scaling_overflows(const float* x, int64_t sb, int64_t sh, int64_t sl, int64_t B, int64_t H, int64_t L,
                              int64_t D, float f) {
  const Vec fv = Vec::set1(std::fabs(f));
  constexpr float kMax = std::numeric_limits<float>::max();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        const float* row = x + b * sb + h * sh + i * sl;
        int64_t d = 0;
        for (; d + W <= D; d += W) {  // |x|·|f| > FLT_MAX: it rounded to inf (an inf x too; NaN compares false)
          const Vec v = Vec::load(row + d);
          if (Vec::any_above(Vec::max(v, Vec::zero() - v) * fv, kMax)) return true;
        }
        for (; d < D; ++d)
          if (std::fabs(row[d]) * std::fabs(f) > kMax) return true;
      }
  return false;
}

// The factor f = scale·log2(e) that makes Q·Kᵀ base-2 scores: carried by the operand x (K packed, or the few queries),
// `operand`; or, where that product would overflow a finite element (|f| > 1 and an element beyond FLT_MAX over it:
// the true scores may still be moderate), by every score after the product, `after`. The float32 forward and backward
// decide it alike and take the same products in the same order, so that the backward's recomputed scores are bitwise
// the forward's (but for a row the forward redoes term by term after a non-finite input, exact_row_state):
// P = exp2(S − lse) then sums to 1 over a row, where a backward that applied the scale after the product got weights
// summing to 1 ± 3e-4 at scores in the hundreds (Backward.RecomputedWeightsSumToOneWhereTheScoresAreLarge).
// The forwards score at most kFewQueries queries (decode, a pooling query) by dot products of its queries, times the
// operand, with K's rows (no packing of K for so few); the float32 backward then scores them the same way.
inline constexpr int64_t kFewQueries = 4;
inline float dot(const float* a, const float* b, int64_t n) {
  Vec acc = Vec::zero();
  int64_t d = 0;
  for (; d + W <= n; d += W) acc = Vec::fmadd(Vec::load(a + d), Vec::load(b + d), acc);
  float s = acc.reduce_add();
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}
struct ScoreScaling {
  float operand = 1.0f, after = 1.0f;
};
inline ScoreScaling score_scaling(float f, const float* x, int64_t sb, int64_t sh, int64_t sl, int64_t B, int64_t H,
                                  int64_t L, int64_t D) {
  if (std::fabs(f) > 1.0f && scaling_overflows(x, sb, sh, sl, B, H, L, D, f)) return {1.0f, f};
  return {f, 1.0f};
}
// Does the float32 forward score p's queries by dot products (the few-query path) rather than against packed K?
inline bool scores_by_dot(const AttentionProblem& p) { return p.Lq <= kFewQueries; }
// p's scaling, decided on the operand that carries the factor: Q on the few-query path, else K
inline ScoreScaling score_scaling(const AttentionProblem& p) {
  const float f = p.scale * kLog2e;
  return scores_by_dot(p) ? score_scaling(f, p.q, p.q_sb, p.q_sh, p.q_sl, p.B, p.H, p.Lq, p.D)
                          : score_scaling(f, p.k, p.k_sb, p.k_sh, p.k_sl, p.B, p.Hkv, p.Lk, p.D);
}

// Are a task's kept row sums l [rows] and accumulators acc [rows, width] (row stride acc_rs) all finite? One pass for
// all its rows (a check per row, 64 of them, cost 1–2% of the causal forward at L 256); only where it fails need the
// caller look for the rows to redo.
inline bool rows_state_finite(const float* l, const float* acc, int64_t acc_rs, int64_t rows, int64_t width) {
  return all_finite(l, 0, 1, rows) && all_finite(acc, acc_rs, rows, width);
}

// Rows j0 … j0 + n − 1 of X (row stride x_rs, depth values each), times `scale`, packed transposed into the panels
// of a [depth, total] matrix (see kPanel; total ≥ n, a multiple of W), the columns from n on 0.
inline void pack_panels(const float* x, int64_t x_rs, int64_t j0, int64_t n, int64_t depth, int64_t total, float* t,
                        float scale = 1.0f) {
  const Vec sv = Vec::set1(scale);
  for (int64_t c0 = 0; c0 < total; c0 += kPanel) {
    float* panel = t + c0 * depth;
    const int64_t width = std::min(kPanel, total - c0), keys = std::clamp<int64_t>(n - c0, 0, width);
    if (keys < width)
      for (int64_t d = 0; d < depth; ++d) std::fill(panel + d * width + keys, panel + (d + 1) * width, 0.0f);
    int64_t jj = 0;
    for (; jj + W <= keys; jj += W) {  // W keys × W depths at a time through a register transpose
      const float* xj = x + (j0 + c0 + jj) * x_rs;
      int64_t d = 0;
      for (; d + W <= depth; d += W) {
        Vec r[W];
        for (int k = 0; k < W; ++k) r[k] = Vec::load(xj + k * x_rs + d) * sv;
        Vec::transpose(r);
        for (int k = 0; k < W; ++k) r[k].store(panel + (d + k) * width + jj);
      }
      for (; d < depth; ++d)
        for (int k = 0; k < W; ++k) panel[d * width + jj + k] = xj[k * x_rs + d] * scale;
    }
    for (; jj < keys; ++jj) {
      const float* xj = x + (j0 + c0 + jj) * x_rs;
      for (int64_t d = 0; d < depth; ++d) panel[d * width + jj] = xj[d] * scale;
    }
  }
}

}  // namespace attn::detail::ATTN_TARGET
