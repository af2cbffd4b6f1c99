// Bad input: a typed exception whose message names the argument and the shapes.
#include <cmath>
#include <limits>
#include <random>

#include "attn/attention.h"
#include "attn/error.h"
#include "attn/layers/multi_head_attention.h"
#include "attn/models/transformer.h"
#include "test_util.h"

namespace attn {
namespace {

template <class E, class F>
void expect_error(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    for (const char* n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(Errors, ScaledDotProductAttention) {
  std::mt19937 rng(1);
  const Tensor q = test::random_tensor({1, 4, 5, 8}, rng), k = test::random_tensor({1, 2, 6, 8}, rng),
               v = test::random_tensor({1, 2, 6, 3}, rng);
  auto sdpa = [&](const Tensor& a, const Tensor& b, const Tensor& c, AttentionOptions o = {}) {
    return [=] { scaled_dot_product_attention(a, b, c, o); };
  };
  expect_error<ShapeError>(sdpa(q.reshape({4, 5, 8}), k, v), {"q", "[4, 5, 8]"});
  expect_error<ShapeError>(sdpa(q, test::random_tensor({1, 2, 6, 7}, rng), v), {"head dimensions", "[1, 2, 6, 7]"});
  expect_error<ShapeError>(sdpa(q, k, test::random_tensor({1, 2, 5, 3}, rng)), {"lengths", "[1, 2, 5, 3]"});
  expect_error<ShapeError>(sdpa(q, test::random_tensor({2, 2, 6, 8}, rng), v), {"batch"});
  expect_error<ArgumentError>(sdpa(q, test::random_tensor({1, 3, 6, 8}, rng), test::random_tensor({1, 3, 6, 3}, rng)),
                              {"H = 4", "Hkv = 3"});
  expect_error<DTypeError>(sdpa(Tensor({1, 4, 5, 8}, DType::kBool), k, v), {"q", "float32", "bool"});
  AttentionOptions o;
  o.mask = Tensor({5, 7}, DType::kBool);
  expect_error<ShapeError>(sdpa(q, k, v, o), {"mask", "[5, 7]", "[1, 4, 5, 6]"});
  o.mask = Tensor({3, 1, 5, 6});
  expect_error<ShapeError>(sdpa(q, k, v, o), {"mask", "[3, 1, 5, 6]"});
  o.mask = Tensor({1, 1, 1, 1, 6});
  expect_error<ShapeError>(sdpa(q, k, v, o), {"mask", "rank"});
  o = {};
  o.key_padding_mask = Tensor({1, 5}, DType::kBool);
  expect_error<ShapeError>(sdpa(q, k, v, o), {"key_padding_mask", "[1, 5]", "[1, 6]"});
  o.key_padding_mask = Tensor({1, 6});
  expect_error<DTypeError>(sdpa(q, k, v, o), {"key_padding_mask", "bool"});
  o = {};
  o.window = 3;
  expect_error<ArgumentError>(sdpa(q, k, v, o), {"window", "causal"});
  // (a non-finite scale is no error: it follows the non-finite rule, tests/nonfinite_test.cc)
  o = {};
  o.alibi_slopes = Tensor({3});
  expect_error<ShapeError>(sdpa(q, k, v, o), {"alibi_slopes", "[3]"});
}

// The unfused path refuses a head of more than 2^31 scores, naming them (it had asked for 4 TiB: std::bad_alloc); D = 0
// keeps the inputs empty.
TEST(Errors, UnfusedRefusesScoresPastItsCap) {
  AttentionOptions o;
  o.impl = AttentionImpl::kUnfused;
  o.scale = 1.0f;  // (D = 0 needs one)
  const Tensor q({1, 1, int64_t{1} << 16, 0}), k({1, 1, (int64_t{1} << 15) + 1, 0}),
      v({1, 1, (int64_t{1} << 15) + 1, 1});
  expect_error<ArgumentError>([&] { scaled_dot_product_attention(q, k, v, o); }, {"unfused", "[65536, 32769]"});
}

// D = Dv = 0: no output or gradient element, so nothing is computed, however many (query, key) pairs (2^50 empty pairs
// had been walked one by one, for days).
TEST(Errors, EmptyHeadsOverLongSequencesReturnAtOnce) {
  const int64_t L = int64_t{1} << 25;
  const Tensor q({1, 1, L, 0}), k({1, 1, L, 0}), d_out({1, 1, L, 0});
  AttentionOptions o;
  o.scale = 1.0f;
  for (AttentionImpl impl : {AttentionImpl::kAuto, AttentionImpl::kFused, AttentionImpl::kUnfused}) {
    o.impl = impl;
    EXPECT_EQ(scaled_dot_product_attention(q, k, k, o).output.shape(), (Shape{1, 1, L, 0}));
    const AttentionGrads g = scaled_dot_product_attention_backward(q, k, k, d_out, o);
    EXPECT_EQ(g.dq.numel() + g.dk.numel() + g.dv.numel(), 0);
  }
}

// 2^60 heads of no query row: accepted as PyTorch takes them (product_within had overflowed before it reached the 0,
// and refused them as too much work) and returned at once (no kernel walks the heads); likewise their backward. An
// unknown dtype value is refused where a tensor is made (to_dtype had written 2 bytes an element into 1).
TEST(Errors, ManyHeadsOfNoRowsReturnAtOnceAndUnknownDTypesAreNamed) {
  const int64_t G = int64_t{1} << 30;
  AttentionOptions o;
  o.scale = 1.0f;
  for (int64_t D : {0, 8}) {
    const Tensor q({G, G, 0, D}), k({G, G, 0, D}), kd({G, G, 5, 0});
    for (AttentionImpl impl : {AttentionImpl::kAuto, AttentionImpl::kUnfused, AttentionImpl::kReference}) {
      o.impl = impl;
      EXPECT_EQ(scaled_dot_product_attention(q, k, k, o).output.shape(), (Shape{G, G, 0, D}));
      if (D == 0) {
        EXPECT_EQ(scaled_dot_product_attention(q, kd, kd, o).output.shape(), (Shape{G, G, 0, 0}));
      }
      const AttentionGrads g = scaled_dot_product_attention_backward(q, k, k, q, o);
      EXPECT_EQ(g.dq.numel() + g.dk.numel() + g.dv.numel(), 0);
    }
  }
  for (DType lowp : {DType::kBFloat16, DType::kFloat16}) {  // the 16-bit kernel's entry too
    const Tensor q({G, G, 0, 8}, lowp), k({G, G, 0, 8}, lowp);
    o.impl = AttentionImpl::kAuto;
    EXPECT_EQ(scaled_dot_product_attention(q, k, k, o).output.shape(), (Shape{G, G, 0, 8}));
    const AttentionGrads g = scaled_dot_product_attention_backward(q, k, k, q, o);
    EXPECT_EQ(g.dq.numel() + g.dk.numel() + g.dv.numel(), 0);
  }
  {  // ... but strides past int64 are refused even where a 0 empties the tensor (H·Lq·D of [0, 2^40, 2^40, 0])
    const int64_t T = int64_t{1} << 40;
    const Tensor q({0, T, T, 0}), k({0, T, T, 0});
    expect_error<ArgumentError>([&] { scaled_dot_product_attention(q, k, k, o); }, {"2^62"});
  }
  EXPECT_EQ(product_within({G, G, 0}, 1), 0);
  EXPECT_EQ(product_within({G, G, 2}, int64_t{1} << 60), -1);
  const DType unknown = static_cast<DType>(7);
  expect_error<DTypeError>([&] { Tensor({4}, unknown); }, {"dtype 7", "[4]"});
  expect_error<DTypeError>([&] { to_dtype(Tensor({4096}), unknown); }, {"to_dtype", "[4096]"});
  float x = 0;
  expect_error<DTypeError>([&] { Tensor::borrow({1}, unknown, &x); }, {"borrow"});
}

// The reference backward ignores out and lse, whatever they hold (a bool out had thrown an error naming nothing); the
// fused one names them.
TEST(Errors, ReferenceBackwardIgnoresOutAndLse) {
  std::mt19937 rng(2);
  const Tensor q = test::random_tensor({1, 2, 3, 4}, rng), d_out = test::random_tensor({1, 2, 3, 4}, rng);
  AttentionOptions o;
  o.impl = AttentionImpl::kReference;
  const Tensor junk({2}, DType::kBool);
  const AttentionGrads a = scaled_dot_product_attention_backward(q, q, q, junk, junk, d_out, o);
  const AttentionGrads b = scaled_dot_product_attention_backward(q, q, q, d_out, o);
  EXPECT_EQ(test::max_abs_diff(a.dq, b.dq), 0.0);
  o.impl = AttentionImpl::kFused;
  expect_error<DTypeError>([&] { scaled_dot_product_attention_backward(q, q, q, junk, junk, d_out, o); },
                           {"out", "bool"});
}

// Tensor::from_floats/from_bools compare the values with the shape before allocating (a 2^40-element shape with no
// values had asked for 4 TiB first).
TEST(Errors, TensorsFromValuesCheckBeforeAllocating) {
  expect_error<ShapeError>([] { Tensor::from_floats({int64_t{1} << 40}, {}); }, {"from_floats", "0 values"});
  expect_error<ShapeError>([] { Tensor::from_bools({int64_t{1} << 40}, {}); }, {"from_bools", "0 values"});
  expect_error<ShapeError>([] { Tensor::from_floats({-1}, {}); }, {"negative"});
}

TEST(Errors, MultiHeadAttention) {
  expect_error<ArgumentError>(
      [] {
        MultiHeadAttentionConfig c;
        c.embed_dim = 10, c.num_heads = 4;
        MultiHeadAttention m(c);
      },
      {"E = 10", "H = 4"});
  expect_error<ArgumentError>(
      [] {
        MultiHeadAttentionConfig c;
        c.embed_dim = 8, c.num_heads = 4, c.num_kv_heads = 3;
        MultiHeadAttention m(c);
      },
      {"Hkv = 3"});
  MultiHeadAttentionConfig config;
  config.embed_dim = 8, config.num_heads = 2;
  const MultiHeadAttention mha(config);
  std::mt19937 rng(2);
  const Tensor x = test::random_tensor({2, 5, 8}, rng);
  expect_error<ShapeError>(
      [&] {
        mha.self_attention(test::random_tensor({2, 5, 6}, rng));
      },
      {"query", "[2, 5, 6]", "E = 8"});
  expect_error<ShapeError>([&] { mha.cross_attention(x, test::random_tensor({3, 4, 8}, rng)); }, {"key", "[3, 4, 8]"});
  MhaOptions o;
  o.attn_mask = Tensor({5, 4}, DType::kBool);
  expect_error<ShapeError>([&] { mha.self_attention(x, o); }, {"attn_mask", "[5, 4]", "[5, 5]"});
  o.attn_mask = Tensor({3, 5, 5});
  expect_error<ShapeError>([&] { mha.self_attention(x, o); }, {"attn_mask", "[4, 5, 5]"});
  o = {};
  o.key_padding_mask = Tensor({2, 4}, DType::kBool);
  expect_error<ShapeError>([&] { mha.self_attention(x, o); }, {"key_padding_mask", "[2, 4]", "[2, 5]"});
  // state dicts: a missing name, a wrong shape
  std::map<std::string, Tensor> sd = mha.state_dict();
  sd.erase("out_proj.weight");
  expect_error<MissingTensorError>([&] { MultiHeadAttention::from_state_dict(sd, mha.config()); }, {"out_proj.weight"});
  sd = mha.state_dict();
  sd["in_proj_weight"] = Tensor({20, 8});
  expect_error<ShapeError>([&] { MultiHeadAttention::from_state_dict(sd, mha.config()); },
                           {"in_proj_weight", "[20, 8]", "[24, 8]"});
  sd["in_proj_weight"] = Tensor({24, 8}, DType::kBFloat16);  // the right shape, the wrong element type
  expect_error<DTypeError>([&] { MultiHeadAttention::from_state_dict(sd, mha.config()); },
                           {"in_proj_weight", "bfloat16", "float32"});
  // biases given to a layer without (they had been dropped: outputs unlike the state dict's layer)
  MultiHeadAttentionConfig no_bias = mha.config();
  no_bias.bias = false;
  sd = mha.state_dict();
  expect_error<ArgumentError>([&] { MultiHeadAttention::from_state_dict(sd, no_bias); }, {"in_proj_bias", "bias"});
  sd.erase("in_proj_bias");
  expect_error<ArgumentError>([&] { MultiHeadAttention::from_state_dict(sd, no_bias); }, {"out_proj.bias"});
  sd.erase("out_proj.bias");
  EXPECT_NO_THROW(MultiHeadAttention::from_state_dict(sd, no_bias));
}

// The public structs' fields and enums as a program may set them: checked where they are used (a replaced weight had
// been read past its end, an unknown impl had returned zeros, a NaN scale had given each path its own answer).
TEST(Errors, PublicFieldsAndEnumsAreChecked) {
  MultiHeadAttentionConfig c;
  c.embed_dim = 8, c.num_heads = 2;
  MultiHeadAttention mha(c, 1);
  std::mt19937 rng(3);
  const Tensor x = test::random_tensor({1, 3, 8}, rng);
  mha.w_o = Tensor({1});
  expect_error<ShapeError>([&] { mha.self_attention(x); }, {"w_o", "[1]", "[8, 8]"});
  mha = MultiHeadAttention(c, 1);
  mha.b_q = Tensor();
  expect_error<ShapeError>([&] { mha.self_attention(x); }, {"b_q", "undefined"});
  const Tensor q = test::random_tensor({1, 1, 5, 4}, rng), k = test::random_tensor({1, 1, 3, 4}, rng);
  AttentionOptions o;
  o.impl = static_cast<AttentionImpl>(9);
  expect_error<ArgumentError>([&] { scaled_dot_product_attention(q, k, k, o); }, {"impl 9"});
  o = AttentionOptions();
  o.causal = static_cast<CausalAlignment>(7);
  expect_error<ArgumentError>([&] { scaled_dot_product_attention(q, k, k, o); }, {"causal 7"});
  // D = 0 with a NaN scale: NaN scores, so NaN outputs, on every path (the fast ones had given the mean of V)
  const Tensor q0({1, 1, 2, 0}), k0({1, 1, 3, 0});
  const Tensor v0 = test::random_tensor({1, 1, 3, 2}, rng);
  o = AttentionOptions();
  o.scale = std::nanf("");
  for (AttentionImpl impl : {AttentionImpl::kReference, AttentionImpl::kUnfused, AttentionImpl::kFused}) {
    o.impl = impl;
    const Tensor out = scaled_dot_product_attention(q0, k0, v0, o).output;
    for (int64_t i = 0; i < out.numel(); ++i) EXPECT_TRUE(std::isnan(out.f32()[i])) << impl_name(impl);
  }
  expect_error<ArgumentError>([&] { measure_fma_peak(1, INFINITY); }, {"seconds"});
  // a window past every key is no window (Lq > Lk, bottom-right: the first rows' last key is negative)
  o = AttentionOptions();
  o.causal = CausalAlignment::kBottomRight;
  const Tensor plain = scaled_dot_product_attention(q, k, k, o).output;
  o.window = std::numeric_limits<int64_t>::max();
  for (AttentionImpl impl : {AttentionImpl::kReference, AttentionImpl::kFused}) {
    o.impl = impl;
    EXPECT_LE(test::max_abs_diff(scaled_dot_product_attention(q, k, k, o).output, plain), 1e-6) << impl_name(impl);
  }
  // an activation that is neither (it had run GELU and been saved as "relu")
  TransformerConfig tc;
  tc.src_vocab = tc.tgt_vocab = 8, tc.d_model = 8, tc.num_heads = 2, tc.d_ff = 8, tc.max_len = 8;
  tc.num_encoder_layers = tc.num_decoder_layers = 1;
  tc.activation = static_cast<Activation>(5);
  expect_error<ArgumentError>([&] { Transformer m(tc, 1); }, {"activation 5"});
  // weight matrices past 2^40 elements are refused before any is allocated (d_model 2^20: in_proj 12 TiB)
  tc.activation = Activation::kRelu;
  tc.d_model = int64_t{1} << 20, tc.num_heads = 1, tc.d_ff = 1, tc.max_len = 1, tc.src_vocab = tc.tgt_vocab = 3;
  expect_error<ArgumentError>([&] { Transformer m(tc, 1); }, {"in_proj", "2^40"});
  MultiHeadAttentionConfig mc;
  mc.embed_dim = int64_t{1} << 20, mc.num_heads = 1;
  expect_error<ArgumentError>([&] { MultiHeadAttention m(mc); }, {"embed_dim", "2^40"});
  mc.embed_dim = int64_t{1} << 62;  // (3E had overflowed)
  expect_error<ArgumentError>([&] { MultiHeadAttention m(mc); }, {"embed_dim", "2^40"});
}

}  // namespace
}  // namespace attn
