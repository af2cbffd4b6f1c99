// attn/layers/decode_cache.h: the key/value cache of incremental decoding as attn's Transformer keeps it, for a
// decoder of your own: keys stored transposed in blocks of 16 positions, values as rows, in float32, bfloat16 or
// int8 with a scale per (token, head) (KVCacheType), and attention over it by the decoding kernel, the
// dequantisation fused into Q·Kᵀ and P·V. Decode is memory-bound: fewer bytes per key is what makes it faster.
//
//   DecodeCache cache(B, Hkv, D, capacity, KVCacheType::kInt8);
//   cache.append(k, v);                 // k, v: [B, Hkv, T, D] float32, at positions [length, length + T)
//   Tensor out = cache.attend(q);       // q: [B, H, Lq, D] -> softmax(q·Kᵀ/√D)·V over every cached position
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "attn/attention.h"
#include "attn/tensor.h"

namespace attn {

class DecodeCache {
 public:
  // Room for `capacity` positions of `kv_heads` heads of size head_dim for each of `batch` sequences.
  // Throws ArgumentError for a size < 1.
  DecodeCache(int64_t batch, int64_t kv_heads, int64_t head_dim, int64_t capacity,
              KVCacheType type = KVCacheType::kFloat32);
  ~DecodeCache();
  DecodeCache(DecodeCache&&) noexcept;
  DecodeCache& operator=(DecodeCache&&) noexcept;

  // Appends k, v: [B, Hkv, T, D] float32 (converted to the cache's type) at positions [length, length + T).
  // ShapeError / DTypeError naming the argument; ArgumentError past the capacity.
  void append(const Tensor& k, const Tensor& v);
  // out [B, H, Lq, D] = softmax(q·Kᵀ/√D + mask)·V over positions [0, length): q [B, H, Lq, D] float32 with H a
  // multiple of Hkv (grouped-query attention); key_padding_mask [B, length] bool (true = padding) or undefined.
  // A row with every key hidden is 0. num_threads 0: OpenMP's default (small problems use one thread).
  Tensor attend(const Tensor& q, const Tensor& key_padding_mask = Tensor(), int num_threads = 0) const;

  // Empties the cache for a new sequence, keeping its memory: the next append writes from position 0. (Dropping
  // only the last positions is not offered: a completed block of keys is stored transposed.)
  void reset();
  int64_t length() const;
  KVCacheType type() const;
  size_t bytes() const;  // memory the keys, values and scales take

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attn
