// bf16 models (issue #14 item 4): the projections' bfloat16 copies through oneDNN's bf16 matmul.
//   - the shipped translation model translates the whole test split as float32 does (≤ 0.5% of the sentences
//     differ, as the int8 test asks), greedy and beam 4;
//   - all-MiniLM-L6-v2 in bf16: every embedding has cosine ≥ 0.999 with the float32 one (the target);
//   - a bf16 model does not train; a dtype that is neither float32 nor bfloat16 is refused.
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "attn/error.h"
#include "attn/io/safetensors.h"
#include "attn/models/bert.h"
#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/translator.h"
#include "test_util.h"
#include "translation_checks.h"

namespace attn {
namespace {

TEST(Bf16Models, TranslationOfTheTestSplitIsFloat32s) {
  const std::string dir = std::string(ATTN_SOURCE_MODEL_DIR);
  test::expect_translates_the_test_split_as_float32(dir, Quantization::kBFloat16);
  Transformer m = Transformer::load(dir);
  m.quantize(Quantization::kBFloat16);
  const TokenBatch src{{3, 4, 2}, 1, 3}, tgt{{1, 5}, 1, 2};
  EXPECT_THROW(m.forward(src, tgt, /*training=*/true), ArgumentError);
  EXPECT_EQ(parse_quantization("bf16"), Quantization::kBFloat16);
  EXPECT_STREQ(quantization_name(Quantization::kBFloat16), "bf16");
}

TEST(Bf16Models, MiniLMEmbeddingsKeepCosineAbove0999) {
  const std::string dir = std::getenv("ATTN_MINILM") ? std::getenv("ATTN_MINILM") : ATTN_MINILM_DIR;
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors")) << dir << ": run scripts/setup.sh";
  const SentenceEncoder fp32 = SentenceEncoder::load(dir), bf16 = SentenceEncoder::load(dir, DType::kBFloat16);
  const io::Safetensors st = io::read_safetensors(test::fixture("minilm_parity.safetensors"));
  const auto sentences = nlohmann::json::parse(st.metadata.at("sentences")).get<std::vector<std::string>>();
  const Tensor a = fp32.embed(sentences, 32), b = bf16.embed(sentences, 32);
  ASSERT_EQ(a.shape(), b.shape());
  const int64_t N = a.dim(0), Hd = a.dim(1);
  double worst = 1.0;
  for (int64_t i = 0; i < N; ++i) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t d = 0; d < Hd; ++d) {
      const double x = a.f32()[i * Hd + d], y = b.f32()[i * Hd + d];
      dot += x * y, na += x * x, nb += y * y;
    }
    worst = std::min(worst, dot / std::sqrt(na * nb));
  }
  EXPECT_GE(worst, 0.999);
  std::printf("MiniLM bf16 vs float32: worst cosine %.6f over %lld sentences\n", worst, static_cast<long long>(N));
  EXPECT_THROW(SentenceEncoder::load(dir, DType::kFloat16), DTypeError);
}

}  // namespace
}  // namespace attn
