// The attn command line, run as a user runs it: results equal the library's, errors exit non-zero
// with a message naming the argument, and no output file is left behind.
#include <filesystem>
#include <fstream>

#include "attn/attention.h"
#include "attn/io/npy.h"
#include "attn/io/safetensors.h"
#include "attn/layers/multi_head_attention.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/translator.h"
#include "cli_util.h"
#include "test_util.h"

namespace attn {
namespace {

namespace fs = std::filesystem;

using test::Cli;
using test::CliResult;

TEST_F(Cli, SdpaMatchesTheLibrary) {
  std::mt19937 rng(1);
  const Tensor q = test::random_tensor({2, 4, 5, 8}, rng), k = test::random_tensor({2, 2, 7, 8}, rng),
               v = test::random_tensor({2, 2, 7, 6}, rng);
  const Tensor mask = test::random_bool({5, 7}, rng, 0.8);
  io::write_npy(path("q.npy"), q);
  io::write_npy(path("k.npy"), k);
  io::write_npy(path("v.npy"), v);
  io::write_npy(path("m.npy"), mask);
  const CliResult r =
      run("sdpa --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") + " --mask " + path("m.npy") +
          " --causal bottom-right --scale 0.4 --out " + path("o.npy") + " --weights " + path("w.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  AttentionOptions o;
  o.mask = mask;
  o.causal = CausalAlignment::kBottomRight;
  o.scale = 0.4f;
  o.return_weights = true;
  o.impl = AttentionImpl::kReference;
  const AttentionResult want = scaled_dot_product_attention(q, k, v, o);
  EXPECT_LE(test::max_abs_diff(io::read_npy(path("o.npy")), want.output), 2e-5);
  EXPECT_LE(test::max_abs_diff(io::read_npy(path("w.npy")), want.weights), 2e-5);
}

TEST_F(Cli, MhaMatchesPyTorchFixture) {
  const io::Safetensors st = io::read_safetensors(test::fixture("mha_bool_masks.safetensors"));
  std::map<std::string, Tensor> weights;
  for (const auto& [name, t] : st.tensors)
    if (name.rfind("mha.", 0) == 0) weights[name.substr(4)] = t;
  io::write_safetensors(path("w.safetensors"), weights);
  io::write_npy(path("x.npy"), st.at("query"));
  io::write_npy(path("am.npy"), st.at("attn_mask"));
  io::write_npy(path("kpm.npy"), st.at("key_padding_mask"));
  const CliResult r = run("mha --weights " + path("w.safetensors") + " --num-heads 4 --query " + path("x.npy") +
                          " --attn-mask " + path("am.npy") + " --key-padding-mask " + path("kpm.npy") + " --out " +
                          path("o.npy") + " --need-weights " + path("w.npy") + " --average-attn-weights");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_LE(test::max_abs_diff(io::read_npy(path("o.npy")), st.at("expected")), 1e-5);
  EXPECT_LE(test::max_abs_diff(io::read_npy(path("w.npy")), st.at("expected_weights")), 1e-5);
  // a tensor the layer has no place for (nn.MultiheadAttention(add_bias_kv=True)'s bias_k): refused, not dropped
  weights["bias_k"] = Tensor({1, 1, weights.at("out_proj.weight").dim(0)});
  io::write_safetensors(path("w.safetensors"), weights);
  const CliResult extra = run("mha --weights " + path("w.safetensors") + " --num-heads 4 --query " + path("x.npy") +
                              " --out " + path("o2.npy"));
  EXPECT_NE(extra.status, 0);
  EXPECT_NE(extra.err.find("'bias_k'"), std::string::npos) << extra.err;
  EXPECT_FALSE(std::filesystem::exists(path("o2.npy")));
}

TEST_F(Cli, BadInputFailsCleanlyAndLeavesNoOutput) {
  std::mt19937 rng(2);
  io::write_npy(path("q.npy"), test::random_tensor({1, 4, 5, 8}, rng));
  io::write_npy(path("k3.npy"), test::random_tensor({1, 3, 6, 8}, rng));
  io::write_npy(path("v3.npy"), test::random_tensor({1, 3, 6, 8}, rng));
  io::write_npy(path("k.npy"), test::random_tensor({1, 2, 6, 8}, rng));
  io::write_npy(path("v.npy"), test::random_tensor({1, 2, 6, 8}, rng));
  io::write_npy(path("badmask.npy"), Tensor({5, 4}, DType::kBool));
  { std::ofstream(path("trunc.npy"), std::ios::binary) << "\x93NUMPY\x01"; }
  const std::string qkv = " --q " + path("q.npy") + " --v " + path("v.npy");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"sdpa --q " + path("q.npy") + " --k " + path("k3.npy") + " --v " + path("v3.npy"), "Hkv = 3"},
      {"sdpa" + qkv + " --k " + path("k.npy") + " --mask " + path("badmask.npy"), "mask"},
      {"sdpa" + qkv + " --k " + path("trunc.npy"), "--k"},
      {"sdpa" + qkv + " --k " + path("missing.npy"), "missing.npy"},
      {"sdpa" + qkv + " --k " + path("k.npy") + " --weights " + path("nodir/w.npy"), "nodir"},
      {"mha --weights " + path("missing.safetensors") + " --num-heads 2 --query " + path("q.npy"), "--weights"},
      {"sdpa" + qkv + " --k " + path("k.npy") + " --weights " + dir_.string(), "is a directory"},
      {"sdpa" + qkv + " --k " + path("k.npy") + " --weights " + (dir_ / "." / "o.npy").string(), "both name"},
  };
  for (const auto& [args, needle] : cases) {
    const CliResult r = run(args + " --out " + path("o.npy"));
    EXPECT_NE(r.status, 0) << args;
    EXPECT_LT(r.status, 128) << "crashed: " << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(path("o.npy"))) << args;
    for (const auto& e : fs::directory_iterator(dir_))
      EXPECT_EQ(e.path().string().find(".partial"), std::string::npos) << e.path();
  }
}

// Sizes whose bytes would wrap, and a header-only file that declares them: an error naming the shape, never a crash.
TEST_F(Cli, HugeShapesAreRefusedNotAllocated) {
  const CliResult bench = run("bench sdpa --q-len 4611686018427387904 --heads 1 --batch 1 --head-dim 1 --no-peak");
  EXPECT_EQ(bench.status, 2);
  EXPECT_NE(bench.err.find("too many elements"), std::string::npos) << bench.err;
  io::write_npy(path("q0.npy"), Tensor({1, 1, int64_t{1} << 52, 0}));
  io::write_npy(path("k0.npy"), Tensor({1, 1, 1024, 0}));
  // 2^62 (query, key) pairs from two 128-byte files: refused by the work it asks for (without --weights, which had
  // failed to allocate first, the loop over 2^52 rows had run on for ever), with either kernel
  for (const std::string& extra : {" --impl reference --weights " + path("w.npy"), std::string(" --impl fused")}) {
    const CliResult r = run("sdpa --q " + path("q0.npy") + " --k " + path("k0.npy") + " --v " + path("k0.npy") +
                            " --scale 1 --out " + path("o.npy") + extra);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.err.find("(query, key) pairs"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(path("o.npy")));
  }
  // bench train's batch of 2^62 sentences had wrapped to an empty token vector and crashed (SIGSEGV)
  const CliResult train =
      run("bench train --batch 4611686018427387904 --src-len 4 --tgt-len 4 --layers 0 --steps 1 "
          "--repeat 1 --warmup 0 --threads 1");
  EXPECT_EQ(train.status, 2);
  EXPECT_NE(train.err.find("--batch 4611686018427387904"), std::string::npos) << train.err;
}

TEST_F(Cli, HelpSpellsOutTheMaskPolarity) {
  CliResult r = run("sdpa --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("TRUE = MAY ATTEND"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TRUE = PADDING"), std::string::npos);
  r = run("mha --help");
  EXPECT_NE(r.out.find("TRUE = MASKED OUT"), std::string::npos) << r.out;
  r = run("--help");
  EXPECT_EQ(r.status, 0);
  for (const char* sub : {"explain", "sdpa", "mha", "bench"}) EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
}

// attn bench sdpa reports its share of the FMA peak it measures (0.2 s), or, with --no-peak (for a profiler), neither.
TEST_F(Cli, BenchSdpaMeasuresThePeakUnlessToldNot) {
  for (const std::string backward : {"", " --backward"}) {
    const std::string cmd = "bench sdpa --heads 1 --q-len 32 --head-dim 16 --repeat 1 --threads 1 --json" + backward;
    const CliResult with = run(cmd);
    ASSERT_EQ(with.status, 0) << with.err;
    EXPECT_NE(with.out.find("\"peak_share\""), std::string::npos) << with.out;
    const CliResult without = run(cmd + " --no-peak");
    ASSERT_EQ(without.status, 0) << without.err;
    EXPECT_EQ(without.out.find("peak_gflops"), std::string::npos) << without.out;
    EXPECT_NE(without.out.find("\"median_ms\""), std::string::npos) << without.out;
  }
}

// Memory O(L): the fused forward+backward of one head at L = 16384 keeps no L × L matrix (its scores alone would be 1
// GiB; the unfused path's peak at L = 8192 is 290 MB). The whole process, inputs, outputs and gradients included (8 ×
// 1 MiB), stays under 128 MB (27 MB measured). Not under AddressSanitizer, whose shadow memory and quarantine count
// in the resident set.
TEST_F(Cli, FusedForwardBackwardMemoryIsLinearInTheLength) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's shadow memory counts in the peak RSS";
#endif
  const CliResult r =
      run("bench sdpa --backward --impl fused --heads 1 --q-len 16384 --head-dim 16 --repeat 1 "
          "--warmup 0 --no-peak --json");
  ASSERT_EQ(r.status, 0) << r.err;
  const size_t at = r.out.find("\"peak_rss_mb\": ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const double peak_mb = std::stod(r.out.substr(at + 15));
  EXPECT_GT(peak_mb, 1.0);
  EXPECT_LT(peak_mb, 128.0) << r.out;
}

TEST_F(Cli, ExplainWalksThroughAllFiveMechanisms) {
  const CliResult r = run("explain");
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* s : {"Attention (scaled dot-product)", "Self-attention", "Multi-head self-attention",
                        "Cross-attention", "Masked self-attention", "-inf", "The family at a glance"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
  // an --html whose folder is missing is refused before the walk-through prints (it had failed after it)
  const CliResult bad = run("explain --html /nonexistent_attn_folder/x.html");
  EXPECT_NE(bad.status, 0);
  EXPECT_EQ(bad.out, "");
  EXPECT_NE(bad.err.find("its folder /nonexistent_attn_folder does not exist"), std::string::npos) << bad.err;
}

TEST_F(Cli, TranslateWithTheShippedModel) {
  CliResult r = run("translate \"three hundred twelve\"");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "三百一十二\n");
  r = run("translate --beam 4 one million two hundred thirty four thousand five hundred sixty seven");
  EXPECT_EQ(r.out, "一百二十三万四千五百六十七\n") << r.err;
  { std::ofstream(path("in.txt")) << "ten\nfifteen\none hundred one\n"; }
  r = run("translate < " + path("in.txt"));
  EXPECT_EQ(r.out, "十\n十五\n一百零一\n") << r.err;
}

TEST_F(Cli, TranslateRejectsBadInput) {
  for (const auto& [args, needle] :
       std::vector<std::pair<std::string, std::string>>{{"translate \"three hundred twelfe\"", "twelfe"},
                                                        {"translate \"   \"", "empty"},
                                                        {"translate \"" +
                                                             [] {
                                                               std::string s;
                                                               for (int i = 0; i < 70; ++i) s += "one ";
                                                               return s;
                                                             }() +
                                                             "\"",
                                                         "at most"},
                                                        {"translate --model /nonexistent \"one\"", "/nonexistent"},
                                                        {"translate --beam 0 one", "--beam"}}) {
    const CliResult r = run(args);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_LT(r.status, 128) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": " << r.err;
    EXPECT_EQ(r.out, "") << args;
  }
  { std::ofstream(path("mixed.txt")) << "ten\nelevn\n"; }
  const CliResult r = run("translate --strict < " + path("mixed.txt"));  // without --strict: cli_lines_test.cc
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "") << "with --strict nothing is printed when a line is bad";
}

TEST_F(Cli, EmbedAndSimilarWithMiniLM) {
  CliResult r =
      run("embed --model " + std::string(ATTN_MINILM_DIR) + " \"the cat sat\" \"a dog ran\" --out " + path("e.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  const Tensor e = io::read_npy(path("e.npy"));
  ASSERT_EQ(e.shape(), (Shape{2, 384}));
  double norm = 0.0;
  for (int64_t d = 0; d < 384; ++d) norm += static_cast<double>(e.f32()[d]) * e.f32()[d];
  EXPECT_NEAR(norm, 1.0, 1e-5);
  {
    std::ofstream(path("s.txt")) << "The stock market fell sharply.\nA man is eating food.\nA man is riding a horse.\n";
  }
  r = run("similar --model " + std::string(ATTN_MINILM_DIR) + " \"A person eats a meal\" < " + path("s.txt"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("A man is eating food."), std::string::npos);
  EXPECT_LT(r.out.find("A man is eating food."), r.out.find("The stock market")) << r.out;
  r = run("embed --model /nonexistent hello");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("/nonexistent"), std::string::npos);
}

// attn eval's count is the number of test examples whose translation is the task's own numeral
// (tasks::chinese_numeral, the truth), counted here independently through the library.
TEST_F(Cli, EvalPrintsExactMatch) {
  const CliResult r = run("eval --task numbers-en-zh --count 100");
  ASSERT_EQ(r.status, 0) << r.err;
  const Translator translator = Translator::load(ATTN_SOURCE_MODEL_DIR);
  const auto examples = tasks::make_examples(tasks::Split::kTest, 100, 3);  // eval's test split: seed 1 + 2
  int right = 0;
  for (const auto& e : examples) right += translator.translate(e.source) == tasks::chinese_numeral(e.n);
  EXPECT_GE(right, 99);
  char want[96];
  std::snprintf(want, sizeof want, "exact match %.2f%% (%d / 100), beam 1", right * 1.0, right);
  EXPECT_NE(r.out.find(want), std::string::npos) << r.out << " (expected \"" << want << "\")";
}

}  // namespace
}  // namespace attn
