// The decoding caches (layers/kv_cache.h): contiguous rows or a pool of shared blocks.
#include "layers/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

#include "attn/error.h"

namespace attn::layers {

namespace {
constexpr int64_t kBlock = detail::kKeyBlock;

void reserve(KVCache::Buffers& b, size_t k_bytes, size_t v_bytes, size_t scale_floats) {
  if (k_bytes > b.k_bytes) b.k.reset(new std::byte[k_bytes]), b.k_bytes = k_bytes;
  if (v_bytes > b.v_bytes) b.v.reset(new std::byte[v_bytes]), b.v_bytes = v_bytes;
  if (scale_floats > b.scale_floats) {
    b.k_scale.reset(new float[scale_floats]);
    b.v_scale.reset(new float[scale_floats]);
    b.scale_floats = scale_floats;
  }
}

// The first `kept` keys of one head's block, stored as rows [kept, Dh] while the block was incomplete, rearranged
// into the complete block's transposed layout [Dh, kKeyBlock] (elements of `size` bytes).
void transpose_block_rows(std::byte* block, int64_t Dh, int64_t kept, int64_t size) {
  thread_local std::vector<std::byte> rows;
  rows.assign(block, block + kept * Dh * size);
  for (int64_t i = 0; i < kept; ++i)
    for (int64_t d = 0; d < Dh; ++d)
      std::memcpy(block + (d * kBlock + i) * size, rows.data() + (i * Dh + d) * size, static_cast<size_t>(size));
}
}  // namespace

size_t KVCache::bytes_held() const {
  return main.k_bytes + main.v_bytes + 2 * main.scale_floats * sizeof(float) +
         (table.capacity() + refs.capacity() + free_blocks.capacity()) * sizeof(int32_t);
}

void KVCache::allocate(int64_t n, int64_t cap, int64_t hkv, int64_t dh, bool paged_blocks, detail::KVType kv_type) {
  N = n, capacity = cap, Hkv = hkv, Dh = dh, width = hkv * dh, type = kv_type, paged = paged_blocks;
  // Uninitialised on purpose: position t is written before anything reads it, so only the pages of the
  // positions a batch reaches are ever touched (zero-filling the whole capacity cost more than decoding).
  const int64_t size = detail::kv_type_size(type), bpr = blocks_per_row();
  const bool scaled = type == detail::KVType::kInt8;
  if (!paged) {
    reserve(main, static_cast<size_t>(N * Hkv * bpr * Dh * kBlock * size), static_cast<size_t>(N * cap * width * size),
            scaled ? static_cast<size_t>(N * Hkv * cap) : 0);
    table.clear(), refs.clear(), free_blocks.clear();
    return;
  }
  // Every row's blocks, and one more per row: a reorder copies incomplete blocks before it frees the old ones.
  const int64_t blocks = N * bpr + N;
  reserve(main, static_cast<size_t>(blocks * Hkv * Dh * kBlock * size),
          static_cast<size_t>(blocks * kBlock * width * size), scaled ? static_cast<size_t>(blocks * Hkv * kBlock) : 0);
  table.assign(static_cast<size_t>(N * bpr), -1);
  refs.assign(static_cast<size_t>(blocks), 0);
  free_blocks.resize(static_cast<size_t>(blocks));
  std::iota(free_blocks.rbegin(), free_blocks.rend(), 0);  // block 0 first
}

int64_t KVCache::key_block_offset(int64_t n, int64_t blk) const {
  return paged ? block_of(n, blk) * Hkv * Dh * kBlock : (n * Hkv * blocks_per_row() + blk) * Dh * kBlock;
}
int64_t KVCache::k_head_stride() const { return paged ? Dh * kBlock : blocks_per_row() * Dh * kBlock; }
int64_t KVCache::value_offset(int64_t n, int64_t j) const {
  return paged ? (block_of(n, j / kBlock) * Hkv * kBlock + j % kBlock) * Dh : (n * Hkv * capacity + j) * Dh;
}
int64_t KVCache::v_head_stride() const { return (paged ? kBlock : capacity) * Dh; }
int64_t KVCache::scale_offset(int64_t n, int64_t g, int64_t j) const {
  return paged ? (block_of(n, j / kBlock) * Hkv + g) * kBlock + j % kBlock : (n * Hkv + g) * capacity + j;
}

int32_t KVCache::take_block() {
  if (free_blocks.empty()) throw Error("KVCache: every block of the pool is in use");
  const int32_t b = free_blocks.back();
  free_blocks.pop_back();
  refs[static_cast<size_t>(b)] = 1;
  return b;
}

void KVCache::release(int32_t block) {
  if (block >= 0 && --refs[static_cast<size_t>(block)] == 0) free_blocks.push_back(block);
}

void KVCache::write(const float* k_rows, const float* v_rows, int64_t ld, int64_t rows, int64_t t, int64_t count) {
  if (t + count > capacity)
    throw ArgumentError("KVCache::write: positions [" + std::to_string(t) + ", " + std::to_string(t + count) +
                        ") beyond the capacity " + std::to_string(capacity));
  const int64_t size = detail::kv_type_size(type), end = t + count;
  const bool scaled = type == detail::KVType::kInt8;
  // The keys of t's block written before, rows while it was incomplete, are transposed when it completes now.
  const int64_t kept = t % kBlock;
  const bool completes = kept != 0 && detail::key_in_complete_block(t, end);
  std::byte* k = main.k.get();
  std::byte* v = main.v.get();
  for (int64_t n = 0; n < rows; ++n) {
    if (paged)
      for (int64_t blk = t / kBlock; blk <= (end - 1) / kBlock; ++blk)
        if (block_of(n, blk) < 0) table[static_cast<size_t>(n * blocks_per_row() + blk)] = take_block();
    if (completes)
      for (int64_t g = 0; g < Hkv; ++g)
        transpose_block_rows(k + (key_block_offset(n, t / kBlock) + g * k_head_stride()) * size, Dh, kept, size);
    for (int64_t c = 0; c < count; ++c) {
      const int64_t j = t + c;
      const float* kr = k_rows + n * ld + c * width;  // [Hkv, Dh]
      const float* vr = v_rows + n * ld + c * width;
      // key j in the layout of a head holding `end` keys (a transposed block, or the last block's row)
      const int64_t at = key_block_offset(n, j / kBlock) + detail::key_in_block_index(Dh, j, 0, end);
      const int64_t stride = detail::key_element_stride(j, end), vat = value_offset(n, j);
      for (int64_t g = 0; g < Hkv; ++g) {
        const float ks = detail::store_kv(kr + g * Dh, Dh, type, k + (at + g * k_head_stride()) * size, stride);
        const float vs = detail::store_kv(vr + g * Dh, Dh, type, v + (vat + g * v_head_stride()) * size, 1);
        if (scaled) {
          main.k_scale[static_cast<size_t>(scale_offset(n, g, j))] = ks;
          main.v_scale[static_cast<size_t>(scale_offset(n, g, j))] = vs;
        }
      }
    }
  }
}

void KVCache::copy_block(int32_t from, int32_t to, int64_t kept) {
  // an incomplete block's keys are rows, as its values are: its first `kept` positions are contiguous in each head's
  // part of both
  const int64_t size = detail::kv_type_size(type), head = Dh * kBlock;
  for (int64_t g = 0; g < Hkv; ++g)
    for (std::byte* pool : {main.k.get(), main.v.get()})
      std::copy_n(pool + (from * Hkv + g) * head * size, kept * Dh * size, pool + (to * Hkv + g) * head * size);
  if (type == detail::KVType::kInt8)
    for (int64_t g = 0; g < Hkv; ++g) {
      std::copy_n(main.k_scale.get() + (from * Hkv + g) * kBlock, kept, main.k_scale.get() + (to * Hkv + g) * kBlock);
      std::copy_n(main.v_scale.get() + (from * Hkv + g) * kBlock, kept, main.v_scale.get() + (to * Hkv + g) * kBlock);
    }
}

void KVCache::reorder(const std::vector<int64_t>& parent, int64_t length) {
  if (!paged) throw Error("KVCache::reorder: only a paged cache reorders");
  const int64_t bpr = blocks_per_row(), complete = length / kBlock, used = (length + kBlock - 1) / kBlock;
  const std::vector<int32_t> before(table.begin(), table.begin() + N * bpr);
  const auto old = [&](int64_t n, int64_t blk) { return before[static_cast<size_t>(n * bpr + blk)]; };
  // A moved row shares its parent's complete blocks, and takes the parent's incomplete block when the parent
  // itself does not continue and no other row took it yet; else it gets its own copy ...
  std::vector<uint8_t> taken(static_cast<size_t>(N), 0);  // row p's incomplete block went to a child
  for (int64_t n = 0; n < N; ++n) {
    const int64_t p = parent[static_cast<size_t>(n)];
    if (p == n) continue;
    for (int64_t blk = 0; blk < complete; ++blk) {
      table[static_cast<size_t>(n * bpr + blk)] = old(p, blk);
      ++refs[static_cast<size_t>(old(p, blk))];
    }
    if (used > complete) {
      if (parent[static_cast<size_t>(p)] != p && !taken[static_cast<size_t>(p)]) {
        table[static_cast<size_t>(n * bpr + complete)] = old(p, complete);
        taken[static_cast<size_t>(p)] = 1;
      } else {
        const int32_t copy = take_block();
        copy_block(old(p, complete), copy, length % kBlock);
        table[static_cast<size_t>(n * bpr + complete)] = copy;
      }
    }
  }
  // ... and gives up what it held before (a block nobody shares any more goes back to the pool)
  for (int64_t n = 0; n < N; ++n)
    if (parent[static_cast<size_t>(n)] != n)
      for (int64_t blk = 0; blk < used; ++blk)
        if (blk < complete || !taken[static_cast<size_t>(n)]) release(old(n, blk));
}

void KVCache::copy_row(int64_t from, int64_t to, int64_t length) {
  const int64_t size = detail::kv_type_size(type), used = (length + kBlock - 1) / kBlock * Dh * kBlock * size;
  for (int64_t g = 0; g < Hkv; ++g)
    std::copy_n(main.k.get() + (key_block_offset(from, 0) + g * k_head_stride()) * size, used,
                main.k.get() + (key_block_offset(to, 0) + g * k_head_stride()) * size);
  for (int64_t g = 0; g < Hkv; ++g)
    std::copy_n(main.v.get() + (value_offset(from, 0) + g * v_head_stride()) * size, length * Dh * size,
                main.v.get() + (value_offset(to, 0) + g * v_head_stride()) * size);
  if (type == detail::KVType::kInt8)
    for (int64_t g = 0; g < Hkv; ++g) {
      std::copy_n(main.k_scale.get() + scale_offset(from, g, 0), length, main.k_scale.get() + scale_offset(to, g, 0));
      std::copy_n(main.v_scale.get() + scale_offset(from, g, 0), length, main.v_scale.get() + scale_offset(to, g, 0));
    }
}

void KVCache::move_rows(int64_t from, int64_t to, int64_t rows, int64_t length) {
  if (from == to) return;
  if (!paged) {
    for (int64_t r = 0; r < rows; ++r) copy_row(from + r, to + r, length);
    return;
  }
  const int64_t bpr = blocks_per_row();  // the table entries move; the rows at `to` give theirs up
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t blk = 0; blk < bpr; ++blk) {
      int32_t& dst = table[static_cast<size_t>((to + r) * bpr + blk)];
      int32_t& src = table[static_cast<size_t>((from + r) * bpr + blk)];
      release(dst);
      dst = src, src = -1;
    }
}

void KVCache::describe(detail::DecodeProblem& p) const {
  p.kv_type = type;
  p.kt = main.k.get(), p.v = main.v.get();
  p.kt_sh = k_head_stride(), p.v_sh = v_head_stride(), p.v_sl = Dh;
  if (paged) {
    p.block_table = table.data(), p.table_sb = blocks_per_row();
    p.kt_sb = Hkv * Dh * kBlock, p.v_sb = Hkv * kBlock * Dh;
  } else {
    p.block_table = nullptr, p.table_sb = 0;
    p.kt_sb = Hkv * k_head_stride(), p.v_sb = Hkv * v_head_stride();
  }
  if (type == detail::KVType::kInt8) {
    p.k_scale = main.k_scale.get(), p.v_scale = main.v_scale.get();
    p.s_sb = paged ? Hkv * kBlock : Hkv * capacity, p.s_sh = paged ? kBlock : capacity;
  }
}

}  // namespace attn::layers
