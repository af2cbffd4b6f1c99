#include "attn/text/wordpiece.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <sstream>

#include "attn/error.h"
#include "attn/io/file.h"
#include "text/bert_unicode_tables.h"

namespace attn::text {
namespace {

// The character classes are Hugging Face's tokenizers' own (bert_unicode_tables.h, read off the library), not ICU's:
// its categories are of an older Unicode, so ICU's had dropped characters it keeps (a new emoji, an unassigned
// code point: [UNK] there), split off or stripped ones it leaves, and put CJK Extension E's first 256 characters apart.
template <size_t N>
bool in_table(const bert_tables::Range (&table)[N], UChar32 c) {
  const auto* it = std::upper_bound(table, table + N, static_cast<uint32_t>(c),
                                    [](uint32_t x, const bert_tables::Range& r) { return x < r.first; });
  return it != table && static_cast<uint32_t>(c) <= (it - 1)->last;
}

bool is_cjk(UChar32 c) { return in_table(bert_tables::kCjk, c); }  // handle_chinese_chars: spaced apart

bool is_whitespace(UChar32 c) {  // the BertNormalizer's: \t \n \r or the Unicode White_Space property
  return c == '\t' || c == '\n' || c == '\r' || u_isUWhiteSpace(c);
}

bool is_removed(UChar32 c) { return in_table(bert_tables::kRemoved, c); }  // clean_text: NUL, U+FFFD, "control"

bool is_mark(UChar32 c) { return in_table(bert_tables::kMark, c); }  // strip_accents drops it (after NFD)

// BertPreTokenizer's punctuation: ASCII symbols and category P*
bool is_punctuation(UChar32 c) { return in_table(bert_tables::kPunctuation, c); }

bool is_split_space(UChar32 c) { return u_isUWhiteSpace(c); }  // the BertPreTokenizer's whitespace

std::string utf8(const icu::UnicodeString& s) {
  std::string out;
  s.toUTF8String(out);
  return out;
}

}  // namespace

WordPiece WordPiece::load(const std::string& path, const WordPieceOptions& options) {
  // io::read_text: its size cap (vocab.txt a link to /dev/zero had grown one line until memory ran out), and a
  // directory or an unreadable file is an error naming the path (a directory had read as an empty vocabulary)
  std::istringstream in(io::read_text(path));
  WordPiece w;
  w.lower_case_ = options.lower_case;
  w.strip_accents_ = options.strip_accents.value_or(options.lower_case);
  w.split_cjk_ = options.split_cjk;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    w.ids_[line] = static_cast<int32_t>(w.tokens_.size());  // a token listed twice: its last line, as Hugging Face
    w.tokens_.push_back(line);
  }
  w.cls_ = w.id("[CLS]"), w.sep_ = w.id("[SEP]"), w.pad_ = w.id("[PAD]"), w.unk_ = w.id("[UNK]");
  if (w.cls_ < 0 || w.sep_ < 0 || w.pad_ < 0 || w.unk_ < 0)
    throw FormatError(path + ": the vocabulary lacks [CLS], [SEP], [PAD] or [UNK] (" +
                      std::to_string(w.tokens_.size()) + " lines)");
  return w;
}

int32_t WordPiece::id(const std::string& token) const {
  const auto it = ids_.find(token);
  return it == ids_.end() ? -1 : it->second;
}

const std::string& WordPiece::token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(tokens_.size()))
    throw ArgumentError("WordPiece: no token with id " + std::to_string(id));
  return tokens_[static_cast<size_t>(id)];
}

std::optional<std::string> utf8_problem(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(i);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80)
      len = 1, cp = c;
    else if (c >= 0xC2 && c <= 0xDF)
      len = 2, cp = c & 0x1Fu;
    else if (c >= 0xE0 && c <= 0xEF)
      len = 3, cp = c & 0x0Fu;
    else if (c >= 0xF0 && c <= 0xF4)
      len = 4, cp = c & 0x07u;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (byte(i + k) & 0xC0) == 0x80;
      cp = (cp << 6) | (byte(i + k) & 0x3Fu);
    }
    // overlong 3- and 4-byte forms, UTF-16 surrogates, beyond U+10FFFF
    if (ok &&
        ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF))
      ok = false;
    if (!ok) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", c);
      return "not valid UTF-8 (byte " + std::string(hex) + " at offset " + std::to_string(i) + ")";
    }
    i += len;
  }
  return std::nullopt;
}

std::vector<std::string> WordPiece::basic_tokens(const std::string& text) const {
  if (const auto why = utf8_problem(text)) throw ArgumentError("WordPiece: the text is " + *why);
  if (text.size() > kMaxTextBytes)
    throw ArgumentError("WordPiece: a text of " + std::to_string(text.size()) + " bytes is longer than the " +
                        std::to_string(kMaxTextBytes) + " one call takes");
  const icu::UnicodeString in = icu::UnicodeString::fromUTF8(text);
  // 1-2: clean, and spaces around CJK ideographs
  icu::UnicodeString cleaned;
  for (int32_t i = 0; i < in.length(); i = in.moveIndex32(i, 1)) {
    const UChar32 c = in.char32At(i);
    if (is_removed(c)) continue;
    if (is_whitespace(c)) {
      cleaned.append(static_cast<UChar32>(' '));
    } else if (split_cjk_ && is_cjk(c)) {
      cleaned.append(static_cast<UChar32>(' ')).append(c).append(static_cast<UChar32>(' '));
    } else {
      cleaned.append(c);
    }
  }
  // 3a: strip accents (NFD, drop non-spacing marks), then lower-case each character on its own (full
  // mapping, no context: Σ is always σ), in this order, as Hugging Face's BertNormalizer does
  if (strip_accents_) {
    UErrorCode err = U_ZERO_ERROR;
    const icu::Normalizer2* nfd = icu::Normalizer2::getNFDInstance(err);
    if (U_FAILURE(err)) throw Error("WordPiece: ICU's NFD normaliser is unavailable");
    const icu::UnicodeString d = nfd->normalize(cleaned, err);
    if (U_FAILURE(err))
      throw ArgumentError(std::string("WordPiece: ICU's NFD failed on the text: ") + u_errorName(err));
    cleaned.remove();
    for (int32_t i = 0; i < d.length(); i = d.moveIndex32(i, 1))
      if (!is_mark(d.char32At(i))) cleaned.append(d.char32At(i));
  }
  if (lower_case_) {
    icu::UnicodeString lowered;
    for (int32_t i = 0; i < cleaned.length(); i = cleaned.moveIndex32(i, 1))
      lowered.append(icu::UnicodeString(cleaned.char32At(i)).toLower(icu::Locale::getRoot()));
    cleaned = std::move(lowered);
  }
  // 3b: split on whitespace, and split off every punctuation character
  std::vector<std::string> out;
  icu::UnicodeString run;
  auto flush = [&] {
    if (!run.isEmpty()) out.push_back(utf8(run)), run.remove();
  };
  for (int32_t i = 0; i < cleaned.length(); i = cleaned.moveIndex32(i, 1)) {
    const UChar32 c = cleaned.char32At(i);
    if (is_split_space(c)) {
      flush();
    } else if (is_punctuation(c)) {
      flush();
      out.push_back(utf8(icu::UnicodeString(c)));
    } else {
      run.append(c);
    }
  }
  flush();
  return out;
}

std::vector<std::string> WordPiece::tokenize(const std::string& text) const {
  return tokenize_at_most(text, std::numeric_limits<size_t>::max());
}

std::vector<std::string> WordPiece::tokenize_at_most(const std::string& text, size_t max_tokens) const {
  // the whole text, before any piece is cut from it: an offset then counts from its start (it had counted from the last
  // special token), and a text is refused whatever max_tokens leaves of it ("\xff" had passed encode with max_length 2)
  if (const auto why = utf8_problem(text)) throw ArgumentError("WordPiece: the text is " + *why);
  if (text.size() > kMaxTextBytes)
    throw ArgumentError("WordPiece: a text of " + std::to_string(text.size()) + " bytes is longer than the " +
                        std::to_string(kMaxTextBytes) + " one call takes");
  if (ids_.empty()) throw ArgumentError("WordPiece: no vocabulary (a default-constructed WordPiece; use load)");
  // special tokens written in the text ("[CLS]", "[SEP]", ...) stay whole, as Hugging Face's added tokens;
  // the text is cut at each one in one pass (no two can overlap: each is a whole "[...]")
  static const std::string kSpecial[] = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"};
  constexpr size_t kCount = std::size(kSpecial);
  size_t next[kCount];  // where each special token next occurs at or after pos (npos: nowhere)
  for (size_t k = 0; k < kCount; ++k) next[k] = id(kSpecial[k]) < 0 ? std::string::npos : text.find(kSpecial[k]);
  std::vector<std::string> out;
  size_t pos = 0;
  while (out.size() < max_tokens) {
    size_t first = kCount;
    for (size_t k = 0; k < kCount; ++k) {
      if (next[k] != std::string::npos && next[k] < pos) next[k] = text.find(kSpecial[k], pos);
      if (next[k] != std::string::npos && (first == kCount || next[k] < next[first])) first = k;
    }
    const size_t end = first == kCount ? text.size() : next[first];
    append_word_pieces(text.substr(pos, end - pos), max_tokens, out);
    if (first == kCount) break;
    if (out.size() < max_tokens) out.push_back(kSpecial[first]);
    pos = end + kSpecial[first].size();
  }
  return out;
}

void WordPiece::append_word_pieces(const std::string& text, size_t max_tokens, std::vector<std::string>& out) const {
  // In chunks of about 64 KiB cut at an ASCII space, which no word crosses (the basic tokenizer splits there, and
  // cleaning, NFD and accent stripping keep to a word): encode of a long text with a small max_length had normalised
  // and split all of it (256 MB: over 4 GB of strings) to keep a few tokens.
  constexpr size_t kChunk = size_t{1} << 16;
  for (size_t pos = 0; pos < text.size() && out.size() < max_tokens;) {
    const size_t cut = pos + kChunk >= text.size() ? std::string::npos : text.find(' ', pos + kChunk);
    const size_t end = cut == std::string::npos ? text.size() : cut;
    append_chunk_pieces(text.substr(pos, end - pos), max_tokens, out);
    pos = end;
  }
}

void WordPiece::append_chunk_pieces(const std::string& text, size_t max_tokens, std::vector<std::string>& out) const {
  for (const std::string& word : basic_tokens(text)) {
    if (out.size() >= max_tokens) return;
    const icu::UnicodeString w = icu::UnicodeString::fromUTF8(word);
    if (w.countChar32() > 100) {
      out.push_back("[UNK]");
      continue;
    }
    // greedy longest match first; continuations carry "##"
    std::vector<std::string> pieces;
    int32_t start = 0;
    bool bad = false;
    while (start < w.length()) {
      int32_t end = w.length();
      std::string found;
      while (start < end) {
        std::string piece = utf8(icu::UnicodeString(w, start, end - start));
        if (start > 0) piece = "##" + piece;
        if (ids_.count(piece)) {
          found = piece;
          break;
        }
        end = w.moveIndex32(end, -1);
      }
      if (found.empty()) {
        bad = true;
        break;
      }
      pieces.push_back(found);
      start = end;
    }
    if (bad) {
      out.push_back("[UNK]");
    } else {
      for (std::string& piece : pieces) {
        if (out.size() >= max_tokens) return;
        out.push_back(std::move(piece));
      }
    }
  }
}

std::vector<int32_t> WordPiece::encode(const std::string& text, int64_t max_length) const {
  if (max_length < 2)
    throw ArgumentError("WordPiece::encode: max_length must be at least 2, got " + std::to_string(max_length));
  std::vector<int32_t> ids = {cls_};
  // only the tokens that fit are made: a long text is not tokenised past max_length
  for (const std::string& t : tokenize_at_most(text, static_cast<size_t>(max_length - 2))) ids.push_back(id(t));
  ids.push_back(sep_);
  return ids;
}

}  // namespace attn::text
