// attn viz: translate a sentence and draw every attention map of the model: encoder self-attention,
// decoder masked self-attention and decoder cross-attention, every layer and head plus the average.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/models/bert.h"
#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/translator.h"
#include "common.h"
#include "html_report.h"
#include "model_path.h"

namespace attn::cli {
namespace {

std::string translate_one(const Transformer& model, const tasks::Vocab& vocab, const std::string& text, int beam) {
  TranslateOptions options;
  options.beam = beam;
  return Translator::borrowing(model, vocab).translate(text, options);
}

struct VizArgs {
  std::string model, out, png, png_map, text;  // png_map "": the model's most telling map
  int png_head = -1;                           // -1: the head average
  int beam = 1;
  int64_t random_map = 0;
};

// --png-map and --png-head against the model's map names and head count, before any work is done (a typo had been
// reported only after the translation and the whole page).
void check_png_choice(const VizArgs& a, const std::vector<std::string>& map_names, int64_t heads) {
  if (a.png.empty()) return;
  if (!a.png_map.empty() && std::find(map_names.begin(), map_names.end(), a.png_map) == map_names.end()) {
    std::string names;
    for (const std::string& n : map_names) names += (names.empty() ? "" : ", ") + n;
    throw ArgumentError("--png-map '" + a.png_map + "' is not a map of this model (it has " + names + ")");
  }
  if (a.png_head >= heads)
    throw ArgumentError("--png-head " + std::to_string(a.png_head) + ": the model has " + std::to_string(heads) +
                        " heads");
}

// --png: one map ([1, H, Lq, Lk]) by --png-map (default_map when not given), one head or the average, as PNG bytes;
// cells of up to `cell` pixels, smaller where the map is long (PNG sides of at most 16384 pixels).
std::vector<uint8_t> map_png(const VizArgs& a, const std::map<std::string, Tensor>& maps,
                             const std::string& default_map, int cell) {
  const std::string name = a.png_map.empty() ? default_map : a.png_map;
  const auto it = maps.find(name);
  if (it == maps.end())
    throw ArgumentError("--png-map '" + name + "' is not a map of this model (e.g. " + default_map + ")");
  const Tensor& w = it->second;
  const int64_t H = w.dim(1), Lq = w.dim(2), Lk = w.dim(3);
  if (a.png_head >= H)
    throw ArgumentError("--png-head " + std::to_string(a.png_head) + ": the model has " + std::to_string(H) + " heads");
  cell = static_cast<int>(std::clamp<int64_t>(16384 / std::max<int64_t>({Lq, Lk, 1}), 1, cell));
  std::vector<float> m(static_cast<size_t>(Lq * Lk), 0.0f);
  for (int64_t h = 0; h < H; ++h)
    if (a.png_head < 0 || a.png_head == h)
      for (int64_t i = 0; i < Lq * Lk; ++i)
        m[static_cast<size_t>(i)] += w.f32()[h * Lq * Lk + i] / (a.png_head < 0 ? static_cast<float>(H) : 1.0f);
  return heatmap_png_bytes(m.data(), Lq, Lk, cell);
}

// --out and/or --png, both or neither (io::FileSet): a bad --png-map or an unwritable --png leaves no page behind.
void write_viz_outputs(const VizArgs& a, const Report& r, const std::map<std::string, Tensor>& maps,
                       const std::string& default_map, int cell) {
  io::FileSet files;
  if (!a.out.empty()) files.add("--out", a.out, html_report_bytes(r));
  if (!a.png.empty()) files.add("--png", a.png, map_png(a, maps, default_map, cell));
  files.commit();
}

// A random N x N causal map, to check that long inputs stay usable in the page (and the PNG).
void write_random_map(const VizArgs& a, int64_t n) {
  if (n <= 0 || n > 8192) throw ArgumentError("--random-map must be in [1, 8192], got " + std::to_string(n));
  check_png_choice(a, {"random"}, 1);
  Tensor w({1, n, n});
  std::mt19937 rng(1);
  for (int64_t i = 0; i < n; ++i) {
    float* row = w.f32() + i * n;
    double s = 0.0;
    for (int64_t j = 0; j <= i; ++j)
      s += (row[j] = static_cast<float>(rng() % 1000) / 1000.0f + (j == i ? 20.0f : 0.0f));
    for (int64_t j = 0; j <= i; ++j) row[j] = static_cast<float>(row[j] / s);
  }
  std::vector<std::string> tokens;
  for (int64_t i = 0; i < n; ++i) tokens.push_back("t" + std::to_string(i));
  Report r{"attn viz: a random causal map of " + std::to_string(n) + " tokens",
           {"Long inputs: cells smaller than a pixel are aggregated (max)."},
           {}};
  r.maps.push_back({"Random masked self-attention", std::to_string(n) + " tokens", tokens, tokens, w, ""});
  write_viz_outputs(a, r, {{"random", w.reshape({1, 1, n, n})}}, "random", n <= 512 ? 4 : 1);
}

// A Hugging Face BERT directory (vocab.txt beside config.json): its self-attention, every layer and head.
void run_bert_viz(const VizArgs& a, const std::string& dir) {
  const SentenceEncoder enc = SentenceEncoder::load(dir);
  std::vector<std::string> map_names;
  for (int64_t l = 0; l < enc.config().num_layers; ++l)
    map_names.push_back("encoder.layer." + std::to_string(l) + ".attention");
  check_png_choice(a, map_names, enc.config().num_heads);
  const std::vector<int32_t> ids = enc.token_ids(a.text);
  std::vector<std::string> tokens;
  for (int32_t id : ids) tokens.push_back(enc.tokenizer().token(id));
  const auto maps = enc.attention_maps(a.text);
  Report r;
  r.title = "attn viz: \"" + a.text + "\" through " + dir;  // (the last folder alone was "model" for MiniLM's)
  r.intro = {"Multi-head self-attention of every layer (" + std::to_string(enc.config().num_layers) + " layers x " +
                 std::to_string(enc.config().num_heads) +
                 " heads) of a pretrained BERT encoder, exact weights. Rows are "
                 "queries, columns keys; hover a cell, click a token to highlight what it attends to.",
             "Model: " + dir};
  // the model reads at most max_seq_length tokens: a longer text is cut there, as embed() cuts it; said, not silent
  if (static_cast<int64_t>(ids.size()) >= enc.max_seq_length()) {
    const std::string cut = "the text fills the model's " + std::to_string(enc.max_seq_length()) +
                            " tokens (max_seq_length): anything past them was cut, as attn embed cuts it";
    std::cerr << "attn: warning: " << cut << "\n";
    r.intro.push_back("Note: " + cut + ".");
  }
  for (int64_t l = 0; l < enc.config().num_layers; ++l) {
    const Tensor& w = maps.at("encoder.layer." + std::to_string(l) + ".attention");
    r.maps.push_back({"Encoder self-attention", "layer " + std::to_string(l), tokens, tokens,
                      w.reshape({w.dim(1), w.dim(2), w.dim(3)}),
                      "Q, K, V from the same WordPiece tokens ([CLS] ... [SEP])."});
  }
  write_viz_outputs(a, r, maps, "encoder.layer.0.attention", 16);
  std::cout << tokens.size() << " tokens";
  if (!a.out.empty()) std::cout << ", " << r.maps.size() << " layers drawn";
  std::cout << "\n";
}

void run_viz(const VizArgs& a, const CLI::App& sub) {
  if (a.out.empty() && a.png.empty()) throw ArgumentError("give --out FILE.html and/or --png FILE.png");
  // options that would do nothing are refused, not ignored
  if (a.png.empty() && (sub.count("--png-map") > 0 || sub.count("--png-head") > 0))
    throw ArgumentError("--png-map and --png-head choose the map of --png FILE.png: give --png");
  io::check_output_paths({{"--out", a.out}, {"--png", a.png}});  // before any work: neither a directory
  if (sub.count("--random-map") > 0) {
    if (!a.text.empty() || !a.model.empty() || sub.count("--beam") > 0)
      throw ArgumentError("--random-map draws a random map: no text, --model or --beam");
    return write_random_map(a, a.random_map);
  }
  if (a.text.find_first_not_of(" \t\n\r\f\v") == std::string::npos)  // (whitespace alone had drawn [CLS] [SEP])
    throw ArgumentError(
        "give the text: to translate, e.g. attn viz \"three hundred twelve\" --out viz.html, or to "
        "encode with a BERT --model");
  if (const auto why = utf8_problem(a.text)) throw ArgumentError("the text: " + *why);  // it goes into the page
  if (!a.model.empty() && (io::exists_or_unexaminable(a.model + "/vocab.txt") ||  // (the BERT loader names errors)
                           io::exists_or_unexaminable(a.model + "/modules.json"))) {
    if (sub.count("--beam") > 0) throw ArgumentError("--beam is for a translation model; " + a.model + " is BERT");
    return run_bert_viz(a, a.model);
  }
  const std::string dir = resolve_model_dir(a.model);
  Transformer model = Transformer::load(dir);
  const tasks::Vocab vocab = tasks::Vocab::load(dir);
  {
    const TransformerConfig& c = model.config();
    if (c.num_encoder_layers < 1 || c.num_decoder_layers < 1)  // (the default map, and the maps' forward, need both)
      throw ArgumentError("viz draws a model of at least one encoder and one decoder layer; " + dir + " has " +
                          std::to_string(c.num_encoder_layers) + " and " + std::to_string(c.num_decoder_layers));
    std::vector<std::string> map_names;
    for (int64_t l = 0; l < c.num_encoder_layers; ++l)
      map_names.push_back("encoder.layers." + std::to_string(l) + ".self_attn");
    for (int64_t l = 0; l < c.num_decoder_layers; ++l)
      for (const char* kind : {".self_attn", ".multihead_attn"})
        map_names.push_back("decoder.layers." + std::to_string(l) + kind);
    check_png_choice(a, map_names, c.num_heads);
  }
  const std::string text = tasks::normalize_source(a.text);
  const std::vector<int32_t> src_ids = vocab.encode_source(text, model.config().max_len);
  if (const std::optional<std::string> why = tasks::grammar_problem(text))  // as attn translate warns it
    std::cerr << "attn: warning: " << terminal_safe(*why)
              << "; translated anyway, but the model never saw such a phrase\n";
  const std::string translation = translate_one(model, vocab, text, a.beam);
  // teacher-forced pass over (source, BOS + translation): the maps of exactly this translation
  std::vector<int32_t> tgt = {model.config().bos_id};
  for (int32_t id : vocab.encode_target(translation)) tgt.push_back(id);
  // a translation cut at max_len (no EOS in time) was fed back without its last token: max_len tokens in all (one
  // more had been refused by the forward, where attn translate had printed it)
  if (static_cast<int64_t>(tgt.size()) > model.config().max_len)
    tgt.resize(static_cast<size_t>(model.config().max_len));
  const TokenBatch src{src_ids, 1, static_cast<int64_t>(src_ids.size())};
  const TokenBatch tgt_in{tgt, 1, static_cast<int64_t>(tgt.size())};
  model.forward(src, tgt_in);
  const auto maps = model.attention_maps();
  std::vector<std::string> src_tok, tgt_tok;
  for (int32_t id : src_ids) src_tok.push_back(vocab.src[static_cast<size_t>(id)]);
  for (int32_t id : tgt) tgt_tok.push_back(vocab.tgt[static_cast<size_t>(id)]);
  const TransformerConfig& c = model.config();
  Report r;
  r.title = "attn viz: \"" + text + "\" -> " + translation;
  r.intro = {"Every attention map of the model (" + std::to_string(c.num_encoder_layers) + " encoder and " +
                 std::to_string(c.num_decoder_layers) + " decoder layers, " + std::to_string(c.num_heads) +
                 " heads each) for this translation, as computed (exact weights). Rows are queries, columns keys; "
                 "each row sums to 1. Hover a cell for its weight; click a row or a query token to highlight what it "
                 "attends to.",
             "Model: " + dir};
  auto head_view = [](const Tensor& t) {
    return t.reshape({t.dim(1), t.dim(2), t.dim(3)});
  };  // [1, H, Lq, Lk] -> [H, Lq, Lk]
  for (int64_t l = 0; l < c.num_encoder_layers; ++l)
    r.maps.push_back({"Encoder self-attention", "layer " + std::to_string(l), src_tok, src_tok,
                      head_view(maps.at("encoder.layers." + std::to_string(l) + ".self_attn")),
                      "Q, K, V all from the source (English words); padding masked. [" +
                          std::to_string(src_tok.size()) + " x " + std::to_string(src_tok.size()) + "] per head."});
  for (int64_t l = 0; l < c.num_decoder_layers; ++l)
    r.maps.push_back(
        {"Decoder masked self-attention", "layer " + std::to_string(l), tgt_tok, tgt_tok,
         head_view(maps.at("decoder.layers." + std::to_string(l) + ".self_attn")),
         "Q, K, V from the target so far; the causal mask hides the future, so the map is lower-triangular."});
  for (int64_t l = 0; l < c.num_decoder_layers; ++l)
    r.maps.push_back(
        {"Decoder cross-attention", "layer " + std::to_string(l), tgt_tok, src_tok,
         head_view(maps.at("decoder.layers." + std::to_string(l) + ".multihead_attn")),
         "Q from the decoder (Chinese characters), K and V from the encoder's output (English words): which "
         "source words each output position looked at."});
  write_viz_outputs(a, r, maps, "decoder.layers.0.multihead_attn", 24);
  std::cout << translation << "\n";
}

}  // namespace

void add_viz(CLI::App& app) {
  auto a = std::make_shared<VizArgs>();
  CLI::App* sub =
      app.add_subcommand("viz",
                         "Translate a sentence and draw every attention map (encoder self, decoder masked self, "
                         "cross) of every layer and head as one self-contained HTML page, or one map as a PNG");
  sub->add_option("text", a->text, "the sentence, e.g. \"three hundred twelve\"");
  sub->add_option(
      "--model", a->model,
      "model directory: an attn translation model (default: the shipped one), or a Hugging Face "
      "BERT directory (vocab.txt, or a sentence-transformers modules.json; e.g. all-MiniLM-L6-v2) to draw its "
      "self-attention");
  sub->add_option("--out", a->out, "the HTML page to write (opens offline: inline canvas and JavaScript)");
  sub->add_option("--png", a->png, "write one map as a PNG heatmap (with or without --out)");
  sub->add_option("--png-map", a->png_map,
                  "which map for --png, e.g. encoder.layers.0.self_attn, decoder.layers.1.self_attn, "
                  "decoder.layers.0.multihead_attn (the default for a translation model), encoder.layer.L.attention "
                  "(BERT; default L = 0)");
  sub->add_option("--png-head", a->png_head, "which head for --png (0-based); default: the average of all heads")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--beam", a->beam, "beam width for the translation")->check(CLI::Range(1, 64));
  sub->add_option("--random-map", a->random_map,
                  "instead of a sentence: a random N x N causal map, N in [1, 8192] (checks that long inputs stay "
                  "usable); no text, --model or --beam with it");
  sub->callback([a, sub] { run_viz(*a, *sub); });
}

}  // namespace attn::cli
