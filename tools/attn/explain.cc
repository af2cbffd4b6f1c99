// attn explain: a walk-through of the five attention mechanisms on a tiny translation example,
// computed by the library itself (scaled_dot_product_attention and MultiHeadAttention).
#include <cmath>
#include <iostream>
#include <memory>
#include <random>

#include "attn/attention.h"
#include "attn/io/file.h"
#include "attn/layers/multi_head_attention.h"
#include "common.h"
#include "html_report.h"

namespace attn::cli {
namespace {

constexpr int64_t kE = 4;  // embedding size of the toy example

// A fixed toy embedding per token (seeded by the token's text), plus a sinusoidal position code.
Tensor embed(const std::vector<std::string>& tokens) {
  const int64_t L = static_cast<int64_t>(tokens.size());
  Tensor x({1, L, kE});
  for (int64_t i = 0; i < L; ++i) {
    std::seed_seq seed(tokens[static_cast<size_t>(i)].begin(), tokens[static_cast<size_t>(i)].end());
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t d = 0; d < kE; ++d) {
      const double angle = static_cast<double>(i) / std::pow(10000.0, static_cast<double>(d / 2 * 2) / kE);
      x.f32()[i * kE + d] = dist(rng) + static_cast<float>(d % 2 ? std::cos(angle) : std::sin(angle));
    }
  }
  return x;
}

void heading(int n, const std::string& title) {
  std::cout << "\n" << n << ". " << title << "\n" << std::string(60, '-') << "\n";
}

void line(const std::string& s) { std::cout << "   " << s << "\n"; }

// q, k, v: [1, 1, L, kE] views of the toy sequences
Tensor as_heads(const Tensor& x) { return x.reshape({1, 1, x.dim(1), x.dim(2)}); }

void run_explain(const std::string& html) {
  io::check_output_paths({{"--html", html}});  // before the walk-through prints, not after it
  Report report;
  report.title = "attn explain: the five attention mechanisms on a toy translation";
  report.intro = {
      "Source (English, the encoder's input): I love you. Target (Chinese, the decoder's input): <s> 我 爱 你. "
      "Every token is a vector of E = 4 numbers. All five mechanisms compute softmax(Q·Kᵀ/√d + M)·V and differ only in "
      "where Q, K and V come from and what the mask M hides. Rows are queries, columns keys; each row sums to 1."};
  auto add = [&](const std::string& section, const std::vector<std::string>& rows, const std::vector<std::string>& cols,
                 const Tensor& w, const std::string& note) {
    report.maps.push_back({section, "weights", rows, cols,
                           w.reshape({w.numel() / (static_cast<int64_t>(rows.size() * cols.size())),
                                      static_cast<int64_t>(rows.size()), static_cast<int64_t>(cols.size())}),
                           note});
  };
  const std::vector<std::string> src = {"I", "love", "you"};
  const std::vector<std::string> tgt = {"<s>", "我", "爱", "你"};
  const Tensor x_src = embed(src), x_tgt = embed(tgt);
  const int64_t Ls = 3, Lt = 4;

  std::cout << "attn explain: the Transformer attention family on a toy translation\n"
               "  source (English, the encoder's input):  I love you          Ls = 3 tokens\n"
               "  target (Chinese, the decoder's input): <s> 我 爱 你          Lt = 4 tokens\n"
               "  every token is a vector of E = 4 numbers (a toy embedding plus its position code)\n\n"
               "  All five mechanisms compute the same formula,\n"
               "      Attention(Q, K, V) = softmax(Q·Kᵀ / √d + M) · V\n"
               "  and differ only in where Q, K and V come from and in what the mask M hides.\n"
               "  Each weight row below says how much one query position takes from each key position;\n"
               "  every row sums to 1, and a masked position gets exactly 0.\n";

  // 1. attention
  heading(1, "Attention (scaled dot-product): Q, K, V may come from any sequences");
  line("Here Q is the target sequence as it is, K = V = the source sequence as it is (no learned weights).");
  line("Q [B=1, H=1, Lq=4, D=4]   K [1, 1, Lk=3, 4]   V [1, 1, 3, Dv=4]");
  line("scores = Q·Kᵀ / √4 : [1, 1, 4, 3]   weights = softmax(scores) : [1, 1, 4, 3]   out = weights·V : [1, 1, 4, 4]");
  AttentionOptions opt;
  opt.return_weights = true;
  AttentionResult r = scaled_dot_product_attention(as_heads(x_tgt), as_heads(x_src), as_heads(x_src), opt);
  line("weights (rows: queries, columns: keys):");
  print_weight_matrix(r.weights.f32(), Lt, Ls, tgt, src);
  add("1. Attention (scaled dot-product)", tgt, src, r.weights,
      "Q = the target as it is, K = V = the source as it is. Q [1, 1, 4, 4], K [1, 1, 3, 4], V [1, 1, 3, 4] -> out [1, "
      "1, 4, 4]. No mask.");
  line(
      "C++: attn::scaled_dot_product_attention(q, k, v, options)   CLI: attn sdpa --q Q.npy --k K.npy --v V.npy --out "
      "O.npy");

  // 2. self-attention
  heading(2, "Self-attention: Q, K, V all from the same sequence X, through learned W_Q, W_K, W_V");
  MultiHeadAttentionConfig one_head;
  one_head.embed_dim = kE;
  one_head.num_heads = 1;
  const MultiHeadAttention sa(one_head, 11);
  line("X = the source [B=1, L=3, E=4]");
  line("Q = X·W_Qᵀ, K = X·W_Kᵀ, V = X·W_Vᵀ : each [1, 3, 4]    (W_Q, W_K, W_V : [4, 4])");
  line("weights = softmax(Q·Kᵀ / √4) : [1, 3, 3]   out = weights·V, then ·W_Oᵀ : [1, 3, 4]");
  MhaOptions mo;
  mo.need_weights = true;
  MhaOutput o = sa.self_attention(x_src, mo);
  line("weights (each source word against every source word):");
  print_weight_matrix(o.weights.f32(), Ls, Ls, src, src);
  add("2. Self-attention", src, src, o.weights,
      "Q = X·W_Qᵀ, K = X·W_Kᵀ, V = X·W_Vᵀ from the same X [1, 3, 4]; weights [1, 3, 3]. No mask.");
  line("Without position codes self-attention is order-blind: permuting the tokens permutes the output rows.");
  line("C++: mha.self_attention(x)   CLI: attn mha --weights W.safetensors --num-heads 1 --query X.npy --out O.npy");

  // 3. multi-head self-attention
  heading(3, "Multi-head self-attention: H heads in parallel subspaces, concatenated, then W_O");
  MultiHeadAttentionConfig two_heads;
  two_heads.embed_dim = kE;
  two_heads.num_heads = 2;
  const MultiHeadAttention mha(two_heads, 12);
  line("E = 4 split into H = 2 heads of Dh = 2:  Q, K, V : [1, 3, 4] viewed as [B=1, L=3, H=2, Dh=2]");
  line("each head: softmax(Q_h·K_hᵀ / √2) · V_h : [1, 3, 2];  concat over heads : [1, 3, 4];  ·W_Oᵀ : [1, 3, 4]");
  mo.average_attn_weights = false;
  o = mha.self_attention(x_src, mo);
  for (int h = 0; h < 2; ++h) {
    line("head " + std::to_string(h) + " weights:");
    print_weight_matrix(o.weights.f32() + h * Ls * Ls, Ls, Ls, src, src);
  }
  add("3. Multi-head self-attention", src, src, o.weights,
      "E = 4 split into 2 heads of 2: Q, K, V [1, 3, 2, 2]; per-head weights [1, 2, 3, 3]; heads concatenated, then "
      "W_O.");
  line("The heads look at different relations; every encoder and decoder layer has one of these.");
  line("C++: MultiHeadAttention({.embed_dim = E, .num_heads = H})   CLI: attn mha --num-heads H ...");

  // 4. cross-attention
  heading(4, "Cross-attention: Q from the decoder, K and V from the encoder's output");
  const MultiHeadAttention ca(two_heads, 13);
  line("decoder states [1, Lt=4, 4] -> Q [1, 4, 4];  encoder output [1, Ls=3, 4] -> K, V [1, 3, 4]");
  line("weights : [1, H=2, 4, 3] (target × source), averaged over heads : [1, 4, 3];  out : [1, 4, 4]");
  line("The output has the decoder's length (4), not the encoder's (3).");
  mo.average_attn_weights = true;
  o = ca.cross_attention(x_tgt, x_src, mo);
  line("weights averaged over heads (each Chinese token consults the English words):");
  print_weight_matrix(o.weights.f32(), Lt, Ls, tgt, src);
  {
    MhaOptions per_head = mo;
    per_head.average_attn_weights = false;
    add("4. Cross-attention", tgt, src, ca.cross_attention(x_tgt, x_src, per_head).weights,
        "Q from the decoder [1, 4, 4], K and V from the encoder output [1, 3, 4]; weights [1, 2, 4, 3]: target x "
        "source.");
  }
  line("C++: mha.cross_attention(x, memory)   CLI: attn mha ... --query DEC.npy --key ENC.npy --value ENC.npy");

  // 5. masked self-attention
  heading(5, "Masked self-attention: self-attention plus a causal mask; no position sees the future");
  line("X = the target [1, 4, 4];  M [4, 4]: 0 on and below the diagonal, -inf above it:");
  for (int64_t i = 0; i < Lt; ++i) {
    std::string row = "     " + pad(tgt[static_cast<size_t>(i)], 6);
    for (int64_t j = 0; j < Lt; ++j) row += j <= i ? "     0" : "  -inf";
    line(row);
  }
  line("softmax turns -inf into weight 0: the weight matrix is lower-triangular.");
  o = mha.masked_self_attention(x_tgt, mo);
  print_weight_matrix(o.weights.f32(), Lt, Lt, tgt, tgt);
  {
    MhaOptions per_head = mo;
    per_head.average_attn_weights = false;
    add("5. Masked self-attention", tgt, tgt, mha.masked_self_attention(x_tgt, per_head).weights,
        "Self-attention over the target [1, 4, 4] with a causal mask M: 0 on and below the diagonal, -inf above, so "
        "the "
        "weights are lower-triangular: no position sees the future.");
  }
  line("Training feeds the whole target at once and the mask keeps it honest; generation adds one token");
  line("at a time, and what was computed for earlier positions never changes (a KV cache reuses it).");
  line("C++: mha.masked_self_attention(x)   CLI: attn mha ... --causal   or   attn sdpa ... --causal top-left");

  std::cout << "\nThe family at a glance\n" << std::string(60, '-') << "\n";
  const std::vector<std::vector<std::string>> table = {
      {"mechanism", "Q / K / V", "what it does", "where it sits"},
      {"attention", "any sequences", "the general weighted sum", "the building block"},
      {"self-attention", "Q=K=V=X via W_Q,W_K,W_V", "relations inside one sequence", "encoder and decoder"},
      {"multi-head self-attn", "as above, split into heads", "several subspaces at once",
       "every encoder/decoder layer"},
      {"cross-attention", "Q: decoder, K/V: encoder", "the decoder consults the source", "decoder, after masked self"},
      {"masked self-attention", "as self-attn + causal mask", "no peeking at the future", "decoder, first sub-layer"},
  };
  std::vector<int> widths(4, 0);
  for (const auto& row : table)
    for (size_t c = 0; c < 4; ++c) widths[c] = std::max(widths[c], display_width(row[c]));
  for (size_t t = 0; t < table.size(); ++t) {
    std::string out = "  ";
    for (size_t c = 0; c < 4; ++c) out += pad(table[t][c], widths[c]) + (c + 1 < 4 ? " | " : "");
    std::cout << out << "\n";
    if (t == 0) {
      std::string rule = "  ";
      for (size_t c = 0; c < 4; ++c)
        rule += std::string(static_cast<size_t>(widths[c]), '-') + (c + 1 < 4 ? "-+-" : "");
      std::cout << rule << "\n";
    }
  }
  std::cout << "\nEncoder layer: multi-head self-attention -> feed-forward.\n"
               "Decoder layer: masked multi-head self-attention -> cross-attention over the encoder -> feed-forward.\n";
  if (!html.empty()) {
    write_html_report(html, report);
    std::cout << "\nwrote " << html << "\n";
  }
}

}  // namespace

void add_explain(CLI::App& app) {
  CLI::App* sub = app.add_subcommand(
      "explain", "Walk through the five attention mechanisms on a tiny example, with shapes, masks and weight maps");
  auto html = std::make_shared<std::string>();
  sub->add_option("--html", *html, "also write the walk-through as a self-contained HTML page with every weight map");
  sub->callback([html] { run_explain(*html); });
}

}  // namespace attn::cli
