// PyTorch parity: every sdpa_* fixture (F.scaled_dot_product_attention) and mha_* fixture
// (nn.MultiheadAttention), written by tests/fixtures/generate.py, through every implementation and
// every SIMD level this machine has. Tolerance: twice PyTorch's own float32 error on the case, plus
// a floor of 2e-6 for cases where PyTorch's error happens to be ~0.
#include <filesystem>

#include "attn/attention.h"
#include "attn/io/safetensors.h"
#include "attn/layers/multi_head_attention.h"
#include "cpu/attention_fused.h"
#include "simd_levels.h"
#include "test_util.h"

namespace attn {
namespace {

std::vector<std::string> fixtures_with_prefix(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(ATTN_FIXTURE_DIR)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && e.path().extension() == ".safetensors") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

double tolerance(const io::Safetensors& st) { return 2.0 * std::stod(st.metadata.at("torch_f32_err")) + 2e-6; }

struct Path {
  AttentionImpl impl;
  detail::SimdLevel simd;
  std::string name;
};

std::vector<Path> all_paths() {
  std::vector<Path> paths = {{AttentionImpl::kReference, detail::SimdLevel::kScalar, "reference"},
                             {AttentionImpl::kUnfused, detail::SimdLevel::kScalar, "unfused"}};
  for (auto level : {detail::SimdLevel::kScalar, detail::SimdLevel::kAvx2, detail::SimdLevel::kAvx512})
    if (static_cast<int>(level) <= static_cast<int>(detail::simd_level_supported()))
      paths.push_back({AttentionImpl::kFused, level, std::string("fused/") + detail::simd_level_name(level)});
  return paths;
}

TEST(Golden, SdpaMatchesPyTorch) {
  const auto files = fixtures_with_prefix("sdpa_");
  ASSERT_GE(files.size(), 10u);
  for (const std::string& file : files) {
    const io::Safetensors st = io::read_safetensors(file);
    ASSERT_EQ(st.metadata.at("format"), "1");
    AttentionOptions o;
    if (st.contains("mask")) o.mask = st.at("mask");
    if (st.contains("key_padding_mask")) o.key_padding_mask = st.at("key_padding_mask");
    const std::string causal = st.metadata.at("causal");
    o.causal = causal == "top-left"       ? CausalAlignment::kTopLeft
               : causal == "bottom-right" ? CausalAlignment::kBottomRight
                                          : CausalAlignment::kNone;
    if (st.metadata.at("scale") != "default") o.scale = std::stof(st.metadata.at("scale"));
    o.return_weights = true;
    const double tol = tolerance(st);
    for (const Path& path : all_paths()) {
      SCOPED_TRACE(file + " via " + path.name);
      test::SimdGuard guard(path.simd);
      o.impl = path.impl;
      const AttentionResult r = scaled_dot_product_attention(st.at("q"), st.at("k"), st.at("v"), o);
      EXPECT_LE(test::max_abs_diff(r.output, st.at("expected")), tol);
      EXPECT_LE(test::max_abs_diff(r.weights, st.at("expected_weights")), 2e-6);
    }
  }
}

// The initial weights follow nn.MultiheadAttention's distributions (its bounds are the math of its
// _reset_parameters): the packed in_proj_weight [3E, E] Xavier-uniform, U(±√(6 / 4E)); separate projections (kdim,
// vdim ≠ E) U(±√(6 / (in + out))) each; out_proj nn.Linear's U(±1/√E) (Xavier had been 1.7× wider). Each bound is
// the largest |w| within 10% over 4096 draws and more, never above it.
TEST(Golden, MultiheadAttentionInitialisesAsPyTorch) {
  const auto check = [](const Tensor& w, double bound, const char* name) {
    double largest = 0.0;
    for (int64_t i = 0; i < w.numel(); ++i) largest = std::max(largest, std::fabs(static_cast<double>(w.f32()[i])));
    EXPECT_LE(largest, bound) << name;
    EXPECT_GE(largest, 0.9 * bound) << name;
  };
  MultiHeadAttentionConfig c;
  c.embed_dim = 64, c.num_heads = 4;
  const MultiHeadAttention packed(c, 3);
  check(packed.w_q, std::sqrt(6.0 / 256), "w_q"), check(packed.w_k, std::sqrt(6.0 / 256), "w_k");
  check(packed.w_o, 1.0 / 8, "w_o");
  c.kdim = 32, c.vdim = 48;
  const MultiHeadAttention separate(c, 3);
  check(separate.w_q, std::sqrt(6.0 / 128), "w_q"), check(separate.w_k, std::sqrt(6.0 / 96), "w_k");
  check(separate.w_v, std::sqrt(6.0 / 112), "w_v"), check(separate.w_o, 1.0 / 8, "w_o");
}

TEST(Golden, MultiheadAttentionMatchesPyTorch) {
  const auto files = fixtures_with_prefix("mha_");
  ASSERT_GE(files.size(), 6u);
  for (const std::string& file : files) {
    const io::Safetensors st = io::read_safetensors(file);
    const Tensor& query = st.at("query");
    const bool self = st.metadata.at("self_attention") == "true";
    const Tensor& key = self ? query : st.at("key");
    const Tensor& value = self ? query : st.at("value");
    MultiHeadAttentionConfig c;
    c.embed_dim = query.dim(2);
    c.num_heads = std::stoi(st.metadata.at("num_heads"));
    c.kdim = key.dim(2);
    c.vdim = value.dim(2);
    c.bias = st.contains("mha.in_proj_bias");
    const MultiHeadAttention mha = MultiHeadAttention::from_state_dict(st.tensors, c, "mha.");
    MhaOptions o;
    if (st.contains("attn_mask")) o.attn_mask = st.at("attn_mask");
    if (st.contains("key_padding_mask")) o.key_padding_mask = st.at("key_padding_mask");
    o.causal = st.metadata.at("causal") == "true";
    o.need_weights = true;
    o.average_attn_weights = st.metadata.at("average") == "true";
    const double tol = tolerance(st);
    for (const Path& path : all_paths()) {
      SCOPED_TRACE(file + " via " + path.name);
      test::SimdGuard guard(path.simd);
      o.impl = path.impl;
      const MhaOutput r = self ? (o.causal ? mha.masked_self_attention(query, o) : mha.self_attention(query, o))
                               : mha.attention(query, key, value, o);
      EXPECT_LE(test::max_abs_diff(r.output, st.at("expected")), tol);
      EXPECT_LE(test::max_abs_diff(r.weights, st.at("expected_weights")), 2e-6);
    }
    // The state dict round-trips under PyTorch's names.
    const auto saved = mha.state_dict("mha.");
    for (const auto& [name, t] : saved) EXPECT_EQ(test::max_abs_diff(t, st.at(name)), 0.0) << name;
  }
}

}  // namespace
}  // namespace attn
