// Internal: the fused kernel's tile sizes, one set per instruction set. The kernel compiled for
// namespace X (attention_fused_kernels.cc, -DATTN_TARGET=X) reads them as X::Tiles and checks that
// kLanes matches the vector width its compiler flags gave simd::Vec.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include "cpu/attention_fused.h"

namespace attn::detail {

// kBq × kBk is one forward task's block of scores; the register tiles are the micro-kernels' blocks:
// Q·Kᵀ keeps kScoreRows × kScoreVecs accumulator vectors, P·V keeps kPvRows × kPvVecs.
template <SimdLevel>
struct TileTraits;

// bench/cpu_tile_sweep.sh compiles variants of the AVX-512 kernels with other values (ATTN_SWEEP_* macros,
// never set in the build): each constant below is its macro's default.
#ifndef ATTN_SWEEP_BQ
#define ATTN_SWEEP_BQ 64
#endif
#ifndef ATTN_SWEEP_BK
#define ATTN_SWEEP_BK 128
#endif
#ifndef ATTN_SWEEP_SCORE_ROWS
#define ATTN_SWEEP_SCORE_ROWS 8
#endif
#ifndef ATTN_SWEEP_SCORE_VECS
#define ATTN_SWEEP_SCORE_VECS 2
#endif
#ifndef ATTN_SWEEP_PV_ROWS
#define ATTN_SWEEP_PV_ROWS 8
#endif
#ifndef ATTN_SWEEP_PV_VECS
#define ATTN_SWEEP_PV_VECS 2
#endif
#ifndef ATTN_SWEEP_BF16_PV_ROWS
#define ATTN_SWEEP_BF16_PV_ROWS 4
#endif
#ifndef ATTN_SWEEP_BF16_PV_VECS
#define ATTN_SWEEP_BF16_PV_VECS 4
#endif
#ifndef ATTN_SWEEP_BQ_LONG
#define ATTN_SWEEP_BQ_LONG 512
#endif
#ifndef ATTN_SWEEP_LONG_KV_KB
#define ATTN_SWEEP_LONG_KV_KB 16384
#endif
#ifndef ATTN_SWEEP_FEW_PV_ROWS
#define ATTN_SWEEP_FEW_PV_ROWS 2
#endif
#ifndef ATTN_SWEEP_FEW_PV_VECS
#define ATTN_SWEEP_FEW_PV_VECS 8
#endif
#ifndef ATTN_SWEEP_UPDATE_ROWS
#define ATTN_SWEEP_UPDATE_ROWS 4
#endif
#ifndef ATTN_SWEEP_UPDATE_VECS
#define ATTN_SWEEP_UPDATE_VECS 4
#endif

// 32 zmm registers. On the Zen 4 development machine (one 512-bit FMA per cycle per core) all register tiles
// that fit them measured within 2% of each other for long sequences; on an Intel Xeon (two) the score tiles
// 12 × 2 and 6 × 4 were no better than 8 × 2 (bench/cpu_tile_sweep.sh, docs/performance/cpu_kernel.md).
template <>
struct TileTraits<SimdLevel::kAvx512> {
  static constexpr int kLanes = 16;              // floats per vector
  static constexpr int64_t kBq = ATTN_SWEEP_BQ;  // query rows per tile (64)
  // Query rows per task where a head's K and V together take at least kLongKvBytes: they then stream from the L3 or
  // memory once per task, and longer tasks divide that traffic. A task's rows still go kBq at a time through each
  // key tile (accumulate_keys), so the scores and accumulators in use stay in the L1 while the key tile waits in the
  // L2; forward_task_rows halves the rows while a call would have fewer than 4 tasks a thread. Zen 5, same-built A/B, 1
  // thread: whole 128-row tiles against 64 (session 14) H 1, L 16384, D 256 +12–14%, D 128 +2%; 512 rows run 64 at a
  // time against those (session 15) D 128 +7–8%, D 256 +6–10%, L 32768 D 64 +8%, 2 threads +8–10%; 256 rows gave
  // half that, 1024 +2% more (fewer tasks). With the threshold at 1 MB, shapes with 1–8 MB of K and V gained
  // nothing (±2%).
  static constexpr int64_t kBqLong = ATTN_SWEEP_BQ_LONG;
  static constexpr int64_t kLongKvBytes = int64_t{ATTN_SWEEP_LONG_KV_KB} << 10;
  static constexpr int64_t kBk = ATTN_SWEEP_BK;             // keys per tile (128); a multiple of kScoreVecs·kLanes
  static constexpr int kScoreRows = ATTN_SWEEP_SCORE_ROWS;  // Q·Kᵀ register tile: rows × vectors of columns (8 × 2)
  static constexpr int kScoreVecs = ATTN_SWEEP_SCORE_VECS;
  // The float32 forward's P·V register tiles, rows × vectors of columns. kPvRows × kPvVecs (8 × 2): each value vector
  // serves 8 rows, so a 64-row tile reads the value tile (64 KB at D 128, more than the L1) 8 times where 4 × 4 read it
  // 16. kRowPvRows × kRowPvVecs (4 × 4) where a value row is exactly kRowPvVecs vectors (D 64: the 32 KB value tile
  // stays in the L1, and 4 × 4 loads less per FMA); the few-query path has its own tiles (kLonePvVecs, kFewPvRows
  // below). Zen 5, same-built A/B against 4 × 4 everywhere (session 16),
  // 1 thread: D 128 +2–4% (causal at L 1024 +4%), D 256 +2%, D 32 +4%, D 64 with 8 × 2 −2 to −4%; 2 threads D 128
  // +1–3%. Before, on Zen 4: 6 × 4 2–10% slower than 4 × 4; on an Intel Xeon its +2–8% could not be told apart from
  // code layout (docs/performance/cpu_kernel.md). 8 × 2 was not measured on those machines.
  static constexpr int kPvRows = ATTN_SWEEP_PV_ROWS;
  static constexpr int kPvVecs = ATTN_SWEEP_PV_VECS;
  static constexpr int kRowPvRows = 4;
  static constexpr int kRowPvVecs = 4;
  // The few-query path's P·V (1–4 query rows: decode over long K/V, which streams from memory): a lone query row
  // 1 × kLonePvVecs (16: a value row up to D 256 in one pass, the loads folded into the FMAs), more rows kFewPvRows ×
  // kFewPvVecs (2 × 8). 4 × 4 had read each value row in column strips, all but the first from the L2, and a lone
  // query used 4 of its 16 accumulators. Zen 4, H 32 (16 at D 256), Lk 8192, 1 thread (docs/performance/cpu_kernel.md,
  // session 30): 1 query D 128 1.53×, D 256 1.63× (2 × 8 there: 0.98×), 4 queries D 128 1.56× (1 × 8: 0.92×).
  static constexpr int kLonePvVecs = 16;
  static constexpr int kFewPvRows = ATTN_SWEEP_FEW_PV_ROWS;
  static constexpr int kFewPvVecs = ATTN_SWEEP_FEW_PV_VECS;
  // The bfloat16 forward's P·V tile (vdpbf16ps on pairs of keys, bf16_pairs.h dot_pv): 4 × 4 (8 × 2 on Zen 5, session
  // 16: −2% to +1%).
  static constexpr int kBf16PvRows = ATTN_SWEEP_BF16_PV_ROWS;
  static constexpr int kBf16PvVecs = ATTN_SWEEP_BF16_PV_VECS;
  // The backwards' rank updates (dV, dK, dQ; float32 and bfloat16): rows × vectors (4 × 4; 6 × 4: 2–10% slower on
  // Zen 4; 8 × 2 on Zen 5, session 16: −1% to +2%, so unchanged).
  static constexpr int kUpdateRows = ATTN_SWEEP_UPDATE_ROWS;
  static constexpr int kUpdateVecs = ATTN_SWEEP_UPDATE_VECS;
  // The backward's blocks: kBackwardBq query rows × kBackwardBk keys. 128 keys = one dropout group (one
  // Philox block per lane, cpu/dropout.h), generated once per row and block.
  static constexpr int64_t kBackwardBq = 64;
  static constexpr int64_t kBackwardBk = 128;
};

// The AVX2 kernels' sweep macros (bench/cpu_tile_sweep.sh --avx2).
#ifndef ATTN_SWEEP_AVX2_BQ
#define ATTN_SWEEP_AVX2_BQ 64
#endif
#ifndef ATTN_SWEEP_AVX2_BK
#define ATTN_SWEEP_AVX2_BK 128
#endif
#ifndef ATTN_SWEEP_AVX2_SCORE_ROWS
#define ATTN_SWEEP_AVX2_SCORE_ROWS 6
#endif
#ifndef ATTN_SWEEP_AVX2_SCORE_VECS
#define ATTN_SWEEP_AVX2_SCORE_VECS 2
#endif
#ifndef ATTN_SWEEP_AVX2_PV_ROWS
#define ATTN_SWEEP_AVX2_PV_ROWS 6
#endif
#ifndef ATTN_SWEEP_AVX2_PV_VECS
#define ATTN_SWEEP_AVX2_PV_VECS 2
#endif
#ifndef ATTN_SWEEP_AVX2_UPDATE_ROWS
#define ATTN_SWEEP_AVX2_UPDATE_ROWS 4
#endif
#ifndef ATTN_SWEEP_AVX2_UPDATE_VECS
#define ATTN_SWEEP_AVX2_UPDATE_VECS 2
#endif

// 16 ymm registers: 6 × 2 score accumulators, 2 key vectors and a broadcast fit.
template <>
struct TileTraits<SimdLevel::kAvx2> {
  static constexpr int kLanes = 8;
  static constexpr int64_t kBq = ATTN_SWEEP_AVX2_BQ;
  static constexpr int64_t kBqLong = 512;  // as AVX-512: Zen 5's AVX2 kernel, L 16384, D 128 / 256: +13% / +21%
  static constexpr int64_t kLongKvBytes = int64_t{16} << 20;
  static constexpr int64_t kBk = ATTN_SWEEP_AVX2_BK;
  static constexpr int kScoreRows = ATTN_SWEEP_AVX2_SCORE_ROWS;
  static constexpr int kScoreVecs = ATTN_SWEEP_AVX2_SCORE_VECS;
  // P·V: 12 accumulators, 2 value vectors and a broadcast (4 × 2: 5% slower on Zen 5; on Zen 3, session 33, 4 × 2
  // with 4 × 2 scores −4% and 3 × 4 ±1%, docs/performance/zen3.md)
  static constexpr int kPvRows = ATTN_SWEEP_AVX2_PV_ROWS;
  static constexpr int kPvVecs = ATTN_SWEEP_AVX2_PV_VECS;
  static constexpr int kRowPvRows = ATTN_SWEEP_AVX2_PV_ROWS;
  static constexpr int kRowPvVecs = ATTN_SWEEP_AVX2_PV_VECS;
  static constexpr int kLonePvVecs = 8;  // 8 accumulators, the value loads folded into the FMAs, and a broadcast
  static constexpr int kFewPvRows = 1;
  static constexpr int kFewPvVecs = 8;
  static constexpr int kUpdateRows = ATTN_SWEEP_AVX2_UPDATE_ROWS;
  static constexpr int kUpdateVecs = ATTN_SWEEP_AVX2_UPDATE_VECS;
  static constexpr int64_t kBackwardBq = 64;
  static constexpr int64_t kBackwardBk = 128;
};

// The portable Vec has 8 lanes, as AVX2's, and takes AVX2's shapes.
template <>
struct TileTraits<SimdLevel::kScalar> : TileTraits<SimdLevel::kAvx2> {};

// The query tile the in_head-th task of a head takes (both forwards; tasks go head by head): in order, except under a
// causal range, where each head's last tiles (they see the most keys) come first, so that the dynamic schedule ends on
// cheap tiles and the threads finish together. Modelled (the tasks' costs by the keys they see, handed out as OpenMP's
// dynamic schedule does): H 8, L 1024, 16 threads 88% of the threads' time busy in order, 100% last tiles first.
inline int64_t forward_query_tile(bool causal, int64_t in_head, int64_t query_tiles) {
  return causal ? query_tiles - 1 - in_head : in_head;
}

// Query rows per forward task (the float32 and 16-bit forwards' plans): T::kBq, or up to T::kBqLong where the keys are
// packed and one head's K and V take kv_bytes ≥ T::kLongKvBytes (the kernels then run the rows kBq at a time through
// each key tile), halved while the call would keep fewer than 4 tasks a thread (heads: B·H). force_fused_query_tile
// (tests) overrides it, up to kForwardBqMax.
template <class T>
inline constexpr int64_t kForwardBqMax = std::max<int64_t>(128, T::kBqLong);
template <class T>
int64_t forward_task_rows(bool keys_packed, int64_t kv_bytes, int64_t heads, int64_t Lq, int threads) {
  static_assert(T::kBqLong % T::kBq == 0 && std::has_single_bit(uint64_t(T::kBqLong / T::kBq)),
                "a long task halves down to kBq");
  if (const int64_t forced = forced_fused_query_tile(); forced > 0) return std::min(forced, kForwardBqMax<T>);
  int64_t bq = keys_packed && kv_bytes >= T::kLongKvBytes ? T::kBqLong : T::kBq;
  while (bq > T::kBq && heads * ((Lq + bq - 1) / bq) < 4 * threads) bq /= 2;
  return bq;
}

// Both forwards (float32: FusedPlan::task_keys; 16-bit: LowpPlan::task_kv): many short heads whose packed operands
// together outgrow the caches (an encoder's batch: B·H in the hundreds, L up to a few hundred). Packing them all once
// per call wrote them out to memory for the tasks to read back, a third of the memory traffic of a call whose operands
// stream from memory anyway. Then each task takes a whole head's queries (run kBq rows at a time through each key
// tile) and packs that head's operands itself, into its workspace, where the products read them from the L2: from
// kTaskPackFromBytes of every kv head's packed operands together (kv_heads: B·Hkv), for heads whose own take at most
// kTaskPackMaxBytes (head_bytes), with at least 4 tasks a thread (heads: B·H) and a head's queries in one long task
// (Lq ≤ kBqLong). bench/cpu_tile_sweep.sh variants: ATTN_SWEEP_TASK_KEYS_FROM_KB.
#ifndef ATTN_SWEEP_TASK_KEYS_FROM_KB
#define ATTN_SWEEP_TASK_KEYS_FROM_KB 8192
#endif
inline constexpr int64_t kTaskPackFromBytes = int64_t{ATTN_SWEEP_TASK_KEYS_FROM_KB} << 10;
inline constexpr int64_t kTaskPackMaxBytes = int64_t{512} << 10;
// Can one task take a head's Lq queries (kBqLong rows at most, and no query rows forced by a test)?
template <class T>
bool forward_head_fits_a_task(int64_t Lq) {
  return forced_fused_query_tile() == 0 && (Lq + T::kBq - 1) / T::kBq * T::kBq <= T::kBqLong;
}
template <class T>
bool forward_whole_head_tasks(int64_t head_bytes, int64_t kv_heads, int64_t heads, int64_t Lq, int threads) {
  return forward_head_fits_a_task<T>(Lq) && kv_heads * head_bytes >= kTaskPackFromBytes &&
         head_bytes <= kTaskPackMaxBytes && heads >= 4 * threads;
}

// The fused forward's software prefetch of K and V for heads whose K and V take at least this many bytes (the range
// being accumulated). Zen 4 (issue #13): L 16384, D 128, 1 thread 80.4 → 86.1 GFLOP/s with it. Zen 5 (session 14,
// same-built A/B): it cost 2–5% wherever K and V take 0.5–8 MB (L 1024–8192, D 64–128, 1 and 2 threads; ~2000 prefetch
// instructions a key tile at D 128, for data mostly in the L2 or caught by the hardware prefetchers) and was −2% to +1%
// from 16 MB on. Before that session it started at 512 KB (half a Zen 4 or Skylake-SP core's L2), a threshold set by
// reasoning, never measured below 16 MB: a Zen 4 or Intel session should A/B ATTN_SWEEP_PREFETCH_KB=512 against this.
#ifndef ATTN_SWEEP_PREFETCH_KB  // bench/cpu_tile_sweep.sh variants
#define ATTN_SWEEP_PREFETCH_KB 16384
#endif
inline constexpr int64_t kPrefetchFromBytes = int64_t{ATTN_SWEEP_PREFETCH_KB} << 10;

namespace avx512 {
using Tiles = TileTraits<SimdLevel::kAvx512>;
}
namespace avx512bf16 {  // the bfloat16 kernel's AVX512_BF16 build (attention_lowp_kernels.cc): AVX-512's tiles
using Tiles = TileTraits<SimdLevel::kAvx512>;
}
namespace avx2 {
using Tiles = TileTraits<SimdLevel::kAvx2>;
}
namespace scalar {
using Tiles = TileTraits<SimdLevel::kScalar>;
}

}  // namespace attn::detail
