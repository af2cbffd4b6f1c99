// The bfloat16/float16 attention kernel: the fused kernel's FlashAttention-2 forward
// (attention_fused_kernels.cc: tiles, online softmax, key splits for decode, the non-finite fallback) on
// 16-bit Q, K, V, with float32 accumulation, a float32 softmax and one rounding of the output. Compiled once
// per instruction set (ATTN_TARGET = avx512bf16, avx512, avx2, scalar; attention_lowp.cc picks one).
//
// For each task (b, h, query tile of up to bq rows, key split; bq = kBq, or up to kBqLong where a head's K and V take
// 16 MB or more, run kBq rows at a time through each key tile, as the float32 kernel's):
//   S = Q_tile · K_tᵀ                  dot: vdpbf16ps on bfloat16 pairs, × scale   convert: (scale·Q) · K_tᵀ
//   S = mask(S); online softmax (m, l) in float32, dropout as the fp32 kernel
//   acc += P · V_t                     dot: P rounded to bfloat16, vdpbf16ps        convert: fp32 FMA
//   out = round16(acc / l)
// Whole-call packing (more than 4 queries), shared by every query tile and every head of a group, with no barrier
// before the tasks (pack_kv, PackedOnDemand; or, for many short heads, LowpPlan::task_kv: each task packs its own
// head's, into its workspace):
//   dot      Kᵀ as [key tile, D/2, kBk, 2] and V as [key tile, kBk/2, Dvp, 2] bfloat16: the pairs vdpbf16ps
//            multiplies (zero-padded: odd D, odd key counts, Dv up to whole vectors)
//   convert  Kᵀ as [key tile, D, kBk] and V as [key tile, kBk, Dvp] float32: the fp32 micro-kernels'
//            operands (gemm_abt_panels, rank_update), widened once
// Few queries (decode) read K's rows and widen V's tile by tile, as the fp32 kernel's dot-product path.
// A V tile holding NaN or Inf under a zero weight takes rank_update_nonzero in float32 (a hidden key never
// influences), and a row whose state comes out non-finite is redone term by term (the fp32 kernel's rule).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attn/half.h"
#include "cpu/aligned_vector.h"
#include "cpu/attention_lowp.h"
#include "cpu/bf16_pairs.h"
#include "cpu/lowp_convert.h"
#include "cpu/packed_on_demand.h"
#include "cpu/simd.h"
#include "cpu/threads.h"
#include "cpu/tile_kernels.h"
#include "cpu/tile_traits.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512bf16|avx512|avx2|scalar"
#endif

namespace attn::detail::ATTN_TARGET {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kBq = Tiles::kBq, kBk = Tiles::kBk;
static_assert(kBk % (Tiles::kScoreVecs * W) == 0 && kBk % 2 == 0);

// ---- The plan and the call's buffers ---------------------------------------------------------------------------

struct LowpPlan {
  int threads = 1;
  bool dot = false;          // vdpbf16ps (bfloat16 on the avx512bf16 build), else convert
  bool keys_packed = false;  // more than 4 queries: K and V packed once per call (pack_kv)
  // Each task packs its head's K and V (the tiles it reads) into its workspace, instead of every head's into the call's
  // buffers shared by the tasks: many short heads (forward_whole_head_tasks), whose tasks then take a
  // whole head's queries each; or forced by a test (detail::force_task_keys), with the tasks as the call chooses.
  bool task_kv = false;
  // pack_kv runs before the tasks (keys_packed, not task_kv; a test may leave it to the tasks alone:
  // detail::force_packing_by_tasks, read once here so that every thread meets the same work-shared loops)
  bool pack_pass = false;
  int64_t Dp = 0;   // D rounded up to even (pairs)
  int64_t Dvp = 0;  // Dv rounded up to whole vectors
  int64_t bq = 0;   // query rows per task: kBq, up to Tiles::kBqLong for long K and V, or a head's (task_kv)
  int64_t query_tiles = 0, tile_tasks = 0, splits = 1, key_tiles = 0, row_state = 0;
  int64_t k_tile = 0, v_tile = 0;  // elements of one packed key / value tile (uint16 for dot, float for convert)
};

// The width of key tile j0's packed Kᵀ panels (convert): its keys rounded up to whole column steps. pack_kv_tile
// packs that many columns; accumulate_keys multiplies a prefix of them.
int64_t packed_key_cols(const AttentionProblem& p, int64_t j0) {
  return round_up(std::min(kBk, p.Lk - j0), Tiles::kScoreVecs * W);
}

template <LowpType T>
LowpPlan plan_lowp(const AttentionProblem& p) {
  LowpPlan plan;
  plan.threads = resolve_threads(p.num_threads);
  plan.dot = ATTN_LOWP_DOT && T == LowpType::kBFloat16 && p.D > 0;  // D = 0: no pairs to multiply (and none to read)
  plan.Dp = round_up(std::max<int64_t>(p.D, 1), 2);
  plan.Dvp = round_up(std::max<int64_t>(p.Dv, 1), W);
  plan.keys_packed = p.Lq > kFewQueries;
  // long tasks for long K and V (forward_task_rows), run kBq rows at a time (accumulate_keys). Zen 5, bfloat16, 1
  // thread, H 1, against 64-row tasks: L 32768, D 128 +20% (64 rows: 353 GFLOP/s against 410 at L 16384); L 16384, D
  // 256 +12%
  plan.key_tiles = (p.Lk + kBk - 1) / kBk;
  plan.k_tile = (plan.dot ? plan.Dp : std::max<int64_t>(p.D, 1)) * kBk;
  plan.v_tile = kBk * plan.Dvp;
  const int64_t head_bytes =
      plan.key_tiles * (plan.k_tile + plan.v_tile) * static_cast<int64_t>(plan.dot ? sizeof(uint16_t) : sizeof(float));
  // Not for grouped heads: their tasks would each pack their group's K and V again, where the shared packing served
  // the group's heads from the caches (Zen 5, B 256, H 8, Hkv 1, L 128, D 64, bfloat16: −4% at 1 thread, −1% at 2;
  // float32, whose values are not packed, ±1%).
  plan.task_kv =
      plan.keys_packed &&
      ((p.H == p.Hkv && forward_whole_head_tasks<Tiles>(head_bytes, p.B * p.Hkv, p.B * p.H, p.Lq, plan.threads)) ||
       forced_task_keys());
  const int64_t kv_bytes = p.Lk * (p.D + p.Dv) * static_cast<int64_t>(sizeof(uint16_t));
  plan.bq = plan.task_kv && forward_head_fits_a_task<Tiles>(p.Lq)
                ? round_up(p.Lq, kBq)
                : forward_task_rows<Tiles>(plan.keys_packed, kv_bytes, p.B * p.H, p.Lq, plan.threads);
  plan.query_tiles = (p.Lq + plan.bq - 1) / plan.bq;
  plan.tile_tasks = p.B * p.H * plan.query_tiles;
  plan.pack_pass = plan.keys_packed && !plan.task_kv && !forced_packing_by_tasks();
  if (!plan.keys_packed &&
      plan.tile_tasks < 2 * plan.threads)  // decode: split the keys too (attention_fused_kernels.cc)
    plan.splits = std::min<int64_t>((2 * plan.threads + plan.tile_tasks - 1) / plan.tile_tasks, plan.key_tiles);
  plan.splits = std::max<int64_t>(plan.splits, 1);
  plan.row_state = 2 + plan.Dvp;
  return plan;
}

// Owned by the calling thread, grown once and reused.
struct LowpBuffers {
  float* partial = nullptr;        // [tile_tasks, splits, bq, row_state]    when splits > 1
  float* kf = nullptr;             // [B·Hkv·key_tiles, D, kBk]     convert, packed in panels (pack_panels)
  float* vf = nullptr;             // [B·Hkv·key_tiles, kBk, Dvp]   convert, packed
  uint16_t* kb = nullptr;          // [B·Hkv·key_tiles, Dp/2, kBk, 2]      dot, packed
  uint16_t* vb = nullptr;          // [B·Hkv·key_tiles, kBk/2, Dvp, 2]     dot, packed
  uint8_t* v_nonfinite = nullptr;  // [B·Hkv·key_tiles]  does the value tile hold NaN or Inf?
  uint32_t* kv_states = nullptr;   // [B·Hkv·key_tiles]  each tile's PackedOnDemand state, 0 at the call's start
};

LowpBuffers call_buffers(const AttentionProblem& p, const LowpPlan& plan) {
  thread_local AlignedVector<float> partial, kf, vf;
  thread_local AlignedVector<uint16_t> kb, vb;
  thread_local std::vector<uint8_t> nonfinite;
  thread_local std::vector<uint32_t> states;
  auto grow = [](auto& b, int64_t n) {
    if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
    return b.data();
  };
  LowpBuffers buf;
  if (plan.splits > 1) buf.partial = grow(partial, plan.tile_tasks * plan.splits * plan.bq * plan.row_state);
  if (plan.keys_packed && !plan.task_kv) {
    const int64_t tiles = p.B * p.Hkv * plan.key_tiles;
    if (plan.dot) {
      buf.kb = grow(kb, tiles * plan.k_tile);
      buf.vb = grow(vb, tiles * plan.v_tile);
    } else {
      buf.kf = grow(kf, tiles * plan.k_tile);
      buf.vf = grow(vf, tiles * plan.v_tile);
    }
    buf.v_nonfinite = grow(nonfinite, tiles);
    buf.kv_states = grow(states, tiles);
    std::fill(buf.kv_states, buf.kv_states + tiles, 0u);
  }
  return buf;
}

// Per-thread buffers.
struct Workspace {
  AlignedVector<float> qs;              // [bq, D]        scale · Q tile, float32 (unscaled when q_after ≠ 1)
  float q_after = 1.0f;                 // the factor the scores still take after Q·Kᵀ (widen_queries)
  AlignedVector<uint32_t> qb;           // [bq, Dp/2]     dot: the Q tile's bfloat16 pairs (unscaled)
  AlignedVector<float> s;               // [kBq, kBk]     scores, then probabilities (kBq rows at a time)
  AlignedVector<uint32_t> pb;           // [kBq, kBk/2]   dot: P's bfloat16 pairs
  AlignedVector<float> vp;              // [kBk, Dvp]     a value tile widened (decode, non-finite tiles)
  AlignedVector<float> acc;             // [bq, Dvp]
  AlignedVector<float> m, l;            // [bq]
  AlignedVector<float> lv;              // [bq, W]        each row's partial sums of P (l = their sum)
  std::vector<DropoutGroupCache> drop;  // [bq]
  // LowpPlan::task_kv: the task's head's K and V packed as the call's are (LowpBuffers' layouts, key_tiles tiles)
  AlignedVector<uint16_t> kb, vb;
  AlignedVector<float> kf, vf;
  std::vector<uint8_t> v_nonfinite;
  void reserve(int64_t D, const LowpPlan& plan) {
    auto grow = [](auto& b, int64_t n) {
      if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
    };
    const int64_t bq = plan.bq;
    grow(qs, bq * std::max<int64_t>(D, 1));
    grow(qb, bq * plan.Dp / 2);
    grow(s, kBq * kBk);
    grow(pb, kBq * kBk / 2);
    grow(vp, kBk * plan.Dvp);
    grow(acc, bq * plan.Dvp);
    grow(m, bq);
    grow(l, bq);
    grow(lv, bq * W);
    grow(drop, bq);
    if (!plan.task_kv) return;
    if (plan.dot) {
      grow(kb, plan.key_tiles * plan.k_tile);
      grow(vb, plan.key_tiles * plan.v_tile);
    } else {
      grow(kf, plan.key_tiles * plan.k_tile);
      grow(vf, plan.key_tiles * plan.v_tile);
    }
    grow(v_nonfinite, plan.key_tiles);
  }
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

// ---- Packing -----------------------------------------------------------------------------------------------------

// One head's packed K and V (pack_kv_tile's layouts): key tile kt's Kᵀ at kb (dot) or kf (convert) + kt · k_tile, its
// values at vb or vf + kt · v_tile, and whether they hold NaN or Inf at v_nonfinite[kt].
struct HeadKv {
  uint16_t* kb = nullptr;          // [key_tiles, Dp/2, kBk, 2]     dot
  uint16_t* vb = nullptr;          // [key_tiles, kBk/2, Dvp, 2]    dot
  float* kf = nullptr;             // [key_tiles, D, kBk]           convert
  float* vf = nullptr;             // [key_tiles, kBk, Dvp]         convert
  uint8_t* v_nonfinite = nullptr;  // [key_tiles]
};

// A head's tiles from tile0 on in buffers laid out as LowpBuffers' (kb, vb for dot, kf, vf for convert; the other pair
// unused and perhaps null).
HeadKv head_kv(const LowpPlan& plan, uint16_t* kb, uint16_t* vb, float* kf, float* vf, uint8_t* v_nonfinite,
               int64_t tile0) {
  HeadKv kv;
  if (plan.dot) {
    kv.kb = kb + tile0 * plan.k_tile;
    kv.vb = vb + tile0 * plan.v_tile;
  } else {
    kv.kf = kf + tile0 * plan.k_tile;
    kv.vf = vf + tile0 * plan.v_tile;
  }
  kv.v_nonfinite = v_nonfinite + tile0;
  return kv;
}

// Kv head (b, g)'s tiles: in the call's buffers (shared by the tasks), or with LowpPlan::task_kv in the
// task's workspace (the task packs them); none on the few-query path, which packs nothing.
HeadKv head_kv(const AttentionProblem& p, const LowpPlan& plan, const LowpBuffers& buf, Workspace& ws, int64_t b,
               int64_t g) {
  if (!plan.keys_packed) return {};
  if (plan.task_kv)
    return head_kv(plan, ws.kb.data(), ws.vb.data(), ws.kf.data(), ws.vf.data(), ws.v_nonfinite.data(), 0);
  return head_kv(plan, buf.kb, buf.vb, buf.kf, buf.vf, buf.v_nonfinite, (b * p.Hkv + g) * plan.key_tiles);
}

template <LowpType T>
void pack_kv_tile(const LowpAttentionProblem& lp, const LowpPlan& plan, int64_t b, int64_t g, int64_t kt,
                  const HeadKv& kv) {
  const AttentionProblem& p = lp.p;
  const int64_t j0 = kt * kBk, n = std::min(kBk, p.Lk - j0);
  const uint16_t* k = lp.k + b * p.k_sb + g * p.k_sh + j0 * p.k_sl;  // [n, D]
  const uint16_t* v = lp.v + b * p.v_sb + g * p.v_sh + j0 * p.v_sl;  // [n, Dv]
  kv.v_nonfinite[kt] = any_nonfinite<T>(v, p.v_sl, n, p.Dv);
  if (plan.dot) {
#if ATTN_LOWP_DOT
    // Kᵀ: the pair (d, d+1) of key j is the uint32 at (d/2)·kBk + j
    pack_transposed_pairs(k, p.k_sl, n, p.D, plan.Dp, kBk, kv.kb + kt * plan.k_tile);
    // V: the pair (keys 2·j2, 2·j2 + 1) of column c is the uint32 at j2·Dvp + c
    uint16_t* vt_out = kv.vb + kt * plan.v_tile;
    for (int64_t j2 = 0; j2 < kBk / 2; ++j2) {
      const uint16_t* lo = 2 * j2 < n ? v + 2 * j2 * p.v_sl : nullptr;
      if (!lo)
        std::fill(vt_out + j2 * plan.Dvp * 2, vt_out + (j2 + 1) * plan.Dvp * 2, uint16_t{0});
      else
        interleave_rows(lo, 2 * j2 + 1 < n ? lo + p.v_sl : nullptr, p.Dv, plan.Dvp, vt_out + j2 * plan.Dvp * 2);
    }
#endif
  } else {
    // Kᵀ in the panels gemm_abt_panels streams, from the tile's keys widened
    thread_local AlignedVector<float> rows;  // [n, D] the tile's keys widened
    rows.resize(static_cast<size_t>(n * p.D));
    for (int64_t j = 0; j < n; ++j) widen_row<T>(k + j * p.k_sl, p.D, rows.data() + j * p.D);
    pack_panels(rows.data(), p.D, 0, n, p.D, packed_key_cols(p, j0), kv.kf + kt * plan.k_tile);
    float* vt_out = kv.vf + kt * plan.v_tile;  // [kBk, Dvp]
    std::fill(vt_out, vt_out + plan.v_tile, 0.0f);
    for (int64_t j = 0; j < n; ++j) widen_row<T>(v + j * p.v_sl, p.Dv, vt_out + j * plan.Dvp);
  }
}

// Every kv head's tiles into the call's buffers, each thread its static share, with no barrier after (PackedOnDemand,
// as the float32 forward's pack_keys): the tasks pack what is still missing.
template <LowpType T>
void pack_kv(const LowpAttentionProblem& lp, const LowpPlan& plan, const LowpBuffers& buf) {
  const AttentionProblem& p = lp.p;
#pragma omp for schedule(static) nowait
  for (int64_t t = 0; t < p.B * p.Hkv * plan.key_tiles; ++t) {
    const int64_t kt = t % plan.key_tiles, bk = t / plan.key_tiles;
    PackedOnDemand::pack_if_unclaimed(buf.kv_states, t, [&](int64_t) {
      pack_kv_tile<T>(lp, plan, bk / p.Hkv, bk % p.Hkv, kt,
                      head_kv(plan, buf.kb, buf.vb, buf.kf, buf.vf, buf.v_nonfinite, t - kt));
    });
  }
}

// Rows [i0, i0 + rows) of head (b, h): scale · q into ws.qs, widened to float.
// With |scale| > 1 a finite query element near bfloat16's (= float's) range can overflow once scaled while its
// scores stay finite; then the tile's queries stay unscaled and the scores take the scale after the product
// (ws.q_after), as the float32 kernel's FusedPlan::after.
template <LowpType T>
void widen_queries(const LowpAttentionProblem& lp, int64_t b, int64_t h, int64_t i0, int64_t rows, Workspace& ws) {
  const AttentionProblem& p = lp.p;
  const uint16_t* q = lp.q + b * p.q_sb + h * p.q_sh;
  const bool may_overflow = std::fabs(p.scale) > 1.0f;
  bool overflows = false;
  for (int64_t r = 0; r < rows; ++r) {
    float* out = ws.qs.data() + r * p.D;
    widen_row<T>(q + (i0 + r) * p.q_sl, p.D, out);
    if (may_overflow)
      for (int64_t d = 0; d < p.D && !overflows; ++d) overflows = std::isinf(out[d] * p.scale) && std::isfinite(out[d]);
  }
  ws.q_after = overflows ? p.scale : 1.0f;
  if (!overflows)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t d = 0; d < p.D; ++d) ws.qs[r * p.D + d] *= p.scale;
}

// dot over packed keys: rows [i0, i0 + rows) of head (b, h) as raw bfloat16 pairs (d, d + 1) into ws.qb, [rows, Dp/2]:
// each row's bits as they lie (a copy, where a loop of 16-bit loads and shifts cost ~3% of the forward at L 1024, D
// 128), the odd D's last pair padded with 0.
void pair_queries(const LowpAttentionProblem& lp, const LowpPlan& plan, int64_t b, int64_t h, int64_t i0, int64_t rows,
                  Workspace& ws) {
  const AttentionProblem& p = lp.p;
  const uint16_t* q = lp.q + b * p.q_sb + h * p.q_sh;
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* qr = q + (i0 + r) * p.q_sl;
    uint32_t* pairs = ws.qb.data() + r * plan.Dp / 2;
    std::memcpy(pairs, qr, static_cast<size_t>(p.D / 2) * sizeof(uint32_t));
    if (p.D % 2 != 0) pairs[p.D / 2] = qr[p.D - 1];
  }
}

// ---- The online softmax over one split's keys --------------------------------------------------------------------

float dot_wide(const float* a, const uint16_t* b, int64_t n, LowpType type) {
  Vec acc = Vec::zero();
  int64_t d = 0;
  float s;
  if (type == LowpType::kBFloat16) {
    for (; d + W <= n; d += W) acc = Vec::fmadd(Vec::load(a + d), load_wide<LowpType::kBFloat16>(b + d), acc);
    s = acc.reduce_add();
    for (; d < n; ++d) s += a[d] * bf16_to_float(b[d]);
  } else {
    for (; d + W <= n; d += W) acc = Vec::fmadd(Vec::load(a + d), load_wide<LowpType::kFloat16>(b + d), acc);
    s = acc.reduce_add();
    for (; d < n; ++d) s += a[d] * f16_to_float(b[d]);
  }
  return s;
}

// The fast path's offset a = −m·log2 e, rounded to float once (std::fma with 0: one rounding whatever the compiler
// contracts), is off from the exact value by up to half an ulp of |m·log2 e|: every weight of the row comes out times
// 2^(that error), which cancels in acc / l while m stays, but not where m changes, so the correction between two maxima
// is 2^(a_new − a_old) of these same rounded offsets (fast_correction), not e^(m_old − m_new).
inline float fast_offset(float m) { return std::fma(-m, 1.44269504088896341f, 0.0f); }
inline float fast_correction(float m_old, float m_new) { return std::exp2(fast_offset(m_new) - fast_offset(m_old)); }

// e^(s − m), the softmax's exponentials. The float32 kernel's simd::exp, except on the vdpbf16ps path, where P is
// rounded to bfloat16 next: there 2^t with t = (s − m)·log2 e = n + f, |f| <= 1/2, 2^f a degree-5 Taylor
// polynomial (relative error below 3e-6, a thousandth of bfloat16's rounding) and 2^n one vscalefps; 8 vector
// operations instead of 19. t is clamped at −160, so a hidden key (s = −inf) gets exactly 0; NaN stays NaN. Only for
// |m| < 2^24 (softmax_row sees to it): the offset's rounding error stays within 2^±1 there (see fast_offset).
template <bool kFast>
inline Vec exp_minus(Vec s, float m) {
#if ATTN_LOWP_DOT
  if constexpr (kFast) {
    const __m512 t =
        _mm512_max_ps(_mm512_set1_ps(-160.0f),  // NaN second: max returns it
                      _mm512_fmadd_ps(s.v, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(fast_offset(m))));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_set1_ps(1.3333558146e-3f);                  // ln2^5 / 5!
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.6181291076e-3f));  // ln2^4 / 4!
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5504108665e-2f));  // ln2^3 / 3!
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022650696e-1f));  // ln2^2 / 2
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314718056e-1f));  // ln2
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
    return {_mm512_scalef_ps(y, n)};
  }
#endif
  return simd::exp(s - Vec::set1(m));
}

// One row's softmax step on s[0, n) (already masked): updates m, l, rescales acc; s becomes P (dropped out).
// Where nothing is visible yet, s is zeroed and the state stays as it was, but for a NaN score poisoning l.
// With kPairs (the vdpbf16ps path, no dropout, finite values: nothing reads the float P after) P goes straight to
// bfloat16 in pairs[0, round_up(n, 16)) (zeros past n), not back into s: one pass over P fewer than writing it as
// float and converting it after.
template <bool kFast, bool kPairs = false>
inline void softmax_row(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, float* s,
                        float* m, float* l, float* acc, int64_t Dvp, DropoutGroupCache* drop,
                        [[maybe_unused]] uint32_t* pairs = nullptr) {
  // l: the row's W partial sums (summed once, when the row's tiles are done: no horizontal add per tile)
  // Lazy rescaling, as the float32 kernel's softmax_tile: the row keeps its max m while no score exceeds
  // m + 8 ln 2 (its weights then stay ≤ 2^8), with no horizontal max, no correction and no rescaled accumulator.
  constexpr float kRescaleAbove = 8.0f * 0.693147180559945309f;
  int64_t j = 0;
  Vec mx = Vec::set1(kNegInf);
  for (; j + W <= n; j += W) mx = Vec::max(mx, Vec::load(s + j));
  float tail_max = kNegInf;
  for (; j < n; ++j) tail_max = std::max(tail_max, s[j]);
  const bool keep = *m != kNegInf && !Vec::any_above(mx, *m + kRescaleAbove) && !(tail_max > *m + kRescaleAbove);
  const float m_new = keep ? *m : std::max(*m, std::max(mx.reduce_max(), tail_max));
  if (m_new == kNegInf) {  // nothing visible yet; a NaN score (max skips it) poisons the row
    for (int64_t jj = 0; jj < n; ++jj)
      if (std::isnan(s[jj])) l[0] = std::numeric_limits<float>::quiet_NaN();
    std::fill(s, s + n, 0.0f);
    if constexpr (kPairs) std::fill(pairs, pairs + round_up(n, 16) / 2, 0u);
    return;
  }
  // A row maximum of 2^24 or more (or NaN): the exact exp, decided once per row, not per vector. Beyond, the rounding
  // of a = −m·log2 e (fast_offset) reaches 2^±1 and more, and at |m·log2 e| ≥ 2^31 ±128: weights that overflow, or
  // underflow into float subnormals, which vcvtneps2bf16 makes 0 (and beyond 2^127 m·log2 e itself overflows).
  if constexpr (kFast)
    if (!(std::fabs(m_new) < 0x1p24f))
      return softmax_row<false, kPairs>(p, b, h, i, j0, n, s, m, l, acc, Dvp, drop, pairs);
  // e = P[j, j + W): into s, or (kPairs) as W bfloat16 into pairs (vcvtneps2bf16: nearest even)
  const auto put = [&](Vec e, int64_t at) {
#if ATTN_LOWP_DOT
    if constexpr (kPairs) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pairs + at / 2), (__m256i)_mm512_cvtneps_pbh(e.v));
      return;
    }
#endif
    e.store(s + at);
  };
  Vec sum = Vec::zero();
  for (j = 0; j + W <= n; j += W) {
    const Vec e = exp_minus<kFast>(Vec::load(s + j), m_new);
    put(e, j);
    sum = sum + e;
  }
  if (j < n) {
    float buf[W];
    std::fill(buf, buf + W, kNegInf);
    std::copy(s + j, s + n, buf);
    const Vec e = exp_minus<kFast>(Vec::load(buf), m_new);  // exp(−inf) = 0 in the padding lanes
    sum = sum + e;
    if constexpr (kPairs) {
      put(e, j);  // the padding lanes' zeros are the odd key's partner and the pairs' tail
    } else {
      e.store(buf);
      std::copy(buf, buf + (n - j), s + j);
    }
  }
  // (a libm call only where the max changed, not per row)
  const float c = *m == kNegInf            ? 0.0f
                  : *m == m_new            ? 1.0f
                  : kFast && ATTN_LOWP_DOT ? fast_correction(*m, m_new)
                                           : std::exp(*m - m_new);
  (c == 1.0f ? Vec::load(l) + sum : Vec::fmadd(Vec::load(l), Vec::set1(c), sum)).store(l);
  *m = m_new;
  if (p.dropout.active()) dropout_row_segment(p.dropout, b, h, i, j0, n, s, nullptr, drop);
  if (c != 1.0f)
    for (int64_t d = 0; d < Dvp; ++d) acc[d] *= c;
}

// Online softmax over keys [j_begin, j_end) (j_begin a multiple of kBk) for rows [task_i0, task_i0 + task_rows) of
// head (b, h), whose packed K and V (when keys_packed) are kv's.
template <LowpType T>
void accumulate_keys(const LowpAttentionProblem& lp, const LowpPlan& plan, const HeadKv& kv, int64_t b, int64_t h,
                     int64_t task_i0, int64_t task_rows, int64_t j_begin, int64_t j_end, Workspace& ws) {
  const AttentionProblem& p = lp.p;
  const int64_t kvh = p.kv_head(h), Dvp = plan.Dvp;
  const uint16_t* k = lp.k + b * p.k_sb + kvh * p.k_sh;  // [Lk, D]
  const uint16_t* v = lp.v + b * p.v_sb + kvh * p.v_sh;  // [Lk, Dv]
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBk) {
    const int64_t n = std::min(kBk, j_end - j0), t = j0 / kBk;  // t: the head's key tile
    if (all_padding(p, b, j0, n)) continue;
    // the task's rows kBq at a time (one sub-tile when bq = kBq): the key tile, read once from the L3 or memory,
    // serves all of them while each sub-tile's scores and accumulators stay in the L1
    const auto sub_tile = [&](int64_t i0, int64_t rows, int64_t r0) {
      const float* qs = ws.qs.data() + r0 * p.D;                              // [rows, D]
      [[maybe_unused]] const uint32_t* qb = ws.qb.data() + r0 * plan.Dp / 2;  // [rows, Dp/2]
      float* m = ws.m.data() + r0;                                            // [rows]
      float* lv = ws.lv.data() + r0 * W;                                      // [rows, W]
      float* acc = ws.acc.data() + r0 * Dvp;                                  // [rows, Dvp]
      DropoutGroupCache* drop = ws.drop.data() + r0;                          // [rows]
      const int64_t cols = round_up(n, Tiles::kScoreVecs * W);
      // On the causal diagonal (the sub-tile's first row sees fewer of the tile's keys than its last) each block of
      // kScoreRows rows stops at its last row's last visible key, rounded up to whole column steps (`len`): its
      // scores, exponentials and products past it are skipped, their P is 0 (as the float32 kernel's diagonal).
      // how many of the tile's keys row r of the sub-tile may see at most
      const auto visible = [&](int64_t r) { return visible_prefix(p, i0 + r, 1, j0, n); };
      const bool diagonal = plan.keys_packed && visible(0) < visible(rows - 1);
      const auto len = [&](int64_t r) {  // the score columns of row r's block
        if (!diagonal) return n;
        const int64_t last = std::min(rows, (r / Tiles::kScoreRows + 1) * Tiles::kScoreRows) - 1;
        return std::min(n, round_up(visible(last), Tiles::kScoreVecs * W));
      };
      // S = scale · Q·Kᵀ
      if (!plan.keys_packed) {
        for (int64_t jj = 0; jj < n; ++jj)
          for (int64_t r = 0; r < rows; ++r)
            ws.s[r * kBk + jj] = dot_wide(qs + r * p.D, k + (j0 + jj) * p.k_sl, p.D, lp.type);
      } else {
        const int64_t score_rows = diagonal ? Tiles::kScoreRows : rows;
        for (int64_t r = 0; r < rows; r += score_rows) {
          const int64_t block = std::min(score_rows, rows - r);
          const int64_t block_cols = diagonal ? round_up(len(r), Tiles::kScoreVecs * W) : cols;
          if (block_cols == 0) continue;
          if (plan.dot) {
#if ATTN_LOWP_DOT
            dot_scores(qb + r * plan.Dp / 2, plan.Dp / 2, kv.kb + t * plan.k_tile, kBk, plan.Dp / 2, block, block_cols,
                       p.scale, ws.s.data() + r * kBk, kBk);
#endif
          } else {
            gemm_abt_panels(qs + r * p.D, p.D, kv.kf + t * plan.k_tile, packed_key_cols(p, j0), p.D, block, block_cols,
                            ws.s.data() + r * kBk, kBk);
          }
        }
      }
      if (ws.q_after != 1.0f && !(plan.dot && plan.keys_packed))  // queries kept unscaled (widen_queries)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t jj = 0; jj < n; ++jj) ws.s[r * kBk + jj] *= ws.q_after;
      const bool masked = tile_needs_mask(p, b, i0, rows, j0, n);
      // A hidden key's value is never multiplied: a tile with NaN/Inf values under zero weights takes the
      // zero-skipping float32 update (below), which reads the float P.
      const bool nonfinite =
          plan.keys_packed ? kv.v_nonfinite[t] != 0 : any_nonfinite<T>(v + j0 * p.v_sl, p.v_sl, n, p.Dv);
      // P straight to bfloat16 pairs: the vdpbf16ps path where nothing reads the float P after (no dropout, which
      // applies its masks to the float P, and finite values)
      const bool to_pairs = ATTN_LOWP_DOT && plan.dot && plan.keys_packed && !nonfinite && !p.dropout.active();
      for (int64_t r = 0; r < rows; ++r) {
        float* s = ws.s.data() + r * kBk;
        const int64_t nr = len(r);  // the keys past it are hidden from the row (the diagonal): P = 0 there
        if (masked) mask_row_segment(p, b, h, i0 + r, j0, j0 + nr, s);
        if (to_pairs) {  // (only where vdpbf16ps is compiled)
#if ATTN_LOWP_DOT
          softmax_row<true, true>(p, b, h, i0 + r, j0, nr, s, &m[r], &lv[r * W], acc + r * Dvp, Dvp, &drop[r],
                                  ws.pb.data() + r * kBk / 2);
#endif
        } else if (plan.dot && plan.keys_packed) {
          softmax_row<true>(p, b, h, i0 + r, j0, nr, s, &m[r], &lv[r * W], acc + r * Dvp, Dvp, &drop[r]);
        } else {
          softmax_row<false>(p, b, h, i0 + r, j0, nr, s, &m[r], &lv[r * W], acc + r * Dvp, Dvp, &drop[r]);
        }
        if (!to_pairs) std::fill(s + nr, s + n, 0.0f);  // read by the passes over whole rows below
      }
      // acc += P · V
      const bool skip_zero = nonfinite && masked && any_zero(ws.s.data(), kBk, rows, n);
      if (plan.keys_packed && !skip_zero && plan.dot) {
#if ATTN_LOWP_DOT
        const int64_t pairs = (n + 1) / 2;
        for (int64_t r = 0; r < (to_pairs ? 0 : rows);
             ++r) {  // P to bfloat16, where softmax_row has not (nearest even)
          float* s = ws.s.data() + r * kBk;
          std::fill(s + n, s + round_up(n, 16), 0.0f);  // the odd key's partner (V's padding row is 0 too)
          auto* pr = reinterpret_cast<__m256bh*>(ws.pb.data() + r * kBk / 2);
          for (int64_t j = 0; j < 2 * pairs; j += 16)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr) + j / 16,
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + j)));
        }
        // on the diagonal each block of rows stops at its last row's last visible key (its P is 0 past it)
        static_assert(Tiles::kScoreRows % Tiles::kBf16PvRows == 0, "a P·V block lies in one block of scores");
        const int64_t pv_rows = diagonal ? Tiles::kBf16PvRows : rows;
        for (int64_t r = 0; r < rows; r += pv_rows) {
          const int64_t block = std::min(pv_rows, rows - r), terms = diagonal ? visible(r + block - 1) : n;
          if (terms > 0)
            dot_pv<Tiles::kBf16PvRows, Tiles::kBf16PvVecs>(ws.pb.data() + r * kBk / 2, kBk / 2, 1, block,
                                                           diagonal ? (terms + 1) / 2 : pairs, kv.vb + t * plan.v_tile,
                                                           Dvp / 16, acc + r * Dvp, Dvp);
        }
#endif
        return;
      }
      if (plan.dot && plan.keys_packed)  // the fallback multiplies the same bfloat16 weights as vdpbf16ps would
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t jj = 0; jj < n; ++jj) ws.s[r * kBk + jj] = bf16_to_float(float_to_bf16(ws.s[r * kBk + jj]));
      const float* vt = nullptr;
      if (plan.keys_packed && !plan.dot) {
        vt = kv.vf + t * plan.v_tile;
      } else {
        for (int64_t jj = 0; jj < n; ++jj) {
          widen_row<T>(v + (j0 + jj) * p.v_sl, p.Dv, ws.vp.data() + jj * Dvp);
          std::fill(ws.vp.data() + jj * Dvp + p.Dv, ws.vp.data() + (jj + 1) * Dvp, 0.0f);
        }
        vt = ws.vp.data();
      }
      if (skip_zero) {
        rank_update_nonzero(ws.s.data(), kBk, 1, rows, n, vt, Dvp, Dvp / W, acc, Dvp);
        return;
      }
      static_assert(Tiles::kScoreRows % Tiles::kPvRows == 0, "a P·V block lies in one block of scores");
      const int64_t pv_rows = diagonal ? Tiles::kPvRows : rows;  // on the diagonal, as the bfloat16 P·V above
      for (int64_t r = 0; r < rows; r += pv_rows) {
        const int64_t block = std::min(pv_rows, rows - r), terms = diagonal ? visible(r + block - 1) : n;
        if (terms > 0)
          rank_update<Tiles::kPvRows, Tiles::kPvVecs>(ws.s.data() + r * kBk, kBk, 1, block, terms, vt, Dvp, Dvp / W,
                                                      acc + r * Dvp, Dvp);
      }
    };
    for (int64_t r0 = 0; r0 < task_rows; r0 += kBq) {
      const int64_t sub = std::min(kBq, task_rows - r0);
      int64_t lo_last, hi_last;
      p.key_range(task_i0 + r0 + sub - 1, &lo_last, &hi_last);
      if (hi_last <= j0) continue;  // the causal range ends before the tile for these rows
      sub_tile(task_i0 + r0, sub, r0);
    }
  }
}

// The fp32 kernel's slow path for a row whose fast state came out non-finite: (m, l, acc) over keys [lo, hi)
// term by term, a value multiplied only by a nonzero weight. qs_row: the row's queries as ws.qs holds them, their
// scores still to be multiplied by `after` (ws.q_after).
template <LowpType T>
void exact_row_state(const LowpAttentionProblem& lp, int64_t b, int64_t h, int64_t i, int64_t lo, int64_t hi,
                     const float* qs_row, float after, float* m_out, float* l_out, float* acc) {
  const AttentionProblem& p = lp.p;
  thread_local AlignedVector<float> s;
  s.resize(static_cast<size_t>(hi - lo));
  const uint16_t* k = lp.k + b * p.k_sb + p.kv_head(h) * p.k_sh;
  const uint16_t* v = lp.v + b * p.v_sb + p.kv_head(h) * p.v_sh;
  for (int64_t j = lo; j < hi; ++j) {
    float d = 0.0f;
    for (int64_t e = 0; e < p.D; ++e) d += qs_row[e] * widen<T>(k[j * p.k_sl + e]);
    s[j - lo] = d * after;
  }
  mask_row_segment(p, b, h, i, lo, hi, s.data());
  float m = kNegInf;
  bool any_nan = false;
  for (float x : s) {
    m = x > m ? x : m;
    any_nan |= std::isnan(x);
  }
  *m_out = m;
  *l_out = 0.0f;
  std::fill(acc, acc + p.Dv, 0.0f);
  if (m == kNegInf && !any_nan) return;
  for (int64_t j = lo; j < hi; ++j) {
    float e = s[j - lo] == kNegInf ? 0.0f : std::exp(s[j - lo] - m);
    *l_out += e;
    if (p.dropout.active()) e = dropout_keeps(p.dropout, b, h, i, j) ? e * p.dropout.scale : 0.0f;
    if (e == 0.0f) continue;
    for (int64_t d = 0; d < p.Dv; ++d) acc[d] += e * widen<T>(v[j * p.v_sl + d]);
  }
}

bool row_state_finite(float l, const float* acc, int64_t Dv) {
  bool finite = std::isfinite(l);
  for (int64_t d = 0; d < Dv; ++d) finite &= std::isfinite(acc[d]);
  return finite;
}

// ---- The tasks ------------------------------------------------------------------------------------------------------

struct TileTask {
  int64_t b, h, bh, i0, rows;
};

// Tasks go head by head, under a causal range each head's last query tiles first (forward_query_tile).
TileTask tile_task(const AttentionProblem& p, const LowpPlan& plan, int64_t index) {
  const int64_t bh = index / plan.query_tiles;
  const int64_t tile =
      forward_query_tile(p.causal != CausalAlignment::kNone, index % plan.query_tiles, plan.query_tiles);
  const int64_t i0 = tile * plan.bq;
  return {bh / p.H, bh % p.H, bh, i0, std::min(plan.bq, p.Lq - i0)};
}

// The keys split `split` of task t covers: whole aligned key tiles of the rows' range, divided evenly.
void split_key_range(const AttentionProblem& p, const LowpPlan& plan, const TileTask& t, int64_t split, int64_t* lo,
                     int64_t* hi) {
  int64_t unused;
  p.key_range(t.i0, lo, &unused);
  p.key_range(t.i0 + t.rows - 1, &unused, hi);
  *lo = *lo / kBk * kBk;
  if (plan.splits > 1) {
    const int64_t ntiles = *hi > *lo ? (*hi - *lo + kBk - 1) / kBk : 0;
    const int64_t a = *lo + ntiles * split / plan.splits * kBk, e = *lo + ntiles * (split + 1) / plan.splits * kBk;
    *lo = std::min(a, *hi);
    *hi = std::min(e, *hi);
  }
}

template <LowpType T>
void run_tiles(const LowpAttentionProblem& lp, const LowpPlan& plan, const LowpBuffers& buf, Workspace& ws) {
  const AttentionProblem& p = lp.p;
  const int64_t Dvp = plan.Dvp;
  const auto run_task = [&](int64_t task) {
    const int64_t split = task % plan.splits;
    const TileTask t = tile_task(p, plan, task / plan.splits);
    int64_t lo, hi;
    split_key_range(p, plan, t, split, &lo, &hi);
    // the products read the queries as float (ws.qs) or, for vdpbf16ps over packed keys, as pairs (ws.qb), when the
    // float rows serve only a row redone term by term: made then
    const bool pairs_only = plan.dot && plan.keys_packed;
    if (pairs_only)
      pair_queries(lp, plan, t.b, t.h, t.i0, t.rows, ws);
    else
      widen_queries<T>(lp, t.b, t.h, t.i0, t.rows, ws);
    std::fill(ws.m.begin(), ws.m.begin() + t.rows, kNegInf);
    std::fill(ws.l.begin(), ws.l.begin() + t.rows, 0.0f);
    std::fill(ws.lv.begin(), ws.lv.begin() + t.rows * W, 0.0f);
    std::fill(ws.acc.begin(), ws.acc.begin() + t.rows * Dvp, 0.0f);
    for (int64_t r = 0; r < t.rows; ++r) ws.drop[r].group = -1;
    if (lo < hi) {
      const int64_t g = p.kv_head(t.h);
      const HeadKv kv = head_kv(p, plan, buf, ws, t.b, g);
      if (plan.task_kv)  // the head's tiles the task reads, packed here
        for (int64_t kt = lo / kBk; kt * kBk < hi; ++kt) pack_kv_tile<T>(lp, plan, t.b, g, kt, kv);
      else if (plan.keys_packed)  // or, those pack_kv has not packed yet, by the first task to need them
        PackedOnDemand::ensure(buf.kv_states + (t.b * p.Hkv + g) * plan.key_tiles, lo / kBk, (hi + kBk - 1) / kBk,
                               [&](int64_t kt) { pack_kv_tile<T>(lp, plan, t.b, g, kt, kv); });
      accumulate_keys<T>(lp, plan, kv, t.b, t.h, t.i0, t.rows, lo, hi, ws);
      for (int64_t r = 0; r < t.rows; ++r) ws.l[r] = Vec::load(&ws.lv[r * W]).reduce_add();
      if (!rows_state_finite(ws.l.data(), ws.acc.data(), Dvp, t.rows, p.Dv)) {
        if (pairs_only) widen_queries<T>(lp, t.b, t.h, t.i0, t.rows, ws);
        for (int64_t r = 0; r < t.rows; ++r)
          if (!row_state_finite(ws.l[r], ws.acc.data() + r * Dvp, p.Dv))
            exact_row_state<T>(lp, t.b, t.h, t.i0 + r, lo, hi, ws.qs.data() + r * p.D, ws.q_after, &ws.m[r], &ws.l[r],
                               ws.acc.data() + r * Dvp);
      }
    }
    if (plan.splits > 1) {
      float* state = buf.partial + task * plan.bq * plan.row_state;  // [bq, row_state]
      for (int64_t r = 0; r < t.rows; ++r) {
        state[r * plan.row_state] = ws.m[r];
        state[r * plan.row_state + 1] = ws.l[r];
        std::copy(ws.acc.data() + r * Dvp, ws.acc.data() + (r + 1) * Dvp, state + r * plan.row_state + 2);
      }
      return;
    }
    uint16_t* o = lp.o + t.b * p.o_sb + t.h * p.o_sh;
    for (int64_t r = 0; r < t.rows; ++r) {  // l = 0: every key hidden; l = NaN: a poisoned row
      const float inv = ws.l[r] == 0.0f ? 0.0f : 1.0f / ws.l[r];
      narrow_row<T>(ws.acc.data() + r * Dvp, p.Dv, inv, o + (t.i0 + r) * p.o_sl);
      if (p.lse) p.lse[t.bh * p.Lq + t.i0 + r] = ws.l[r] == 0.0f ? kNegInf : ws.m[r] + std::log(ws.l[r]);
    }
  };
  const int64_t tasks = plan.tile_tasks * plan.splits;
  if (plan.splits == 1) {  // nothing follows but the region's end: no barrier of the tasks' own (float32's run_tiles)
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t task = 0; task < tasks; ++task) run_task(task);
  } else {
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) run_task(task);
  }
}

// The key splits of each row merged by log-sum-exp in split order (attention_fused_kernels.cc's merge).
template <LowpType T>
void merge_key_splits(const LowpAttentionProblem& lp, const LowpPlan& plan, const float* partial) {
  const AttentionProblem& p = lp.p;
  const int64_t splits = plan.splits, row_state = plan.row_state;
#pragma omp for schedule(static)
  for (int64_t index = 0; index < plan.tile_tasks; ++index) {
    const TileTask t = tile_task(p, plan, index);
    uint16_t* o = lp.o + t.b * p.o_sb + t.h * p.o_sh;
    AlignedVector<float> out(static_cast<size_t>(p.Dv));
    for (int64_t r = 0; r < t.rows; ++r) {
      auto state_of = [&](int64_t s) { return partial + ((index * splits + s) * plan.bq + r) * row_state; };
      float m = kNegInf;
      bool poisoned = false;
      for (int64_t s = 0; s < splits; ++s) {
        m = std::max(m, state_of(s)[0]);
        poisoned |= std::isnan(state_of(s)[1]);
      }
      float l = poisoned ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
      std::fill(out.begin(), out.end(), poisoned ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
      if (!poisoned && m != kNegInf) {
        for (int64_t s = 0; s < splits; ++s) {
          const float* state = state_of(s);
          const float c = state[0] == kNegInf ? 0.0f : std::exp(state[0] - m);
          if (c == 0.0f) continue;
          l += c * state[1];
          for (int64_t d = 0; d < p.Dv; ++d) out[static_cast<size_t>(d)] += c * state[2 + d];
        }
      }
      narrow_row<T>(out.data(), p.Dv, l == 0.0f || std::isnan(l) ? 1.0f : 1.0f / l, o + (t.i0 + r) * p.o_sl);
      if (p.lse) p.lse[t.bh * p.Lq + t.i0 + r] = l == 0.0f ? kNegInf : m + std::log(l);
    }
  }
}

template <LowpType T>
void run(const LowpAttentionProblem& lp) {
  const AttentionProblem& p = lp.p;
  if (p.Lq == 0 || p.B == 0 || p.H == 0) return;
  const LowpPlan plan = plan_lowp<T>(p);
  const LowpBuffers buf = call_buffers(p, plan);
#pragma omp parallel num_threads(plan.threads)
  {
    Workspace& ws = thread_workspace();
    ws.reserve(p.D, plan);
    if (plan.pack_pass) pack_kv<T>(lp, plan, buf);
    run_tiles<T>(lp, plan, buf, ws);
    if (plan.splits > 1) merge_key_splits<T>(lp, plan, buf.partial);
  }
}

}  // namespace

void attention_lowp(const LowpAttentionProblem& lp) {
  if (lp.type == LowpType::kBFloat16)
    run<LowpType::kBFloat16>(lp);
  else
    run<LowpType::kFloat16>(lp);
}

}  // namespace attn::detail::ATTN_TARGET
