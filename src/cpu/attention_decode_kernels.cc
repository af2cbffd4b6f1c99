// The decoding attention kernel (cpu/attention_decode.h), compiled once per instruction set: ATTN_TARGET
// names the namespace (avx512, avx2, scalar) and the compiler flags pick simd::Vec.
//
// One task per (batch, kv head); it serves every query row of the heads of its group:
//   s = scale · q · Kᵀ      a key block at a time: kKeyBlock keys are kKeyBlock / W vectors, and each of
//                           the D elements of q is one broadcast FMA into them (independent chains over d);
//                           the last, incomplete block's keys are rows: one dot product each
//   s = mask(s)             padding, and the last block's keys beyond Lk
//   p = exp(s − max s),  l = Σ p
//   out = Σ_j p_j · v_j / l  (keys with p_j = 0 skipped: a hidden value is never multiplied)
// The cache holds float32, bfloat16 or int8 (cpu/attention_decode.h): elements are widened as they are loaded,
// int8 scales applied once per key (to its score, and to its weight before P·V).
// Non-finite input follows the fused kernel's rule: a visible NaN score makes the row NaN, a row with every
// key hidden is 0.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/aligned_vector.h"
#include "cpu/attention_decode.h"
#include "cpu/simd.h"
#include "cpu/threads.h"

#ifndef ATTN_TARGET
#error "compile this file with -DATTN_TARGET=avx512|avx2|scalar"
#endif

namespace attn::detail::ATTN_TARGET {
namespace {

using simd::Vec;
constexpr int64_t W = Vec::W;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
static_assert(kKeyBlock % W == 0, "a key block is whole vectors");
constexpr int64_t kBlockVecs = kKeyBlock / W;                      // vectors per key block
constexpr int64_t kChains = kBlockVecs >= 4 ? 1 : 4 / kBlockVecs;  // independent FMA chains over d
// Below this many FLOPs a call runs on the calling thread: a parallel region costs more than the work.
constexpr int64_t kParallelFlops = int64_t{1} << 18;

// W cached elements as floats (bf16 widened, int8 converted; an int8 element's scale is applied by the caller).
float to_float(float x) { return x; }
float to_float(uint16_t x) { return bf16_to_float(x); }
float to_float(int8_t x) { return static_cast<float>(x); }

template <class T>
Vec load_floats(const T* p) {
  float buf[W];
  for (int64_t i = 0; i < W; ++i) buf[i] = to_float(p[i]);
  return Vec::load(buf);
}
template <>
Vec load_floats(const float* p) {
  return Vec::load(p);
}
#if defined(__AVX512F__)
template <>
Vec load_floats(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
}
template <>
Vec load_floats(const int8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}
#elif defined(__AVX2__) && defined(__FMA__)
template <>
Vec load_floats(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
}
template <>
Vec load_floats(const int8_t* p) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}
#endif

// Where the blocks of one (batch, kv head) lie: key block blk at kb[blk] (transposed [D, kKeyBlock], the last
// incomplete one rows [n, D]); value j at vb[j / kKeyBlock] + (j % kKeyBlock)·v_sl; int8 scale j at
// ksb/vsb[j / kKeyBlock][j % kKeyBlock]. Contiguous caches and paged ones (a block table) alike.
template <class T>
struct HeadBlocks {
  const int32_t* table = nullptr;      // this batch's block ids; null: its blocks follow one another
  const T *k = nullptr, *v = nullptr;  // the pools at head g (block ids count from here), or (b, g)'s block 0
  const float *k_scale = nullptr, *v_scale = nullptr;
  int64_t k_step = 0, v_step = 0, s_step = 0;  // elements from one block (id) to the next
  int64_t id(int64_t blk) const { return table ? table[blk] : blk; }
  const T* kb(int64_t blk) const { return k + id(blk) * k_step; }
  const T* vb(int64_t blk) const { return v + id(blk) * v_step; }
  const float* ksb(int64_t blk) const { return k_scale + id(blk) * s_step; }
  const float* vsb(int64_t blk) const { return v_scale + id(blk) * s_step; }
};

// s[0, nblocks·kKeyBlock) = qs · Kᵀ over complete key blocks (int8: before the keys' scales).  qs: [D] (scaled)
template <class KT>
void block_scores(const float* qs, const HeadBlocks<KT>& hb, int64_t D, int64_t nblocks, float* s) {
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const KT* block = hb.kb(blk);  // [D, kKeyBlock]
    Vec acc[kChains][kBlockVecs];
    for (auto& chain : acc)
      for (Vec& a : chain) a = Vec::zero();
    int64_t d = 0;
    for (; d + kChains <= D; d += kChains)
      for (int64_t c = 0; c < kChains; ++c) {
        const Vec qd = Vec::set1(qs[d + c]);
        for (int64_t u = 0; u < kBlockVecs; ++u)
          acc[c][u] = Vec::fmadd(qd, load_floats(block + (d + c) * kKeyBlock + u * W), acc[c][u]);
      }
    for (; d < D; ++d) {
      const Vec qd = Vec::set1(qs[d]);
      for (int64_t u = 0; u < kBlockVecs; ++u)
        acc[0][u] = Vec::fmadd(qd, load_floats(block + d * kKeyBlock + u * W), acc[0][u]);
    }
    for (int64_t u = 0; u < kBlockVecs; ++u) {
      Vec sum = acc[0][u];
      for (int64_t c = 1; c < kChains; ++c) sum = sum + acc[c][u];
      sum.store(s + blk * kKeyBlock + u * W);
    }
  }
}

// s[0, n) = qs · k_j for the n keys stored as rows k (the last, incomplete block: [n, D]).
template <class KT>
void row_scores(const float* qs, const KT* k, int64_t D, int64_t n, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const KT* kj = k + j * D;
    Vec acc = Vec::zero();
    int64_t d = 0;
    for (; d + W <= D; d += W) acc = Vec::fmadd(Vec::load(qs + d), load_floats(kj + d), acc);
    float sum = acc.reduce_add();
    for (; d < D; ++d) sum += qs[d] * to_float(kj[d]);
    s[j] = sum;
  }
}

// out[e0, e0 + NV·W) = (out[e0 ..] if accumulate) + Σ_j p_j · v_j[e0 ..] over the keys j in [j_begin, j_end) with
// p_j != 0, times scale: NV accumulator vectors per chain, two chains (even and odd keys), all in registers (NV is a
// compile-time count). Block by block (j_begin a multiple of kKeyBlock).
template <int NV, class VT>
void weighted_value_vectors(const float* p, int64_t j_begin, int64_t j_end, const HeadBlocks<VT>& hb, int64_t v_sl,
                            int64_t e0, float scale, bool accumulate, float* out) {
  Vec even[NV], odd[NV];  // (never indexed by a run-time value: they stay in registers)
  for (int u = 0; u < NV; ++u) even[u] = odd[u] = Vec::zero();
  const auto add_key = [&](Vec* a, float pj_, const VT* vj) {
    if (pj_ == 0.0f) return;
    const Vec pj = Vec::set1(pj_);
    for (int u = 0; u < NV; ++u) a[u] = Vec::fmadd(pj, load_floats(vj + e0 + u * W), a[u]);
  };
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kKeyBlock) {
    const VT* block = hb.vb(j0 / kKeyBlock);
    const float* pb = p + j0;
    const int64_t n = std::min(kKeyBlock, j_end - j0);
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
      add_key(even, pb[j], block + j * v_sl);
      add_key(odd, pb[j + 1], block + (j + 1) * v_sl);
    }
    if (j < n) add_key(even, pb[j], block + j * v_sl);
  }
  const Vec s = Vec::set1(scale);
  for (int u = 0; u < NV; ++u) {
    Vec sum = even[u] + odd[u];
    if (accumulate) sum = Vec::load(out + e0 + u * W) + sum;
    (sum * s).store(out + e0 + u * W);
  }
}

// Keys per chunk of weighted_values when a row of values is wider than one pass of 8 vectors (Dv > 8·W: AVX2 and the
// scalar level from Dv 65, AVX-512 from 129; the passes after the 8-vector ones, and the element-wise tail, go over
// the chunk too): each pass then reads the chunk's values, 64 rows (32 KB at Dv 128 in float32), from the cache the
// first pass brought them into; a pass over all Lk keys had streamed the values from memory for each pass (AVX2, Lk
// 8192, Dv 128: the float32 cache's decode 19 ms against the plain kernel's 15). (Rows of two to four narrower passes,
// e.g. AVX-512 at Dv 80–112, are left as they were: not measured.)
constexpr int64_t kValueChunkKeys = 64;
static_assert(kValueChunkKeys % kKeyBlock == 0, "chunks of whole key blocks");

// out[0, Dv) = Σ_j p_j · v_j over the keys with p_j != 0, times inv.  p: [Lk]; value rows through vb.
// int8 values: p holds p_j · scale_j already. Whole vectors in passes of 8, 4, 2, 1; the tail element-wise; the keys
// in chunks where there is more than one pass.
template <class VT>
void weighted_values(const float* p, int64_t Lk, const HeadBlocks<VT>& hb, int64_t v_sl, int64_t Dv, float inv,
                     float* out) {
  const int64_t chunk = Dv > 8 * W ? kValueChunkKeys : std::max<int64_t>(Lk, 1);
  for (int64_t j0 = 0; j0 < Lk; j0 += chunk) {
    const int64_t j1 = std::min(Lk, j0 + chunk);
    const bool more = j0 > 0;               // add to what the chunks before left in out
    const float s = j1 == Lk ? inv : 1.0f;  // the last chunk scales the sums
    int64_t e0 = 0;
    for (; e0 + 8 * W <= Dv; e0 += 8 * W) weighted_value_vectors<8>(p, j0, j1, hb, v_sl, e0, s, more, out);
    if (e0 + 4 * W <= Dv) weighted_value_vectors<4>(p, j0, j1, hb, v_sl, e0, s, more, out), e0 += 4 * W;
    if (e0 + 2 * W <= Dv) weighted_value_vectors<2>(p, j0, j1, hb, v_sl, e0, s, more, out), e0 += 2 * W;
    if (e0 + W <= Dv) weighted_value_vectors<1>(p, j0, j1, hb, v_sl, e0, s, more, out), e0 += W;
    for (int64_t e = e0; e < Dv; ++e) {  // the tail below a whole vector
      float acc = 0.0f;
      for (int64_t j = j0; j < j1; ++j)
        if (p[j] != 0.0f) acc += p[j] * to_float(hb.vb(j / kKeyBlock)[(j % kKeyBlock) * v_sl + e]);
      out[e] = (more ? out[e] + acc : acc) * s;
    }
  }
}

// One query row: out [Dv] from q [D] over the blocks of head (b, g). s: scratch [nblocks·kKeyBlock], qs: [D].
template <class T>
void decode_row(const DecodeProblem& p, const float* q, const HeadBlocks<T>& hb, const uint8_t* pad, float* out,
                float* s, float* qs) {
  const int64_t complete = p.Lk / kKeyBlock, padded = (p.Lk + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  // qs = scale · q, unless |scale| > 1 makes a finite element overflow (q near the float range, every score
  // finite): then q as it is, and the scores take the scale after the product
  for (int64_t d = 0; d < p.D; ++d) qs[d] = q[d] * p.scale;
  bool overflows = false;
  if (std::fabs(p.scale) > 1.0f)  // only a factor above 1 can overflow a finite element
    for (int64_t d = 0; d < p.D && !overflows; ++d) overflows = std::isinf(qs[d]) && std::isfinite(q[d]);
  if (overflows) std::copy(q, q + p.D, qs);
  block_scores(qs, hb, p.D, complete, s);
  if (p.Lk > complete * kKeyBlock)
    row_scores(qs, hb.kb(complete), p.D, p.Lk - complete * kKeyBlock, s + complete * kKeyBlock);
  if (overflows)
    for (int64_t j = 0; j < p.Lk; ++j) s[j] *= p.scale;
  if (p.k_scale)
    for (int64_t j = 0; j < p.Lk; ++j) s[j] *= hb.ksb(j / kKeyBlock)[j % kKeyBlock];
  std::fill(s + p.Lk, s + padded, kNegInf);  // the last block's keys beyond Lk
  if (pad)
    for (int64_t j = 0; j < p.Lk; ++j)
      if (pad[j]) s[j] = kNegInf;
  Vec mx = Vec::set1(kNegInf);
  for (int64_t j = 0; j < padded; j += W) mx = Vec::max(mx, Vec::load(s + j));
  const float m = mx.reduce_max();
  if (m == kNegInf || std::isnan(m)) {  // every key hidden (0), unless a visible score is NaN (the row is NaN)
    bool nan = std::isnan(m);
    for (int64_t j = 0; j < p.Lk && !nan; ++j) nan = std::isnan(s[j]);
    std::fill(out, out + p.Dv, nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
    return;
  }
  const Vec mv = Vec::set1(m);
  Vec sum = Vec::zero();
  for (int64_t j = 0; j < padded; j += W) {
    const Vec e = simd::exp(Vec::load(s + j) - mv);
    e.store(s + j);
    sum = sum + e;
  }
  const float l = sum.reduce_add();  // NaN when a visible score is NaN: then so is every output
  if (std::isnan(l)) {
    std::fill(out, out + p.Dv, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  if (p.v_scale)  // a hidden key's weight stays exactly 0, so its value is skipped even where its scale is NaN
    for (int64_t j = 0; j < p.Lk; ++j)
      if (s[j] != 0.0f) s[j] *= hb.vsb(j / kKeyBlock)[j % kKeyBlock];
  weighted_values(s, p.Lk, hb, p.v_sl, p.Dv, 1.0f / l, out);
}

// Every query row of the heads of kv head g in batch b, the cache's elements being T.
template <class T>
void decode_task(const DecodeProblem& p, int64_t b, int64_t g) {
  thread_local AlignedVector<float> s, qs;
  const int64_t padded = (p.Lk + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  if (static_cast<int64_t>(s.size()) < padded) s.resize(static_cast<size_t>(padded));
  if (static_cast<int64_t>(qs.size()) < p.D) qs.resize(static_cast<size_t>(p.D));
  HeadBlocks<T> hb;
  const T* kt = static_cast<const T*>(p.kt);
  const T* v = static_cast<const T*>(p.v);
  if (p.block_table) {  // blocks of the pools, each holding every head
    hb.table = p.block_table + b * p.table_sb;
    hb.k = kt + g * p.kt_sh, hb.v = v + g * p.v_sh;
    if (p.k_scale) hb.k_scale = p.k_scale + g * p.s_sh, hb.v_scale = p.v_scale + g * p.s_sh;
    hb.k_step = p.kt_sb, hb.v_step = p.v_sb, hb.s_step = p.s_sb;
  } else {  // batch b's blocks one after another
    hb.k = kt + b * p.kt_sb + g * p.kt_sh, hb.v = v + b * p.v_sb + g * p.v_sh;
    if (p.k_scale) hb.k_scale = p.k_scale + b * p.s_sb + g * p.s_sh, hb.v_scale = p.v_scale + b * p.s_sb + g * p.s_sh;
    hb.k_step = p.D * kKeyBlock, hb.v_step = kKeyBlock * p.v_sl, hb.s_step = kKeyBlock;
  }
  const uint8_t* pad = p.key_padding ? p.key_padding + b * p.pad_sb : nullptr;
  for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h)
    for (int64_t i = 0; i < p.Lq; ++i)
      decode_row(p, p.q + b * p.q_sb + h * p.q_sh + i * p.q_sl, hb, pad, p.o + b * p.o_sb + h * p.o_sh + i * p.o_sl,
                 s.data(), qs.data());
}

void decode_task(const DecodeProblem& p, int64_t b, int64_t g) {
  switch (p.kv_type) {
    case KVType::kFloat32: decode_task<float>(p, b, g); return;
    case KVType::kBFloat16: decode_task<uint16_t>(p, b, g); return;
    case KVType::kInt8: decode_task<int8_t>(p, b, g); return;
  }
}

}  // namespace

void attention_decode(const DecodeProblem& p) {
  if (p.B == 0 || p.H == 0 || p.Lq == 0) return;
  const int64_t tasks = p.B * p.Hkv;
  const int64_t flops = 2 * p.B * p.H * p.Lq * p.Lk * (p.D + p.Dv);
  const int threads = flops < kParallelFlops ? 1 : resolve_threads(p.num_threads);
  if (threads == 1) {
    for (int64_t t = 0; t < tasks; ++t) decode_task(p, t / p.Hkv, t % p.Hkv);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) decode_task(p, t / p.Hkv, t % p.Hkv);
}

}  // namespace attn::detail::ATTN_TARGET
