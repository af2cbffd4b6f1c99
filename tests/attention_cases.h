// One list of attention cases (ggml's test-backend-ops idea): the path tests run every case through
// every implementation against the reference; bench/ times the same cases.
#pragma once

#include <random>
#include <string>
#include <utility>
#include <vector>

#include "attn/attention.h"

namespace attn::test {

enum class MaskKind { kNone, kBool, kFloat, kBoolWithEmptyRows };

struct AttentionCase {
  int64_t B = 1, H = 1, Hkv = 1, Lq = 1, Lk = 1, D = 8, Dv = 8;
  MaskKind mask = MaskKind::kNone;
  // 2: [Lq, Lk], 3: [1, Lq, Lk] (broadcast over B and H), 4: [B, H, Lq, Lk], 5: [1, H, Lq, Lk] (over B),
  // 6: [B, 1, 1, Lk] (over H and the queries: a padding mask)
  int mask_rank = 4;
  bool key_padding = false;
  CausalAlignment causal = CausalAlignment::kNone;
  int64_t window = 0;
  bool alibi = false;
  bool weights = false;

  std::string name() const {
    static const char* masks[] = {"none", "bool", "float", "bool-empty-rows"};
    return std::string("B") + std::to_string(B) + " H" + std::to_string(H) + "/" + std::to_string(Hkv) + " Lq" +
           std::to_string(Lq) + " Lk" + std::to_string(Lk) + " D" + std::to_string(D) + " Dv" + std::to_string(Dv) +
           " mask=" + masks[static_cast<int>(mask)] + "/" + std::to_string(mask_rank) + (key_padding ? " kpm" : "") +
           " causal=" + causal_name(causal) + (window ? " window=" + std::to_string(window) : "") +
           (alibi ? " alibi" : "") + (weights ? " weights" : "");
  }
};

struct CaseInputs {
  Tensor q, k, v;
  AttentionOptions options;
};

inline CaseInputs make_inputs(const AttentionCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto fill = [&](Shape s) {
    Tensor t(std::move(s));
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = u(rng);
    return t;
  };
  CaseInputs in;
  in.q = fill({c.B, c.H, c.Lq, c.D});
  in.k = fill({c.B, c.Hkv, c.Lk, c.D});
  in.v = fill({c.B, c.Hkv, c.Lk, c.Dv});
  Shape ms = c.mask_rank == 2   ? Shape{c.Lq, c.Lk}
             : c.mask_rank == 3 ? Shape{1, c.Lq, c.Lk}
             : c.mask_rank == 5 ? Shape{1, c.H, c.Lq, c.Lk}
             : c.mask_rank == 6 ? Shape{c.B, 1, 1, c.Lk}
                                : Shape{c.B, c.H, c.Lq, c.Lk};
  if (c.mask == MaskKind::kBool || c.mask == MaskKind::kBoolWithEmptyRows) {
    Tensor m(ms, DType::kBool);
    std::bernoulli_distribution keep(0.7);
    for (int64_t i = 0; i < m.numel(); ++i) m.b8()[i] = keep(rng);
    if (c.mask == MaskKind::kBoolWithEmptyRows)  // every third row sees nothing
      for (int64_t r = 0; r < m.numel() / c.Lk; r += 3)
        for (int64_t j = 0; j < c.Lk; ++j) m.b8()[r * c.Lk + j] = 0;
    in.options.mask = m;
  } else if (c.mask == MaskKind::kFloat) {
    Tensor m(ms);
    std::bernoulli_distribution hide(0.1);
    for (int64_t i = 0; i < m.numel(); ++i) m.f32()[i] = hide(rng) ? -INFINITY : 2.0f * u(rng);
    in.options.mask = m;
  }
  if (c.key_padding) {
    Tensor p({c.B, c.Lk}, DType::kBool);
    // batch b pads its last b·Lk/(B+1) keys; an even b every 7th from key 3 too (holes inside: every key tile masks),
    // an odd b its first Lk/5 (left padding; the key tiles between its ends have no padding, and skip the masking
    // pass); the last of several batches pads all
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = 0; j < c.Lk; ++j)
        p.b8()[b * c.Lk + j] = (b == c.B - 1 && c.B > 1) || j >= c.Lk - b * c.Lk / (c.B + 1) ||
                               (b % 2 == 0 && j % 7 == 3) || (b % 2 == 1 && j < c.Lk / 5);
    in.options.key_padding_mask = p;
  }
  if (c.alibi) {
    Tensor s({c.H});
    for (int64_t h = 0; h < c.H; ++h)
      s.f32()[h] = std::pow(2.0f, -8.0f * static_cast<float>(h + 1) / static_cast<float>(c.H));
    in.options.alibi_slopes = s;
  }
  in.options.causal = c.causal;
  in.options.window = c.window;
  in.options.return_weights = c.weights;
  return in;
}

// The backward tests' inputs for case n of a list: make_inputs(c, n) without weights, attention dropout (p 0.2,
// seed n) on every fourth case (backward_dropout), and an output gradient d_out [B, H, Lq, Dv] drawn with seed n.
// Every fourth, not every third: the options block comes in threes (Lq < Lk, Lq > Lk, ...), and n % 3 had given
// dropout to one member of each three only.
inline bool backward_dropout(size_t n) { return n % 4 == 1; }
struct BackwardCaseInputs {
  CaseInputs in;
  Tensor d_out;
};
inline BackwardCaseInputs make_backward_inputs(const AttentionCase& c, size_t n) {
  BackwardCaseInputs b{make_inputs(c, static_cast<uint32_t>(n)), Tensor({c.B, c.H, c.Lq, c.Dv})};
  b.in.options.return_weights = false;
  if (backward_dropout(n)) b.in.options.dropout_p = 0.2f, b.in.options.dropout_seed = n;
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < b.d_out.numel(); ++i) b.d_out.f32()[i] = u(rng);
  return b;
}

// The edge cases named in DEVELOPERS.md and the kernel issue, then `random` random combinations.
inline std::vector<AttentionCase> attention_cases(int random, uint32_t seed = 7) {
  std::vector<AttentionCase> cases;
  // lengths 1, not a multiple of a tile, Lq != Lk
  for (int64_t Lq : {1, 2, 5, 63, 64, 65, 130})
    for (int64_t Lk : {1, 3, 64, 100, 129}) {
      AttentionCase c;
      c.Lq = Lq, c.Lk = Lk, c.D = 16, c.Dv = 16, c.H = 2, c.Hkv = 2;
      cases.push_back(c);
    }
  // head dimensions
  for (int64_t D : {1, 63, 64, 80, 128, 256}) {
    AttentionCase c;
    c.Lq = 37, c.Lk = 71, c.D = D, c.Dv = D == 1 ? 3 : D;
    cases.push_back(c);
    c.causal = CausalAlignment::kTopLeft;
    c.weights = true;
    cases.push_back(c);
  }
  // every option on its own and with each other
  const CausalAlignment causals[] = {CausalAlignment::kNone, CausalAlignment::kTopLeft, CausalAlignment::kBottomRight};
  for (CausalAlignment causal : causals)
    for (MaskKind mask : {MaskKind::kNone, MaskKind::kBool, MaskKind::kFloat, MaskKind::kBoolWithEmptyRows})
      for (bool kpm : {false, true}) {
        AttentionCase c;
        c.B = 2, c.H = 4, c.Hkv = 2, c.Lq = 70, c.Lk = 90, c.D = 32, c.Dv = 24;
        c.causal = causal, c.mask = mask, c.key_padding = kpm, c.weights = true;
        cases.push_back(c);
        c.Lq = 90, c.Lk = 70;  // more queries than keys: bottom-right leaves the first rows empty
        c.mask_rank = 2;
        cases.push_back(c);
        c.mask_rank = kpm ? 6 : 5;  // a padding-shaped mask; one per head
        cases.push_back(c);
      }
  for (CausalAlignment causal : {CausalAlignment::kTopLeft, CausalAlignment::kBottomRight})
    for (int64_t window : {1, 17, 64, 200}) {
      AttentionCase c;
      c.H = 3, c.Hkv = 1, c.Lq = 150, c.Lk = 170, c.D = 16, c.Dv = 16, c.causal = causal, c.window = window;
      c.alibi = window == 17;
      c.weights = true;
      cases.push_back(c);
    }
  // the fused kernel's tile remainders: causal diagonals crossing 64-query and 128-key tiles at odd offsets
  // (row blocks stop at their last visible key), key tiles narrower than one score step (16, 17, 33 keys)
  for (CausalAlignment causal : causals)
    for (auto [Lq, Lk] : {std::pair<int64_t, int64_t>{200, 200}, {129, 300}, {300, 129}, {16, 16}, {17, 33}}) {
      AttentionCase c;
      c.H = 2, c.Hkv = 1, c.Lq = Lq, c.Lk = Lk, c.D = 64, c.Dv = 64, c.causal = causal;
      c.weights = Lq <= 200;
      cases.push_back(c);
    }
  // decode: a few queries against a long K/V (the key-split path)
  for (int64_t Lq : {1, 2, 4}) {
    AttentionCase c;
    c.H = 2, c.Hkv = 1, c.Lq = Lq, c.Lk = 1000, c.D = 64, c.Dv = 64, c.causal = CausalAlignment::kBottomRight;
    cases.push_back(c);
    c.key_padding = true, c.weights = true, c.B = 1;
    cases.push_back(c);
    c.B = 3;  // batch 1: padded at both ends, its middle key tiles not at all
    cases.push_back(c);
  }
  // the same with many queries (the packed-key tiles, the 16-bit kernels' bf16 pairs, the backward's query tiles):
  // batch 1 pads its first 120 and last 150 keys, and the key tiles between see no padding
  for (CausalAlignment causal : {CausalAlignment::kNone, CausalAlignment::kBottomRight}) {
    AttentionCase c;
    c.B = 3, c.H = 2, c.Hkv = 1, c.Lq = 80, c.Lk = 600, c.D = 64, c.Dv = 64, c.causal = causal;
    c.key_padding = true, c.weights = causal == CausalAlignment::kNone;
    cases.push_back(c);
  }
  std::mt19937 rng(seed);
  auto pick = [&](std::initializer_list<int64_t> xs) { return *(xs.begin() + rng() % xs.size()); };
  for (int i = 0; i < random; ++i) {
    AttentionCase c;
    c.B = pick({1, 2, 3});
    c.Hkv = pick({1, 2, 3});
    c.H = c.Hkv * pick({1, 2, 4});
    c.Lq = pick({1, 2, 3, 4, 7, 16, 33, 64, 65, 100, 150});
    c.Lk = pick({1, 2, 5, 31, 64, 65, 97, 128, 200});
    c.D = pick({1, 4, 8, 16, 17, 32, 63, 64, 80});
    c.Dv = rng() % 3 == 0 ? pick({1, 5, 16, 24, 64}) : c.D;
    c.mask = static_cast<MaskKind>(rng() % 4);
    c.mask_rank = static_cast<int>(pick({2, 3, 4, 5, 6}));
    c.key_padding = rng() % 3 == 0;
    c.causal = causals[rng() % 3];
    c.window = c.causal != CausalAlignment::kNone && rng() % 4 == 0 ? pick({1, 8, 50}) : 0;
    c.alibi = rng() % 5 == 0;
    c.weights = rng() % 2 == 0;
    cases.push_back(c);
  }
  return cases;
}

}  // namespace attn::test
