// Greedy and beam search over a StepDecoder (attn/generation.h).
#include "attn/generation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>

#include "attn/error.h"
#include "ops/nn.h"

namespace attn {
namespace {

float gnmt_penalty(int64_t len, float alpha) {
  return alpha == 0.0f ? 1.0f : std::pow((5.0f + static_cast<float>(len)) / 6.0f, alpha);
}

// Ahead in the ranking of candidates: the higher score; a NaN score (a model that produced NaN) after every number.
bool ahead(float a, float z) { return !std::isnan(a) && (std::isnan(z) || a > z); }

using Candidate = std::tuple<float, int64_t, int32_t>;  // (score, row, token)

// a ranks before z: by score (ahead), then the one met first (row by row, token by token)
bool ranks_before(const Candidate& a, const Candidate& z) {
  const float sa = std::get<0>(a), sz = std::get<0>(z);
  if (ahead(sa, sz) || ahead(sz, sa)) return ahead(sa, sz);
  return std::tie(std::get<1>(a), std::get<2>(a)) < std::tie(std::get<1>(z), std::get<2>(z));
}

// best = the `count` best candidates of rows [row0, row0 + K) of logits [·, V] (log-probabilities; score = logp[row] +
// logits[row, token]), best first (ranks_before), over the tokens `candidate` allows and the rows whose logp is not
// −inf. One pass with the kept ones in a heap whose top is the worst kept: it had collected all K·V candidates and
// partially sorted them (2 MB and a sort per sentence and step at V = 32000, K = 4).
void select_best(std::vector<Candidate>& best, const float* logits, const std::vector<float>& logp,
                 const std::vector<bool>& candidate, int64_t row0, int64_t K, int64_t V, int64_t count) {
  best.clear();
  for (int64_t n = row0; n < row0 + K; ++n) {
    const float base = logp[static_cast<size_t>(n)];
    if (base == -std::numeric_limits<float>::infinity()) continue;
    const float* row = logits + n * V;
    for (int64_t v = 0; v < V; ++v) {
      const Candidate c{base + row[v], n, static_cast<int32_t>(v)};
      const bool full = static_cast<int64_t>(best.size()) == count;
      if ((full && !ranks_before(c, best.front())) || !candidate[static_cast<size_t>(v)]) continue;
      if (full) std::pop_heap(best.begin(), best.end(), ranks_before), best.pop_back();
      best.push_back(c);
      std::push_heap(best.begin(), best.end(), ranks_before);
    }
  }
  std::sort_heap(best.begin(), best.end(), ranks_before);  // best first
}

struct Hypothesis {
  std::vector<int32_t> tokens;
  float score;    // log-probability / length penalty
  bool complete;  // ended by EOS; else cut at the sentence's last position, where its EOS was never scored
};

// The one to return: a complete hypothesis before any cut one (a cut hypothesis never paid for its EOS, so its score
// would flatter it: a truncated output had beaten a whole translation that fit), then the higher score.
bool worse(const Hypothesis& a, const Hypothesis& z) {
  return a.complete != z.complete ? !a.complete : a.score < z.score;
}

// src's sizes, checked before anything is sized by them (a B of -1 or 2^40 had reached the allocations first)
void check_source_sizes(const char* who, const TokenBatch& src) {
  if (src.B < 0 || src.L < 0 || (src.B > 0 && src.L == 0) ||
      (src.L > 0 && src.B > static_cast<int64_t>(src.ids.size()) / src.L) ||
      static_cast<int64_t>(src.ids.size()) != src.B * src.L)
    throw ShapeError(std::string(who) + ": src is [B = " + std::to_string(src.B) + ", L = " + std::to_string(src.L) +
                     "] with " + std::to_string(src.ids.size()) + " ids");
}

int64_t positions_for(const Transformer& model, int64_t max_length) {
  if (max_length < 0) throw ArgumentError("generate: max_length must be >= 0, got " + std::to_string(max_length));
  return max_length > 0 ? std::min(max_length, model.config().max_len) : model.config().max_len;
}

// Beam search (K = 1: greedy) for the B sentences of `decoder`; sentence b decodes at most limit[b]
// positions, the decoder runs to the largest. Finished sentences leave the decoder's batch (StepDecoder::
// retain): the decoder holds the live ones in slots, sentence[s] being the one in slot s, with its K
// hypotheses in rows s·K .. s·K + K − 1.
std::vector<std::vector<int32_t>> beam_search(StepDecoder& decoder, const TransformerConfig& c, int64_t B, int64_t K,
                                              const std::vector<int64_t>& limit, float length_penalty,
                                              const std::vector<int32_t>& suppress) {
  const int64_t V = decoder.vocab_size(), T = *std::max_element(limit.begin(), limit.end());
  std::vector<bool> candidate(static_cast<size_t>(V), true);  // [V]: may be chosen
  candidate[static_cast<size_t>(c.pad_id)] = candidate[static_cast<size_t>(c.bos_id)] = false;
  for (int32_t v : suppress) candidate[static_cast<size_t>(v)] = false;
  const float kNegInf = -std::numeric_limits<float>::infinity();
  int64_t live = B;                                       // sentences in the decoder
  std::vector<int64_t> sentence(static_cast<size_t>(B));  // [live]: slot -> sentence
  std::iota(sentence.begin(), sentence.end(), int64_t{0});
  // per row of the decoder [live·K]: current token, log-probability, output so far
  std::vector<int32_t> tokens(static_cast<size_t>(B * K), c.bos_id);
  std::vector<float> logp(static_cast<size_t>(B * K), kNegInf);
  for (int64_t b = 0; b < B; ++b) logp[static_cast<size_t>(b * K)] = 0.0f;  // one live beam to start: no duplicates
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(B * K));
  std::vector<std::vector<Hypothesis>> finished(static_cast<size_t>(B));
  std::vector<bool> done(static_cast<size_t>(B), false);
  std::vector<int64_t> parent;
  std::vector<std::vector<int32_t>> next_seqs;
  std::vector<float> next_logp;
  std::vector<int32_t> next_tokens;
  std::vector<Candidate> cand;

  for (int64_t t = 0; t < T && live > 0; ++t) {
    const int64_t N = live * K;
    float* logits = decoder.step(tokens.data(), t);  // [N, V] -> log-probabilities in place
    ops::log_softmax_rows(logits, N, V);
    parent.resize(static_cast<size_t>(N));
    std::iota(parent.begin(), parent.end(), int64_t{0});
    next_seqs.assign(static_cast<size_t>(N), {});
    next_logp.assign(static_cast<size_t>(N), kNegInf);
    next_tokens.assign(static_cast<size_t>(N), c.pad_id);
    int64_t ended = 0;
    for (int64_t s = 0; s < live; ++s) {
      const int64_t b = sentence[static_cast<size_t>(s)];
      const int64_t Tb = limit[static_cast<size_t>(b)];
      const bool last = t + 1 == Tb;  // the sentence's last position: every candidate ends here
      // candidates: the 2K best (score, row, token) over the sentence's K beams, best first
      select_best(cand, logits, logp, candidate, s * K, K, V, 2 * K);
      const size_t keep = cand.size();
      int64_t filled = 0;
      for (size_t i = 0; i < keep && filled < K; ++i) {
        const auto [score, n, v] = cand[i];
        if (v == c.eos_id || last) {
          // an ending (EOS, or a cut at the last position) counts only if it ranks among the K best
          // continuations; weaker candidates would otherwise fill the finished list with early stops
          if (static_cast<int64_t>(i) >= K) continue;
          std::vector<int32_t> out = seqs[static_cast<size_t>(n)];
          if (v != c.eos_id) out.push_back(v);
          finished[static_cast<size_t>(b)].push_back(
              {out, score / gnmt_penalty(static_cast<int64_t>(out.size()) + 1, length_penalty), v == c.eos_id});
          continue;
        }
        const int64_t row = s * K + filled++;
        parent[static_cast<size_t>(row)] = n;
        next_seqs[static_cast<size_t>(row)] = seqs[static_cast<size_t>(n)];
        next_seqs[static_cast<size_t>(row)].push_back(v);
        next_logp[static_cast<size_t>(row)] = score;
        next_tokens[static_cast<size_t>(row)] = v;
      }
      // Done when no live beam can still beat the best finished hypothesis: a live beam's log-probability
      // only falls, and its length penalty is at most the one of the longest output: Tb tokens cut at the
      // last position, scored as Tb + 1 (an ending's EOS counts).
      // Beam 1 is greedy: its sentence ends at its first EOS, whatever the length penalty (the runner-up token had
      // carried on where greedy stops).
      float best_finished = kNegInf, best_alive = kNegInf;
      for (const Hypothesis& h : finished[static_cast<size_t>(b)])
        if (h.complete) best_finished = std::max(best_finished, h.score);
      for (int64_t k = 0; k < filled; ++k) best_alive = std::max(best_alive, next_logp[static_cast<size_t>(s * K + k)]);
      const float alive_bound = best_alive / gnmt_penalty(length_penalty > 0.0f ? Tb + 1 : t + 2, length_penalty);
      if (filled == 0 || best_finished >= alive_bound || (K == 1 && best_finished > kNegInf))
        done[static_cast<size_t>(b)] = true, ++ended;
    }
    if (ended == live) break;
    // the decoder state follows the reselected hypotheses (positions 0..t)
    bool moved = false;
    for (int64_t n = 0; n < N; ++n) moved |= parent[static_cast<size_t>(n)] != n;
    if (moved) decoder.reorder(parent, t);
    seqs.swap(next_seqs);
    logp.swap(next_logp);
    tokens.swap(next_tokens);
    if (ended == 0) continue;
    // Finished sentences leave the batch: the last live sentences move into their slots.
    std::vector<int64_t> keep_slots;  // new slot i continues old slot keep_slots[i]
    const auto is_done = [&](int64_t slot) { return done[static_cast<size_t>(sentence[static_cast<size_t>(slot)])]; };
    for (int64_t s = 0, end = live; s < end; ++s) {
      if (!is_done(s)) {
        keep_slots.push_back(s);
        continue;
      }
      while (end > s + 1 && is_done(end - 1)) --end;  // the last live slot after s fills the hole
      if (end == s + 1) break;
      keep_slots.push_back(--end);
    }
    const int64_t kept = static_cast<int64_t>(keep_slots.size());
    decoder.retain(keep_slots);
    for (int64_t i = 0; i < kept; ++i) {
      const int64_t from = keep_slots[static_cast<size_t>(i)];
      if (from == i) continue;
      sentence[static_cast<size_t>(i)] = sentence[static_cast<size_t>(from)];
      for (int64_t k = 0; k < K; ++k) {
        const size_t dst = static_cast<size_t>(i * K + k), src = static_cast<size_t>(from * K + k);
        tokens[dst] = tokens[src], logp[dst] = logp[src];
        seqs[dst].swap(seqs[src]);
      }
    }
    live = kept;
  }
  std::vector<std::vector<int32_t>> best(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& f = finished[static_cast<size_t>(b)];
    if (f.empty()) continue;
    best[static_cast<size_t>(b)] = std::max_element(f.begin(), f.end(), worse)->tokens;
  }
  return best;
}

}  // namespace

std::vector<std::vector<int32_t>> generate(const Transformer& model, const TokenBatch& src,
                                           const GenerationOptions& options) {
  if (options.beam < 1 || options.beam > kMaxBeam)
    throw ArgumentError("generate: beam must be in [1, " + std::to_string(kMaxBeam) + "], got " +
                        std::to_string(options.beam));
  if (!std::isfinite(options.length_penalty))  // NaN had made every score NaN: no early stop, the first hypothesis
    throw ArgumentError("generate: length_penalty must be finite, got " + std::to_string(options.length_penalty));
  check_source_sizes("generate", src);
  if (src.B == 0) return {};  // nothing to decode (the longest limit of no sentence had been read past the end)
  for (int32_t v : options.suppress_tokens)
    if (v < 0 || v >= model.config().tgt_vocab)
      throw ArgumentError("generate: suppress_tokens holds " + std::to_string(v) +
                          ", outside [0, tgt_vocab = " + std::to_string(model.config().tgt_vocab) + ")");
  std::vector<int64_t> limit(static_cast<size_t>(src.B), positions_for(model, options.max_length));
  if (!options.max_lengths.empty()) {
    if (static_cast<int64_t>(options.max_lengths.size()) != src.B)
      throw ArgumentError("generate: max_lengths has " + std::to_string(options.max_lengths.size()) + " entries for " +
                          std::to_string(src.B) + " sentences");
    for (size_t b = 0; b < limit.size(); ++b) {
      if (options.max_lengths[b] < 1)
        throw ArgumentError("generate: max_lengths[" + std::to_string(b) + "] must be >= 1");
      limit[b] = positions_for(model, options.max_lengths[b]);
    }
  }
  const int64_t T = *std::max_element(limit.begin(), limit.end());
  const std::unique_ptr<StepDecoder> decoder = model.start_decoding(src, options.beam, T, options.kv_cache);
  return beam_search(*decoder, model.config(), src.B, options.beam, limit, options.length_penalty,
                     options.suppress_tokens);
}

namespace {
// The greedy references' choice: the first largest logit among the tokens generate() may choose, not <pad> or <bos>
// (a chosen <pad> would be fed back as a padded key, which the full recomputation hides and the cache does not: the
// two references had parted there).
int32_t greedy_choice(const float* row, int64_t V, const TransformerConfig& c) {
  int64_t best = -1;
  for (int64_t v = 0; v < V; ++v)
    if (v != c.pad_id && v != c.bos_id && (best < 0 || row[v] > row[best])) best = v;
  return static_cast<int32_t>(best < 0 ? 0 : best);
}
}  // namespace

std::vector<std::vector<int32_t>> generate_greedy_logits(const Transformer& model, const TokenBatch& src,
                                                         int64_t max_length,
                                                         std::vector<std::vector<float>>* step_logits) {
  const TransformerConfig& c = model.config();
  check_source_sizes("generate_greedy_logits", src);
  const int64_t B = src.B, V = c.tgt_vocab, T = positions_for(model, max_length);
  const std::unique_ptr<StepDecoder> decoder = model.start_decoding(src, 1, T);
  std::vector<int32_t> tokens(static_cast<size_t>(B), c.bos_id);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  if (step_logits) step_logits->assign(static_cast<size_t>(B), {});
  for (int64_t t = 0; t < T; ++t) {
    const float* logits = decoder->step(tokens.data(), t);
    for (int64_t b = 0; b < B; ++b) {
      const float* row = logits + b * V;
      if (step_logits)
        (*step_logits)[static_cast<size_t>(b)].insert((*step_logits)[static_cast<size_t>(b)].end(), row, row + V);
      tokens[static_cast<size_t>(b)] = greedy_choice(row, V, c);
      out[static_cast<size_t>(b)].push_back(tokens[static_cast<size_t>(b)]);
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> generate_full_recompute(const Transformer& model, const TokenBatch& src,
                                                          int64_t max_length,
                                                          std::vector<std::vector<float>>* step_logits) {
  const TransformerConfig& c = model.config();
  check_source_sizes("generate_full_recompute", src);
  const int64_t B = src.B, V = c.tgt_vocab, T = positions_for(model, max_length);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  if (step_logits) step_logits->assign(static_cast<size_t>(B), {});
  TokenBatch prefix{std::vector<int32_t>(static_cast<size_t>(B), c.bos_id), B, 1};
  for (int64_t t = 0; t < T; ++t) {
    const Tensor logits = model.logits(src, prefix);  // no cache across steps: the whole prefix again
    TokenBatch next{{}, B, prefix.L + 1};
    for (int64_t b = 0; b < B; ++b) {
      const float* row = logits.f32() + (b * prefix.L + prefix.L - 1) * V;
      if (step_logits)
        (*step_logits)[static_cast<size_t>(b)].insert((*step_logits)[static_cast<size_t>(b)].end(), row, row + V);
      const int32_t tok = greedy_choice(row, V, c);
      out[static_cast<size_t>(b)].push_back(tok);
      for (int64_t i = 0; i < prefix.L; ++i) next.ids.push_back(prefix.at(b, i));
      next.ids.push_back(tok);
    }
    prefix = std::move(next);
  }
  return out;
}

}  // namespace attn
