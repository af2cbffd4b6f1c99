#include "attn/tasks/numbers_en_zh.h"

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "attn/error.h"
#include "attn/io/file.h"
#include "io/json_fields.h"

namespace attn::tasks {
namespace {

const char* kOnes[] = {"zero",     "one",     "two",     "three",     "four",     "five",    "six",
                       "seven",    "eight",   "nine",    "ten",       "eleven",   "twelve",  "thirteen",
                       "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
const char* kTens[] = {"", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"};
const char* kDigits[] = {"零", "一", "二", "三", "四", "五", "六", "七", "八", "九"};
const char* kUnits[] = {"", "十", "百", "千"};
constexpr int64_t kMax = 999'999'999;

void check_range(int64_t n, const char* who) {
  if (n < 0 || n > kMax)
    throw ArgumentError(std::string(who) + ": " + std::to_string(n) + " is outside [0, 999999999]");
}

// 1..999 in words
void below_thousand(int64_t n, std::vector<std::string>& out) {
  if (n >= 100) {
    out.push_back(kOnes[n / 100]);
    out.push_back("hundred");
    n %= 100;
  }
  if (n >= 20) {
    out.push_back(kTens[n / 10]);
    n %= 10;
    if (n) out.push_back(kOnes[n]);
  } else if (n > 0) {
    out.push_back(kOnes[n]);
  }
}

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

std::string english_words(int64_t n) {
  check_range(n, "english_words");
  if (n == 0) return "zero";
  std::vector<std::string> w;
  if (n >= 1'000'000) below_thousand(n / 1'000'000, w), w.push_back("million");
  if (n / 1000 % 1000) below_thousand(n / 1000 % 1000, w), w.push_back("thousand");
  below_thousand(n % 1000, w);
  std::string s;
  for (const auto& x : w) s += (s.empty() ? "" : " ") + x;
  return s;
}

std::string chinese_numeral(int64_t n) {
  check_range(n, "chinese_numeral");
  if (n == 0) return "零";
  int d[9];
  for (int p = 0; p < 9; ++p, n /= 10) d[p] = static_cast<int>(n % 10);
  std::string out;
  bool started = false, zero_pending = false;
  for (int p = 8; p >= 0; --p) {
    if (d[p] != 0) {
      if (zero_pending) out += "零";
      zero_pending = false;
      out += kDigits[d[p]];
      out += kUnits[p % 4];
      started = true;
    } else if (started) {
      zero_pending = true;  // one 零 for the whole run, written only if a non-zero digit follows
    }
    if (p == 8 && d[8]) out += "亿";
    if (p == 4 && (d[4] || d[5] || d[6] || d[7])) {
      out += "万";
      zero_pending = false;  // a section's trailing zeros are not read: 201000 = 二十万一千, 200100 = 二十万零一百
    }
  }
  if (out.rfind("一十", 0) == 0) out.erase(0, std::string("一").size());  // leading 一十 -> 十
  return out;
}

namespace {

// What a reader takes a phrase to mean, allowing the English that lies outside the task's grammar
// ("twelve hundred" = 1200, "one million million" = 10^12), or why it has no reading at all.
struct Reading {
  int64_t value = 0;    // saturates at kSaturated
  std::string problem;  // non-empty: no reading
};
constexpr int64_t kSaturated = 1'000'000'000'000'000'000;

int64_t sat_add(int64_t a, int64_t b) { return a > kSaturated - b ? kSaturated : a + b; }
int64_t sat_mul(int64_t a, int64_t b) { return b != 0 && a > kSaturated / b ? kSaturated : a * b; }

// 0..90 for a number word, 100 / 1000 / 1000000 for a scale word, -1 for a word outside the vocabulary.
int64_t word_value(const std::string& word) {
  for (int i = 0; i < 20; ++i)
    if (word == kOnes[i]) return i;
  for (int i = 2; i < 10; ++i)
    if (word == kTens[i]) return i * 10;
  return word == "hundred" ? 100 : word == "thousand" ? 1000 : word == "million" ? 1'000'000 : -1;
}

// Input as an error message quotes it: whole up to 80 bytes, else its first 60 and how long it was.
std::string excerpt(const std::string& text) { return io::text_excerpt(text, 60); }

std::string join(const std::vector<std::string>& w) {
  std::string s;
  for (const auto& x : w) s += (s.empty() ? "" : " ") + x;
  return s;
}

Reading read_words(const std::vector<std::string>& w) {  // w [words], non-empty, all in the vocabulary
  enum { kStart, kUnit, kTeen, kTen, kHundred, kScale } last = kStart;
  int64_t total = 0, group = 0, scale = 0;  // scale: the largest scale word so far (0: none)
  std::string prev;
  for (const std::string& word : w) {
    const int64_t v = word_value(word);
    auto cannot = [&] {
      return Reading{
          0, prev.empty() ? "'" + word + "' cannot start a number" : "'" + word + "' cannot follow '" + prev + "'"};
    };
    if (v == 0) {
      if (w.size() != 1) return {0, "'zero' is a number only on its own"};
    } else if (v < 10) {
      if (last == kUnit || last == kTeen) return cannot();
      group += v, last = kUnit;
    } else if (v < 100) {
      if (last == kUnit || last == kTeen || last == kTen) return cannot();
      group += v, last = v < 20 ? kTeen : kTen;
    } else if (v == 100) {
      if (last == kStart || last == kHundred || last == kScale || group >= 100) return cannot();
      group *= 100, last = kHundred;
    } else {
      if (last == kStart) return cannot();
      if (last == kScale)
        total = sat_mul(total, v);  // "one million million"
      else if (scale == 0 || v < scale)
        total = sat_add(total, group * v);  // "two million three thousand"
      else
        return cannot();  // "one thousand two million"
      group = 0, scale = std::max(scale, v), last = kScale;
    }
    prev = word;
  }
  return {sat_add(total, group), ""};
}

}  // namespace

std::string normalize_source(const std::string& text) {
  std::string lower = text;
  for (char& ch : lower)  // ASCII only: std::tolower follows the C locale, which a host program may set to Latin-1
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  return join(words(lower));
}

std::optional<std::string> grammar_problem(const std::string& text) {
  const std::vector<std::string> w = words(normalize_source(text));
  const std::string canonical_input = join(w), phrase = excerpt(canonical_input);
  if (w.empty()) return "the input is empty: expected a number in English words, e.g. \"three hundred twelve\"";
  for (const std::string& word : w) {
    if (word_value(word) >= 0) continue;
    std::string why = "unknown word '" + excerpt(word) + "' in \"" + phrase +
                      "\": the vocabulary is zero..nineteen, twenty..ninety, hundred, thousand, million";
    std::vector<std::string> without_and;
    for (const std::string& x : w)
      if (x != "and") without_and.push_back(x);
    if (word == "and" && !without_and.empty() && !grammar_problem(join(without_and)))
      why += "; the task writes no \"and\": \"" + excerpt(join(without_and)) + "\"";
    return why;
  }
  const Reading r = read_words(w);
  if (!r.problem.empty()) return "\"" + phrase + "\" does not read as a number: " + r.problem;
  if (r.value > kMax)
    return "\"" + phrase + "\" reads as " + (r.value < kSaturated ? std::to_string(r.value) : "10^18 or more") +
           ", outside the task's range [0, 999999999]";
  const std::string canonical = english_words(r.value);
  if (canonical != canonical_input)
    return "\"" + phrase + "\" (" + std::to_string(r.value) +
           ") is not in the task's grammar: the model was trained on \"" + canonical + "\"";
  return std::nullopt;
}

int64_t parse_english_words(const std::string& text) {
  if (const auto why = grammar_problem(text)) throw ArgumentError(*why);
  return read_words(words(normalize_source(text))).value;
}

Split split_of(int64_t n) {
  const uint64_t h = mix(static_cast<uint64_t>(n) ^ 0x5eed5eedull) % 100;
  return h == 0 ? Split::kTest : h == 1 ? Split::kValidation : Split::kTrain;
}

std::vector<Example> make_examples(Split split, int64_t count, uint64_t seed) {
  std::mt19937_64 rng(mix(seed) ^ static_cast<uint64_t>(split));
  if (count < 0) throw ArgumentError("make_examples: count must be at least 0, got " + std::to_string(count));
  if (split != Split::kTrain && split != Split::kValidation && split != Split::kTest)  // (no number is in another)
    throw ArgumentError("make_examples: split " + std::to_string(static_cast<int>(split)) +
                        " is none of train, validation, test");
  std::vector<Example> out;
  out.reserve(static_cast<size_t>(std::min<int64_t>(count, int64_t{1} << 20)));  // more grows as they are made
  while (static_cast<int64_t>(out.size()) < count) {
    const int digits = 1 + static_cast<int>(rng() % 9);
    int64_t n = 0;
    const int zero_rate = static_cast<int>(rng() % 3);  // 0: none forced, 1: some, 2: many zeros
    for (int i = 0; i < digits; ++i) {
      int digit = static_cast<int>(rng() % 10);
      if (i == 0 && digits > 1 && digit == 0) digit = 1 + static_cast<int>(rng() % 9);
      if (i > 0 && zero_rate && rng() % 4 < static_cast<uint64_t>(zero_rate)) digit = 0;
      n = n * 10 + digit;
    }
    if (split_of(n) != split) continue;
    out.push_back({n, english_words(n), chinese_numeral(n)});
  }
  return out;
}

Vocab Vocab::numbers() {
  Vocab v;
  v.src = {"<pad>", "<bos>", "<eos>", "<unk>"};
  for (const char* w : kOnes) v.src.push_back(w);
  for (int i = 2; i < 10; ++i) v.src.push_back(kTens[i]);
  for (const char* w : {"hundred", "thousand", "million"}) v.src.push_back(w);
  v.tgt = {"<pad>", "<bos>", "<eos>", "<unk>"};
  for (const char* d : kDigits) v.tgt.push_back(d);
  for (const char* u : {"十", "百", "千", "万", "亿"}) v.tgt.push_back(u);
  return v;
}

namespace {
// Ids 0..3 are <pad>, <bos>, <eos>, <unk>; words start at 4 (a smaller side had been searched from past its end).
void check_side(const std::vector<std::string>& side, const char* name, const char* fn) {
  if (side.size() < 5)
    throw ArgumentError(std::string(fn) + ": the vocabulary's " + name + " side has " + std::to_string(side.size()) +
                        " tokens; it needs the 4 specials (<pad> <bos> <eos> <unk>) and at least one more");
}
}  // namespace

std::vector<int32_t> Vocab::encode_source(const std::string& text, int64_t max_len) const {
  check_side(src, "src", "encode_source");
  if (max_len < 2)
    throw ArgumentError("encode_source: max_len must be at least 2 (a word and <eos>), got " + std::to_string(max_len));
  const std::vector<std::string> w = words(text);
  if (w.empty())
    throw ArgumentError("the input is empty: expected a number in English words, e.g. \"three hundred twelve\"");
  if (static_cast<int64_t>(w.size()) + 1 > max_len)
    throw ArgumentError("the input has " + std::to_string(w.size()) + " words; the model reads at most " +
                        std::to_string(max_len - 1));
  std::vector<int32_t> ids;
  for (const std::string& word : w) {
    const auto it = std::find(src.begin() + 4, src.end(), word);
    if (it == src.end())
      throw ArgumentError(
          "unknown word '" + excerpt(word) + "' in \"" + excerpt(text) +
          "\": the vocabulary is zero..nineteen, twenty..ninety, hundred, thousand, million (lower case)");
    ids.push_back(static_cast<int32_t>(it - src.begin()));
  }
  ids.push_back(2);
  return ids;
}

std::vector<int32_t> Vocab::encode_target(const std::string& utf8) const {
  check_side(tgt, "tgt", "encode_target");
  std::vector<int32_t> ids;
  for (const std::string& ch : utf8_chars(utf8)) {
    const auto it = std::find(tgt.begin() + 4, tgt.end(), ch);
    ids.push_back(it == tgt.end() ? 3 : static_cast<int32_t>(it - tgt.begin()));
  }
  return ids;
}

std::string Vocab::decode_target(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id == 2) break;
    if (id >= 4 && id < static_cast<int32_t>(tgt.size())) out += tgt[static_cast<size_t>(id)];
  }
  return out;
}

std::string Vocab::to_json() const { return nlohmann::json{{"src", src}, {"tgt", tgt}}.dump(1); }

Vocab Vocab::load(const std::string& model_dir) {
  const std::string path = model_dir + "/vocab.json";
  return io::exists_or_unexaminable(path) ? from_json(io::read_text(path)) : numbers();
}

Vocab Vocab::from_json(const std::string& text) {
  try {
    const nlohmann::json j = io::parse_json(text, "vocab.json");
    Vocab v{j.at("src").get<std::vector<std::string>>(), j.at("tgt").get<std::vector<std::string>>()};
    if (v.src.size() < 5 || v.tgt.size() < 5) throw FormatError("vocab.json: too few tokens");
    const char* specials[] = {"<pad>", "<bos>", "<eos>", "<unk>"};  // the ids the encoders and decoders write
    for (const auto* side : {&v.src, &v.tgt}) {
      const std::string name = side == &v.src ? "src" : "tgt";
      for (int id = 0; id < 4; ++id)
        if ((*side)[id] != specials[id])
          throw FormatError("vocab.json: \"" + name + "\" has \"" + excerpt((*side)[id]) + "\" at id " +
                            std::to_string(id) + ", expected \"" + specials[id] +
                            "\" (ids 0..3 are <pad>, <bos>, <eos>, <unk>)");
      std::set<std::string> seen;  // a token twice would have two ids: which one encodes it?
      for (const std::string& token : *side)
        if (!seen.insert(token).second)
          throw FormatError("vocab.json: \"" + name + "\" lists \"" + excerpt(token) + "\" twice");
    }
    return v;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(std::string("vocab.json: ") + e.what());
  }
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

std::vector<std::string> words(const std::string& s) {  // split at ASCII whitespace, whatever the global locale
  std::vector<std::string> out;
  std::string w;
  for (const char ch : s) {
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r') {
      if (!w.empty()) out.push_back(std::move(w)), w.clear();
    } else {
      w += ch;
    }
  }
  if (!w.empty()) out.push_back(std::move(w));
  return out;
}

}  // namespace attn::tasks
