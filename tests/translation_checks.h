// The shipped model's test split and the check every inference variant of it passes (tests/task_test.cc,
// tests/lowp_models_test.cc): translations of the whole split as float32 gives them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "attn/tasks/numbers_en_zh.h"
#include "attn/translator.h"
#include "test_util.h"

namespace attn::test {

struct Sentences {
  std::vector<std::string> sources, targets;
};

// The first `count` examples of eval's test split (seed 1 + 2).
inline Sentences test_split(int64_t count) {
  Sentences s;
  for (const tasks::Example& e : tasks::make_examples(tasks::Split::kTest, count, 3)) {
    s.sources.push_back(e.source);
    s.targets.push_back(e.target);
  }
  return s;
}

// The translation issue's bar for quantised inference: on eval's 2000 test sentences, greedy and beam 4, at most
// 0.5% translated differently from float32 and at least 99% exact. (Under the sanitizers the first 300, at most 2
// different and 99% exact: a memory check of the same paths, not the bar.)
inline void expect_translates_the_test_split_as_float32(const std::string& dir, Quantization q) {
  const Translator fp32 = Translator::load(dir), other = Translator::load(dir, q);
  const int count = test_volume(2000, 300);
  const Sentences s = test_split(count);
  for (int beam : {1, 4}) {
    TranslateOptions o;
    o.beam = beam;
    const auto a = fp32.translate(s.sources, o), b = other.translate(s.sources, o);
    int differ = 0, right = 0;
    for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i], right += b[i] == s.targets[i];
    EXPECT_LE(differ, std::max(2, count / 200)) << quantization_name(q) << ", beam " << beam;  // 0.5%
    EXPECT_GE(right, count * 99 / 100) << quantization_name(q) << ", beam " << beam;
  }
}

}  // namespace attn::test
