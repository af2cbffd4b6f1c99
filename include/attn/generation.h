// attn/generation.h: greedy and beam search over an encoder–decoder model's incremental decoder
// (StepDecoder, attn/models/transformer.h).
#pragma once

#include <cstdint>
#include <vector>

#include "attn/models/transformer.h"

namespace attn {

inline constexpr int kMaxBeam = 1024;  // beyond any useful search; memory and time grow with the beam

struct GenerationOptions {
  int beam = 1;  // hypotheses kept per sentence, in [1, kMaxBeam]; 1 = greedy (a sentence ends at its first EOS)
  float length_penalty = 0.6f;  // GNMT's ((5 + len) / 6)^alpha divides a hypothesis' log-probability; 0 = none; finite
  // Decoding steps per sentence, so at most this many output tokens, EOS included (a hypothesis still alive
  // at the last step ends there, without EOS; such a cut hypothesis is returned only when none ended with EOS);
  // 0 = the model's max_len, and never above it.
  int64_t max_length = 0;
  // Per sentence [B], instead of max_length: each sentence stops at its own limit (its limit, then, does not
  // depend on the other sentences of the batch; the GEMMs' row counts still do, so sums may differ in their last bits).
  std::vector<int64_t> max_lengths;
  KVCacheType kv_cache = KVCacheType::kFloat32;  // how decoding stores keys and values
  // Target ids never chosen, beside pad and BOS (which never are): e.g. an <unk> the output could not show. Each in
  // [0, tgt_vocab).
  std::vector<int32_t> suppress_tokens;
};

// Per sentence of src [B, Ls], the best target ids (without BOS/EOS). Beam search stops a sentence when no
// live hypothesis can beat its best finished one; a hypothesis still alive at max_length ends there.
// Throws ArgumentError for a beam outside [1, kMaxBeam], a negative max_length or a length_penalty that is not
// finite, and what the model throws for bad tokens. B = 0 gives no outputs.
std::vector<std::vector<int32_t>> generate(const Transformer& model, const TokenBatch& src,
                                           const GenerationOptions& options = {});

// Greedy decoding for exactly max_length steps (no stop at EOS; never <pad> or <bos>, as generate), also returning each
// step's logits [steps, Vt] per sentence: the incremental path, for comparison with the reference below.
std::vector<std::vector<int32_t>> generate_greedy_logits(const Transformer& model, const TokenBatch& src,
                                                         int64_t max_length,
                                                         std::vector<std::vector<float>>* step_logits);
// The same greedy decoding recomputing the whole decoder for every prefix (no cache): the reference.
std::vector<std::vector<int32_t>> generate_full_recompute(const Transformer& model, const TokenBatch& src,
                                                          int64_t max_length,
                                                          std::vector<std::vector<float>>* step_logits = nullptr);

}  // namespace attn
