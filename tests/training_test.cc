// A training step against PyTorch's own optimizer (tests/fixtures/generate_training.py): label-smoothed
// cross-entropy, clip_grad_norm_, AdamW with weight decay on the matrices only, and LambdaLR's warm-up schedule, over
// three steps of a small Transformer of the shipped model's kind (the third with another batch shape).
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "attn/io/safetensors.h"
#include "attn/models/transformer.h"
#include "attn/train/trainer.h"
#include "test_util.h"
#include "token_batch_util.h"

namespace attn {
namespace {

float meta_float(const io::Safetensors& st, const char* key) {
  return nlohmann::json::parse(st.metadata.at(key)).get<float>();
}

// PyTorch's steps ran in float64 from the same float32 start; attn's in float32. An AdamW step moves a parameter by
// about lr (m̂/√v̂ ≈ ±1 early on), 0.016–0.047 here, and the weight decay by lr·0.1·|p|, ~1e-3: a parameter within
// kParamTol of PyTorch's after each step took the same update, its decay included. (ε = 1e-6, BERT's: with 1e-9 the
// gradients within float32 rounding of 0 took updates of ±lr on either side.)
constexpr double kParamTol = 2e-4;

TEST(Training, StepsMatchPyTorchAdamWClippingAndWarmUp) {
  const io::Safetensors st = io::read_safetensors(test::fixture("train_steps.safetensors"));
  Transformer model(TransformerConfig::from_json(st.metadata.at("config")));
  for (auto& [name, t] : model.params()) {
    const Tensor& start = st.at(name);
    ASSERT_EQ(start.shape(), t.shape()) << name;
    std::copy_n(start.f32(), start.numel(), t.f32());
  }
  train::StepOptions o;
  o.beta1 = meta_float(st, "beta1"), o.beta2 = meta_float(st, "beta2"), o.adam_eps = meta_float(st, "adam_eps");
  o.weight_decay = meta_float(st, "weight_decay"), o.label_smoothing = meta_float(st, "label_smoothing");
  o.clip_norm = meta_float(st, "clip_norm");
  train::TrainingStep step(model, o);
  const nlohmann::json steps = nlohmann::json::parse(st.metadata.at("steps"));
  const float lr_factor = meta_float(st, "lr_factor");
  const auto warmup = static_cast<int64_t>(meta_float(st, "warmup"));
  int clipped = 0;
  std::mt19937_64 rng(1);  // no dropout: unused
  for (size_t k = 1; k <= steps.size(); ++k) {
    const std::string at = "step" + std::to_string(k) + ".";
    SCOPED_TRACE(at);
    const nlohmann::json& want = steps[k - 1];
    clipped += want.at("clipped").get<bool>();
    const float lr = train::noam_learning_rate(lr_factor, model.config().d_model, warmup, static_cast<int64_t>(k));
    EXPECT_NEAR(lr, want.at("lr").get<double>(), 1e-6 * want.at("lr").get<double>());
    const TokenBatch src = test::token_batch(st.at(at + "src")), tgt_in = test::token_batch(st.at(at + "tgt_in"));
    const float loss = step.run(src, tgt_in, test::token_batch(st.at(at + "tgt_out")).ids, lr, rng);
    EXPECT_NEAR(loss, want.at("loss").get<double>(), 2e-5 * want.at("loss").get<double>());
    double worst = 0.0;
    std::string worst_name;
    for (const auto& [name, t] : model.params()) {
      const Tensor& want_p = st.at(at + name);
      // The keys' slice of an attention's input-projection bias, [E, 2E) of [q; k; v], has a zero gradient (it adds
      // the same q·b_k to every score of a row, which the softmax cancels): what either side holds there is rounding
      // noise that AdamW scales up to ±lr. Its other slices and every other parameter are compared.
      const bool key_bias = name.ends_with("in_proj_bias");
      const int64_t E = model.config().d_model;
      for (int64_t i = 0; i < t.numel(); ++i) {
        if (key_bias && i >= E && i < 2 * E) continue;
        const double err = std::fabs(static_cast<double>(t.f32()[i]) - want_p.f32()[i]);
        if (!(err <= worst)) worst = err, worst_name = name + "[" + std::to_string(i) + "]";
      }
    }
    EXPECT_LE(worst, kParamTol) << worst_name;
  }
  EXPECT_EQ(step.state().step, static_cast<int64_t>(steps.size()));
  EXPECT_TRUE(clipped > 0 && clipped < static_cast<int>(steps.size()));  // the fixture clips some steps, not all
}

// Weight decay applies to the matrices only (PyTorch's usual grouping): with the same gradients, a vector parameter
// moves as without decay, a matrix by lr·wd·p more.
TEST(Training, WeightDecayShrinksTheMatricesOnly) {
  const io::Safetensors st = io::read_safetensors(test::fixture("train_steps.safetensors"));
  const TransformerConfig config = TransformerConfig::from_json(st.metadata.at("config"));
  const auto run = [&](float weight_decay) {
    Transformer model(config);
    for (auto& [name, t] : model.params()) std::copy_n(st.at(name).f32(), t.numel(), t.f32());
    train::StepOptions o;
    o.weight_decay = weight_decay, o.clip_norm = 0.0f;
    train::TrainingStep step(model, o);
    std::mt19937_64 rng(1);
    step.run(test::token_batch(st.at("step1.src")), test::token_batch(st.at("step1.tgt_in")),
             test::token_batch(st.at("step1.tgt_out")).ids, 0.01f, rng);
    return model.params();
  };
  const auto without = run(0.0f), with = run(0.5f);
  for (const auto& [name, p] : with) {
    const Tensor& q = without.at(name);
    const Tensor& start = st.at(name);
    for (int64_t i = 0; i < p.numel(); ++i) {
      const double expected = p.rank() == 2 ? q.f32()[i] - 0.01 * 0.5 * start.f32()[i] : q.f32()[i];
      ASSERT_NEAR(p.f32()[i], expected, 1e-6) << name << " [" << i << "]";
    }
  }
}

// LambdaLR's learning rates for the default schedule (d_model 128, warm-up 500: TrainOptions' defaults) at steps from 1
// to 6000.
TEST(Training, WarmUpScheduleMatchesLambdaLR) {
  const io::Safetensors st = io::read_safetensors(test::fixture("train_steps.safetensors"));
  const nlohmann::json steps = nlohmann::json::parse(st.metadata.at("noam_steps"));
  const nlohmann::json lrs = nlohmann::json::parse(st.metadata.at("noam_lr"));
  ASSERT_EQ(steps.size(), lrs.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const double want = lrs[i].get<double>();
    EXPECT_NEAR(train::noam_learning_rate(1.0f, 128, 500, steps[i].get<int64_t>()), want, 1e-6 * want)
        << "step " << steps[i];
  }
}

}  // namespace
}  // namespace attn
