// attn/tasks/numbers_en_zh.h: the shipped translation task, English number words -> Chinese numerals.
//
//   1234567  "one million two hundred thirty four thousand five hundred sixty seven"
//            -> 一百二十三万四千五百六十七
// Source: an integer n in [0, 999 999 999] as lower-case English words separated by single spaces, no
// "and", no hyphens, no commas. Target: standard Chinese numerals, one token per character: digits
// 零一二三四五六七八九 (二, not 两), units 十百千万亿; a leading 一十 is written 十. Zeros follow the school
// rule for the sections of four digits (亿 | 万 | units): a section's trailing zeros are not read, and one 零
// stands for a run of zeros at the start or inside a section, or for a whole zero 万 section:
// 201000 二十万一千, 200100 二十万零一百, 10010 一万零一十, 100001000 一亿零一千, 101000000 一亿零一百万.
// tests/fixtures/numerals.tsv holds both sides as the num2words and cn2an packages write them (cn2an with one
// correction, for the empty 万 section: tests/fixtures/generate_numerals.py).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attn::tasks {

std::string english_words(int64_t n);    // throws ArgumentError outside [0, 999 999 999]
std::string chinese_numeral(int64_t n);  // UTF-8; throws ArgumentError outside [0, 999 999 999]

// The form every input is brought to before it is checked or translated, by the CLI and the Python
// module alike: ASCII letters lower-cased, words separated by single spaces, no leading or trailing
// whitespace (tabs, a CR of CRLF input). "  Three HUNDRED\ttwelve\r" -> "three hundred twelve".
std::string normalize_source(const std::string& text);

// The task's grammar is exactly the phrases english_words writes: the generator (make_examples) writes
// nothing else, so they are the only phrases the model was trained on. grammar_problem says why the
// phrase (normalised first) is outside it, or nullopt when it is inside. The reason names the offending
// word or the phrase the model knows, e.g.
//   "ninety nine hundred" -> "... (9900) is not in the task's grammar: the model was trained on \"nine thousand nine
//   hundred\"" "one million million" -> "... reads as 1000000000000, outside the task's range [0, 999999999]" "one
//   hundred and one" -> "unknown word 'and' ... (\"one hundred one\")"
// Other out-of-grammar phrases: "twelve hundred", "one one", "zero one", "hundred", "twenty-one".
std::optional<std::string> grammar_problem(const std::string& text);

// The inverse of english_words: the number of a phrase inside the grammar (normalised first), or throws
// ArgumentError with grammar_problem's reason.
int64_t parse_english_words(const std::string& text);

enum class Split : uint8_t { kTrain, kValidation, kTest };
// Which split n belongs to: a hash of n, so the splits never share a number (1% test, 1% validation). Short
// numbers are therefore nearly all in training: below 1000 the test split holds 7 (215, 227, 342, ...) and the
// validation split 14 (23 the only one below 100); the tests check the small ones through the shipped model directly.
Split split_of(int64_t n);

struct Example {
  int64_t n;
  std::string source, target;
};
// `count` examples of the split, deterministically from `seed`. Numbers are drawn with a uniform
// number of digits (1..9) and with runs of zeros made common, so 零 rules are well represented.
std::vector<Example> make_examples(Split split, int64_t count, uint64_t seed);

// The task's token vocabularies: ids 0..3 are <pad>, <bos>, <eos>, <unk> on both sides.
struct Vocab {
  std::vector<std::string> src, tgt;
  static Vocab numbers();  // 31 English words; 15 Chinese characters
  // "three hundred twelve" -> word ids + EOS; throws ArgumentError for unknown words, empty input, or
  // more than max_len − 1 words, naming the problem.
  std::vector<int32_t> encode_source(const std::string& text, int64_t max_len) const;
  std::vector<int32_t> encode_target(const std::string& utf8) const;  // chars -> ids (no BOS/EOS)
  std::string decode_target(const std::vector<int32_t>& ids) const;   // stops at EOS
  std::string to_json() const;
  static Vocab from_json(const std::string& text);  // throws FormatError
  // A model directory's vocab.json, or numbers() when it has none (the shipped model's vocabulary).
  static Vocab load(const std::string& model_dir);
};

// Splits UTF-8 into characters (the target's tokens) and text into space-separated words.
std::vector<std::string> utf8_chars(const std::string& s);
std::vector<std::string> words(const std::string& s);  // at ASCII whitespace (U+00A0 and U+3000 stay inside words)

}  // namespace attn::tasks
