// The encoder–decoder Transformer against PyTorch (fixtures from tests/fixtures/generate.py):
// nn.TransformerEncoderLayer / DecoderLayer (batch-first, both norm_first) forward and autograd
// gradients, and the whole model (embeddings + nn.Transformer + generator) forward, loss and
// gradients. Then generation: incremental decoding equals full recomputation; beam search.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <thread>

#include "attn/error.h"
#include "attn/generation.h"
#include "attn/io/safetensors.h"
#include "attn/models/bert.h"
#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/train/trainer.h"
#include "models/transformer_internal.h"
#include "ops/nn.h"
#include "test_util.h"
#include "token_batch_util.h"

namespace attn {
namespace {

// Generation options by position (an aggregate initialiser would leave the later members to GCC's
// -Wmissing-field-initializers).
GenerationOptions decoding(int beam, float length_penalty, int64_t max_length) {
  GenerationOptions o;
  o.beam = beam;
  o.length_penalty = length_penalty;
  o.max_length = max_length;
  return o;
}

// Relative-plus-absolute closeness of two float tensors.
double max_rel_err(const float* a, const float* b, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::fabs(static_cast<double>(a[i]) - b[i]) / (1e-3 + std::fabs(static_cast<double>(b[i])));
    if (!(e <= m)) m = std::isnan(e) ? INFINITY : e;  // NaN anywhere is a failure, not a pass
  }
  return m;
}

TEST(Transformer, MatchesPyTorchForwardLossAndGradients) {
  for (const char* name : {"transformer_post_relu", "transformer_pre_gelu", "transformer_post_gelu_untied_learned"}) {
    SCOPED_TRACE(name);
    const io::Safetensors st = io::read_safetensors(test::fixture(std::string(name) + ".safetensors"));
    Transformer m(TransformerConfig::from_json(st.metadata.at("config")));
    for (auto& [pname, t] : m.params()) {
      const Tensor& src = st.at(pname);
      ASSERT_EQ(src.shape(), t.shape()) << pname;
      std::copy_n(src.f32(), src.numel(), t.f32());
    }
    const TokenBatch src = test::token_batch(st.at("src")), tgt_in = test::token_batch(st.at("tgt_in")),
                     tgt_out = test::token_batch(st.at("tgt_out"));
    m.zero_grad();
    const Tensor logits = m.forward(src, tgt_in, true, nullptr);
    EXPECT_LE(test::max_abs_diff(logits, st.at("expected_logits")), 2e-5);
    Tensor dlogits(logits.shape());
    const float loss = ops::cross_entropy_forward_backward(dlogits.f32(), logits.f32(), tgt_out.ids.data(),
                                                           tgt_in.B * tgt_in.L, m.config().tgt_vocab, 0.1f, 0);
    EXPECT_NEAR(loss, std::stod(st.metadata.at("loss")), 1e-5);
    EXPECT_THROW(m.backward(Tensor(logits.shape(), DType::kBool)), DTypeError);  // named, before any gradient moves
    m.backward(dlogits);
    for (const auto& [pname, g] : m.grads()) {
      const Tensor& want = st.at("grad." + pname);
      EXPECT_LE(max_rel_err(g.f32(), want.f32(), g.numel()), 2e-3) << pname;
    }
  }
}

TEST(Transformer, LayersMatchPyTorchForwardAndGradients) {
  for (const char* name : {"layer_encoder_post", "layer_encoder_pre", "layer_decoder_post", "layer_decoder_pre"}) {
    SCOPED_TRACE(name);
    const io::Safetensors st = io::read_safetensors(test::fixture(std::string(name) + ".safetensors"));
    const bool decoder = st.metadata.at("decoder") == "true";
    TransformerConfig c;
    c.src_vocab = 4, c.tgt_vocab = 4, c.d_model = 16, c.num_heads = 4, c.d_ff = 24, c.max_len = 8, c.dropout = 0.0f;
    c.num_encoder_layers = 1, c.num_decoder_layers = 1;
    c.norm_first = st.metadata.at("norm_first") == "true";
    Transformer m(c);
    size_t loaded = 0, fixture_params = 0;
    for (auto& [pname, t] : m.params())
      if (st.contains(pname)) {
        ASSERT_EQ(st.at(pname).numel(), t.numel()) << pname;
        std::copy_n(st.at(pname).f32(), t.numel(), t.f32());
        ++loaded;
      }
    for (const auto& [key, t] : st.tensors)  // every parameter the fixture holds is one of the model's (a renamed one
      fixture_params += key.find('.') != std::string::npos && key.rfind("grad.", 0) != 0;  // had been skipped silently)
    EXPECT_EQ(loaded, fixture_params);
    EXPECT_GT(loaded, 5u);
    m.zero_grad();
    const models::TransformerWeights net = models::bind(m.config(), m.params(), m.grads());
    const Tensor& x = st.at("x");
    const int64_t B = x.dim(0), L = x.dim(1), E = 16, M = B * L;
    std::vector<uint8_t> x_pad(st.at("x_pad").b8(), st.at("x_pad").b8() + B * L);
    const Tensor& R = st.at("R");
    models::Buf dx(R.f32(), R.f32() + R.numel());  // dLoss/dout = R for loss = Σ out ⊙ R
    const float* out;
    TransformerBackwardBuffers buffers;
    if (!decoder) {
      EncoderLayerActivations k;
      out = models::encoder_layer_forward(k, net.enc[0], net, x.f32(), B, L, x_pad.data(), true, nullptr);
      EXPECT_LE(max_rel_err(out, st.at("expected").f32(), M * E), 1e-4);
      models::encoder_layer_backward(dx.data(), k, net.enc[0], net, B, L, buffers);
    } else {
      const Tensor& mem = st.at("mem");
      const int64_t Ls = mem.dim(1);
      std::vector<uint8_t> m_pad(st.at("mem_pad").b8(), st.at("mem_pad").b8() + B * Ls);
      DecoderLayerActivations k;
      out = models::decoder_layer_forward(k, net.dec[0], net, x.f32(), mem.f32(), B, L, Ls, x_pad.data(), m_pad.data(),
                                          true, nullptr);
      EXPECT_LE(max_rel_err(out, st.at("expected").f32(), M * E), 1e-4);
      models::Buf dmem(static_cast<size_t>(B * Ls * E), 0.0f);
      models::decoder_layer_backward(dx.data(), dmem.data(), k, net.dec[0], net, B, L, Ls, buffers);
      EXPECT_LE(max_rel_err(dmem.data(), st.at("grad.mem").f32(), B * Ls * E), 2e-3) << "d mem";
    }
    EXPECT_LE(max_rel_err(dx.data(), st.at("grad.x").f32(), M * E), 2e-3) << "d x";
    size_t compared = 0;
    for (const auto& [pname, g] : m.grads())
      if (st.contains("grad." + pname)) {
        EXPECT_LE(max_rel_err(g.f32(), st.at("grad." + pname).f32(), g.numel()), 2e-3) << pname;
        ++compared;
      }
    EXPECT_EQ(compared, loaded);  // a gradient for every parameter loaded
  }
}

Transformer random_model(bool norm_first, int64_t tgt_vocab = 10) {
  TransformerConfig c;
  c.src_vocab = 12, c.tgt_vocab = tgt_vocab, c.d_model = 16, c.num_heads = 4, c.d_ff = 32, c.max_len = 20;
  c.num_encoder_layers = 2, c.num_decoder_layers = 2, c.norm_first = norm_first, c.dropout = 0.0f;
  Transformer m(c, 3);
  std::mt19937 rng(4);
  for (auto& [name, t] : m.params())  // sharpen the output so greedy choices are clear-cut
    if (name == "generator.bias") {
      for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(rng() % 100) / 50.0f;
      t.f32()[c.pad_id] = t.f32()[c.bos_id] = -100.0f;  // never predicted, as in a trained model
    }
  return m;
}

// A decoder that outlives its thread's KV-cache pool (held by a thread_local made before the pool, so destroyed after
// it at the thread's exit) frees its caches instead of giving them back to the destroyed pool (undefined behaviour
// there: a push_back into a destroyed vector, which the sanitizer build shows).
TEST(Transformer, ADecoderOutlivingItsThreadsCachePoolFreesItsCaches) {
  const Transformer m = random_model(false);
  std::thread([&] {
    thread_local std::unique_ptr<StepDecoder> held;  // made here, before the pool
    held = m.start_decoding(TokenBatch{{3, 4, 2}, 1, 3}, 1, 4);
    EXPECT_NE(held->step(std::vector<int32_t>{m.config().bos_id}.data(), 0), nullptr);
  }).join();
}

TEST(Transformer, IncrementalDecodingEqualsFullRecomputation) {
  for (bool norm_first : {false, true}) {
    const Transformer m = random_model(norm_first);
    const TokenBatch src{{3, 4, 5, 6, 2, 7, 8, 2, 0, 0}, 2, 5};
    std::vector<std::vector<float>> inc_logits, full_logits;
    const auto inc = generate_greedy_logits(m, src, 12, &inc_logits);
    const auto full = generate_full_recompute(m, src, 12, &full_logits);
    ASSERT_EQ(inc, full);
    // src's sizes are checked before anything is sized by them (B = -1 had reached an allocation)
    for (const TokenBatch& bad : {TokenBatch{{3}, -1, 1}, TokenBatch{{3}, int64_t{1} << 40, 1}, TokenBatch{{3}, 2, 1},
                                  TokenBatch{{}, int64_t{1} << 40, 0}})
      for (const auto& decode : {std::function([&] { generate_full_recompute(m, bad, 4); }),
                                 std::function([&] { generate_greedy_logits(m, bad, 4, nullptr); }),
                                 std::function([&] { generate(m, bad); })})
        EXPECT_THROW(decode(), ShapeError) << bad.B;
    for (size_t b = 0; b < inc_logits.size(); ++b) {
      ASSERT_EQ(inc_logits[b].size(), full_logits[b].size());
      for (size_t i = 0; i < inc_logits[b].size(); ++i) EXPECT_NEAR(inc_logits[b][i], full_logits[b][i], 1e-4);
    }
    // generate(beam = 1) is the same greedy path, stopping at EOS
    const auto greedy = generate(m, src, decoding(1, 0.0f, 12));
    for (size_t b = 0; b < greedy.size(); ++b) {
      const auto& f = full[b];
      std::vector<int32_t> until_eos;
      for (int32_t t : f) {
        if (t == m.config().eos_id) break;
        until_eos.push_back(t);
      }
      EXPECT_EQ(greedy[b], until_eos) << "sentence " << b;
    }
  }
  // a model whose best token is <pad> (then <bos>): the references choose as generate does, never either (a chosen
  // <pad> fed back is a hidden key to the full recomputation and a visible one to the cache: they had parted there)
  Transformer m = random_model(false);
  for (auto& [name, t] : m.params())
    if (name == "generator.bias") t.f32()[m.config().pad_id] = 1e4f, t.f32()[m.config().bos_id] = 1e3f;
  const TokenBatch src{{3, 4, 5, 6, 2}, 1, 5};
  std::vector<std::vector<float>> inc_logits, full_logits;
  const auto inc = generate_greedy_logits(m, src, 8, &inc_logits);
  EXPECT_EQ(inc, generate_full_recompute(m, src, 8, &full_logits));
  for (int32_t t : inc[0]) EXPECT_TRUE(t != m.config().pad_id && t != m.config().bos_id) << t;
  for (size_t i = 0; i < inc_logits[0].size(); ++i) EXPECT_NEAR(inc_logits[0][i], full_logits[0][i], 1e-2);
}

// The cached decoder under what beam search does to it, at random: every step the hypotheses of a sentence continue
// random parents (reorder), and halfway a sentence leaves the batch (retain); 40 positions, so each hypothesis's
// self-attention cache fills blocks of keys (16) and shares or copies them as parents repeat. Every step's logits
// must be the full teacher-forced recompute's on that hypothesis's tokens (Transformer::logits, no cache).
// bf16 and int8 caches round what they store, so there the reference is the same cache type decoding each hypothesis
// alone, token by token, with nothing reordered or retained (every row is rounded on its own, so the two hold the
// same bits): the paged copies and slot moves of those types are checked as exactly as float32's.
TEST(Transformer, ReorderedAndRetainedHypothesesDecodeAsTheFullRecompute) {
  TransformerConfig c;
  c.src_vocab = 12, c.tgt_vocab = 10, c.d_model = 16, c.num_heads = 4, c.d_ff = 32, c.max_len = 48;
  c.num_encoder_layers = c.num_decoder_layers = 2, c.dropout = 0.0f;
  const Transformer m(c, 5);
  const TokenBatch src{{3, 4, 5, 6, 2, 7, 8, 2, 0, 0, 9, 10, 11, 2, 0}, 3, 5};
  for (const KVCacheType type : {KVCacheType::kFloat32, KVCacheType::kBFloat16, KVCacheType::kInt8}) {
    SCOPED_TRACE(kv_cache_name(type));
    const int64_t K = 4, P = type == KVCacheType::kFloat32 ? 40 : 24, V = c.tgt_vocab;
    std::unique_ptr<StepDecoder> dec = m.start_decoding(src, K, P, type);
    std::vector<int64_t> sentence = {0, 1, 2};                  // the source sentence of each slot
    std::vector<std::vector<int32_t>> hist(3 * K, {c.bos_id});  // each hypothesis's tokens so far
    std::mt19937 rng(11);
    for (int64_t t = 0; t < P; ++t) {
      const int64_t N = static_cast<int64_t>(hist.size());
      std::vector<int32_t> tokens;
      for (const auto& h : hist) tokens.push_back(h.back());
      const float* logits = dec->step(tokens.data(), t);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t s = sentence[static_cast<size_t>(n / K)];
        const TokenBatch src1{std::vector<int32_t>(src.ids.begin() + s * src.L, src.ids.begin() + (s + 1) * src.L), 1,
                              src.L};
        const auto& h = hist[static_cast<size_t>(n)];
        std::vector<float> want(static_cast<size_t>(V));
        if (type == KVCacheType::kFloat32) {
          const Tensor full = m.logits(src1, TokenBatch{h, 1, static_cast<int64_t>(h.size())});
          std::copy_n(full.f32() + t * V, V, want.begin());
        } else {
          std::unique_ptr<StepDecoder> alone = m.start_decoding(src1, 1, P, type);
          const float* row = nullptr;
          for (int64_t i = 0; i <= t; ++i) row = alone->step(&h[static_cast<size_t>(i)], i);
          std::copy_n(row, V, want.begin());
        }
        for (int64_t v = 0; v < V; ++v)
          ASSERT_NEAR(logits[n * V + v], want[static_cast<size_t>(v)], 1e-4) << "t " << t << " hypothesis " << n;
      }
      if (t + 1 == P) break;
      if (t == 12) {  // sentence slot 0 leaves: slot 2 moves into it, slot 1 stays
        dec->retain({2, 1});
        sentence = {sentence[2], sentence[1]};
        std::vector<std::vector<int32_t>> kept(hist.begin() + 2 * K, hist.end());
        kept.insert(kept.end(), hist.begin() + K, hist.begin() + 2 * K);
        hist = kept;
      }
      std::vector<int64_t> parent;
      for (int64_t n = 0; n < static_cast<int64_t>(hist.size()); ++n) parent.push_back(n / K * K + rng() % K);
      dec->reorder(parent, t);
      std::vector<std::vector<int32_t>> next;
      for (int64_t p : parent) {  // tokens 3.. (never pad, which the full recompute would mask, nor BOS or EOS)
        next.push_back(hist[static_cast<size_t>(p)]);
        next.back().push_back(static_cast<int32_t>(3 + rng() % (V - 3)));
      }
      hist = next;
    }
  }
}

// log P(y | src) under the model, by the teacher-forced forward pass.
double sequence_logprob(Transformer& m, const TokenBatch& src1, const std::vector<int32_t>& y) {
  TokenBatch tgt_in{{m.config().bos_id}, 1, 0};
  for (int32_t t : y) tgt_in.ids.push_back(t);
  tgt_in.L = static_cast<int64_t>(tgt_in.ids.size());
  const Tensor logits = m.forward(src1, tgt_in);
  const int64_t V = m.config().tgt_vocab;
  double lp = 0.0;
  for (int64_t i = 0; i < tgt_in.L; ++i) {
    const float* row = logits.f32() + i * V;
    const int32_t target = i + 1 < tgt_in.L ? y[static_cast<size_t>(i)] : m.config().eos_id;
    double mx = *std::max_element(row, row + V), s = 0.0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
    lp += row[target] - mx - std::log(s);
  }
  return lp;
}

TEST(Transformer, BeamSearchFindsAtLeastAsLikelyATranslationAsGreedy) {
  Transformer m = random_model(false);
  const TokenBatch src{{3, 4, 5, 6, 2, 7, 8, 2, 0, 0, 9, 2, 0, 0, 0}, 3, 5};
  const auto greedy = generate(m, src, decoding(1, 0.0f, 10));
  const auto beam = generate(m, src, decoding(4, 0.0f, 10));
  ASSERT_EQ(beam.size(), 3u);
  for (int64_t b = 0; b < 3; ++b) {
    TokenBatch one{std::vector<int32_t>(src.ids.begin() + b * 5, src.ids.begin() + (b + 1) * 5), 1, 5};
    EXPECT_GE(sequence_logprob(m, one, beam[static_cast<size_t>(b)]) + 1e-4,
              sequence_logprob(m, one, greedy[static_cast<size_t>(b)]));
  }
}

// A vocabulary of 3001 (a subword model's size, past every vector width; beam search keeps each sentence's 2K best
// candidates in one pass over its K·V scores, and the log-softmax runs in vector lanes): beam 1 is the argmax path of
// the step logits up to EOS; and at a limit of one token, beam 4 gives an empty output (EOS) exactly when EOS ranks
// among the 4 best first tokens, moved by its generator bias to rank 4, then to rank 5 (where the best token, cut at
// the limit, is the output).
TEST(Transformer, BeamSearchOverALargeVocabulary) {
  Transformer m = random_model(false, 3001);
  const TransformerConfig& c = m.config();
  const TokenBatch src{{3, 4, 5, 6, 2, 7, 8, 2, 0, 0}, 2, 5};
  const auto argmax = generate_greedy_logits(m, src, 10, nullptr);
  const auto greedy = generate(m, src, decoding(1, 0.0f, 10));
  for (size_t b = 0; b < 2; ++b) {
    std::vector<int32_t> until_eos;
    for (int32_t t : argmax[b]) {
      if (t == c.eos_id) break;
      until_eos.push_back(t);
    }
    EXPECT_EQ(greedy[b], until_eos) << "sentence " << b;
  }
  const TokenBatch one{{3, 4, 5, 6, 2}, 1, 5};
  std::vector<std::vector<float>> first;
  generate_greedy_logits(m, one, 1, &first);
  std::vector<std::pair<float, int32_t>> others;  // the first step's logits of the tokens beam search may choose
  for (int32_t v = 0; v < c.tgt_vocab; ++v)
    if (v != c.eos_id && v != c.pad_id && v != c.bos_id) others.emplace_back(first[0][static_cast<size_t>(v)], v);
  std::sort(others.begin(), others.end(), [](const auto& a, const auto& z) { return a.first > z.first; });
  float* eos_bias = nullptr;
  for (auto& [name, t] : m.params())
    if (name == "generator.bias") eos_bias = t.f32() + c.eos_id;
  ASSERT_NE(eos_bias, nullptr);
  const float eos_logit = first[0][static_cast<size_t>(c.eos_id)], bias = *eos_bias;
  for (const size_t rank : {4u, 5u}) {  // EOS between the others' (rank − 1)-th and rank-th logits
    *eos_bias = bias + 0.5f * (others[rank - 2].first + others[rank - 1].first) - eos_logit;
    const auto out = generate(m, one, decoding(4, 0.0f, 1));
    EXPECT_EQ(out[0], rank <= 4 ? std::vector<int32_t>{} : std::vector<int32_t>{others[0].second}) << "rank " << rank;
  }
}

// suppress_tokens are never chosen: with every token but 5 suppressed (EOS too), outputs are 5s up to the limit
TEST(Transformer, SuppressedTokensAreNeverChosen) {
  const Transformer m = random_model(false);
  const TokenBatch src{{3, 4, 5, 6, 2, 7, 8, 2, 0, 0}, 2, 5};
  for (int beam : {1, 3}) {
    GenerationOptions o = decoding(beam, 0.6f, 8);
    for (int32_t v = 0; v < m.config().tgt_vocab; ++v)
      if (v != 5) o.suppress_tokens.push_back(v);
    for (const auto& out : generate(m, src, o)) EXPECT_EQ(out, std::vector<int32_t>(8, 5)) << "beam " << beam;
    o.suppress_tokens = {static_cast<int32_t>(m.config().tgt_vocab)};
    EXPECT_THROW(generate(m, src, o), ArgumentError);
  }
}

TEST(Transformer, BadInputAndCorruptCheckpoints) {
  Transformer m = random_model(false);
  EXPECT_THROW(generate(m, {{3, 99}, 1, 2}), ArgumentError);                       // id outside the vocabulary
  EXPECT_THROW(generate(m, {{3, 4}, 1, 3}), ShapeError);                           // ids disagree with [B, L]
  EXPECT_THROW(generate(m, {std::vector<int32_t>(30, 3), 1, 30}), ShapeError);     // longer than max_len
  EXPECT_THROW(generate(m, {{3, 4}, 1, 2}, decoding(0, 0.6f, 0)), ArgumentError);  // beam 0
  EXPECT_THROW(generate(m, {{3, 4}, 1, 2}, decoding(kMaxBeam + 1, 0.6f, 0)), ArgumentError);
  EXPECT_THROW(generate(m, {{3, 4}, 1, 2}, decoding(2, std::nanf(""), 0)), ArgumentError);  // had made every score NaN
  EXPECT_TRUE(generate(m, {{}, 0, 3}).empty());  // no sentences: no outputs (had read past an empty vector)
  EXPECT_THROW(generate(m, {{}, -1, 3}), ShapeError);
  const auto dir = test::fresh_temp_path("attn_bad_ckpt");
  std::filesystem::remove_all(dir);
  std::mt19937 rng(9);  // every parameter off its initial value (LayerNorm weights start at 1 everywhere)
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& [name, t] : m.params())
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] += u(rng);
  m.save(dir.string());
  Transformer back = Transformer::load(dir.string());
  ASSERT_EQ(back.params().size(), m.params().size());
  for (const auto& [name, t] : m.params()) {  // every tensor comes back bit for bit
    const Tensor& b = back.params().at(name);
    ASSERT_EQ(b.shape(), t.shape()) << name;
    EXPECT_EQ(std::memcmp(b.raw(), t.raw(), t.nbytes()), 0) << name;
  }
  // and the loaded model computes what the saved one does (its named fields point at the loaded tensors)
  const TokenBatch src{{3, 4, 5, 2}, 1, 4};
  EXPECT_EQ(generate(back, src, decoding(2, 0.6f, 8)), generate(m, src, decoding(2, 0.6f, 8)));
  EXPECT_EQ(test::max_abs_diff(back.encode(src), m.encode(src)), 0.0);
  {  // an unknown activation is an error, not silently ReLU
    std::ofstream(dir / "config.json")
        << std::string(m.config().to_json()).replace(m.config().to_json().find("\"relu\""), 6, "\"tanh\"");
  }
  EXPECT_THROW(Transformer::load(dir.string()), FormatError);
  {  // so is an unknown key (a misspelt "norm_first" would otherwise load as post-norm)
    std::string json = m.config().to_json();
    json.replace(json.find("\"norm_first\""), 12, "\"normfirst\"");
    std::ofstream(dir / "config.json") << json;
  }
  EXPECT_THROW(Transformer::load(dir.string()), FormatError);
  for (const auto& [key, value] :
       {// wraps max_len·E; a sinusoidal table of 4 TiB (it is computed, no file backs it); past 2^20 positions
        std::pair{"\"max_len\": 20", "\"max_len\": 144115188075855872"},
        std::pair{"\"max_len\": 20", "\"max_len\": 8589934592"}, std::pair{"\"max_len\": 20", "\"max_len\": 1048577"},
        std::pair{"\"bos_id\": 1",
                  "\"bos_id\": 10"},  // not a target token
                                      // pad_id outside the vocabulary (generate() wrote past its table), or bos_id
        std::pair{"\"pad_id\": 0", "\"pad_id\": -1"}, std::pair{"\"pad_id\": 0", "\"pad_id\": 10"},
        std::pair{"\"pad_id\": 0", "\"pad_id\": 1"},
        // eos_id that search can never choose (it suppresses pad and bos): every output had run to max_length
        std::pair{"\"eos_id\": 2", "\"eos_id\": 0"}, std::pair{"\"eos_id\": 2", "\"eos_id\": 1"}}) {
    std::string json = m.config().to_json();
    ASSERT_NE(json.find(key), std::string::npos) << json;
    json.replace(json.find(key), std::string(key).size(), value);
    std::ofstream(dir / "config.json") << json;
    EXPECT_THROW(Transformer::load(dir.string()), ArgumentError) << value;
  }
  // whole numbers only, and only those that fit the field: 2^32 + 1 had wrapped to bos_id 1, 2.5 had been d_model 2
  for (const auto& [key, value] :
       {std::pair{"\"bos_id\": 1", "\"bos_id\": 4294967297"}, std::pair{"\"d_model\": 16", "\"d_model\": 16.5"},
        std::pair{"\"max_len\": 20", "\"max_len\": 1e300"}, std::pair{"\"pad_id\": 0", "\"pad_id\": -2147483649"}}) {
    std::string json = m.config().to_json();
    ASSERT_NE(json.find(key), std::string::npos) << json;
    json.replace(json.find(key), std::string(key).size(), value);
    std::ofstream(dir / "config.json") << json;
    EXPECT_THROW(Transformer::load(dir.string()), FormatError) << value;
  }
  for (const auto& [key, value] : {std::pair{"\"num_encoder_layers\": 2", "\"num_encoder_layers\": 100000"},
                                   std::pair{"\"num_decoder_layers\": 2", "\"num_decoder_layers\": 1000"}}) {
    std::string json = m.config().to_json();  // more layers than the file holds: refused before allocating them
    ASSERT_NE(json.find(key), std::string::npos) << json;
    json.replace(json.find(key), std::string(key).size(), value);
    m.save(dir.string());
    std::ofstream(dir / "config.json") << json;
    EXPECT_THROW(Transformer::load(dir.string()), Error) << value;
  }
  {  // fewer layers than the file holds: a tensor the config has no place for (it had run on half the weights)
    std::string json = m.config().to_json();
    const std::string key = "\"num_decoder_layers\": 2";
    ASSERT_NE(json.find(key), std::string::npos) << json;
    json.replace(json.find(key), key.size(), "\"num_decoder_layers\": 1");
    std::ofstream(dir / "config.json") << json;
    try {
      Transformer::load(dir.string());
      ADD_FAILURE() << "a config with fewer layers than its file loaded";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("'decoder.layers.1."), std::string::npos) << e.what();
    }
  }
  m.save(dir.string());
  io::write_safetensors((dir / "model.safetensors").string(), {});  // a model file without the model's tensors
  EXPECT_THROW(Transformer::load(dir.string()), MissingTensorError);
  m.save(dir.string());
  {  // truncate the weights
    const auto path = dir / "model.safetensors";
    const auto size = std::filesystem::file_size(path);
    std::filesystem::resize_file(path, size / 2);
  }
  EXPECT_THROW(Transformer::load(dir.string()), FormatError);
  { std::ofstream(dir / "config.json") << "{\"d_model\": "; }
  EXPECT_THROW(Transformer::load(dir.string()), FormatError);
  EXPECT_THROW(Transformer::load((dir / "nowhere").string()), FormatError);
  std::filesystem::remove_all(dir);
}

// A value nested 10^6 deep in a configuration file is a FormatError naming the file. nlohmann parses it without
// recursion, but the error message's dump() of it recursed once a level and overflowed the stack (a crash).
TEST(Transformer, DeeplyNestedConfigValuesAreFormatErrors) {
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  EXPECT_THROW(TransformerConfig::from_json("{\"src_vocab\": " + deep + "}"), FormatError);
  EXPECT_THROW(BertConfig::from_hf_json("{\"vocab_size\": " + deep + "}"), FormatError);
  EXPECT_THROW(tasks::Vocab::from_json("{\"src\": " + deep + "}"), FormatError);
  const auto dir = test::fresh_temp_path("attn_deep_state");
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "train_state.json") << "{\"step\": " << deep << "}";
  try {
    (void)train::checkpoint_step(dir.string());
    ADD_FAILURE() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("train_state.json"), std::string::npos) << e.what();
  }
  // an error message quotes at most an excerpt of a value (a 1 MB string had been printed whole)
  try {
    (void)TransformerConfig::from_json("{\"src_vocab\": \"" + std::string(1000000, 'x') + "\"}");
    ADD_FAILURE() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_LT(std::string(e.what()).size(), 300u);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// The decoder checks its caller: positions in order, tokens in the vocabulary, parents of the same sentence.
TEST(Transformer, StepDecoderRejectsMisuse) {
  const Transformer m = random_model(false);
  const TokenBatch src{{3, 4, 5, 2, 6, 7, 2, 0}, 2, 4};
  std::unique_ptr<StepDecoder> d = m.start_decoding(src, 2, 6);
  const std::vector<int32_t> bos(4, m.config().bos_id);
  EXPECT_THROW(d->step(bos.data(), 1), ArgumentError);  // position 0 comes first
  d->step(bos.data(), 0);
  EXPECT_THROW(d->reorder({0, 1, 0, 1}, 0), ArgumentError);  // hypotheses 2, 3 are sentence 1's
  EXPECT_THROW(d->reorder({1, 0}, 0), ArgumentError);        // one parent per hypothesis
  d->reorder({1, 1, 3, 2}, 0);
  const std::vector<int32_t> bad = {3, 3, 99, 3};
  EXPECT_THROW(d->step(bad.data(), 1), ArgumentError);  // outside the target vocabulary
  EXPECT_THROW(m.start_decoding(src, 0, 6), ArgumentError);
  EXPECT_THROW(m.start_decoding(src, 1, m.config().max_len + 1), ArgumentError);
  EXPECT_THROW(m.start_decoding(src, int64_t{1} << 62, 1), ArgumentError);  // sentences × hypotheses had wrapped
  try {  // a negative positions is named as such (it had been reported as a cache of more than 2^40 floats)
    m.start_decoding(src, 1, -5);
    ADD_FAILURE() << "positions -5 accepted";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("positions must be in"), std::string::npos) << e.what();
  }
  {  // a sinusoidal table past 2^28 floats (max_len 2^20 at d_model 512): refused, where learned positions are a tensor
    TransformerConfig big = m.config();
    big.max_len = int64_t{1} << 20, big.d_model = 512, big.num_heads = 8;
    EXPECT_THROW(Transformer(big, 1), ArgumentError);  // (checked before anything is allocated)
  }
}

// Finished sentences leave the batch (StepDecoder::retain): the sentences that stay decode as before.
TEST(Transformer, RetainedSentencesDecodeAsBefore) {
  const Transformer m = random_model(false);
  const TokenBatch src{{3, 4, 5, 2, 6, 7, 2, 0, 8, 2, 0, 0}, 3, 4};
  const int64_t K = 2, V = m.config().tgt_vocab;
  std::unique_ptr<StepDecoder> all = m.start_decoding(src, K, 6), kept = m.start_decoding(src, K, 6);
  const std::vector<int32_t> t0(6, m.config().bos_id), t1 = {3, 4, 5, 6, 7, 8};  // random_model: 10 target tokens
  for (StepDecoder* d : {all.get(), kept.get()}) {
    d->step(t0.data(), 0);
    d->step(t1.data(), 1);
  }
  EXPECT_THROW(kept->retain({0, 0}), ArgumentError);  // listed twice
  EXPECT_THROW(kept->retain({3}), ArgumentError);     // no sentence 3
  EXPECT_THROW(kept->retain({1, 0}), ArgumentError);  // sentence 1 would overwrite sentence 0, which stays
  kept->retain({2, 1});                               // sentence 0 leaves, sentence 2 takes its slot
  const std::vector<int32_t> t2_all = {4, 5, 6, 7, 8, 9}, t2_kept = {8, 9, 6, 7};
  const float* a = all->step(t2_all.data(), 2);
  const std::vector<float> want(a, a + 3 * K * V);
  const float* b = kept->step(t2_kept.data(), 2);
  for (int64_t slot = 0; slot < 2; ++slot) {
    const int64_t sentence = slot == 0 ? 2 : 1;
    for (int64_t i = 0; i < K * V; ++i)
      EXPECT_NEAR(b[slot * K * V + i], want[static_cast<size_t>(sentence * K * V + i)], 1e-5) << slot << " " << i;
  }
}

// BackwardOptions::on_gradients_ready names every parameter once, in gradient_ready_groups() order, and only when
// nothing later in the backward changes its gradient (the tied generator and learned positions get contributions
// from two places: their group comes after the last one).
TEST(Transformer, BackwardNamesEachGradientOnceWhenItIsFinal) {
  for (const bool tied : {true, false})
    for (const bool learned : {false, true}) {
      SCOPED_TRACE(std::string(tied ? "tied" : "untied") + (learned ? ", learned positions" : ""));
      TransformerConfig c;
      c.src_vocab = 12, c.tgt_vocab = 10, c.d_model = 16, c.num_heads = 4, c.d_ff = 32, c.max_len = 20;
      c.num_encoder_layers = 2, c.num_decoder_layers = 3, c.dropout = 0.0f;
      c.tie_embeddings = tied, c.learned_positions = learned;
      Transformer m(c, 5);
      const TokenBatch src{{3, 4, 5, 6, 2, 7, 8, 2, 0, 0}, 2, 5}, tgt_in{{1, 3, 4, 5, 1, 6, 0, 0}, 2, 4};
      const std::vector<int32_t> tgt_out = {3, 4, 5, 2, 6, 2, 0, 0};
      m.zero_grad();
      const Tensor logits = m.forward(src, tgt_in, true, nullptr);
      Tensor dlogits(logits.shape());
      ops::cross_entropy_forward_backward(dlogits.f32(), logits.f32(), tgt_out.data(), 8, c.tgt_vocab, 0.1f, 0);
      std::vector<std::vector<std::string>> reported;
      std::map<std::string, std::vector<float>> at_report;  // each gradient as it was when named
      BackwardOptions hooks;
      hooks.on_gradients_ready = [&](const std::vector<std::string>& names) {
        reported.push_back(names);
        for (const std::string& name : names) {
          const Tensor& g = m.grads().at(name);
          EXPECT_FALSE(at_report.count(name)) << name << " named twice";
          at_report[name].assign(g.f32(), g.f32() + g.numel());
        }
      };
      m.backward(dlogits, hooks);
      EXPECT_EQ(reported, m.gradient_ready_groups());
      EXPECT_EQ(at_report.size(), m.grads().size());
      using Names = std::vector<std::string>;
      const Names generator = tied ? Names{"generator.bias"} : Names{"generator.bias", "generator.weight"};
      const Names embeddings = learned ? Names{"src_embed.weight", "pos_embed.weight"} : Names{"src_embed.weight"};
      EXPECT_EQ(reported.front(), generator);
      EXPECT_EQ(reported.back(), embeddings);
      for (const auto& [name, g] : m.grads()) {
        ASSERT_TRUE(at_report.count(name)) << name << " never named";
        double norm = 0.0;
        for (int64_t i = 0; i < g.numel(); ++i) {
          EXPECT_EQ(g.f32()[i], at_report[name][static_cast<size_t>(i)]) << name << "[" << i << "] changed after";
          norm += std::fabs(g.f32()[i]);
        }
        EXPECT_GT(norm, 0.0) << name;  // every gradient gets something (else the check above proves little)
      }
    }
}

// A parameter tensor replaced instead of updated in place: the const paths refuse, forward() rebinds.
TEST(Transformer, AReplacedParameterIsNoticed) {
  Transformer m = random_model(false);
  const TokenBatch src{{3, 4, 5, 2}, 1, 4};
  const Tensor before = m.encode(src);
  m.params().at("encoder.norm.bias") = m.params().at("encoder.norm.bias").clone();  // same values, new storage
  EXPECT_THROW(m.encode(src), ArgumentError);
  m.forward(src, TokenBatch{{1, 3}, 1, 2});
  EXPECT_EQ(test::max_abs_diff(m.encode(src), before), 0.0);
  // one added is named (the optimizer had met it as a std::out_of_range)
  m.params()["encoder.extra"] = Tensor({2});
  try {
    m.forward(src, TokenBatch{{1, 3}, 1, 2});
    ADD_FAILURE() << "an added parameter went unnoticed";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("encoder.extra"), std::string::npos) << e.what();
  }
  m.params().erase("encoder.extra");
  m.forward(src, TokenBatch{{1, 3}, 1, 2});
  EXPECT_EQ(test::max_abs_diff(m.encode(src), before), 0.0);
}

// forward() writes its logits into the last call's storage only when no tensor returned from it is alive: logits
// kept across a second forward (here of another batch) keep their values; once dropped, their storage is reused, unless
// the new batch's logits would take less than half of it.
TEST(Transformer, LogitsStorageIsReusedOnlyOnceReleased) {
  Transformer m = random_model(false);
  const TokenBatch src{{3, 4, 5, 2}, 1, 4}, other{{5, 5, 6, 2}, 1, 4}, tgt_in{{1, 3, 4}, 1, 3};
  const Tensor kept = m.forward(src, tgt_in);
  const Tensor copy = kept.clone();
  Tensor second = m.forward(other, tgt_in);
  EXPECT_EQ(test::max_abs_diff(kept, copy), 0.0);  // not overwritten by the second call
  EXPECT_NE(second.raw(), kept.raw());
  EXPECT_GT(test::max_abs_diff(second, copy), 0.0);  // (the batches differ: a test that could fail)
  const void* storage = second.raw();
  const Shape shape = second.shape();
  second = Tensor();            // the last holder of the second call's logits lets go
  const Tensor blocker(shape);  // (so that a fresh allocation could not land on the freed block)
  Tensor third = m.forward(src, tgt_in);
  EXPECT_EQ(third.raw(), storage);                  // reused
  EXPECT_EQ(test::max_abs_diff(third, copy), 0.0);  // and right
  third = Tensor();
  const Tensor shorter = m.forward(src, TokenBatch{{1}, 1, 1});  // a third of the logits: a buffer of its own
  EXPECT_NE(shorter.raw(), storage);
}

// Each sentence's maximum length is its own (the Translator derives one per sentence): a random model
// rarely ends, so its outputs run to the limit; sentence 0 alone and beside a longer limit agree.
TEST(Transformer, PerSentenceLimitsMakeOutputsIndependentOfTheBatch) {
  const Transformer m = random_model(false);
  for (int beam : {1, 3}) {
    GenerationOptions alone = decoding(beam, 0.6f, 0), both = alone;
    alone.max_lengths = {3};
    both.max_lengths = {3, 9};
    const auto a = generate(m, TokenBatch{{3, 4, 5, 2}, 1, 4}, alone);
    const auto b = generate(m, TokenBatch{{3, 4, 5, 2, 6, 7, 8, 2}, 2, 4}, both);
    EXPECT_LE(a[0].size(), 3u);
    EXPECT_EQ(b[0], a[0]) << "beam " << beam;
    EXPECT_GT(b[1].size(), 3u) << "beam " << beam;  // the other sentence did run longer
  }
  GenerationOptions two_limits = decoding(1, 0.6f, 0);
  two_limits.max_lengths = {3, 4};  // for one sentence
  EXPECT_THROW(generate(m, TokenBatch{{3, 4, 5, 2}, 1, 4}, two_limits), ArgumentError);
}

}  // namespace
}  // namespace attn
