// The five mechanisms at work: an encoder-decoder Transformer (encoder self-attention, decoder masked
// self-attention and cross-attention) translating English number words to Chinese numerals with the
// model that ships with attn.
//
//   translate ["nine thousand one" ...]   -> the two built-in sentences, then each argument
// Exits 1 when a built-in sentence is translated wrong, 2 when the library refuses something (a missing model, a word
// outside the vocabulary), with the library's message; a phrase outside the task's grammar is translated with a
// warning, as `attn translate` does.
#include <attn/attn.h>

#include <cstdio>

int main(int argc, char** argv) {
  const std::vector<std::pair<std::string, std::string>> known = {
      {"three hundred twelve", "三百一十二"},
      {"one million two hundred thirty four thousand five hundred sixty seven", "一百二十三万四千五百六十七"}};
  std::vector<std::string> sentences;
  for (const auto& [source, target] : known) sentences.push_back(source);
  for (int i = 1; i < argc; ++i) sentences.push_back(argv[i]);
  try {
    const attn::Translator translator = attn::Translator::load(ATTN_MODEL_DIR);
    attn::TranslateOptions options;
    options.beam = 4;
    const std::vector<std::string> out = translator.translate(sentences, options);  // throws for unknown words
    for (const std::string& s : sentences)
      if (const auto why = attn::tasks::grammar_problem(s)) std::fprintf(stderr, "warning: %s\n", why->c_str());
    for (size_t i = 0; i < out.size(); ++i) std::printf("%s -> %s\n", sentences[i].c_str(), out[i].c_str());
    for (size_t i = 0; i < known.size(); ++i)
      if (out[i] != known[i].second) {
        std::fprintf(stderr, "expected %s\n", known[i].second.c_str());
        return 1;
      }
    return 0;
  } catch (const attn::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
