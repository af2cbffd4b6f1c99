// Bad input: a typed exception whose message names the argument and the shapes.
#include "attn/attention.h"
#include "attn/error.h"
#include "attn/layers/multi_head_attention.h"
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
}

}  // namespace
}  // namespace attn
