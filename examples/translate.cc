// The five mechanisms at work: an encoder-decoder Transformer (encoder self-attention, decoder masked
// self-attention and cross-attention) translating English number words to Chinese numerals with the
// model that ships with attn.
#include <attn/attn.h>

#include <cstdio>

int main(int argc, char** argv) {
  const attn::Translator translator = attn::Translator::load(ATTN_MODEL_DIR);
  std::vector<std::string> sentences = {"three hundred twelve",
                                        "one million two hundred thirty four thousand five hundred sixty seven"};
  for (int i = 1; i < argc; ++i) sentences.push_back(argv[i]);
  attn::TranslateOptions options;
  options.beam = 4;
  const std::vector<std::string> out = translator.translate(sentences, options);
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s -> %s\n", sentences[i].c_str(), out[i].c_str());
  return out[0] == "三百一十二" ? 0 : 1;
}
