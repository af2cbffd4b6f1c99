// The decoding attention kernel (cpu/attention_decode.h) against the reference on the shared case list's
// cases it serves (no mask but key padding, every key causally visible), plus decode shapes of its own: odd
// key counts around the key block, odd head sizes, GQA, fully padded rows (→ 0), one and two threads, on
// every SIMD level the machine has.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "attn/error.h"
#include "attn/half.h"
#include "attn/layers/decode_cache.h"

#include "attention_cases.h"
#include "attn/attention.h"
#include "cpu/attention_decode.h"
#include "layers/kv_cache.h"
#include "simd_levels.h"
#include "test_util.h"

namespace attn {
namespace {

constexpr double kTol = 2e-5;  // float32 kernel vs the double reference, inputs in [-1, 1]

bool decode_serves(const test::AttentionCase& c) {
  const bool all_visible =
      c.causal == CausalAlignment::kNone || (c.causal == CausalAlignment::kBottomRight && c.Lq == 1);
  return all_visible && c.mask == test::MaskKind::kNone && !c.alibi && c.window == 0;
}

// p's query, output, padding and scale fields for `in` (p's cache fields already set), and the call: out [B, H, Lq,
// Dv].
Tensor decode_into(detail::DecodeProblem& p, const test::CaseInputs& in, int threads) {
  const int64_t B = in.q.dim(0), H = in.q.dim(1), Lq = in.q.dim(2), D = in.q.dim(3), Dv = in.v.dim(3);
  Tensor out({B, H, Lq, Dv});
  p.B = B, p.H = H, p.Hkv = in.k.dim(1), p.Lq = Lq, p.Lk = in.k.dim(2), p.D = D, p.Dv = Dv;
  p.q = in.q.f32(), p.q_sb = H * Lq * D, p.q_sh = Lq * D, p.q_sl = D;
  p.o = out.f32(), p.o_sb = H * Lq * Dv, p.o_sh = Lq * Dv, p.o_sl = Dv;
  if (in.options.key_padding_mask.defined()) p.key_padding = in.options.key_padding_mask.b8(), p.pad_sb = p.Lk;
  p.scale = in.options.scale.value_or(1.0f / std::sqrt(static_cast<float>(D)));
  p.num_threads = threads;
  detail::attention_decode(p);
  return out;
}

// out [B, H, Lq, Dv] through attention_decode, K rearranged into the transposed key blocks and stored as `type`;
// deq_k, deq_v (if given) receive the K and V the cache holds, widened back to float32 ([B, Hkv, Lk, D] each).
// scale: in.options.scale, else 1/√D.
Tensor run_decode(const test::CaseInputs& in, int threads, detail::KVType type = detail::KVType::kFloat32,
                  Tensor* deq_k = nullptr, Tensor* deq_v = nullptr) {
  const Shape& qs = in.q.shape();
  const int64_t B = qs[0], D = qs[3], Hkv = in.k.dim(1), Lk = in.k.dim(2), Dv = in.v.dim(3);
  const int64_t head = detail::key_block_floats(D, Lk), size = detail::kv_type_size(type);
  std::vector<std::byte> kt(static_cast<size_t>(B * Hkv * head * size), std::byte{0x7f});  // unused keys: junk
  std::vector<std::byte> v(static_cast<size_t>(B * Hkv * Lk * Dv * size));
  std::vector<float> k_scale(static_cast<size_t>(B * Hkv * Lk)), v_scale(k_scale.size());
  std::vector<float> column(static_cast<size_t>(D));
  for (int64_t bg = 0; bg < B * Hkv; ++bg)
    for (int64_t j = 0; j < Lk; ++j) {
      const float* kj = in.k.f32() + (bg * Lk + j) * D;
      k_scale[static_cast<size_t>(bg * Lk + j)] =
          detail::store_kv(kj, D, type, kt.data() + (bg * head + detail::key_block_index(D, j, 0, Lk)) * size,
                           detail::key_element_stride(j, Lk));
      v_scale[static_cast<size_t>(bg * Lk + j)] =
          detail::store_kv(in.v.f32() + (bg * Lk + j) * Dv, Dv, type, v.data() + (bg * Lk + j) * Dv * size, 1);
    }
  auto widen = [&](const std::byte* base, int64_t i, float scale) {
    switch (type) {
      case detail::KVType::kFloat32: return reinterpret_cast<const float*>(base)[i];
      case detail::KVType::kBFloat16: return bf16_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
      case detail::KVType::kInt8: return scale * static_cast<float>(reinterpret_cast<const int8_t*>(base)[i]);
    }
    return 0.0f;
  };
  if (deq_k && deq_v) {
    *deq_k = Tensor(in.k.shape()), *deq_v = Tensor(in.v.shape());
    for (int64_t bg = 0; bg < B * Hkv; ++bg)
      for (int64_t j = 0; j < Lk; ++j) {
        const size_t r = static_cast<size_t>(bg * Lk + j);
        for (int64_t d = 0; d < D; ++d)
          deq_k->f32()[static_cast<int64_t>(r) * D + d] =
              widen(kt.data(), bg * head + detail::key_block_index(D, j, d, Lk), k_scale[r]);
        for (int64_t e = 0; e < Dv; ++e)
          deq_v->f32()[static_cast<int64_t>(r) * Dv + e] =
              widen(v.data(), static_cast<int64_t>(r) * Dv + e, v_scale[r]);
      }
  }
  detail::DecodeProblem p;
  p.kv_type = type;
  p.kt = kt.data(), p.kt_sb = Hkv * head, p.kt_sh = head;
  p.v = v.data(), p.v_sb = Hkv * Lk * Dv, p.v_sh = Lk * Dv, p.v_sl = Dv;
  if (type == detail::KVType::kInt8)
    p.k_scale = k_scale.data(), p.v_scale = v_scale.data(), p.s_sb = Hkv * Lk, p.s_sh = Lk;
  return decode_into(p, in, threads);
}

std::vector<test::AttentionCase> decode_cases() {
  std::vector<test::AttentionCase> cases;
  for (const test::AttentionCase& c : test::attention_cases(test::test_volume(150, 40)))
    if (decode_serves(c) && !c.weights) cases.push_back(c);
  for (int64_t Lq : {1, 3, 4})
    for (int64_t Lk : {1, 15, 16, 17, 33, 100})
      for (int64_t D : {1, 7, 32, 80}) {
        test::AttentionCase c;
        c.B = 3, c.H = 4, c.Hkv = Lk % 2 ? 2 : 4, c.Lq = Lq, c.Lk = Lk, c.D = D, c.Dv = D == 7 ? 9 : D;
        c.key_padding = Lk > 15;  // the last batch entirely padding: its rows are 0
        cases.push_back(c);
      }
  test::AttentionCase wide;  // values of more than one pass of 8 vectors on AVX-512 too: keys in chunks of 64
  wide.B = 2, wide.H = 2, wide.Hkv = 1, wide.Lq = 1, wide.Lk = 150, wide.D = 144, wide.Dv = 144,
  wide.key_padding = true;
  cases.push_back(wide);
  test::AttentionCase big;  // enough work for a parallel region
  big.B = 2, big.H = 8, big.Hkv = 2, big.Lq = 2, big.Lk = 1000, big.D = 64, big.Dv = 64, big.key_padding = true;
  cases.push_back(big);
  return cases;
}

TEST(Decode, MatchesTheReference) {
  const auto cases = decode_cases();
  ASSERT_GT(cases.size(), 80u);
  int checked = 0;
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    test::CaseInputs in = test::make_inputs(c, static_cast<uint32_t>(n));
    in.options.impl = AttentionImpl::kReference;
    in.options.causal = CausalAlignment::kNone;  // (bottom-right with one query hides nothing)
    const Tensor ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options).output;
    for (auto level : test::simd_levels())
      for (int threads : {1, 2}) {
        SCOPED_TRACE(c.name() + " simd=" + detail::simd_level_name(level) + " threads=" + std::to_string(threads));
        test::SimdGuard guard(level);
        EXPECT_LE(test::max_abs_diff(run_decode(in, threads), ref), kTol);
        ++checked;
      }
  }
  EXPECT_GT(checked, 400);
}

// The Transformer's own caches (layers/kv_cache.h), contiguous and paged, written one position at a time for every
// row in turn (so a row's blocks interleave with the others' in the pool, and each block is transposed when it
// completes): the kernel must give exactly what it gives over the plain layout of run_decode (the same elements, the
// same order of sums), on every level and cache type, with GQA and key padding. A layout whose head, row or block
// strides were wrong reads other heads' or rows' values.
TEST(Decode, TheTransformersCachesReadAsThePlainLayout) {
  int checked = 0;
  const auto cases = decode_cases();
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    if (c.D != c.Dv || c.B * c.Lk > 4000) continue;  // one head size for K and V, as a model's cache holds
    test::CaseInputs in = test::make_inputs(c, static_cast<uint32_t>(n));
    const int64_t B = c.B, Hkv = c.Hkv, Lk = c.Lk, D = c.D, width = Hkv * D;
    std::vector<float> k_rows(static_cast<size_t>(B * width)), v_rows(k_rows.size());  // one position: [B, Hkv·D]
    for (detail::KVType type : {detail::KVType::kFloat32, detail::KVType::kBFloat16, detail::KVType::kInt8})
      for (bool paged : {false, true}) {
        layers::KVCache cache;
        cache.allocate(B, Lk + 5, Hkv, D, paged, type);
        for (int64_t j = 0; j < Lk; ++j) {
          for (int64_t b = 0; b < B; ++b)
            for (int64_t g = 0; g < Hkv; ++g)
              for (int64_t d = 0; d < D; ++d) {
                const int64_t from = ((b * Hkv + g) * Lk + j) * D + d, to = b * width + g * D + d;
                k_rows[static_cast<size_t>(to)] = in.k.f32()[from];
                v_rows[static_cast<size_t>(to)] = in.v.f32()[from];
              }
          cache.write(k_rows.data(), v_rows.data(), width, B, j, 1);
        }
        const auto decode_from_cache = [&](const test::CaseInputs& x) {
          detail::DecodeProblem p;
          cache.describe(p);
          return decode_into(p, x, 1);
        };
        for (auto level : test::simd_levels()) {
          SCOPED_TRACE(c.name() + (paged ? " paged " : " contiguous ") + std::to_string(static_cast<int>(type)) +
                       " simd=" + detail::simd_level_name(level));
          test::SimdGuard guard(level);
          EXPECT_EQ(test::max_abs_diff(decode_from_cache(in), run_decode(in, 1, type)), 0.0);
          ++checked;
        }
        if (B < 2) continue;
        // then the rows move as beam search and a shrinking batch move them: a paged cache's row b continues row b − 1
        // (reorder: complete blocks shared, the incomplete one copied or handed over), a contiguous cache drops row 0
        // (move_rows); the cache must read as the plain layout of the rows it now holds
        std::vector<int64_t> rows;
        if (paged) {
          std::vector<int64_t> parent(static_cast<size_t>(B));
          for (int64_t b = 0; b < B; ++b)  // 0 continues itself and in row 1 (a copy), b − 1 in row b (a handover)
            parent[static_cast<size_t>(b)] = std::max<int64_t>(b - 1, 0), rows.push_back(std::max<int64_t>(b - 1, 0));
          cache.reorder(parent, Lk);
        } else {
          cache.move_rows(1, 0, B - 1, Lk);
          cache.N = B - 1;
          for (int64_t b = 1; b < B; ++b) rows.push_back(b);
        }
        const auto take_rows = [&](const Tensor& t, bool all_rows_of_q) {  // t's batch rows `rows` (q: the first)
          Shape shape = t.shape();
          shape[0] = static_cast<int64_t>(rows.size());
          Tensor out(shape, t.dtype());
          const int64_t row_bytes = static_cast<int64_t>(t.nbytes()) / t.dim(0);
          for (size_t r = 0; r < rows.size(); ++r)
            std::memcpy(
                static_cast<char*>(out.raw()) + static_cast<int64_t>(r) * row_bytes,
                static_cast<const char*>(t.raw()) + (all_rows_of_q ? static_cast<int64_t>(r) : rows[r]) * row_bytes,
                static_cast<size_t>(row_bytes));
          return out;
        };
        test::CaseInputs moved = in;
        moved.q = take_rows(in.q, true), moved.k = take_rows(in.k, false), moved.v = take_rows(in.v, false);
        if (in.options.key_padding_mask.defined())
          moved.options.key_padding_mask = take_rows(in.options.key_padding_mask, false);
        SCOPED_TRACE(c.name() + (paged ? " paged, reordered " : " contiguous, moved ") +
                     std::to_string(static_cast<int>(type)));
        EXPECT_EQ(test::max_abs_diff(decode_from_cache(moved), run_decode(moved, 1, type)), 0.0);
      }
  }
  EXPECT_GT(checked, 300);
}

// bfloat16 and int8 caches: against the reference on the K and V the cache holds (the kernel's own error), and
// against the float32 inputs (the storage's error: relative ≤ 2e-2, the bar for an int8 cache).
TEST(Decode, QuantizedCachesMatchTheReference) {
  const auto cases = decode_cases();
  int checked = 0;
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    test::CaseInputs in = test::make_inputs(c, static_cast<uint32_t>(n));
    in.options.impl = AttentionImpl::kReference;
    in.options.causal = CausalAlignment::kNone;
    const Tensor exact = scaled_dot_product_attention(in.q, in.k, in.v, in.options).output;
    double exact_scale = 0.0;
    for (int64_t i = 0; i < exact.numel(); ++i) exact_scale = std::max(exact_scale, std::fabs(double{exact.f32()[i]}));
    for (detail::KVType type : {detail::KVType::kBFloat16, detail::KVType::kInt8})
      for (auto level : test::simd_levels()) {
        SCOPED_TRACE(c.name() + (type == detail::KVType::kInt8 ? " int8" : " bf16") +
                     " simd=" + detail::simd_level_name(level));
        test::SimdGuard guard(level);
        Tensor k, v;
        const Tensor got = run_decode(in, 1, type, &k, &v);
        const Tensor held = scaled_dot_product_attention(in.q, k, v, in.options).output;
        EXPECT_LE(test::max_abs_diff(got, held), kTol);
        EXPECT_LE(test::max_abs_diff(got, exact), 2e-2 * std::max(exact_scale, 1e-3));
        ++checked;
      }
  }
  EXPECT_GT(checked, 150);
}

// An int8 row of tiny values (max below ~3.7e-37, where 127 / max overflows float) is stored as any other: its
// largest element as ±127 and the rest in proportion (the reciprocal had been inf, and x · inf converted to int8
// undefined: 0 in practice, the whole token lost).
TEST(Decode, Int8StoresRowsOfTinyValues) {
  const float x[4] = {1e-37f, -5e-38f, 2e-38f, 0.0f};
  int8_t q[4] = {};
  const float scale = detail::store_kv(x, 4, detail::KVType::kInt8, q, 1);
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[3], 0);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(scale * q[i], x[i], 1e-37 / 254 * 1.01) << i;
}

// The fused kernel's rule for non-finite input: a NaN score poisons its row, a hidden key's value (here
// padding holding Inf) is never multiplied.
TEST(Decode, NonFiniteInputFollowsTheFusedRule) {
  test::AttentionCase c;
  c.B = 3, c.H = 2, c.Hkv = 2, c.Lq = 1, c.Lk = 20, c.D = 16, c.Dv = 16,
  c.key_padding = true;  // batch 0 pads keys 3, 10, 17; batch 1 keys 0..3, 15..19
  // every cache type: an int8 cache gives the hidden key a NaN value scale, which its weight of 0 had multiplied
  for (auto type : {detail::KVType::kFloat32, detail::KVType::kBFloat16, detail::KVType::kInt8})
    for (auto level : test::simd_levels()) {
      test::SimdGuard guard(level);
      test::CaseInputs in = test::make_inputs(c, 5);
      in.k.f32()[(0 * 20 + 2) * 16 + 2] = NAN;                  // batch 0, head 0, key 2: visible
      in.v.f32()[((1 * 2 + 0) * 20 + 19) * 16 + 5] = INFINITY;  // batch 1, head 0, key 19: padding
      const Tensor out = run_decode(in, 1, type);
      for (int64_t e = 0; e < 16; ++e) {
        EXPECT_TRUE(std::isnan(out.f32()[e])) << e;              // (b 0, h 0)
        EXPECT_TRUE(std::isfinite(out.f32()[2 * 16 + e])) << e;  // (b 1, h 0)
      }
    }
}

// Queries near the float range with tiny keys, so every score is moderate, and |scale| > 1: scale · q overflows
// while scale · (q · k) does not. The kernel must give the reference's output (it keeps q unscaled and scales the
// scores after the product), on every SIMD level, for scale 2 and −2.
TEST(Decode, QueriesNearTheFloatRangeWithModerateScores) {
  test::AttentionCase c;
  c.B = 1, c.H = 2, c.Hkv = 2, c.Lq = 2, c.Lk = 21, c.D = 4, c.Dv = 4;
  for (float scale : {2.0f, -2.0f})
    for (auto level : test::simd_levels()) {
      SCOPED_TRACE(std::string(detail::simd_level_name(level)) + " scale " + std::to_string(scale));
      test::SimdGuard guard(level);
      test::CaseInputs in = test::make_inputs(c, 7);
      for (int64_t i = 0; i < in.k.numel(); ++i) in.k.f32()[i] *= 2e-38f;
      for (int64_t h = 0; h < 2; ++h)  // row 1 of each head huge: 2.5e38 · 2 overflows
        for (int64_t d = 0; d < 4; ++d) in.q.f32()[(h * 2 + 1) * 4 + d] = d % 2 ? -2.5e38f : 2.5e38f;
      in.options.scale = scale;
      in.options.impl = AttentionImpl::kReference;
      const Tensor ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options).output;
      ASSERT_TRUE(test::all_finite(ref));
      EXPECT_LE(test::max_abs_diff(run_decode(in, 1), ref), kTol);
    }
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// The error a cache type's storage allows in an output of values in [-1, 1]: float32 the kernel's rounding; bfloat16
// half an ulp of 2^-8 relative per element (8e-3 leaves twice that); int8 half a step of max|x| / 127 per element.
double storage_tolerance(KVCacheType type) {
  return type == KVCacheType::kFloat32 ? kTol : type == KVCacheType::kBFloat16 ? 8e-3 : 2e-2;
}

// The public DecodeCache: appended in pieces, its attention equals scaled_dot_product_attention over the whole
// K/V (float32 exactly up to the kernel's rounding; int8 within its storage error); misuse is a typed error.
TEST(DecodeCache, AttendsLikeSdpaOverWhatWasAppended) {
  test::AttentionCase c;
  c.B = 2, c.H = 4, c.Hkv = 2, c.Lq = 3, c.Lk = 37, c.D = 24, c.Dv = 24, c.key_padding = true;
  test::CaseInputs in = test::make_inputs(c, 11);
  in.options.impl = AttentionImpl::kReference;
  const Tensor want = scaled_dot_product_attention(in.q, in.k, in.v, in.options).output;
  auto slice = [](const Tensor& t, int64_t a, int64_t z) {  // positions [a, z) of [B, G, L, D]
    Tensor out({t.dim(0), t.dim(1), z - a, t.dim(3)});
    for (int64_t bg = 0; bg < t.dim(0) * t.dim(1); ++bg)
      for (int64_t j = a; j < z; ++j)
        for (int64_t d = 0; d < t.dim(3); ++d)
          out.f32()[(bg * (z - a) + j - a) * t.dim(3) + d] = t.f32()[(bg * t.dim(2) + j) * t.dim(3) + d];
    return out;
  };
  for (KVCacheType type : {KVCacheType::kFloat32, KVCacheType::kBFloat16, KVCacheType::kInt8}) {
    SCOPED_TRACE(kv_cache_name(type));
    DecodeCache cache(c.B, c.Hkv, c.D, 40, type);
    cache.append(slice(in.k, 0, 20), slice(in.v, 0, 20));
    cache.append(slice(in.k, 20, 37), slice(in.v, 20, 37));
    EXPECT_EQ(cache.length(), 37);
    const Tensor got = cache.attend(in.q, in.options.key_padding_mask);
    EXPECT_LE(test::max_abs_diff(got, want), storage_tolerance(type));
    EXPECT_THROW(cache.append(slice(in.k, 0, 4), slice(in.v, 0, 4)), ArgumentError);  // past the capacity
    // reset: a new sequence in the same memory (other values: the old ones must not show through)
    cache.reset();
    EXPECT_EQ(cache.length(), 0);
    Tensor k2 = in.k.clone(), v2 = in.v.clone();
    for (int64_t i = 0; i < k2.numel(); ++i) k2.f32()[i] *= -0.5f, v2.f32()[i] += 1.0f;
    cache.append(slice(k2, 0, 30), slice(v2, 0, 30));
    AttentionOptions o;
    o.impl = AttentionImpl::kReference;
    const Tensor want2 = scaled_dot_product_attention(in.q, slice(k2, 0, 30), slice(v2, 0, 30), o).output;
    EXPECT_LE(test::max_abs_diff(cache.attend(in.q), want2), storage_tolerance(type));
  }
  // one position at a time, as decoding appends: the last, incomplete block is kept as rows and transposed when
  // it completes; attending at every length around the block edges
  for (KVCacheType type : {KVCacheType::kFloat32, KVCacheType::kBFloat16, KVCacheType::kInt8}) {
    DecodeCache steps(c.B, c.Hkv, c.D, 40, type);
    for (int64_t L = 1; L <= c.Lk; ++L) {
      steps.append(slice(in.k, L - 1, L), slice(in.v, L - 1, L));
      if (L % 16 > 1 && L % 16 < 15 && L != c.Lk) continue;
      SCOPED_TRACE(std::string(kv_cache_name(type)) + " length " + std::to_string(L));
      AttentionOptions o;
      o.impl = AttentionImpl::kReference;
      const Tensor prefix = scaled_dot_product_attention(in.q, slice(in.k, 0, L), slice(in.v, 0, L), o).output;
      EXPECT_LE(test::max_abs_diff(steps.attend(in.q), prefix), storage_tolerance(type));
    }
  }
  DecodeCache cache(c.B, c.Hkv, c.D, 8);
  EXPECT_THROW(cache.append(Tensor({2, 3, 1, 24}), Tensor({2, 3, 1, 24})), ShapeError);  // 3 heads, not 2
  EXPECT_THROW(cache.append(Tensor({2, 2, 1, 24}), Tensor({2, 2, 2, 24})), ShapeError);  // k and v differ
  EXPECT_THROW(cache.attend(Tensor({2, 3, 1, 24})), ShapeError);                         // 3 heads over 2
  EXPECT_THROW(cache.attend(Tensor({2, 4, 1, 24}, DType::kBool)), DTypeError);
  EXPECT_THROW(cache.attend(Tensor({2, 4, 1, 24}), Tensor({2, 0})), DTypeError);  // a float padding mask
  EXPECT_THROW(cache.attend(Tensor({2, 4, 1, 24}), Tensor({2, 1}, DType::kBool)), ShapeError);
  EXPECT_THROW(cache.attend(Tensor({2, 4, 1, 24}), Tensor(), -1), ArgumentError);  // (had meant all cores)
  EXPECT_THROW(DecodeCache(0, 1, 1, 1), ArgumentError);
  DecodeCache taken = std::move(cache);  // the moved-from one says so (its calls had dereferenced null)
  EXPECT_EQ(taken.length(), 0);
  EXPECT_THROW(cache.attend(Tensor({2, 4, 1, 24})), ArgumentError);  // NOLINT(bugprone-use-after-move)
  EXPECT_THROW(cache.length(), ArgumentError);
  EXPECT_THROW(DecodeCache(1, 1, 1, (int64_t{1} << 62) + 16), ArgumentError);  // its byte counts had wrapped
  EXPECT_THROW(parse_kv_cache("fp8"), ArgumentError);
}

}  // namespace
}  // namespace attn
