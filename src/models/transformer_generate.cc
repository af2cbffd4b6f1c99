// Inference: encode once, then decode one token at a time with
//   - a KV cache per decoder layer for masked self-attention, preallocated for max_len positions
//     ([N, max_len, E], N = sentences × beams) and written in place, never re-concatenated;
//   - the cross-attention K/V of each layer computed once from the encoder output ([B, Ls, E]) and
//     shared by every beam of a sentence: the K beams of sentence b are K query rows of one attention
//     problem over b's K/V, so nothing is copied per beam.
// Beam search keeps K hypotheses per sentence; when beams are reselected the caches are gathered into
// a second preallocated buffer and swapped.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attn/error.h"
#include "models/transformer_internal.h"

namespace attn {
namespace {

using models::Buf;
using models::grow;

float gnmt_penalty(int64_t len, float alpha) {
  return alpha == 0.0f ? 1.0f : std::pow((5.0f + static_cast<float>(len)) / 6.0f, alpha);
}

// Everything the incremental decoder needs, allocated once per generate() call.
struct DecodeState {
  int64_t B = 0, K = 0, N = 0, Ls = 0, T = 0, E = 0;
  std::vector<Buf> self_k, self_v, next_k, next_v;  // per layer [N, T, E]
  std::vector<Buf> cross_k, cross_v;                // per layer [B, Ls, E]
  std::vector<uint8_t> src_pad;                     // [B, Ls]
  Buf x, in, q, k, v, heads, sub, ffh, logits;      // per-step activations
};

// y = norm_first ? x + F(LN(x)) : LN(x + F(x)), in place on x; F writes its output into s.sub.
template <class F>
void sublayer(DecodeState& s, const models::LnWeights& ln, bool norm_first, int64_t M, F&& f) {
  const int64_t E = s.E;
  Buf mean(static_cast<size_t>(M)), rstd(static_cast<size_t>(M));
  const float* input = s.x.data();
  if (norm_first) {
    ops::layer_norm_forward(grow(s.in, M * E), mean.data(), rstd.data(), s.x.data(), ln.w, ln.b, M, E);
    input = s.in.data();
  }
  f(input, grow(s.sub, M * E));
  for (int64_t i = 0; i < M * E; ++i) s.x[static_cast<size_t>(i)] += s.sub[static_cast<size_t>(i)];
  if (!norm_first) {
    Buf r(s.x.begin(), s.x.begin() + M * E);
    ops::layer_norm_forward(s.x.data(), mean.data(), rstd.data(), r.data(), ln.w, ln.b, M, E);
  }
}

// One decoder step at position t for the N = B·K current tokens; leaves logits [N, V] in s.logits.
void decode_step(DecodeState& s, const models::Net& net, const int32_t* tokens, int64_t t) {
  const TransformerConfig& c = *net.c;
  const int64_t N = s.N, E = s.E, H = c.num_heads, T = s.T;
  models::embed_rows(grow(s.x, N * E), net, net.tgt_embed, tokens, N, t);
  for (size_t l = 0; l < net.dec.size(); ++l) {
    const models::DecoderLayerNet& w = net.dec[l];
    // masked self-attention: write k_t, v_t into the cache, attend over positions 0..t
    sublayer(s, w.norm1, c.norm_first, N, [&](const float* in, float* out) {
      ops::linear_forward(grow(s.q, N * E), in, w.sa.w_in, w.sa.b_in, N, E, E);
      ops::linear_forward(grow(s.k, N * E), in, w.sa.w_in + E * E, w.sa.b_in + E, N, E, E);
      ops::linear_forward(grow(s.v, N * E), in, w.sa.w_in + 2 * E * E, w.sa.b_in + 2 * E, N, E, E);
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(s.k.data() + n * E, E, s.self_k[l].data() + (n * T + t) * E);
        std::copy_n(s.v.data() + n * E, E, s.self_v[l].data() + (n * T + t) * E);
      }
      // the one new query sees every cached key; cache rows are T apart per hypothesis
      detail::AttentionProblem p = detail::interleaved_heads_problem(N, H, H, 1, t + 1, E / H, s.q.data(), s.self_k[l].data(),
                                                                     s.self_v[l].data(), grow(s.heads, N * E));
      p.k_sb = p.v_sb = T * E;
      detail::run_problem(p, AttentionImpl::kAuto);
      ops::linear_forward(out, s.heads.data(), w.sa.w_out, w.sa.b_out, N, E, E);
    });
    // cross-attention: the K beams of sentence b are K query rows over b's encoder K/V
    sublayer(s, w.norm2, c.norm_first, N, [&](const float* in, float* out) {
      ops::linear_forward(grow(s.q, N * E), in, w.ca.w_in, w.ca.b_in, N, E, E);
      detail::AttentionProblem p = detail::interleaved_heads_problem(s.B, H, H, s.K, s.Ls, E / H, s.q.data(), s.cross_k[l].data(),
                                                                     s.cross_v[l].data(), grow(s.heads, N * E));
      p.key_padding = s.src_pad.data();
      detail::run_problem(p, AttentionImpl::kAuto);
      ops::linear_forward(out, s.heads.data(), w.ca.w_out, w.ca.b_out, N, E, E);
    });
    // feed-forward
    sublayer(s, w.norm3, c.norm_first, N, [&](const float* in, float* out) {
      float* h = grow(s.ffh, N * c.d_ff);
      ops::linear_forward(h, in, w.ff.w1, w.ff.b1, N, c.d_ff, E);
      ops::activation_forward(h, h, N * c.d_ff, net.act());
      ops::linear_forward(out, h, w.ff.w2, w.ff.b2, N, E, c.d_ff);
    });
  }
  Buf mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N)), y(static_cast<size_t>(N * E));
  ops::layer_norm_forward(y.data(), mean.data(), rstd.data(), s.x.data(), net.dec_norm.w, net.dec_norm.b, N, E);
  ops::linear_forward(grow(s.logits, N * c.tgt_vocab), y.data(), net.gen_w, net.gen_b, N, c.tgt_vocab, E);
}

void log_softmax_rows(float* z, int64_t rows, int64_t V) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = z + r * V;
    const float m = *std::max_element(row, row + V);
    double s = 0.0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - m);
    const float lse = m + static_cast<float>(std::log(s));
    for (int64_t v = 0; v < V; ++v) row[v] -= lse;
  }
}

struct Hypothesis {
  std::vector<int32_t> tokens;
  float score;  // log-probability / length penalty
};

}  // namespace

namespace {
// Encodes src once and prepares the decoder: cross-attention K/V per layer from the encoder output
// (shared by the K beams of each sentence) and preallocated [B·K, T, E] self-attention caches.
DecodeState start_decoding(const Transformer& model, const models::Net& net, const TokenBatch& src, int64_t K, int64_t T,
                           bool spare_caches) {
  const int64_t B = src.B, E = model.config().d_model;
  DecodeState s;
  s.B = B, s.K = K, s.N = B * K, s.Ls = src.L, s.T = T, s.E = E;
  const Tensor mem = model.encode(src);
  models::padding_mask(s.src_pad, src, model.config().pad_id);
  for (const models::DecoderLayerNet& w : net.dec) {
    s.cross_k.emplace_back(static_cast<size_t>(B * src.L * E));
    s.cross_v.emplace_back(static_cast<size_t>(B * src.L * E));
    ops::linear_forward(s.cross_k.back().data(), mem.f32(), w.ca.w_in + E * E, w.ca.b_in + E, B * src.L, E, E);
    ops::linear_forward(s.cross_v.back().data(), mem.f32(), w.ca.w_in + 2 * E * E, w.ca.b_in + 2 * E, B * src.L, E, E);
    for (auto* cache : {&s.self_k, &s.self_v}) cache->emplace_back(static_cast<size_t>(s.N * T * E));
    if (spare_caches)
      for (auto* cache : {&s.next_k, &s.next_v}) cache->emplace_back(static_cast<size_t>(s.N * T * E));
  }
  return s;
}
}  // namespace

Tensor Transformer::encode(const TokenBatch& src) const {
  models::check_tokens(config_, src, config_.src_vocab, "src");
  TransformerCache k;
  models::encode_impl(config_, models::bind(config_, params_, nullptr), k, src, nullptr);
  Tensor mem({src.B, src.L, config_.d_model});
  std::copy_n(k.mem.data(), mem.numel(), mem.f32());
  return mem;
}

std::vector<std::vector<int32_t>> Transformer::generate(const TokenBatch& src, int beam, float length_penalty,
                                                        int64_t max_len) const {
  if (beam < 1) throw ArgumentError("generate: beam must be >= 1, got " + std::to_string(beam));
  const TransformerConfig& c = config_;
  models::check_tokens(c, src, c.src_vocab, "src");
  const models::Net net = models::bind(c, params_, nullptr);
  const int64_t B = src.B, K = beam, N = B * K, E = c.d_model, V = c.tgt_vocab;
  const int64_t T = max_len > 0 ? std::min(max_len, c.max_len) : c.max_len;  // positions, BOS included

  DecodeState s = start_decoding(*this, net, src, K, T, /*spare_caches=*/K > 1);

  const float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<int32_t> tokens(static_cast<size_t>(N), c.bos_id);
  std::vector<float> logp(static_cast<size_t>(N), kNegInf);
  for (int64_t b = 0; b < B; ++b) logp[static_cast<size_t>(b * K)] = 0.0f;  // one live beam to start: no duplicates
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(N));
  std::vector<std::vector<Hypothesis>> finished(static_cast<size_t>(B));
  std::vector<bool> done(static_cast<size_t>(B), false);

  for (int64_t t = 0; t < T; ++t) {
    decode_step(s, net, tokens.data(), t);
    log_softmax_rows(s.logits.data(), N, V);
    const bool last = t + 1 == T;
    std::vector<int64_t> parent(static_cast<size_t>(N));
    std::iota(parent.begin(), parent.end(), 0);
    std::vector<std::vector<int32_t>> next_seqs(static_cast<size_t>(N));
    std::vector<float> next_logp(static_cast<size_t>(N), kNegInf);
    std::vector<int32_t> next_tokens(static_cast<size_t>(N), c.pad_id);
    for (int64_t b = 0; b < B; ++b) {
      if (done[static_cast<size_t>(b)]) continue;
      // candidates: (score, beam, token) over the sentence's K beams
      std::vector<std::tuple<float, int64_t, int32_t>> cand;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t n = b * K + k;
        if (logp[static_cast<size_t>(n)] == kNegInf) continue;
        const float* row = s.logits.data() + n * V;
        for (int32_t v = 0; v < V; ++v)
          if (v != c.pad_id && v != c.bos_id) cand.emplace_back(logp[static_cast<size_t>(n)] + row[v], n, v);
      }
      const size_t keep = std::min<size_t>(cand.size(), static_cast<size_t>(2 * K));
      std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(keep), cand.end(),
                        [](const auto& a, const auto& z) { return std::get<0>(a) > std::get<0>(z); });
      int64_t filled = 0;
      for (size_t i = 0; i < keep && filled < K; ++i) {
        const auto [score, n, v] = cand[i];
        if (v == c.eos_id || last) {
          // an ending counts only if it ranks among the K best continuations; weaker EOS candidates
          // would otherwise fill the finished list with early stops
          if (v == c.eos_id && static_cast<int64_t>(i) >= K) continue;
          std::vector<int32_t> out = seqs[static_cast<size_t>(n)];
          if (v != c.eos_id) out.push_back(v);
          finished[static_cast<size_t>(b)].push_back({out, score / gnmt_penalty(static_cast<int64_t>(out.size()) + 1, length_penalty)});
          continue;
        }
        const int64_t slot = b * K + filled++;
        parent[static_cast<size_t>(slot)] = n;
        next_seqs[static_cast<size_t>(slot)] = seqs[static_cast<size_t>(n)];
        next_seqs[static_cast<size_t>(slot)].push_back(v);
        next_logp[static_cast<size_t>(slot)] = score;
        next_tokens[static_cast<size_t>(slot)] = v;
      }
      // Done when no live beam can still beat the best finished hypothesis: a live beam's log-probability
      // only falls, and its length penalty is at most the one of the longest output (T positions).
      float best_finished = kNegInf, best_alive = kNegInf;
      for (const Hypothesis& h : finished[static_cast<size_t>(b)]) best_finished = std::max(best_finished, h.score);
      for (int64_t k = 0; k < filled; ++k) best_alive = std::max(best_alive, next_logp[static_cast<size_t>(b * K + k)]);
      const float alive_bound = best_alive / gnmt_penalty(length_penalty > 0.0f ? T : t + 2, length_penalty);
      if (filled == 0 || best_finished >= alive_bound) done[static_cast<size_t>(b)] = true;
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
    // reorder the self-attention caches by parent beam (positions 0..t), into the spare buffers
    bool moved = false;
    for (int64_t n = 0; n < N; ++n) moved |= parent[static_cast<size_t>(n)] != n;
    if (moved)
      for (size_t l = 0; l < net.dec.size(); ++l) {
        for (int64_t n = 0; n < N; ++n) {
          const int64_t from = parent[static_cast<size_t>(n)];
          std::copy_n(s.self_k[l].data() + from * T * E, (t + 1) * E, s.next_k[l].data() + n * T * E);
          std::copy_n(s.self_v[l].data() + from * T * E, (t + 1) * E, s.next_v[l].data() + n * T * E);
        }
        s.self_k[l].swap(s.next_k[l]);
        s.self_v[l].swap(s.next_v[l]);
      }
    seqs.swap(next_seqs);
    logp.swap(next_logp);
    tokens.swap(next_tokens);
  }
  std::vector<std::vector<int32_t>> best(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& f = finished[static_cast<size_t>(b)];
    if (f.empty()) continue;
    best[static_cast<size_t>(b)] =
        std::max_element(f.begin(), f.end(), [](const Hypothesis& a, const Hypothesis& z) { return a.score < z.score; })->tokens;
  }
  return best;
}

std::vector<std::vector<int32_t>> Transformer::generate_greedy_logits(const TokenBatch& src, int64_t max_len,
                                                                      std::vector<std::vector<float>>* step_logits) const {
  // greedy with the cache, keeping each step's logits: the same decode_step as generate()
  const TransformerConfig& c = config_;
  models::check_tokens(c, src, c.src_vocab, "src");
  const models::Net net = models::bind(c, params_, nullptr);
  const int64_t B = src.B, V = c.tgt_vocab, T = std::min(max_len, c.max_len);
  DecodeState s = start_decoding(*this, net, src, 1, T, /*spare_caches=*/false);
  std::vector<int32_t> tokens(static_cast<size_t>(B), c.bos_id);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  if (step_logits) step_logits->assign(static_cast<size_t>(B), {});
  for (int64_t t = 0; t < T; ++t) {
    decode_step(s, net, tokens.data(), t);
    for (int64_t b = 0; b < B; ++b) {
      const float* row = s.logits.data() + b * V;
      if (step_logits) (*step_logits)[static_cast<size_t>(b)].insert((*step_logits)[static_cast<size_t>(b)].end(), row, row + V);
      tokens[static_cast<size_t>(b)] = static_cast<int32_t>(std::max_element(row, row + V) - row);
      out[static_cast<size_t>(b)].push_back(tokens[static_cast<size_t>(b)]);
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> Transformer::generate_full_recompute(const TokenBatch& src, int64_t max_len,
                                                                       std::vector<std::vector<float>>* step_logits) const {
  const TransformerConfig& c = config_;
  const int64_t B = src.B, V = c.tgt_vocab, T = std::min(max_len > 0 ? max_len : c.max_len, c.max_len);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  if (step_logits) step_logits->assign(static_cast<size_t>(B), {});
  TokenBatch prefix{std::vector<int32_t>(static_cast<size_t>(B), c.bos_id), B, 1};
  for (int64_t t = 0; t < T; ++t) {
    TransformerCache k;  // no cache across steps: the whole prefix again
    const Tensor logits = models::forward_impl(c, params_, nullptr, k, src, prefix, false, nullptr);
    TokenBatch next{{}, B, prefix.L + 1};
    for (int64_t b = 0; b < B; ++b) {
      const float* row = logits.f32() + (b * prefix.L + prefix.L - 1) * V;
      if (step_logits) (*step_logits)[static_cast<size_t>(b)].insert((*step_logits)[static_cast<size_t>(b)].end(), row, row + V);
      const int32_t tok = static_cast<int32_t>(std::max_element(row, row + V) - row);
      out[static_cast<size_t>(b)].push_back(tok);
      for (int64_t i = 0; i < prefix.L; ++i) next.ids.push_back(prefix.at(b, i));
      next.ids.push_back(tok);
    }
    prefix = std::move(next);
  }
  return out;
}

}  // namespace attn
