// Incremental decoding (Transformer::start_decoding): encode once, then one decoder step per token with
//   - a KV cache per decoder layer for masked self-attention, preallocated for every position
//     ([N, positions, E], N = sentences × hypotheses) and written in place, never re-concatenated;
//   - the cross-attention K/V of each layer computed once from the encoder output ([B, Ls, E]) and
//     shared by every hypothesis of a sentence: the K hypotheses of sentence b are K query rows of one
//     attention problem over b's K/V, so nothing is copied per beam.
// Beam search's self-attention caches are paged (layers/kv_cache.h): when it reselects hypotheses, a moved
// one shares its parent's complete blocks and copies only the incomplete last one (KVCache::reorder);
// finished sentences leave the batch (retain), the last live ones moving into their slots.
#include <algorithm>

#include "attn/error.h"
#include "models/transformer_internal.h"

namespace attn {
namespace {

using layers::Buf;
using layers::grow;

// KV caches kept per thread between decoders: a translator decoding batch after batch allocates (and
// faults in) its cache memory once instead of per batch. The pool keeps at most kPoolBytes per thread;
// larger caches are freed when their decoder ends.
// (self: [N, positions, E] per layer; cross: [B, Ls, E] per layer)
enum class CacheKind { kSelf, kCross };
constexpr size_t kPoolBytes = size_t{256} << 20;

// Set when this thread's pool is destroyed (at the thread's exit, before static objects): a decoder that outlives it
// (one held by a static) frees its caches instead of giving them back. Trivially destructible, so still readable then.
thread_local bool pool_destroyed = false;

struct CachePool {
  std::vector<layers::KVCache> caches[2];
  size_t bytes = 0;
  ~CachePool() { pool_destroyed = true; }
};

CachePool& cache_pool() {
  thread_local CachePool pool;
  return pool;
}

size_t cache_bytes(const layers::KVCache& c) { return c.bytes_held(); }

std::vector<layers::KVCache> take_caches(CacheKind kind, size_t n) {
  if (pool_destroyed) return std::vector<layers::KVCache>(n);
  CachePool& pool = cache_pool();
  std::vector<layers::KVCache>& free = pool.caches[static_cast<int>(kind)];
  std::vector<layers::KVCache> out(n);
  for (size_t i = 0; i < n && !free.empty(); ++i) {
    pool.bytes -= cache_bytes(free.back());
    out[i] = std::move(free.back());
    free.pop_back();
  }
  return out;
}

void give_back(CacheKind kind, std::vector<layers::KVCache>& caches) noexcept {
  if (pool_destroyed) return;  // freed with `caches`
  CachePool& pool = cache_pool();
  std::vector<layers::KVCache>& free = pool.caches[static_cast<int>(kind)];
  for (layers::KVCache& c : caches) {
    const size_t bytes = cache_bytes(c);
    if (pool.bytes + bytes > kPoolBytes) continue;  // freed with `caches`
    try {
      free.push_back(std::move(c));
      pool.bytes += bytes;
    } catch (...) {  // no memory to keep it: it is freed instead
    }
  }
}

class TransformerDecoder final : public StepDecoder {
 public:
  // memory: [B·Ls, E], the encoder's output (read here only)
  TransformerDecoder(std::shared_ptr<const models::TransformerWeights> weights, const float* memory,
                     const TokenBatch& src, int64_t K, int64_t T, detail::KVType kv_type)
      : weights_(std::move(weights)),
        net_(*weights_),
        B_(src.B),
        K_(K),
        N_(src.B * K),
        Ls_(src.L),
        T_(T),
        E_(net_.c.d_model) {
    const models::TransformerWeights& net = net_;
    models::padding_mask(src_pad_, src, net.c.pad_id);
    self_ = take_caches(CacheKind::kSelf, net.dec.size());
    cross_ = take_caches(CacheKind::kCross, net.dec.size());
    for (size_t l = 0; l < net.dec.size(); ++l) {
      layers::mha_cross_kv(cross_[l], net.dec[l].cross_attn.w, memory, B_, Ls_, kv_type);
      self_[l].allocate(N_, T_, net.dec[l].self_attn.w.Hkv, net.dec[l].self_attn.w.head_dim(), /*paged_blocks=*/K > 1,
                        kv_type);
    }
  }

  ~TransformerDecoder() override {  // the caches' memory serves this thread's next batch
    give_back(CacheKind::kSelf, self_);
    give_back(CacheKind::kCross, cross_);
  }
  TransformerDecoder(const TransformerDecoder&) = delete;
  TransformerDecoder& operator=(const TransformerDecoder&) = delete;

  float* step(const int32_t* tokens, int64_t t) override {
    // positions in order: the caches hold 0..t-1 (uninitialised memory beyond), so t must be the next one
    if (t != next_t_ || t >= T_)
      throw ArgumentError("StepDecoder::step: expected position " + std::to_string(next_t_) + " (of " +
                          std::to_string(T_) + "), got " + std::to_string(t));
    for (int64_t n = 0; n < N_; ++n)
      if (tokens[n] < 0 || tokens[n] >= net_.c.tgt_vocab)
        throw ArgumentError("StepDecoder::step: token " + std::to_string(tokens[n]) + " outside [0, " +
                            std::to_string(net_.c.tgt_vocab) + ")");
    ++next_t_;
    const TransformerConfig& c = net_.c;
    const int64_t N = N_, E = E_;
    models::embed_rows(grow(x_, N * E), net_, net_.tgt_embed, tokens, N, t);
    for (size_t l = 0; l < net_.dec.size(); ++l) {
      const models::DecoderLayerWeights& w = net_.dec[l];
      // masked self-attention: k_t, v_t go into the cache, the query sees positions 0..t
      sublayer(w.norm1, [&](const float* in, float* x) {
        layers::mha_self_attention_step(x, w.self_attn.w, in, N, t, self_[l]);
      });
      // cross-attention over the encoder's K/V, shared by the hypotheses of each sentence
      sublayer(w.norm2, [&](const float* in, float* x) {
        layers::mha_cross_attention_step(x, w.cross_attn.w, in, B_, K_, cross_[l], src_pad_.data());
      });
      // feed-forward
      sublayer(w.norm3,
               [&](const float* in, float* x) { layers::ff_forward_accumulate(x, ff_acts_, w.ff, in, N, net_.act()); });
    }
    float* y = grow(y_, N * E);  // LN_dec(x)
    ops::layer_norm_forward(y, grow(mean_, N), grow(rstd_, N), x_.data(), net_.dec_norm.w, net_.dec_norm.b, N, E);
    ops::linear_forward(grow(logits_, N * c.tgt_vocab), y, net_.gen_w, net_.gen_q, net_.gen_b, N, c.tgt_vocab, E);
    return logits_.data();
  }

  void reorder(const std::vector<int64_t>& parent, int64_t t) override {
    // (with one hypothesis per sentence there is nothing to reorder, and the caches are not paged)
    if (K_ == 1) throw ArgumentError("StepDecoder::reorder: decoding with one hypothesis per sentence never reorders");
    if (t != next_t_ - 1 || static_cast<int64_t>(parent.size()) != N_)
      throw ArgumentError("StepDecoder::reorder: expected the " + std::to_string(N_) + " parents after position " +
                          std::to_string(next_t_ - 1) + ", got " + std::to_string(parent.size()) + " at " +
                          std::to_string(t));
    for (int64_t n = 0; n < N_; ++n)  // a hypothesis continues one of its own sentence's
      if (parent[static_cast<size_t>(n)] / K_ != n / K_ || parent[static_cast<size_t>(n)] < 0)
        throw ArgumentError("StepDecoder::reorder: hypothesis " + std::to_string(n) + " cannot continue " +
                            std::to_string(parent[static_cast<size_t>(n)]) + " (another sentence's)");
    for (layers::KVCache& cache : self_) cache.reorder(parent, t + 1);
  }

  void retain(const std::vector<int64_t>& sentences) override {
    const int64_t B = static_cast<int64_t>(sentences.size());
    std::vector<int64_t> slot(static_cast<size_t>(B_), -1);  // each current sentence's new slot
    for (int64_t i = 0; i < B; ++i) {
      const int64_t s = sentences[static_cast<size_t>(i)];
      if (s < 0 || s >= B_ || slot[static_cast<size_t>(s)] != -1)
        throw ArgumentError("StepDecoder::retain: sentence " + std::to_string(s) + " is outside [0, " +
                            std::to_string(B_) + ") or listed twice");
      slot[static_cast<size_t>(s)] = i;
    }
    for (int64_t i = 0; i < B; ++i)  // a moved sentence lands on one that leaves (so nothing is overwritten unread)
      if (sentences[static_cast<size_t>(i)] != i && slot[static_cast<size_t>(i)] != -1)
        throw ArgumentError("StepDecoder::retain: sentence " + std::to_string(sentences[static_cast<size_t>(i)]) +
                            " cannot move into slot " + std::to_string(i) + ", whose sentence stays");
    const int64_t length = next_t_;  // the positions the self-attention caches hold
    for (int64_t i = 0; i < B; ++i) {
      const int64_t s = sentences[static_cast<size_t>(i)];
      if (s == i) continue;
      for (layers::KVCache& c : self_) c.move_rows(s * K_, i * K_, K_, length);
      for (layers::KVCache& c : cross_) c.move_rows(s, i, 1, Ls_);
      std::copy_n(src_pad_.begin() + s * Ls_, Ls_, src_pad_.begin() + i * Ls_);
    }
    B_ = B, N_ = B * K_;
    for (layers::KVCache& c : self_) c.N = N_;
    for (layers::KVCache& c : cross_) c.N = B_;
  }

  int64_t vocab_size() const override { return net_.c.tgt_vocab; }

 private:
  // x = norm_first ? x + F(LN(x)) : LN(x + F(x)), in place on x_ (layers::residual_inference): F adds its
  // output into x_ through its last GEMM.
  template <class F>
  void sublayer(const layers::LnWeights& ln, F&& f) {
    layers::residual_inference(x_.data(), sub_acts_, N_, E_, ln, net_.c.norm_first, f);
  }

  std::shared_ptr<const models::TransformerWeights> weights_;  // keeps the parameters alive
  const models::TransformerWeights& net_;
  int64_t B_, K_, N_, Ls_, T_, E_;
  int64_t next_t_ = 0;                         // the position the next step() decodes
  std::vector<uint8_t> src_pad_;               // [B, Ls]
  std::vector<layers::KVCache> self_, cross_;  // per decoder layer
  // per-step activations, grown once: x [N, E], LN_dec(x) [N, E], logits [N, V], mean/rstd [N]; the layers'
  // own buffers for the residual sublayer and the feed-forward block
  Buf x_, y_, logits_, mean_, rstd_;
  layers::SublayerActivations sub_acts_;
  layers::FeedForwardActivations ff_acts_;
};

}  // namespace

std::unique_ptr<StepDecoder> Transformer::start_decoding(const TokenBatch& src, int64_t hypotheses, int64_t positions,
                                                         KVCacheType kv_cache) const {
  if (hypotheses < 1)
    throw ArgumentError("Transformer::start_decoding: hypotheses must be >= 1, got " + std::to_string(hypotheses));
  models::check_tokens(config_, src, config_.src_vocab, "src");
  // src and positions before the cache's size (a negative one had been reported as a cache of over 2^40 floats)
  if (positions < 1 || positions > config_.max_len)
    throw ArgumentError("Transformer::start_decoding: positions must be in [1, max_len = " +
                        std::to_string(config_.max_len) + "], got " + std::to_string(positions));
  // the caches hold sentences · hypotheses · positions · d_model floats per layer: checked before it is computed
  // (2^62 hypotheses had wrapped the row count to 0 and the cross-attention had read past its buffers)
  if (product_within({src.B, hypotheses, positions, config_.d_model}, int64_t{1} << 40) < 0)
    throw ArgumentError("Transformer::start_decoding: " + std::to_string(src.B) + " sentences × " +
                        std::to_string(hypotheses) + " hypotheses × " + std::to_string(positions) +
                        " positions × d_model " + std::to_string(config_.d_model) +
                        " is more than a cache of 2^40 floats");
  const models::TransformerWeights& net = weights();  // checks that no parameter was replaced
  TransformerActivations& k = models::inference_activations();
  models::encode_impl(net, k, src, /*keep_weights=*/false, nullptr);
  const detail::KVType kv_type = kv_cache == KVCacheType::kInt8       ? detail::KVType::kInt8
                                 : kv_cache == KVCacheType::kBFloat16 ? detail::KVType::kBFloat16
                                                                      : detail::KVType::kFloat32;
  return std::make_unique<TransformerDecoder>(weights_, k.mem.data(), src, hypotheses, positions, kv_type);
}

}  // namespace attn
