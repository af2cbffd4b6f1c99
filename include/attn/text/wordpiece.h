// attn/text/wordpiece.h: BERT's WordPiece tokenizer, giving exactly the ids of Hugging Face's
// BertTokenizer (transformers 5: the tokenizers library's BertNormalizer + BertPreTokenizer + WordPiece;
// do_lower_case, tokenize_chinese_chars, accents stripped when lower-casing):
//   0. special tokens written in the text ([CLS], [SEP], [PAD], [UNK], [MASK]) stay whole
//   1. clean: drop NUL, U+FFFD and control characters; every whitespace character becomes a space
//   2. put spaces around every CJK ideograph (one token per character; WordPieceOptions::split_cjk)
//   3. strip accents (NFD, drop non-spacing marks), then lower-case each character on its own (each where
//      WordPieceOptions says: by default both, as all-MiniLM-L6-v2's tokenizer does; full
//      Unicode mapping without context: no final sigma); split on whitespace and split off every
//      punctuation character (ASCII symbols and Unicode P*)
//   4. WordPiece: greedy longest match from the vocabulary, continuations prefixed "##"; a word with
//      no full match, or over 100 characters, becomes [UNK]
// The character classes of 1-3 (removed, CJK, non-spacing mark, punctuation) are the tokenizers library's own,
// read off it by tests/fixtures/generate_wordpiece_tables.py: its Unicode data is older than ICU's, and a character
// it does not know (a new emoji, an unassigned code point) stays, as [UNK]. NFD and lower-casing are ICU's.
// encode() adds [CLS] ... [SEP] and truncates to max_length. Text that is not valid UTF-8 throws ArgumentError (its
// bad bytes had been dropped in silence; Hugging Face's tokenizers take only valid strings).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace attn::text {

// Why `s` is not valid UTF-8 (the first bad byte and its offset: a stray continuation byte, an overlong form, a
// surrogate, a code point past U+10FFFF, a sequence cut short), or nullopt when it is.
std::optional<std::string> utf8_problem(const std::string& s);

// Hugging Face's BertNormalizer settings, as tokenizer_config.json names them.
struct WordPieceOptions {
  bool lower_case = true;             // do_lower_case: step 3's lower-casing
  std::optional<bool> strip_accents;  // step 3's NFD and dropped marks; unset (null): as lower_case
  bool split_cjk = true;              // tokenize_chinese_chars: step 2
};

class WordPiece {
 public:
  // vocab.txt: one token per line, id = line number. Throws FormatError if unreadable or missing
  // [CLS], [SEP], [UNK] or [PAD].
  static WordPiece load(const std::string& vocab_path, const WordPieceOptions& options = {});
  static WordPiece load(const std::string& vocab_path, bool lower_case) {
    return load(vocab_path, WordPieceOptions{lower_case, std::nullopt, true});
  }
  // The longest text basic_tokens takes (bytes): ICU strings count their length in int32, and one that is cut down
  // to fit had been tokenized as its first bytes, or as nothing.
  static constexpr size_t kMaxTextBytes = size_t{1} << 28;

  std::vector<std::string> basic_tokens(const std::string& utf8) const;  // steps 1-3
  std::vector<std::string> tokenize(const std::string& utf8) const;      // steps 1-4, as strings
  // [CLS] + ids + [SEP], at most max_length ids (the words are truncated, [SEP] kept).
  std::vector<int32_t> encode(const std::string& utf8, int64_t max_length) const;

  int32_t id(const std::string& token) const;  // -1 if absent
  const std::string& token(int32_t id) const;
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int32_t cls_id() const { return cls_; }
  int32_t sep_id() const { return sep_; }
  int32_t pad_id() const { return pad_; }
  int32_t unk_id() const { return unk_; }

 private:
  // tokenize(), stopping once max_tokens tokens are made
  std::vector<std::string> tokenize_at_most(const std::string& utf8, size_t max_tokens) const;
  // step 4 on the words of one stretch of text without special tokens, appended to out up to max_tokens
  void append_word_pieces(const std::string& utf8, size_t max_tokens, std::vector<std::string>& out) const;
  // the same on one chunk of such a stretch (append_word_pieces cuts it at spaces)
  void append_chunk_pieces(const std::string& utf8, size_t max_tokens, std::vector<std::string>& out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> ids_;
  int32_t cls_ = -1, sep_ = -1, pad_ = -1, unk_ = -1;
  bool lower_case_ = true, strip_accents_ = true, split_cjk_ = true;
};

}  // namespace attn::text
