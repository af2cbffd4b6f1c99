// Backward passes against central finite differences: scaled dot-product attention (every mask kind,
// causal, GQA, attention dropout) and the whole Transformer (post-norm and pre-norm, ReLU and GELU, tied and untied
// embeddings, learned positions, padding, dropout everywhere), with label-smoothed cross-entropy as the loss.
#include "attention_cases.h"
#include "attn/attention.h"
#include "attn/models/transformer.h"
#include "ops/nn.h"
#include "test_util.h"

namespace attn {
namespace {

// Loss L = Σ out ⊙ R for a fixed random R, so dL/dout = R.
double sdpa_loss(const test::CaseInputs& in, const Tensor& r) {
  AttentionOptions o = in.options;
  o.impl = AttentionImpl::kReference;
  o.return_weights = false;
  const Tensor out = scaled_dot_product_attention(in.q, in.k, in.v, o).output;
  double s = 0.0;
  for (int64_t i = 0; i < out.numel(); ++i) s += static_cast<double>(out.f32()[i]) * r.f32()[i];
  return s;
}

// Small cases of each option on its own, so that finite differences see every one whatever the random cases draw (the
// size filter below drops the case list's option and window blocks).
std::vector<test::AttentionCase> option_cases() {
  std::vector<test::AttentionCase> out;
  test::AttentionCase c;
  c.B = 2, c.H = 2, c.Hkv = 1, c.Lq = 5, c.Lk = 7, c.D = 4, c.Dv = 3;  // GQA 2:1, Lq < Lk
  for (test::MaskKind m : {test::MaskKind::kBool, test::MaskKind::kFloat, test::MaskKind::kBoolWithEmptyRows}) {
    test::AttentionCase x = c;
    x.mask = m;
    out.push_back(x);
  }
  for (CausalAlignment a : {CausalAlignment::kTopLeft, CausalAlignment::kBottomRight}) {
    test::AttentionCase x = c;
    x.causal = a;
    out.push_back(x);
    x.Lq = 7, x.Lk = 5;  // more queries than keys: bottom-right leaves the first rows empty
    out.push_back(x);
  }
  test::AttentionCase x = c;
  x.key_padding = true;
  out.push_back(x);
  x = c;
  x.causal = CausalAlignment::kBottomRight, x.window = 2;
  out.push_back(x);
  x.Lq = 7, x.Lk = 5;
  out.push_back(x);
  x = c;
  x.alibi = true;
  out.push_back(x);
  return out;
}

TEST(Grad, AttentionBackwardMatchesFiniteDifferences) {
  int checked = 0;
  size_t case_index = 0;  // of the cases the size filter keeps
  std::vector<test::AttentionCase> cases = option_cases();
  const size_t options = cases.size();
  for (size_t i = 0; i < options; ++i) cases.push_back(cases[i]);  // twice: without and with dropout (below)
  for (const test::AttentionCase& c : test::attention_cases(12, 3)) cases.push_back(c);
  bool seen_mask[4] = {}, seen_kpm = false, seen_window = false, seen_alibi = false, seen_gqa = false;
  bool seen_causal[3] = {};
  for (const test::AttentionCase& base : cases) {
    if (base.B * base.H * base.Lq * base.Lk * base.D > 60000) continue;  // keep it quick
    seen_mask[static_cast<int>(base.mask)] = true, seen_causal[static_cast<int>(base.causal)] = true;
    seen_kpm |= base.key_padding, seen_window |= base.window > 0, seen_alibi |= base.alibi;
    seen_gqa |= base.H != base.Hkv;
    test::AttentionCase c = base;
    c.weights = false;
    test::CaseInputs in = test::make_inputs(c, 11);
    // dropout on the option cases' second pass and on every third case after (a fixed seed makes the loss a
    // deterministic function of q, k, v)
    const size_t n = case_index++;
    if ((n >= options && n < 2 * options) || (n >= 2 * options && n % 3 == 0)) {
      in.options.dropout_p = 0.3f;
      in.options.dropout_seed = static_cast<uint64_t>(case_index);
    }
    std::mt19937 rng(5);
    const Tensor r = test::random_tensor({c.B, c.H, c.Lq, c.Dv}, rng);
    const AttentionGrads g = scaled_dot_product_attention_backward(in.q, in.k, in.v, r, in.options);
    for (auto [t, dt] : {std::pair<Tensor*, const Tensor*>{&in.q, &g.dq}, {&in.k, &g.dk}, {&in.v, &g.dv}}) {
      for (int s = 0; s < 4; ++s) {
        const int64_t i = static_cast<int64_t>(rng() % static_cast<uint32_t>(t->numel()));
        const float saved = t->f32()[i], eps = 1e-2f;
        t->f32()[i] = saved + eps;
        const double up = sdpa_loss(in, r);
        t->f32()[i] = saved - eps;
        const double down = sdpa_loss(in, r);
        t->f32()[i] = saved;
        const double fd = (up - down) / (2.0 * eps);
        EXPECT_NEAR(dt->f32()[i], fd, 2e-3 + 2e-3 * std::fabs(fd)) << c.name() << " element " << i;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 300);
  for (int m = 0; m < 4; ++m) EXPECT_TRUE(seen_mask[m]) << "mask kind " << m;
  for (int a = 0; a < 3; ++a) EXPECT_TRUE(seen_causal[a]) << "causal alignment " << a;
  EXPECT_TRUE(seen_kpm && seen_window && seen_alibi && seen_gqa);
}

struct Batch {
  TokenBatch src, tgt_in;
  std::vector<int32_t> tgt_out;
};

Batch toy_batch(const TransformerConfig& c) {
  // two sentences, the second padded; target out = target in shifted left, EOS at the end
  Batch b;
  b.src = {{3, 4, 5, 6, 3, 5, 0, 0}, 2, 4};
  b.tgt_in = {{c.bos_id, 3, 4, c.bos_id, 5, 0}, 2, 3};
  b.tgt_out = {3, 4, c.eos_id, 5, c.eos_id, c.pad_id};
  return b;
}

// With dropout (`dropout_seed` ≥ 0) every call draws the same masks: its generator starts from that seed each time, so
// the loss is a deterministic function of the parameters and finite differences see the dropped model.
double model_loss(Transformer& m, const Batch& b, float smoothing, Tensor* dlogits, int64_t dropout_seed = -1) {
  std::mt19937_64 rng(static_cast<uint64_t>(dropout_seed));
  const bool dropout = dropout_seed >= 0;
  const Tensor logits = m.forward(b.src, b.tgt_in, dlogits != nullptr || dropout, dropout ? &rng : nullptr);
  const int64_t M = b.tgt_in.B * b.tgt_in.L, V = m.config().tgt_vocab;
  return ops::cross_entropy_forward_backward(dlogits ? dlogits->f32() : nullptr, logits.f32(), b.tgt_out.data(), M, V,
                                             smoothing, m.config().pad_id);
}

// Variants 0–3: no dropout; 4 and 5 (variants 0 and 3 again): dropout on the residuals, feed-forward and embeddings
// and on the attention weights, its masks the same in every forward (model_loss), so the backward must apply the
// forward's masks.
TEST(Grad, TransformerBackwardMatchesFiniteDifferences) {
  for (int variant = 0; variant < 6; ++variant) {
    const int shape = variant == 4 ? 0 : variant == 5 ? 3 : variant;
    const int64_t dropout_seed = variant >= 4 ? 40 + variant : -1;
    TransformerConfig c;
    c.src_vocab = 8, c.tgt_vocab = 7, c.d_model = 8, c.num_heads = 2, c.d_ff = 12;
    c.num_encoder_layers = 1 + shape % 2, c.num_decoder_layers = 1 + shape / 2, c.max_len = 8;
    c.dropout = dropout_seed >= 0 ? 0.2f : 0.0f;
    c.attention_dropout = dropout_seed >= 0 ? 0.25f : 0.0f;
    c.norm_first = shape % 2 == 1;
    c.activation = shape >= 2 ? Activation::kGelu : Activation::kRelu;
    c.tie_embeddings = shape != 1;
    c.learned_positions = shape == 3;
    Transformer m(c, 100 + static_cast<uint64_t>(variant));
    std::mt19937 init(variant);
    for (auto& [name, t] : m.params())  // non-trivial biases and norms, so their gradients matter
      if (name.find("bias") != std::string::npos || name.find("norm") != std::string::npos)
        for (int64_t i = 0; i < t.numel(); ++i)
          t.f32()[i] += 0.2f * (static_cast<float>(init() % 1000) / 500.0f - 1.0f);
    const Batch b = toy_batch(c);
    Tensor dlogits({b.tgt_in.B, b.tgt_in.L, c.tgt_vocab});
    if (dropout_seed >= 0) {  // the masks are a function of the seed, and they do drop something
      EXPECT_EQ(model_loss(m, b, 0.1f, nullptr, dropout_seed), model_loss(m, b, 0.1f, nullptr, dropout_seed));
      EXPECT_NE(model_loss(m, b, 0.1f, nullptr, dropout_seed), model_loss(m, b, 0.1f, nullptr, dropout_seed + 1));
    }
    m.zero_grad();
    model_loss(m, b, 0.1f, &dlogits, dropout_seed);
    m.backward(dlogits);
    std::mt19937 pick(7);
    for (auto& [name, t] : m.params()) {
      const Tensor& g = m.grads().at(name);
      for (int s = 0; s < 3; ++s) {
        const int64_t i = static_cast<int64_t>(pick() % static_cast<uint32_t>(t.numel()));
        const float saved = t.f32()[i], eps = 5e-3f;
        t.f32()[i] = saved + eps;
        const double up = model_loss(m, b, 0.1f, nullptr, dropout_seed);
        t.f32()[i] = saved - eps;
        const double down = model_loss(m, b, 0.1f, nullptr, dropout_seed);
        t.f32()[i] = saved;
        const double fd = (up - down) / (2.0 * eps);
        EXPECT_NEAR(g.f32()[i], fd, 1e-3 + 2e-2 * std::fabs(fd))
            << "variant " << variant << " " << name << "[" << i << "]";
      }
    }
  }
}

}  // namespace
}  // namespace attn
