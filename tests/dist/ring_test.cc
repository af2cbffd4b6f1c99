// Ring attention under mpirun (-np 2, 3, 4; CMake adds the runs when MPI is built): every rank draws the same
// full random tensors, runs the ring on its chunk and compares with its rows of single-process SDPA.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <random>
#include <string>

#include "attn/attention.h"
#include "attn/dist/ring_attention.h"
#include "attn/error.h"
#include "mpi_test_util.h"
#include "test_util.h"

namespace attn::dist {
namespace {

using test::rank;
using test::size;

// max |a − b| where equal infinities count as 0 (lse of a row with no visible key is −inf on both sides).
double diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  double m = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const float x = a.f32()[i], y = b.f32()[i];
    if (x == y) continue;
    const double d = std::fabs(static_cast<double>(x) - y);
    m = std::max(m, std::isnan(d) ? INFINITY : d);
  }
  return m;
}

struct Case {
  int64_t B = 1, H = 2, Hkv = 2, Lq = 40, Lk = 40, D = 16, Dv = 16;
  CausalAlignment causal = CausalAlignment::kNone;
  SequenceLayout layout = SequenceLayout::kContiguous;
  double padding = 0.0;  // share of padded keys
  std::string name() const {
    return std::string(causal_name(causal)) + " " + layout_name(layout) + " B=" + std::to_string(B) +
           " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " Lq=" + std::to_string(Lq) +
           " Lk=" + std::to_string(Lk) + " pad=" + std::to_string(padding) + " np=" + std::to_string(size());
  }
};

struct Inputs {
  Tensor q, k, v, pad, d_out;
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);  // the same on every rank
  Inputs in;
  in.q = test::random_tensor({c.B, c.H, c.Lq, c.D}, rng);
  in.k = test::random_tensor({c.B, c.Hkv, c.Lk, c.D}, rng);
  in.v = test::random_tensor({c.B, c.Hkv, c.Lk, c.Dv}, rng);
  in.d_out = test::random_tensor({c.B, c.H, c.Lq, c.Dv}, rng);
  if (c.padding > 0) in.pad = test::random_bool({c.B, c.Lk}, rng, c.padding);
  return in;
}

void check_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(c.name());
  const Inputs in = make_inputs(c, seed);
  AttentionOptions full;
  full.causal = c.causal;
  full.key_padding_mask = in.pad;
  full.return_lse = true;
  const AttentionResult want = scaled_dot_product_attention(in.q, in.k, in.v, full);
  const AttentionGrads want_g = scaled_dot_product_attention_backward(in.q, in.k, in.v, in.d_out, full);

  const int r = rank(), n = size();
  RingOptions o;
  o.layout = c.layout;
  o.attention.causal = c.causal;
  o.attention.return_lse = true;
  if (in.pad.defined()) o.attention.key_padding_mask = shard_sequence(in.pad, 1, r, n, c.layout);
  const Tensor q = shard_sequence(in.q, 2, r, n, c.layout), k = shard_sequence(in.k, 2, r, n, c.layout),
               v = shard_sequence(in.v, 2, r, n, c.layout), d_out = shard_sequence(in.d_out, 2, r, n, c.layout);
  const RingResult got = ring_attention(q, k, v, MPI_COMM_WORLD, o);
  EXPECT_LE(diff(got.output, shard_sequence(want.output, 2, r, n, c.layout)), 2e-5) << "rank " << r;
  EXPECT_LE(diff(got.lse, shard_sequence(want.lse, 2, r, n, c.layout)), 2e-5) << "rank " << r;
  EXPECT_EQ(got.stats.steps, n);

  const RingGrads g = ring_attention_backward(q, k, v, got.output, got.lse, d_out, MPI_COMM_WORLD, o);
  EXPECT_LE(diff(g.dq, shard_sequence(want_g.dq, 2, r, n, c.layout)), 1e-4) << "rank " << r;
  EXPECT_LE(diff(g.dk, shard_sequence(want_g.dk, 2, r, n, c.layout)), 1e-4) << "rank " << r;
  EXPECT_LE(diff(g.dv, shard_sequence(want_g.dv, 2, r, n, c.layout)), 1e-4) << "rank " << r;

  const Tensor all = gather_sequence(got.output, 2, MPI_COMM_WORLD, c.layout, 0);
  if (r == 0) {
    EXPECT_LE(diff(all, want.output), 2e-5);
  }
}

TEST(RingAttention, MatchesSingleProcessForwardAndBackward) {
  uint32_t seed = 1;
  for (CausalAlignment causal : {CausalAlignment::kNone, CausalAlignment::kTopLeft, CausalAlignment::kBottomRight})
    for (SequenceLayout layout : {SequenceLayout::kContiguous, SequenceLayout::kZigzag})
      for (double padding : {0.0, 0.3}) {
        Case c;
        c.causal = causal, c.layout = layout, c.padding = padding;
        check_case(c, seed++);
        c.Lq = c.Lk = 37;  // uneven chunks: 37 rows over 2, 3, 4 ranks (zigzag: over 4, 6, 8 chunks)
        c.B = 2, c.H = 4, c.Hkv = 2, c.Dv = 8;  // grouped-query K/V, Dv != D
        check_case(c, seed++);
      }
}

TEST(RingAttention, DifferentQueryAndKeyLengths) {
  uint32_t seed = 100;
  for (CausalAlignment causal : {CausalAlignment::kNone, CausalAlignment::kBottomRight, CausalAlignment::kTopLeft})
    for (SequenceLayout layout : {SequenceLayout::kContiguous, SequenceLayout::kZigzag}) {
      Case c;
      c.causal = causal, c.layout = layout, c.padding = 0.2;
      c.Lq = 23, c.Lk = 51;
      check_case(c, seed++);
      c.Lq = 51, c.Lk = 3;  // fewer keys than ranks at -np 4: some ranks hold none
      check_case(c, seed++);
      c.Lq = 3, c.Lk = 20;  // and fewer queries
      check_case(c, seed++);
    }
}

TEST(RingAttention, FullyPaddedRowsGiveZero) {
  Case c;
  c.causal = CausalAlignment::kTopLeft;
  c.padding = 1.0;  // every key is padding: output 0, lse −inf, no gradient
  check_case(c, 7);
}

// Rank r holds 3 + 5r rows (contiguous): lengths any rank may choose, not the even cut of shard_sequence.
TEST(RingAttention, ChosenUnevenLengths) {
  const int r = rank(), n = size();
  const int64_t H = 2, D = 8;
  std::vector<int64_t> lengths;
  int64_t L = 0, begin = 0;
  for (int s = 0; s < n; ++s) lengths.push_back(3 + 5 * s), L += lengths.back(), begin += s < r ? lengths.back() : 0;
  std::mt19937 rng(5);
  const Tensor q = test::random_tensor({1, H, L, D}, rng), k = test::random_tensor({1, H, L, D}, rng),
               v = test::random_tensor({1, H, L, D}, rng);
  for (CausalAlignment causal : {CausalAlignment::kNone, CausalAlignment::kTopLeft}) {
    AttentionOptions full;
    full.causal = causal;
    const Tensor want = scaled_dot_product_attention(q, k, v, full).output;
    auto mine = [&](const Tensor& t) {
      Tensor out({1, H, lengths[static_cast<size_t>(r)], D});
      for (int64_t h = 0; h < H; ++h)
        std::copy(t.f32() + (h * L + begin) * D, t.f32() + (h * L + begin + lengths[static_cast<size_t>(r)]) * D,
                  out.f32() + h * lengths[static_cast<size_t>(r)] * D);
      return out;
    };
    RingOptions o;
    o.attention.causal = causal;
    const RingResult got = ring_attention(mine(q), mine(k), mine(v), MPI_COMM_WORLD, o);
    EXPECT_LE(diff(got.output, mine(want)), 2e-5) << "rank " << r << " causal " << causal_name(causal);
  }
}

// A mismatch between ranks, or bad inputs on one rank only, is an error on every rank: never a hang.
TEST(RingAttention, MismatchedShapesFailOnEveryRank) {
  if (size() < 2) GTEST_SKIP() << "one rank has no other to disagree with";
  const int r = rank();
  std::mt19937 rng(3);
  const Tensor q = test::random_tensor({1, 2, 8, r == 1 ? 4 : 8}, rng), k = test::random_tensor({1, 2, 8, 8}, rng),
               v = test::random_tensor({1, 2, 8, 8}, rng);
  // rank 1's q has D = 4: its own check fails (q and k disagree); the others learn it from the exchange
  EXPECT_THROW(ring_attention(q, k, v, MPI_COMM_WORLD), ShapeError);
  const Tensor q2 = test::random_tensor({1, r == 1 ? 4 : 2, 8, 8}, rng);  // consistent locally, not across ranks
  try {
    ring_attention(q2, k, v, MPI_COMM_WORLD);
    ADD_FAILURE() << "no error on rank " << r;
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 has q [1, 4, 8, 8]"), std::string::npos) << e.what();
  }
  RingOptions o;
  if (r == 0) o.attention.window = 3;  // unsupported, on rank 0 only
  EXPECT_THROW(ring_attention(q2.dim(1) == 2 ? q2 : test::random_tensor({1, 2, 8, 8}, rng), k, v, MPI_COMM_WORLD, o),
               ArgumentError);
  // what the per-block SDPA would refuse is refused before the ring starts, on every rank (a rank that threw inside
  // the ring had left the others waiting): negative threads on rank 0 only; the reference backward, whose blocks
  // would each recompute their own softmax (its gradients had been wrong)
  const Tensor q3 = test::random_tensor({1, 2, 8, 8}, rng);
  RingOptions threads;
  if (r == 0) threads.attention.num_threads = -1;
  EXPECT_THROW(ring_attention(q3, k, v, MPI_COMM_WORLD, threads), ArgumentError);
  RingOptions reference;
  reference.attention.impl = AttentionImpl::kReference;
  reference.attention.return_lse = true;
  const RingResult fwd = ring_attention(q3, k, v, MPI_COMM_WORLD, reference);  // the forward merges by lse: fine
  EXPECT_THROW(ring_attention_backward(q3, k, v, fwd.output, fwd.lse, fwd.output, MPI_COMM_WORLD, reference),
               ArgumentError);
  // options that change the numbers must agree too: a scale or an impl on rank 1 only (each rank had used its own)
  RingOptions scaled;
  if (r == 1) scaled.attention.scale = 0.5f;
  EXPECT_THROW(ring_attention(q3, k, v, MPI_COMM_WORLD, scaled), ShapeError);
  RingOptions unfused;
  if (r == 1) unfused.attention.impl = AttentionImpl::kUnfused;
  EXPECT_THROW(ring_attention(q3, k, v, MPI_COMM_WORLD, unfused), ShapeError);
  RingOptions bad_enum;  // an out-of-range causal value on rank 0 only (it had run as top-left)
  if (r == 0) bad_enum.attention.causal = static_cast<CausalAlignment>(7);
  EXPECT_THROW(ring_attention(q3, k, v, MPI_COMM_WORLD, bad_enum), ArgumentError);
  // still in step: a correct call after the failures works
  EXPECT_NO_THROW(ring_attention(q3, k, v, MPI_COMM_WORLD));
}

// 16-bit tensors cut and gather as float32 ones do (their 2-byte rows had been copied as 1-byte ones); ranks that
// disagree on the dtype, or where one has a bad dim or root, fail together in gather_sequence.
TEST(Sequence, HalfPrecisionShardsAndGathers) {
  const int r = rank(), n = size();
  std::mt19937 rng(5);
  const Tensor full = test::random_tensor({2, 3, 11, 5}, rng);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16})
    for (SequenceLayout layout : {SequenceLayout::kContiguous, SequenceLayout::kZigzag}) {
      const Tensor low = to_dtype(full, dtype), widened = to_dtype(low, DType::kFloat32);
      const Tensor mine = shard_sequence(low, 2, r, n, layout);
      EXPECT_EQ(diff(to_dtype(mine, DType::kFloat32), shard_sequence(widened, 2, r, n, layout)), 0.0)
          << layout_name(layout);
      const Tensor back = gather_sequence(mine, 2, MPI_COMM_WORLD, layout);
      if (r == 0) {
        ASSERT_EQ(back.dtype(), dtype);
        EXPECT_EQ(diff(to_dtype(back, DType::kFloat32), widened), 0.0) << layout_name(layout);
      }
    }
  if (n > 1) {
    const Tensor part = shard_sequence(full, 2, r, n, SequenceLayout::kContiguous);
    EXPECT_THROW(gather_sequence(r == 1 ? to_dtype(part, DType::kFloat16) : part, 2, MPI_COMM_WORLD,
                                 SequenceLayout::kContiguous),
                 ShapeError);
    // the same element counts around dim in other sizes ([1, 6, L, 5] on rank 1, [2, 3, L, 5] elsewhere): rank 1's
    // rows had been read in rank 0's shape
    const Tensor reshaped = r == 1 ? test::random_tensor({1, 6, part.dim(2), 5}, rng) : part;
    EXPECT_THROW(gather_sequence(reshaped, 2, MPI_COMM_WORLD, SequenceLayout::kContiguous), ShapeError);
    // a dim or root only rank 1 gets wrong: every rank throws (the others had waited for it in the Allgather)
    EXPECT_THROW(gather_sequence(part, r == 1 ? 4 : 2, MPI_COMM_WORLD, SequenceLayout::kContiguous), ArgumentError);
    EXPECT_THROW(gather_sequence(part, 2, MPI_COMM_WORLD, SequenceLayout::kContiguous, r == 1 ? n : 0), ArgumentError);
  }
}

TEST(Sequence, SegmentsCoverTheSequenceOnce) {
  for (SequenceLayout layout : {SequenceLayout::kContiguous, SequenceLayout::kZigzag})
    for (int n : {1, 2, 3, 4, 5})
      for (int64_t L : {0, 1, 7, 37, 64}) {
        std::vector<int> owner(static_cast<size_t>(L), -1);
        for (int r = 0; r < n; ++r)
          for (const Segment& s : sequence_segments(L, r, n, layout))
            for (int64_t i = s.begin; i < s.end; ++i) {
              EXPECT_EQ(owner[static_cast<size_t>(i)], -1);
              owner[static_cast<size_t>(i)] = r;
            }
        for (int o : owner) EXPECT_NE(o, -1) << layout_name(layout) << " n=" << n << " L=" << L;
      }
  EXPECT_THROW(parse_layout("spiral"), ArgumentError);
}

}  // namespace
}  // namespace attn::dist
