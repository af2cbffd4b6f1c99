// The fused attention backward and attention dropout:
//   - PyTorch autograd fixtures (tests/fixtures/generate_backward.py) for every option, dropout included
//     (the fixture rebuilds attn's mask with its own Philox and applies it to PyTorch's math path);
//   - the fused backward against the double-precision reference on the shared case list, on every SIMD
//     level and with 1 and 2 threads, with and without dropout;
//   - Philox4x32-7 and -10 against Random123's known answers; the dropped fraction; the same dropped weights on
//     every forward path; bitwise determinism for a thread count.
#include <cstring>
#include <filesystem>

#include "attention_cases.h"
#include "attn/attention.h"
#include "attn/error.h"
#include "attn/io/safetensors.h"
#include "cpu/aligned_vector.h"
#include "cpu/attention_fused.h"
#include "cpu/dropout.h"
#include "ops/attention_problem.h"
#include "simd_levels.h"
// The backward's planner (inline, per target): its scalar copy, as the library's scalar kernels compile it
#define ATTN_TARGET scalar
#include "cpu/backward_rows.h"
#undef ATTN_TARGET
#include "test_util.h"

namespace attn {
namespace {

using test::max_abs;

// Every kernel buffer starts on a cache line (cpu/aligned_vector.h): glibc's malloc gives 16 bytes, and a large
// block starts at a page + 16, which made every 512-bit load of a kernel buffer straddle two lines.
TEST(KernelBuffers, AlignedVectorStartsOnACacheLineAtEverySize) {
  for (size_t n : {1, 3, 17, 1000, 70000, 1 << 20}) {
    detail::AlignedVector<float> a(n);
    detail::AlignedVector<uint16_t> b(n);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u) << n;
    a.resize(2 * n + 5);  // growing moves the data to a new block: aligned as well
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u) << n;
  }
}

// Random123's kat_vectors for Philox4x32-7 (the dropout generator) and -10 (the same round function, cuRAND's
// round count): counters and keys zero, all ones, and the digits of pi.
TEST(Dropout, PhiloxMatchesRandom123KnownAnswers) {
  struct Known {
    uint32_t ctr[4], k0, k1, out7[4], out10[4];
  };
  const Known known[] = {
      {{0, 0, 0, 0},
       0,
       0,
       {0x5f6fb709u, 0x0d893f64u, 0x4f121f81u, 0x4f730a48u},
       {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu},
       0xFFFFFFFFu,
       0xFFFFFFFFu,
       {0x5207ddc2u, 0x45165e59u, 0x4d8ee751u, 0x8c52f662u},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       0xa4093822u,
       0x299f31d0u,
       {0x4dfccabau, 0x190a87f0u, 0xc47362bau, 0xb6b5242au},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  static_assert(detail::kPhiloxRounds == 7, "the known answers below are for the dropout generator's 7 rounds");
  for (const Known& k : known) {
    uint32_t out[4];
    detail::philox4x32(k.ctr, k.k0, k.k1, out);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(out[w], k.out7[w]) << "7 rounds, word " << w;
    detail::philox4x32<10>(k.ctr, k.k0, k.k1, out);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(out[w], k.out10[w]) << "10 rounds, word " << w;
  }
}

TEST(Dropout, DropsTheRequestedFractionAndGroupsAgreeWithTheDefinition) {
  for (float p : {0.1f, 0.5f}) {
    const detail::DropoutParams d = detail::make_dropout(p, 0x1234567890ull);
    int64_t dropped = 0, total = 0;
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t G = 0; G < 8; ++G) {
        uint16_t keep[8];
        detail::dropout_keep_group(d, 1, 3, i, G, keep);
        for (int64_t j = G * 128; j < (G + 1) * 128; ++j) {
          const bool kept = (keep[j % 128 / 16] >> (j % 16) & 1) != 0;
          ASSERT_EQ(kept, detail::dropout_keeps(d, 1, 3, i, j)) << "i " << i << " j " << j;
          dropped += !kept;
          ++total;
        }
      }
    const double fraction = static_cast<double>(dropped) / static_cast<double>(total);
    EXPECT_NEAR(fraction, p, 4.0 * std::sqrt(p * (1 - p) / static_cast<double>(total))) << p;
  }
  EXPECT_EQ(detail::make_dropout(1.0f, 0).threshold, 65536u);  // every weight dropped
  EXPECT_FALSE(detail::make_dropout(0.0f, 0).active());
}

// Dropout leaves a weight's expected value as it was: the survivors' scale times the share that survives, by the
// math (a uniform 16-bit u survives iff u >= threshold: (65536 − threshold)/65536 of them), is 1 at every p,
// near 1 too (0.9999 keeps 7 of 65536: scaling by 1/(1 − p) had made it 1.068). p that rounds to 65536 drops
// everything (scale 0), p below 2⁻¹⁷ rounds to none.
TEST(Dropout, SurvivorsScaleKeepsTheExpectedWeight) {
  for (float p : {1e-4f, 0.1f, 0.2f, 0.25f, 0.5f, 0.9f, 0.999f, 0.9999f, 65535.0f / 65536.0f}) {
    const detail::DropoutParams d = detail::make_dropout(p, 0);
    ASSERT_TRUE(d.active()) << p;
    ASSERT_LT(d.threshold, 65536u) << p;
    EXPECT_NEAR(static_cast<double>(d.scale) * (65536.0 - d.threshold) / 65536.0, 1.0, 1e-6) << p;
    EXPECT_NEAR(d.threshold / 65536.0, p, 0.5 / 65536.0) << p;
  }
  const detail::DropoutParams all = detail::make_dropout(0.99999994f, 0);
  EXPECT_EQ(all.threshold, 65536u);
  EXPECT_EQ(all.scale, 0.0f);
  EXPECT_FALSE(detail::make_dropout(0x1p-18f, 0).active());
  EXPECT_EQ(detail::make_dropout(0x1p-18f, 0).scale, 1.0f);
}

// Every forward path drops the same weights: their outputs agree to float rounding (one differently
// dropped weight would move an output by ~1/Lk). p = 1 gives 0; a bad p is an ArgumentError.
TEST(Dropout, EveryForwardPathDropsTheSameWeights) {
  int checked = 0;
  for (const test::AttentionCase& c : test::attention_cases(30, 11)) {
    test::CaseInputs in = test::make_inputs(c, 3);
    in.options.dropout_p = 0.25f;
    in.options.dropout_seed = 77 + static_cast<uint64_t>(checked);
    in.options.impl = AttentionImpl::kReference;
    const AttentionResult ref = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
    in.options.impl = AttentionImpl::kUnfused;
    EXPECT_LE(test::max_abs_diff(scaled_dot_product_attention(in.q, in.k, in.v, in.options).output, ref.output), 3e-5)
        << c.name();
    for (auto level : test::simd_levels()) {
      test::SimdGuard guard(level);
      in.options.impl = AttentionImpl::kFused;
      const AttentionResult r = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
      EXPECT_LE(test::max_abs_diff(r.output, ref.output), 3e-5) << c.name() << " " << detail::simd_level_name(level);
      if (c.weights) {  // before dropout
        EXPECT_LE(test::max_abs_diff(r.weights, ref.weights), 2e-5) << c.name();
      }
    }
    ++checked;
  }
  EXPECT_GT(checked, 100);
  std::mt19937 rng(1);
  const Tensor q = test::random_tensor({1, 1, 5, 8}, rng), k = test::random_tensor({1, 1, 7, 8}, rng);
  AttentionOptions o;
  o.dropout_p = 1.0f;
  EXPECT_EQ(max_abs(scaled_dot_product_attention(q, k, k, o).output), 0.0);
  for (float bad : {-0.1f, 1.5f, std::nanf("")}) {
    o.dropout_p = bad;
    EXPECT_THROW(scaled_dot_product_attention(q, k, k, o), ArgumentError);
  }
}

// Each instruction set's keep masks, bit for bit against the definition (detail::dropout_keeps): with q = 0
// every weight is 1/Lk, and with V the identity output (i, j) is weight (i, j) after dropout, exactly 0 where it
// was dropped. Thresholds 1, 6554, 32768 and 65535; 300 keys span three 128-key groups and several tiles.
TEST(Dropout, EveryInstructionSetKeepsExactlyTheDefinedWeights) {
  constexpr int64_t B = 2, H = 2, Lq = 5, Lk = 300;
  const Tensor q({B, H, Lq, 8}), k({B, H, Lk, 8});
  Tensor v({B, H, Lk, Lk});
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t j = 0; j < Lk; ++j) v.f32()[(bh * Lk + j) * Lk + j] = 1.0f;
  for (float p : {1.0f / 65536.0f, 0.1f, 0.5f, 65535.0f / 65536.0f}) {
    AttentionOptions o;
    o.dropout_p = p;
    o.dropout_seed = 0x5EED0000ull + static_cast<uint64_t>(p * 65536.0f);
    const detail::DropoutParams d = detail::make_dropout(p, o.dropout_seed);
    for (auto level : test::simd_levels()) {
      test::SimdGuard guard(level);
      for (AttentionImpl impl : {AttentionImpl::kFused, AttentionImpl::kReference}) {
        o.impl = impl;
        const Tensor out = scaled_dot_product_attention(q, k, v, o).output;  // [B, H, Lq, Lk]
        int64_t wrong = 0;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < Lq; ++i)
              for (int64_t j = 0; j < Lk; ++j)
                wrong += (out.f32()[((b * H + h) * Lq + i) * Lk + j] != 0.0f) != detail::dropout_keeps(d, b, h, i, j);
        EXPECT_EQ(wrong, 0) << "threshold " << d.threshold << ", " << detail::simd_level_name(level)
                            << (impl == AttentionImpl::kFused ? " fused" : " reference");
      }
    }
  }
}

std::vector<std::string> grad_fixtures() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(ATTN_FIXTURE_DIR)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("grad_sdpa_", 0) == 0) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// PyTorch autograd (float64) for every option; tolerance: 4× PyTorch's own float32 error on the case.
TEST(Backward, MatchesPyTorchAutograd) {
  const auto files = grad_fixtures();
  ASSERT_GE(files.size(), 10u);
  for (const std::string& file : files) {
    const io::Safetensors st = io::read_safetensors(file);
    AttentionOptions o;
    if (st.contains("mask")) o.mask = st.at("mask");
    if (st.contains("key_padding_mask")) o.key_padding_mask = st.at("key_padding_mask");
    if (st.contains("alibi_slopes")) o.alibi_slopes = st.at("alibi_slopes");
    o.causal = parse_causal(st.metadata.at("causal"));
    o.window = std::stoll(st.metadata.at("window"));
    o.dropout_p = std::stof(st.metadata.at("dropout_p"));
    o.dropout_seed = std::stoull(st.metadata.at("dropout_seed"));
    if (st.metadata.at("scale") != "default") o.scale = std::stof(st.metadata.at("scale"));
    const double tol = 4.0 * std::stod(st.metadata.at("torch_f32_grad_err")) + 1e-5;
    o.return_lse = true;
    for (AttentionImpl impl : {AttentionImpl::kReference, AttentionImpl::kFused})
      for (auto level : test::simd_levels()) {
        if (impl == AttentionImpl::kReference && level != test::simd_levels().front()) continue;
        SCOPED_TRACE(file + " " + impl_name(impl) + " " + detail::simd_level_name(level));
        test::SimdGuard guard(level);
        o.impl = impl;
        const AttentionResult r = scaled_dot_product_attention(st.at("q"), st.at("k"), st.at("v"), o);
        EXPECT_LE(test::max_abs_diff(r.output, st.at("expected_out")), 1e-5);
        const AttentionGrads g = scaled_dot_product_attention_backward(st.at("q"), st.at("k"), st.at("v"), r.output,
                                                                       r.lse, st.at("d_out"), o);
        EXPECT_LE(test::max_abs_diff(g.dq, st.at("expected_dq")), tol);
        EXPECT_LE(test::max_abs_diff(g.dk, st.at("expected_dk")), tol);
        EXPECT_LE(test::max_abs_diff(g.dv, st.at("expected_dv")), tol);
      }
  }
}

// A case's gradients by the reference, and their scale (the largest, at least 1): a fast path's are within 3e-5 of it.
struct ReferenceGrads {
  AttentionGrads grads;
  double scale;
};
ReferenceGrads reference_grads(const test::CaseInputs& in, const Tensor& d_out) {
  AttentionOptions o = in.options;
  o.impl = AttentionImpl::kReference;
  ReferenceGrads r{scaled_dot_product_attention_backward(in.q, in.k, in.v, d_out, o), 0.0};
  r.scale = std::max({1.0, max_abs(r.grads.dq), max_abs(r.grads.dk), max_abs(r.grads.dv)});
  return r;
}
void expect_near(const AttentionGrads& g, const ReferenceGrads& ref) {
  EXPECT_LE(test::max_abs_diff(g.dq, ref.grads.dq), 3e-5 * ref.scale);
  EXPECT_LE(test::max_abs_diff(g.dk, ref.grads.dk), 3e-5 * ref.scale);
  EXPECT_LE(test::max_abs_diff(g.dv, ref.grads.dv), 3e-5 * ref.scale);
}

// The fused backward against the reference on the shared case list, every level, 1 and 2 threads.
TEST(Backward, FusedMatchesTheReferenceOnEveryCase) {
  int checked = 0;
  const auto cases = test::attention_cases(60, 5);
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    auto [in, d_out] = test::make_backward_inputs(c, n);
    const ReferenceGrads ref = reference_grads(in, d_out);
    size_t config = 0;  // under the sanitizers each target with one thread count, by turns (test::config_sampled)
    for (auto level : test::simd_levels())
      for (int threads : {1, 2}) {
        if (!test::config_sampled(n, config++, 2)) continue;
        SCOPED_TRACE(c.name() + (test::backward_dropout(n) ? " dropout" : "") +
                     " simd=" + detail::simd_level_name(level) + " threads=" + std::to_string(threads));
        test::SimdGuard guard(level);
        in.options.impl = AttentionImpl::kFused;
        in.options.num_threads = threads;
        expect_near(scaled_dot_product_attention_backward(in.q, in.k, in.v, d_out, in.options), ref);
        ++checked;
      }
  }
  EXPECT_GT(checked, test::small_test_volume() ? 250 : 500);
}

// The backward with the output and lse kept from another forward (a model's layer runs its forward on the path its
// options pick and always the fused backward): from the unfused path and from the fused one at one thread on the
// first level, the fused backward at 2 threads on every level gives the reference's gradients. An lse in another base
// or convention, or a dropout mask that depended on the forward's tiling or threads, would fail here.
TEST(Backward, TakesTheOutputAndLseOfAnyForwardPath) {
  int checked = 0;
  const auto cases = test::attention_cases(test::test_volume(30, 10), 13);
  for (size_t n = 0; n < cases.size(); ++n) {
    const test::AttentionCase& c = cases[n];
    auto [in, d_out] = test::make_backward_inputs(c, n);
    const ReferenceGrads ref = reference_grads(in, d_out);
    for (AttentionImpl forward : {AttentionImpl::kUnfused, AttentionImpl::kFused}) {
      AttentionOptions f = in.options;
      f.impl = forward, f.num_threads = 1, f.return_lse = true;
      AttentionResult r;
      {
        test::SimdGuard guard(test::simd_levels().front());
        r = scaled_dot_product_attention(in.q, in.k, in.v, f);
      }
      size_t config = forward == AttentionImpl::kFused;  // (under the sanitizers every other level, by turns)
      for (auto level : test::simd_levels()) {
        if (!test::config_sampled(n, config++, 2)) continue;
        SCOPED_TRACE(c.name() + (test::backward_dropout(n) ? " dropout" : "") + " forward " + impl_name(forward) +
                     ", backward simd=" + detail::simd_level_name(level));
        test::SimdGuard guard(level);
        AttentionOptions b = in.options;
        b.impl = AttentionImpl::kFused, b.num_threads = 2;
        expect_near(scaled_dot_product_attention_backward(in.q, in.k, in.v, r.output, r.lse, d_out, b), ref);
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 20);
}

// Bitwise the same gradients from run to run for a given thread count (fixed reduction order), also
// when the keys are split into chunks (one head, long keys: the chunked dQ path).
TEST(Backward, DeterministicForAThreadCount) {
  std::vector<test::AttentionCase> cases = test::attention_cases(10, 3);
  test::AttentionCase chunked;
  chunked.Lq = 200, chunked.Lk = 700, chunked.D = 32, chunked.Dv = 32;
  cases.push_back(chunked);
  for (const test::AttentionCase& c : cases) {
    test::CaseInputs in = test::make_inputs(c, 21);
    in.options.impl = AttentionImpl::kFused;
    in.options.return_weights = false;
    in.options.dropout_p = 0.1f;
    std::mt19937 rng(4);
    const Tensor d_out = test::random_tensor({c.B, c.H, c.Lq, c.Dv}, rng);
    for (int threads : {2, 3}) {
      in.options.num_threads = threads;
      const AttentionGrads a = scaled_dot_product_attention_backward(in.q, in.k, in.v, d_out, in.options);
      const AttentionGrads b = scaled_dot_product_attention_backward(in.q, in.k, in.v, d_out, in.options);
      for (auto [x, y] : {std::pair{&a.dq, &b.dq}, {&a.dk, &b.dk}, {&a.dv, &b.dv}})
        EXPECT_EQ(std::memcmp(x->raw(), y->raw(), x->nbytes()), 0) << c.name() << " threads " << threads;
    }
  }
}

// Several key blocks per pass over the query tiles (long sequences; forced here: detail::force_backward_span) give
// bitwise the gradients of one block per pass: every row takes its blocks' dQ terms, and every block its rows' dK and
// dV terms, in the same order, and a block's dropout groups start where they did.
TEST(Backward, KeyBlocksPerPassGiveTheSameBits) {
  int compared = 0;
  size_t case_index = 0;
  for (const test::AttentionCase& c : test::attention_cases(test::test_volume(40, 10), 7)) {
    if (c.Lk <= 128) continue;  // one key block
    ++case_index;
    auto [in, d_out] = test::make_backward_inputs(c, case_index);  // dropout on every fourth (backward_dropout)
    in.options.impl = AttentionImpl::kFused;
    size_t config = 0;
    for (auto level : test::simd_levels())  // (every level: spans are forced only here)
      for (int threads : {1, 2}) {
        if (!test::config_sampled(case_index, config++, 3)) continue;  // (a third under the sanitizers)
        SCOPED_TRACE(c.name() + " simd=" + detail::simd_level_name(level) + " threads=" + std::to_string(threads));
        test::SimdGuard guard(level);
        in.options.num_threads = threads;
        detail::force_backward_span(1);
        const AttentionGrads one = scaled_dot_product_attention_backward(in.q, in.k, in.v, d_out, in.options);
        detail::force_backward_span(3);
        const AttentionGrads many = scaled_dot_product_attention_backward(in.q, in.k, in.v, d_out, in.options);
        detail::force_backward_span(0);
        for (auto [x, y] : {std::pair{&one.dq, &many.dq}, {&one.dk, &many.dk}, {&one.dv, &many.dv}})
          EXPECT_EQ(std::memcmp(x->raw(), y->raw(), x->nbytes()), 0);
        ++compared;
      }
  }
  EXPECT_GT(compared, 10);
}

// The backward's tasks run the chunks that meet the most query rows first (cpu/backward_rows.h, backward_tasks): under
// a causal mask the first keys' chunk meets every row and the last one few, so a dynamic schedule in pair-by-pair order
// could leave a costly chunk for last. Every (pair, chunk) still runs exactly once.
TEST(Backward, TasksRunTheCostliestChunksFirstAndEveryChunkOnce) {
  namespace target = detail::scalar;
  detail::AttentionProblem p;
  p.B = 1, p.H = p.Hkv = 3, p.Lq = p.Lk = 1024, p.D = p.Dv = 64;
  const auto order = [&](int64_t chunks) {
    const target::BackwardTasks tasks = target::backward_tasks(p, 8, 128, chunks);
    std::vector<int64_t> seen(static_cast<size_t>(tasks.pairs * chunks), 0), chunk_of_task;
    for (int64_t task = 0; task < tasks.count(); ++task) {
      int64_t pair, chunk;
      tasks.at(task, &pair, &chunk);
      ++seen[static_cast<size_t>(pair * chunks + chunk)];
      chunk_of_task.push_back(chunk);
    }
    EXPECT_EQ(seen, std::vector<int64_t>(seen.size(), 1));
    return chunk_of_task;
  };
  p.causal = CausalAlignment::kNone;  // every chunk meets every row: pair by pair, as before
  EXPECT_EQ(order(2), (std::vector<int64_t>{0, 1, 0, 1, 0, 1}));
  p.causal = CausalAlignment::kTopLeft;  // the first keys meet the most rows: chunk by chunk across the pairs
  EXPECT_EQ(order(2), (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
  p.causal = CausalAlignment::kBottomRight, p.Lq = 256;  // keys before 768 meet every row: chunks 0, 1, 2 tie
  EXPECT_EQ(order(4), (std::vector<int64_t>{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3}));
  // a window of 300 keys ending at key i + 768: keys before 469 meet no row, so chunk 0 runs last and chunk 2 first
  p.window = 300;
  EXPECT_EQ(order(4), (std::vector<int64_t>{2, 2, 2, 3, 3, 3, 1, 1, 1, 0, 0, 0}));
}

// Key chunks (cpu/backward_rows.h): none on one thread; with few pairs enough for every thread; and more where the
// tasks would leave the threads' last round part empty (5 pairs on 2 threads: 2 chunks, 10 tasks, 5 rounds).
TEST(Backward, KeyChunksKeepTheThreadsBusy) {
  namespace target = detail::scalar;
  detail::AttentionProblem p;
  p.B = 1, p.Lq = p.Lk = 1024, p.D = p.Dv = 64;
  const auto chunks = [&](int64_t pairs, int threads) {
    p.H = p.Hkv = pairs;
    return target::key_chunks(p, threads, 8, p.H * p.Lq * p.D);
  };
  EXPECT_EQ(chunks(1, 1), 1);
  EXPECT_EQ(chunks(5, 1), 1);
  EXPECT_EQ(chunks(1, 2), 4);   // 2 tasks a thread
  EXPECT_EQ(chunks(8, 2), 1);   // 4 pair tasks a thread, even
  EXPECT_EQ(chunks(5, 2), 2);   // 5 pair tasks: 3 rounds for 2.5 tasks' work
  EXPECT_EQ(chunks(9, 16), 7);  // 63 tasks in 4 rounds of 16
  EXPECT_EQ(chunks(1, 16), 8);  // one chunk a key block at most
}

TEST(Backward, ChecksItsArguments) {
  std::mt19937 rng(2);
  const Tensor q = test::random_tensor({1, 2, 4, 8}, rng), k = test::random_tensor({1, 2, 6, 8}, rng);
  AttentionOptions o;
  o.return_lse = true;
  const AttentionResult r = scaled_dot_product_attention(q, k, k, o);
  EXPECT_EQ(r.lse.shape(), (Shape{1, 2, 4}));
  EXPECT_THROW(scaled_dot_product_attention_backward(q, k, k, r.output, Tensor(), r.output, o), ShapeError);
  EXPECT_THROW(scaled_dot_product_attention_backward(q, k, k, r.output, r.output, r.output, o), ShapeError);
  EXPECT_THROW(scaled_dot_product_attention_backward(q, k, k, r.output, r.lse, r.lse, o), ShapeError);
  try {
    scaled_dot_product_attention_backward(q, k, k, r.output, Tensor({1, 2, 5}), r.output, o);
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("lse"), std::string::npos) << e.what();
  }
}

// The fused backward writes every element of dq, dk and dv, whatever the buffers held: with one key chunk a task adds
// dQ straight into dq (BackwardPlan::dq_in_place), so it must zero those rows itself. The public API's buffers come
// zeroed, so this calls the kernel on buffers full of NaN, on one and two threads and every compiled target.
TEST(Backward, OverwritesGradientBuffersThatHeldAnything) {
  const auto cases = test::attention_cases(test::test_volume(40, 10), 7);
  int compared = 0;
  for (size_t n = 0; n < cases.size(); ++n) {
    auto [in, d_out] = test::make_backward_inputs(cases[n], n);
    in.options.return_lse = true;
    in.options.return_weights = false;
    const AttentionResult fwd = scaled_dot_product_attention(in.q, in.k, in.v, in.options);
    size_t config = 0;  // under the sanitizers each target with one thread count, by turns (test::config_sampled)
    for (auto level : test::simd_levels())
      for (int threads : {1, 2}) {
        if (!test::config_sampled(n, config++, 2)) continue;
        SCOPED_TRACE(cases[n].name() + " simd=" + detail::simd_level_name(level) +
                     " threads=" + std::to_string(threads));
        test::SimdGuard guard(level);
        in.options.num_threads = threads;
        in.options.impl = AttentionImpl::kFused;
        const AttentionGrads want =
            scaled_dot_product_attention_backward(in.q, in.k, in.v, fwd.output, fwd.lse, d_out, in.options);
        const detail::AttentionProblem p = detail::make_problem(in.q, in.k, in.v, in.options, "test");
        AttentionGrads got{Tensor(in.q.shape()), Tensor(in.k.shape()), Tensor(in.v.shape())};
        for (Tensor* t : {&got.dq, &got.dk, &got.dv})
          std::fill(t->f32(), t->f32() + t->numel(), std::numeric_limits<float>::quiet_NaN());
        detail::AttentionGradients g;
        g.out = fwd.output.f32(), g.lse = fwd.lse.f32(), g.d_out = d_out.f32();
        g.dq = got.dq.f32(), g.dk = got.dk.f32(), g.dv = got.dv.f32();
        detail::attention_backward_fused(p, g);
        EXPECT_EQ(test::max_abs_diff(got.dq, want.dq), 0.0);
        EXPECT_EQ(test::max_abs_diff(got.dk, want.dk), 0.0);
        EXPECT_EQ(test::max_abs_diff(got.dv, want.dv), 0.0);
        ++compared;
      }
  }
  EXPECT_GT(compared, 100);
}

// The backward recomputes P from the forward's lse: P = exp(S − lse) sums to 1 over a row only where its S is the
// forward's. With dO the identity (row i's gradient is 1 in column i), Σ_j dV[j, i] = Σ_j P_ij: each row's weights
// (the math, no reference). Large scores (|S| in the hundreds: queries ×10, D 256, scale 2) make it sharp: each S
// carries a float32 rounding error of ~1e-4 there, and a backward that summed Q·Kᵀ otherwise than the forward (the
// scale applied after the product instead of carried by the packed keys) gave rows whose weights summed to 1 ± 3e-4.
TEST(Backward, RecomputedWeightsSumToOneWhereTheScoresAreLarge) {
  const int64_t Lk = 64, D = 256;
  for (int64_t Lq : {64, 4})  // 4: the forward's few-query path (dot products of the scaled queries with K's rows)
    for (CausalAlignment causal : {CausalAlignment::kNone, CausalAlignment::kBottomRight})
      for (auto level : test::simd_levels()) {
        SCOPED_TRACE("Lq " + std::to_string(Lq) + (causal == CausalAlignment::kNone ? " non-causal" : " causal") +
                     " simd=" + detail::simd_level_name(level));
        test::SimdGuard guard(level);
        const int64_t H = Lq == 4 ? 32 : 2;  // 128 rows either way
        std::mt19937 rng(17);
        const Tensor q = test::random_tensor({1, H, Lq, D}, rng, -10.0f, 10.0f);
        const Tensor k = test::random_tensor({1, H, Lk, D}, rng), v = test::random_tensor({1, H, Lk, Lq}, rng);
        Tensor d_out({1, H, Lq, Lq});
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < Lq; ++i) d_out.f32()[(h * Lq + i) * Lq + i] = 1.0f;
        AttentionOptions o;
        o.impl = AttentionImpl::kFused;
        o.scale = 2.0f;
        o.causal = causal;
        o.return_lse = true;
        const AttentionResult fwd = scaled_dot_product_attention(q, k, v, o);
        const AttentionGrads g = scaled_dot_product_attention_backward(q, k, v, fwd.output, fwd.lse, d_out, o);
        double worst = 0.0;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < Lq; ++i) {
            double weights = 0.0;
            for (int64_t j = 0; j < Lk; ++j) weights += g.dv.f32()[(h * Lk + j) * Lq + i];
            worst = std::max(worst, std::abs(weights - 1.0));
          }
        // what is left: the lse's float32 rounding at |lse| ≈ 340 (half an ulp, 1.5e-5), m + log2 l's and the
        // conversion to base 2 (about as much each): measured 2.1e-5, where the scores summed otherwise gave 2.1e-4
        // (Lq 4) to 2.8e-4
        EXPECT_LE(worst, 1e-4);
      }
}

}  // namespace
}  // namespace attn
