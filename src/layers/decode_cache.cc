// The public decoding cache (attn/layers/decode_cache.h) over the layers' KVCache and the decoding kernel.
#include "attn/layers/decode_cache.h"

#include <cmath>
#include <string>
#include <vector>

#include "attn/error.h"
#include "layers/mha_layer.h"

namespace attn {

struct DecodeCache::Impl {
  layers::KVCache cache;
  int64_t B = 0, Hkv = 0, D = 0, length = 0;
  KVCacheType type = KVCacheType::kFloat32;
};

namespace {
detail::KVType kernel_type(KVCacheType t) {
  return t == KVCacheType::kInt8       ? detail::KVType::kInt8
         : t == KVCacheType::kBFloat16 ? detail::KVType::kBFloat16
                                       : detail::KVType::kFloat32;
}
}  // namespace

DecodeCache::DecodeCache(int64_t batch, int64_t kv_heads, int64_t head_dim, int64_t capacity, KVCacheType type)
    : impl_(std::make_unique<Impl>()) {
  if (batch < 1 || kv_heads < 1 || head_dim < 1 || capacity < 1)
    throw ArgumentError("DecodeCache: batch, kv_heads, head_dim and capacity must be >= 1, got " +
                        std::to_string(batch) + ", " + std::to_string(kv_heads) + ", " + std::to_string(head_dim) +
                        ", " + std::to_string(capacity));
  // keys or values: checked before any byte count is computed (2^62 had wrapped them)
  if (product_within({batch, kv_heads, head_dim, capacity}, int64_t{1} << 40) < 0)
    throw ArgumentError("DecodeCache: batch · kv_heads · head_dim · capacity = " + std::to_string(batch) + " · " +
                        std::to_string(kv_heads) + " · " + std::to_string(head_dim) + " · " + std::to_string(capacity) +
                        " is more than 2^40 elements");
  impl_->B = batch, impl_->Hkv = kv_heads, impl_->D = head_dim, impl_->type = type;
  impl_->cache.allocate(batch, capacity, kv_heads, head_dim, /*paged_blocks=*/false, kernel_type(type));
}

DecodeCache::~DecodeCache() = default;
DecodeCache::DecodeCache(DecodeCache&&) noexcept = default;
DecodeCache& DecodeCache::operator=(DecodeCache&&) noexcept = default;

namespace {
// A moved-from cache holds no state: its calls had dereferenced null.
template <class Impl>
Impl& held(const std::unique_ptr<Impl>& impl, const char* fn) {
  if (!impl) throw ArgumentError(std::string("DecodeCache::") + fn + ": this cache was moved from");
  return *impl;
}
}  // namespace

// every position, scales too, is written again before it is read
void DecodeCache::reset() { held(impl_, "reset").length = 0; }

int64_t DecodeCache::length() const { return held(impl_, "length").length; }
KVCacheType DecodeCache::type() const { return held(impl_, "type").type; }
size_t DecodeCache::bytes() const { return held(impl_, "bytes").cache.bytes_held(); }

void DecodeCache::append(const Tensor& k, const Tensor& v) {
  Impl& c = held(impl_, "append");
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{k, "k"}, {v, "v"}}) {
    if (!t.defined() || t.dtype() != DType::kFloat32)
      throw DTypeError(std::string("DecodeCache::append: ") + name + " must be a float32 tensor");
    if (t.rank() != 4 || t.dim(0) != c.B || t.dim(1) != c.Hkv || t.dim(3) != c.D)
      throw ShapeError(std::string("DecodeCache::append: ") + name + " has shape " + shape_str(t.shape()) +
                       ", expected [" + std::to_string(c.B) + ", " + std::to_string(c.Hkv) + ", T, " +
                       std::to_string(c.D) + "]");
  }
  if (k.shape() != v.shape())
    throw ShapeError("DecodeCache::append: k " + shape_str(k.shape()) + " and v " + shape_str(v.shape()) + " differ");
  const int64_t T = k.dim(2);
  if (c.length + T > c.cache.capacity)
    throw ArgumentError("DecodeCache::append: " + std::to_string(T) + " positions after " + std::to_string(c.length) +
                        " exceed the capacity " + std::to_string(c.cache.capacity));
  // [B, Hkv, T, D] -> rows [B, T, Hkv·D], the layout the cache writes from
  const int64_t width = c.Hkv * c.D;
  std::vector<float> kr(static_cast<size_t>(c.B * T * width)), vr(kr.size());
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t g = 0; g < c.Hkv; ++g)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < c.D; ++d) {
          const int64_t from = ((b * c.Hkv + g) * T + t) * c.D + d, to = (b * T + t) * width + g * c.D + d;
          kr[static_cast<size_t>(to)] = k.f32()[from];
          vr[static_cast<size_t>(to)] = v.f32()[from];
        }
  c.cache.write(kr.data(), vr.data(), T * width, c.B, c.length, T);
  c.length += T;
}

Tensor DecodeCache::attend(const Tensor& q, const Tensor& key_padding_mask, int num_threads) const {
  const Impl& c = held(impl_, "attend");
  if (!q.defined() || q.dtype() != DType::kFloat32) throw DTypeError("DecodeCache::attend: q must be a float32 tensor");
  if (q.rank() != 4 || q.dim(0) != c.B || q.dim(3) != c.D || q.dim(1) % c.Hkv != 0)
    throw ShapeError("DecodeCache::attend: q has shape " + shape_str(q.shape()) + ", expected [" + std::to_string(c.B) +
                     ", H, Lq, " + std::to_string(c.D) + "] with H a multiple of " + std::to_string(c.Hkv));
  if (key_padding_mask.defined() &&
      (key_padding_mask.dtype() != DType::kBool || key_padding_mask.shape() != Shape{c.B, c.length})) {
    const std::string what = "DecodeCache::attend: key_padding_mask must be bool [" + std::to_string(c.B) + ", " +
                             std::to_string(c.length) + "], got " + dtype_name(key_padding_mask.dtype()) + " " +
                             shape_str(key_padding_mask.shape());
    if (key_padding_mask.dtype() != DType::kBool) throw DTypeError(what);
    throw ShapeError(what);
  }
  if (num_threads < 0)
    throw ArgumentError("DecodeCache::attend: num_threads must be >= 0 (0: all cores), got " +
                        std::to_string(num_threads));
  const int64_t H = q.dim(1), Lq = q.dim(2), D = c.D;
  Tensor out({c.B, H, Lq, D});
  detail::DecodeProblem p;
  p.B = c.B, p.H = H, p.Hkv = c.Hkv, p.Lq = Lq, p.Lk = c.length, p.D = D, p.Dv = D;
  p.q = q.f32(), p.q_sb = H * Lq * D, p.q_sh = Lq * D, p.q_sl = D;
  c.cache.describe(p);
  p.o = out.f32(), p.o_sb = H * Lq * D, p.o_sh = Lq * D, p.o_sl = D;
  if (key_padding_mask.defined()) p.key_padding = key_padding_mask.b8(), p.pad_sb = c.length;
  p.scale = 1.0f / std::sqrt(static_cast<float>(D));
  p.num_threads = num_threads;
  detail::attention_decode(p);
  return out;
}

}  // namespace attn
