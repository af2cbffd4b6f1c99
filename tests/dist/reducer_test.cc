// The data-parallel gradient reducer under mpirun (-np 2, 3, 4): share-weighted sums in buckets of any size, after
// the backward or overlapped with it (every GradientOverlap), and on a Transformer's backward the overlapped
// reducer leaves the gradients the plain one does, the same on every rank.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "attn/dist/data_parallel.h"
#include "attn/error.h"
#include "attn/models/transformer.h"
#include "mpi_test_util.h"

namespace attn::dist {
namespace {

using test::rank;
using test::size;

constexpr GradientOverlap kModes[] = {GradientOverlap::kNone, GradientOverlap::kThread, GradientOverlap::kNonBlocking};

// Rank r's share of the loss: 1, 2, ..., n over their sum.
double share_of(int r, int n) { return (r + 1.0) / (n * (n + 1) / 2.0); }

// The all-reduce over buckets smaller than a tensor, across tensor boundaries, and larger than everything:
// Σ_ranks share·grads, through reduce() and through begin_step / gradients_ready / finish_step in another order.
// Two steps each: the buckets are reused.
TEST(MpiGradientReducer, SumsShareWeightedGradientsInBuckets) {
  const int r = rank(), n = size();
  for (GradientOverlap mode : kModes)
    for (int64_t bucket : {1, 7, 64, 1 << 20})
      for (bool overlapped : {false, true}) {
        SCOPED_TRACE(std::string(gradient_overlap_name(mode)) + ", bucket " + std::to_string(bucket) +
                     (overlapped ? ", overlapped" : ", after"));
        MpiGradientReducer reducer(MPI_COMM_WORLD, {bucket, mode});
        for (int step = 0; step < 2; ++step) {
          reducer.share = share_of(r, n);
          std::map<std::string, Tensor> grads;
          for (const auto& [name, numel] : {std::pair{"a", 5}, {"b", 13}, {"c", 1}}) {
            Tensor t({numel});
            for (int64_t i = 0; i < numel; ++i) t.f32()[i] = static_cast<float>(100 * r + i + step);
            grads[name] = t;
          }
          float loss = static_cast<float>(r + 1);
          if (overlapped) {
            reducer.begin_step(grads, loss);
            reducer.gradients_ready({"c"});
            reducer.gradients_ready({"b", "a"});
            loss = reducer.finish_step();
          } else {
            loss = reducer.reduce(grads, loss);
          }
          double want_loss = 0.0;
          for (int s = 0; s < n; ++s) want_loss += share_of(s, n) * (s + 1);
          EXPECT_NEAR(loss, want_loss, 1e-5);
          for (const auto& [name, t] : grads)
            for (int64_t i = 0; i < t.numel(); ++i) {
              double want = 0.0;
              for (int s = 0; s < n; ++s) want += share_of(s, n) * (100.0 * s + static_cast<double>(i + step));
              EXPECT_NEAR(t.f32()[i], want, 1e-3) << name << "[" << i << "]";
            }
        }
        EXPECT_EQ(reducer.times().steps, 2);
      }
}

// Misuse fails on every rank alike, before any message (one bucket: nothing is launched before finish_step).
TEST(MpiGradientReducer, RefusesAGradientNamedTwiceNeverOrUnknown) {
  for (GradientOverlap mode : kModes) {
    std::map<std::string, Tensor> grads{{"a", Tensor({3})}, {"b", Tensor({2})}};
    {
      MpiGradientReducer reducer(MPI_COMM_WORLD, {1 << 20, mode});
      reducer.begin_step(grads, 1.0f);
      reducer.gradients_ready({"a"});
      EXPECT_THROW(reducer.gradients_ready({"a"}), Error);
    }
    {
      MpiGradientReducer reducer(MPI_COMM_WORLD, {1 << 20, mode});
      reducer.begin_step(grads, 1.0f);
      reducer.gradients_ready({"b"});
      EXPECT_THROW(reducer.finish_step(), Error);
      EXPECT_THROW(reducer.gradients_ready({"c"}), ArgumentError);  // outside a step
      reducer.begin_step(grads, 1.0f);
      EXPECT_THROW(reducer.gradients_ready({"c"}), ArgumentError);
    }
    if (mode != GradientOverlap::kNone) {  // one-float buckets: "b"'s all-reduces start before finish_step fails
      MpiGradientReducer reducer(MPI_COMM_WORLD, {1, mode});
      reducer.begin_step(grads, 1.0f);
      reducer.gradients_ready({"b"});
      EXPECT_THROW(reducer.finish_step(), Error);
      EXPECT_THROW(reducer.begin_step(grads, 1.0f), ArgumentError);  // had refilled the buckets still in flight
    }
  }
  EXPECT_THROW(MpiGradientReducer(MPI_COMM_WORLD, {0, GradientOverlap::kNone}), ArgumentError);
  EXPECT_EQ(parse_gradient_overlap("thread"), GradientOverlap::kThread);
  EXPECT_THROW(parse_gradient_overlap("async"), ArgumentError);
}

// Ranks whose gradients or buckets differ in size had sent all-reduces of different counts and waited on each other
// (or failed inside MPI): the first step refuses it on every rank alike.
TEST(MpiGradientReducer, RanksThatDisagreeOnTheLayoutAreRefused) {
  if (size() < 2) GTEST_SKIP() << "one rank has no other to disagree with";
  const int r = rank();
  for (GradientOverlap mode : kModes) {
    std::map<std::string, Tensor> grads{{"a", Tensor({3})}, {"b", Tensor({r == 0 ? 2 : 5})}};
    MpiGradientReducer reducer(MPI_COMM_WORLD, {1 << 20, mode});
    EXPECT_THROW(reducer.begin_step(grads, 1.0f), ArgumentError);
    std::map<std::string, Tensor> same{{"a", Tensor({3})}};
    MpiGradientReducer buckets(MPI_COMM_WORLD, {r == 0 ? 2 : 1, mode});
    EXPECT_THROW(buckets.reduce(same, 1.0f), ArgumentError);
  }
  // blocking and non-blocking all-reduces do not match in MPI
  std::map<std::string, Tensor> grads{{"a", Tensor({3})}};
  MpiGradientReducer modes(MPI_COMM_WORLD, {1 << 20, r == 0 ? GradientOverlap::kNone : GradientOverlap::kNonBlocking});
  EXPECT_THROW(modes.begin_step(grads, 1.0f), ArgumentError);
}

// Ranks whose backwards name the gradients in different orders fill their buckets with different tensors: summed
// element by element, silently wrong. The first step's finish_step throws on every rank; named in the same order (in
// the next step), the reducer goes on.
TEST(MpiGradientReducer, RanksThatNameGradientsInDifferentOrdersAreRefused) {
  if (size() < 2) GTEST_SKIP() << "one rank has no other to disagree with";
  for (GradientOverlap mode : {GradientOverlap::kThread, GradientOverlap::kNonBlocking}) {
    SCOPED_TRACE(gradient_overlap_name(mode));
    std::map<std::string, Tensor> grads{{"a", Tensor::from_floats({3}, {1, 1, 1})},
                                        {"b", Tensor::from_floats({3}, {2, 2, 2})}};
    MpiGradientReducer reducer(MPI_COMM_WORLD, {1 << 20, mode});
    reducer.share = 1.0 / size();
    reducer.begin_step(grads, 1.0f);
    if (rank() == 0)
      reducer.gradients_ready({"a", "b"});
    else
      reducer.gradients_ready({"b", "a"});
    try {
      reducer.finish_step();
      ADD_FAILURE() << "finish_step did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("different orders"), std::string::npos) << e.what();
    }
    grads = {{"a", Tensor::from_floats({3}, {1, 1, 1})}, {"b", Tensor::from_floats({3}, {2, 2, 2})}};
    reducer.begin_step(grads, 1.0f);
    reducer.gradients_ready({"b", "a"});
    EXPECT_FLOAT_EQ(reducer.finish_step(), 1.0f);
    EXPECT_FLOAT_EQ(grads.at("b").f32()[2], 2.0f);
  }
}

// kThread needs MPI_THREAD_SERIALIZED (its thread makes the MPI calls); below it the reducer overlaps through
// non-blocking all-reduces instead, with the same sums. CTest runs this under both levels (dist_np2_thread_single).
TEST(MpiGradientReducer, CommunicationThreadNeedsSerializedMpi) {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  const char* want_level = std::getenv("ATTN_TEST_MPI_THREAD");
  if (want_level != nullptr && std::string(want_level) == "single") {
    EXPECT_LT(level, MPI_THREAD_SERIALIZED);
  }
  MpiGradientReducer reducer(MPI_COMM_WORLD, {4, GradientOverlap::kThread});
  EXPECT_EQ(reducer.overlap(),
            level >= MPI_THREAD_SERIALIZED ? GradientOverlap::kThread : GradientOverlap::kNonBlocking);
  std::map<std::string, Tensor> grads{{"a", Tensor::from_floats({5}, {1, 2, 3, 4, 5})}};
  reducer.share = 1.0 / size();
  reducer.begin_step(grads, 2.0f);
  reducer.gradients_ready({"a"});
  EXPECT_FLOAT_EQ(reducer.finish_step(), 2.0f);
  EXPECT_FLOAT_EQ(grads.at("a").f32()[4], 5.0f);  // Σ over the ranks of (1/n)·5
}

// A 64-bit FNV-1a hash of a tensor's bytes: equal gradients on every rank, bit for bit.
uint64_t hash_of(const Tensor& t) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(t.f32());
  for (size_t i = 0; i < static_cast<size_t>(t.numel()) * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// One step's gradients on this rank's own batch: forward, loss = Σ logits ⊙ R for a random R of this rank (so
// dlogits = R), backward with the reducer either after it (overlapped = false: reduce()) or hooked into it.
// Returns the reduced loss.
float reduced_gradients(Transformer& m, MpiGradientReducer& reducer, bool overlapped) {
  const TransformerConfig& c = m.config();
  const int r = rank(), n = size();
  std::mt19937 rng(static_cast<unsigned>(17 + r));  // each rank its own sentences
  const int64_t B = 3, Ls = 6, Lt = 5;
  TokenBatch src{{}, B, Ls}, tgt_in{{}, B, Lt};
  for (int64_t i = 0; i < B * Ls; ++i) src.ids.push_back(static_cast<int32_t>(3 + rng() % (c.src_vocab - 3)));
  for (int64_t i = 0; i < B * Lt; ++i)
    tgt_in.ids.push_back(i % Lt == 0 ? c.bos_id : static_cast<int32_t>(3 + rng() % (c.tgt_vocab - 3)));
  m.zero_grad();
  const Tensor logits = m.forward(src, tgt_in, true, nullptr);
  Tensor dlogits(logits.shape());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  float loss = 0.0f;
  for (int64_t i = 0; i < dlogits.numel(); ++i) dlogits.f32()[i] = u(rng), loss += dlogits.f32()[i] * logits.f32()[i];
  reducer.share = share_of(r, n);
  if (!overlapped) {
    m.backward(dlogits);
    return reducer.reduce(m.grads(), loss);
  }
  reducer.begin_step(m.grads(), loss);
  BackwardOptions hooks;
  hooks.on_gradients_ready = [&](const std::vector<std::string>& names) { reducer.gradients_ready(names); };
  m.backward(dlogits, hooks);
  return reducer.finish_step();
}

// The overlapped reducer sends each gradient once its backward is done (tied and learned-position embeddings
// collect contributions from two places), in buckets of one float, of 7 (a tensor split across many), of 1000
// (tensor boundaries inside buckets) and of 2^18 (one bucket): the plain reducer's gradients, bit for bit on 2 ranks
// (a + b is exact to swap), within float reordering on more (Open MPI may sum 3 ranks in another order for another
// message size), and equal on every rank.
TEST(MpiGradientReducer, OverlappedGivesThePlainReducersGradients) {
  const int n = size();
  for (const bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied embeddings, learned positions" : "untied, sinusoidal positions");
    TransformerConfig c;
    c.src_vocab = 11, c.tgt_vocab = 9, c.d_model = 8, c.num_heads = 2, c.d_ff = 16, c.max_len = 8;
    c.num_encoder_layers = 1, c.num_decoder_layers = 2, c.dropout = 0.0f;
    c.tie_embeddings = tied, c.learned_positions = tied;
    Transformer m(c, 9);
    MpiGradientReducer plain(MPI_COMM_WORLD, {1 << 18, GradientOverlap::kNone});
    const float want_loss = reduced_gradients(m, plain, false);
    std::map<std::string, Tensor> want;
    for (const auto& [name, g] : m.grads()) want[name] = g.clone();
    for (GradientOverlap mode : {GradientOverlap::kThread, GradientOverlap::kNonBlocking})
      for (int64_t bucket : {1, 7, 1000, 1 << 18}) {
        SCOPED_TRACE(std::string(gradient_overlap_name(mode)) + ", bucket " + std::to_string(bucket));
        MpiGradientReducer reducer(MPI_COMM_WORLD, {bucket, mode});
        const float loss = reduced_gradients(m, reducer, true);
        EXPECT_NEAR(loss, want_loss, 1e-6 * std::fabs(want_loss));
        for (const auto& [name, g] : m.grads()) {
          const Tensor& w = want.at(name);
          float scale = 0.0f;
          for (int64_t i = 0; i < w.numel(); ++i) scale = std::max(scale, std::fabs(w.f32()[i]));
          const float tolerance = n <= 2 ? 0.0f : 1e-6f * scale;
          int64_t bad = 0;
          for (int64_t i = 0; i < g.numel(); ++i) bad += !(std::fabs(g.f32()[i] - w.f32()[i]) <= tolerance);
          EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << g.numel() << " differ beyond " << tolerance;
          // the same bits on every rank
          const uint64_t mine = hash_of(g);
          std::vector<uint64_t> all(static_cast<size_t>(n));
          MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
          for (int s = 0; s < n; ++s) EXPECT_EQ(all[static_cast<size_t>(s)], mine) << name << ": rank " << s;
        }
      }
  }
}

}  // namespace
}  // namespace attn::dist
