// bfloat16 and float16 as tensor dtypes: the conversions (round to nearest even, NaN kept, exhaustive round
// trips, F16C's bits), to_dtype, the accessors, .npy/.safetensors keeping them, and every float32-only API
// refusing them with a DTypeError naming the argument.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "attn/attention.h"
#include "attn/error.h"
#include "attn/half.h"
#include "attn/io/npy.h"
#include "attn/io/safetensors.h"
#include "attn/layers/multi_head_attention.h"
#include "test_util.h"

namespace attn {
namespace {

float f(uint32_t bits) { return float_from_bits(bits); }

TEST(Half, EveryBFloat16AndFloat16RoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const auto x = static_cast<uint16_t>(h);
    const float b = bf16_to_float(x), g = f16_to_float(x);
    if (std::isnan(b))
      EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(b)))) << h;
    else
      EXPECT_EQ(float_to_bf16(b), x) << h;
    if (std::isnan(g))
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(g)))) << h;
    else
      EXPECT_EQ(float_to_f16(g), x) << h;
  }
}

TEST(Half, RoundsToNearestEven) {
  // bfloat16 keeps 8 significant bits: 1 + 2^-8 is a tie between 1 and 1 + 2^-7
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20))),
            1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(f(0x7f7fffff)), 0x7f80);                       // FLT_MAX rounds up to inf
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f(0x7f800001)))));  // a NaN whose payload is in low bits
  EXPECT_EQ(float_to_bf16(f(0xffc00000)), 0xffc0);                       // sign kept
  // float16: 11 significant bits
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f + std::ldexp(1.0f, -11))), 1.0f);
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11))), 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(f16_to_float(float_to_f16(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_float(float_to_f16(65520.0f))));
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);      // tie between 0 and the smallest subnormal
  EXPECT_EQ(float_to_f16(3 * std::ldexp(1.0f, -25)), 0x0002);  // tie between 1 and 2 subnormal steps
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(float_to_f16(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

__attribute__((target("f16c"))) uint16_t f16c_round(float x) {
  return static_cast<uint16_t>(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT), 0));
}

TEST(Half, Float16MatchesF16CBitForBit) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C here";
  std::mt19937 rng(5);
  for (int n = 0; n < 2000000; ++n) {
    const uint32_t bits = rng();
    const float x = f(n % 2 ? bits : (bits & 0x8fffffffu) | 0x30000000u);  // half of them near float16's range
    ASSERT_EQ(float_to_f16(x), f16c_round(x)) << std::hex << float_bits(x);
  }
}

TEST(LowpTensor, DTypesSizesAndAccessors) {
  const Tensor b({2, 3}, DType::kBFloat16), h({5}, DType::kFloat16);
  EXPECT_EQ(b.nbytes(), 12u);
  EXPECT_EQ(h.nbytes(), 10u);
  EXPECT_STREQ(dtype_name(DType::kBFloat16), "bfloat16");
  EXPECT_STREQ(dtype_name(DType::kFloat16), "float16");
  EXPECT_EQ(parse_dtype("bf16"), DType::kBFloat16);
  EXPECT_EQ(parse_dtype("f16"), DType::kFloat16);
  EXPECT_EQ(parse_dtype("f32"), DType::kFloat32);
  EXPECT_THROW(parse_dtype("int8"), ArgumentError);
  EXPECT_NO_THROW(b.bf16());
  EXPECT_THROW(b.f16(), DTypeError);
  EXPECT_THROW(b.f32(), DTypeError);
  EXPECT_THROW(h.bf16(), DTypeError);
  EXPECT_EQ(b.clone().dtype(), DType::kBFloat16);
}

TEST(LowpTensor, ToDTypeRoundsAndWidensExactly) {
  std::mt19937 rng(1);
  const Tensor x = test::random_tensor({3, 7}, rng, -100.0f, 100.0f);
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    const Tensor y = to_dtype(x, dt);
    ASSERT_EQ(y.dtype(), dt);
    const auto* bits = static_cast<const uint16_t*>(y.raw());
    for (int64_t i = 0; i < x.numel(); ++i)
      EXPECT_EQ(bits[i], dt == DType::kBFloat16 ? float_to_bf16(x.f32()[i]) : float_to_f16(x.f32()[i]));
    const Tensor w = to_dtype(y, DType::kFloat32);
    EXPECT_EQ(std::memcmp(to_dtype(w, dt).raw(), y.raw(), y.nbytes()), 0);  // widened values round to themselves
    EXPECT_LE(test::max_abs_diff(w, x), dt == DType::kBFloat16 ? 0.5 : 0.04);
  }
  EXPECT_EQ(to_dtype(x, DType::kFloat32).raw(), x.raw());  // the same dtype shares storage
  EXPECT_THROW(to_dtype(Tensor({2}, DType::kBool), DType::kBFloat16), DTypeError);
  EXPECT_THROW(to_dtype(x, DType::kBool), DTypeError);
}

TEST(LowpIo, NpyFloat16RoundTripsAndBFloat16IsRefused) {
  std::mt19937 rng(2);
  const Tensor h = to_dtype(test::random_tensor({2, 3, 5}, rng), DType::kFloat16);
  const std::vector<uint8_t> img = io::encode_npy(h);
  const std::string header(img.begin() + 10, img.begin() + 60);
  EXPECT_NE(header.find("'<f2'"), std::string::npos);
  const Tensor back = io::parse_npy(img.data(), img.size(), "mem");
  ASSERT_EQ(back.dtype(), DType::kFloat16);
  ASSERT_EQ(back.shape(), h.shape());
  EXPECT_EQ(std::memcmp(back.raw(), h.raw(), h.nbytes()), 0);
  // a header that claims more data than the file holds
  std::vector<uint8_t> cut(img.begin(), img.end() - 2);
  EXPECT_THROW(io::parse_npy(cut.data(), cut.size(), "mem"), FormatError);
  EXPECT_THROW(io::encode_npy(to_dtype(h, DType::kBFloat16)), DTypeError);
}

TEST(LowpIo, SafetensorsKeepsBFloat16AndFloat16) {
  std::mt19937 rng(3);
  const Tensor x = test::random_tensor({4, 3}, rng);
  const std::map<std::string, Tensor> m = {{"b", to_dtype(x, DType::kBFloat16)}, {"h", to_dtype(x, DType::kFloat16)}};
  const std::vector<uint8_t> img = io::encode_safetensors(m);
  const std::string header(img.begin() + 8, img.end());
  EXPECT_NE(header.find("\"BF16\""), std::string::npos);
  EXPECT_NE(header.find("\"F16\""), std::string::npos);
  io::Safetensors st = io::parse_safetensors(img.data(), img.size(), "mem");
  for (const auto& [name, t] : m) {
    ASSERT_EQ(st.at(name).dtype(), t.dtype()) << name;
    EXPECT_EQ(std::memcmp(st.at(name).raw(), t.raw(), t.nbytes()), 0) << name;
  }
  io::widen_to_float32(st.tensors);
  EXPECT_EQ(test::max_abs_diff(st.at("b"), to_dtype(m.at("b"), DType::kFloat32)), 0.0);
  EXPECT_EQ(test::max_abs_diff(st.at("h"), to_dtype(m.at("h"), DType::kFloat32)), 0.0);
  // a BF16 tensor whose data is one byte short of its shape
  std::vector<uint8_t> bad = io::encode_safetensors({{"b", m.at("b")}});
  const std::string text(bad.begin() + 8, bad.end());
  const size_t at = text.find("[0,24]");
  ASSERT_NE(at, std::string::npos);
  bad[8 + at + 4] = '3';  // [0,23]
  EXPECT_THROW(io::parse_safetensors(bad.data(), bad.size(), "mem"), FormatError);
}

// A DTypeError whose message names `arg`.
template <class F>
void expect_dtype_error(F&& f, const std::string& arg) {
  try {
    f();
    ADD_FAILURE() << "no DTypeError for " << arg;
  } catch (const DTypeError& e) {
    EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
  }
}

TEST(LowpErrors, FloatOnlyApisNameTheLowPrecisionArgument) {
  std::mt19937 rng(4);
  const Tensor q = test::random_tensor({1, 2, 3, 8}, rng), k = test::random_tensor({1, 2, 4, 8}, rng),
               v = test::random_tensor({1, 2, 4, 8}, rng);
  const Tensor qb = to_dtype(q, DType::kBFloat16), kb = to_dtype(k, DType::kBFloat16),
               vb = to_dtype(v, DType::kBFloat16), kh = to_dtype(k, DType::kFloat16);
  // mixed dtypes: the argument at fault after "; " (every message starts "q, k and v must share one dtype")
  expect_dtype_error([&] { scaled_dot_product_attention(qb, k, vb); }, "; k is float32");
  expect_dtype_error([&] { scaled_dot_product_attention(q, kb, v); },
                     "; q is float32 with shape [1, 2, 3, 8] but "
                     "bfloat16 was given for k");
  expect_dtype_error([&] { scaled_dot_product_attention(qb, kh, vb); }, "; k is float16");
  expect_dtype_error([&] { scaled_dot_product_attention(qb, kb, v); }, "; v is float32");
  // masks and slopes stay bool/float32
  AttentionOptions o;
  o.mask = to_dtype(test::random_tensor({3, 4}, rng), DType::kBFloat16);
  expect_dtype_error([&] { scaled_dot_product_attention(qb, kb, vb, o); }, "mask");
  expect_dtype_error([&] { scaled_dot_product_attention(q, k, v, o); }, "mask");
  o = {};
  o.key_padding_mask = to_dtype(test::random_tensor({1, 4}, rng), DType::kFloat16);
  expect_dtype_error([&] { scaled_dot_product_attention(qb, kb, vb, o); }, "key_padding_mask");
  o = {};
  o.alibi_slopes = to_dtype(test::random_tensor({2}, rng), DType::kBFloat16);
  expect_dtype_error([&] { scaled_dot_product_attention(qb, kb, vb, o); }, "alibi_slopes");
  // the backward takes one dtype for q, k, v, out and d_out
  const Tensor d = test::random_tensor({1, 2, 3, 8}, rng);
  expect_dtype_error([&] { scaled_dot_product_attention_backward(qb, kb, vb, d); }, "; d_out is float32");
  expect_dtype_error([&] { scaled_dot_product_attention_backward(q, k, v, to_dtype(d, DType::kBFloat16)); },
                     "d_out must be float32, got bfloat16");
  // MultiHeadAttention
  MultiHeadAttentionConfig c;
  c.embed_dim = 8, c.num_heads = 2;
  const MultiHeadAttention mha(c, 1);
  const Tensor x = test::random_tensor({1, 3, 8}, rng);
  expect_dtype_error([&] { mha.self_attention(to_dtype(x, DType::kBFloat16)); }, "query");
  expect_dtype_error([&] { mha.attention(x, to_dtype(x, DType::kFloat16), x); }, "key");
  MhaOptions mo;
  mo.attn_mask = to_dtype(test::random_tensor({3, 3}, rng), DType::kBFloat16);
  expect_dtype_error([&] { mha.self_attention(x, mo); }, "attn_mask");
}

}  // namespace
}  // namespace attn
