// Internal: the keys and values of incremental decoding (layers/mha_layer.h's decoding steps), written in place,
// never re-concatenated. A self-attention cache grows by one position a step; a cross-attention cache holds
// the encoder's K/V projected once (capacity = Ls) and shared by the K hypotheses of each sentence. Keys are
// kept transposed in blocks of kKeyBlock positions, the last incomplete block as rows (the decoding kernel's
// layout, cpu/attention_decode.h), values as rows, in float32, bfloat16 or int8 with a scale per (token, head).
//
// Two ways to hold them:
//   contiguous (cross-attention, greedy decoding, attn::DecodeCache): row n's positions one after another,
//     k: [N, Hkv, ⌈capacity / kKeyBlock⌉, Dh, kKeyBlock]   v: [N, Hkv, capacity, Dh]   scales: [N, Hkv, capacity]
//   paged (beam search's self-attention): a pool of blocks of kKeyBlock positions of one hypothesis, every head,
//     k: [blocks, Hkv, Dh, kKeyBlock]   v: [blocks, Hkv, kKeyBlock, Dh]   scales: [blocks, Hkv, kKeyBlock]
//     and a table [N, ⌈capacity / kKeyBlock⌉] of each row's blocks. A complete block never changes again, so
//     hypotheses that continue one another share theirs (reference counts): reordering the beams copies
//     table entries and only the incomplete last block (vLLM's paged attention with shared prefixes), and the
//     hypotheses of a sentence read the blocks they share from cache.
// Values are head-major as the keys are: the kernel reads one head's values as one stream (a block's 16 rows of
// Dh elements together). Token-major values ([.., Hkv·Dh] a position, the projection's layout) had made that stream
// Dh elements every Hkv·Dh, a new 4 KB page every key at Hkv·Dh·4 ≥ 4 KB: the P·V pass then took 3× the Q·Kᵀ pass
// over the same bytes (float32, 32 heads of 128, 8192 positions, one thread).
// allocate() keeps memory it already holds when it is large enough, so a cache reused from one batch to the
// next (the model's decoder keeps a per-thread pool) allocates and faults in its pages only once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/attention_decode.h"

namespace attn::layers {

struct KVCache {
  int64_t N = 0, capacity = 0, Hkv = 0, Dh = 0, width = 0;  // width = Hkv·Dh
  detail::KVType type = detail::KVType::kFloat32;
  bool paged = false;
  struct Buffers {                                      // uninitialised until written
    std::unique_ptr<std::byte[]> k, v;                  // elements of `type`
    std::unique_ptr<float[]> k_scale, v_scale;          // int8 only
    size_t k_bytes = 0, v_bytes = 0, scale_floats = 0;  // allocated
  };
  Buffers main;  // the rows, or the block pool
  // paged: table [N, blocks_per_row()] (−1: none yet), each pool block's reference count, the free blocks
  std::vector<int32_t> table, refs, free_blocks;

  size_t bytes_held() const;
  void allocate(int64_t n, int64_t cap, int64_t hkv, int64_t dh, bool paged_blocks,
                detail::KVType kv_type = detail::KVType::kFloat32);
  int64_t blocks_per_row() const { return (capacity + detail::kKeyBlock - 1) / detail::kKeyBlock; }
  // Writes positions [t, t + count) of rows [0, rows) from k_rows, v_rows: [rows, count, width], rows
  // ld floats apart (ld >= count·width). Positions are written in order: t is the count already held.
  void write(const float* k_rows, const float* v_rows, int64_t ld, int64_t rows, int64_t t, int64_t count);
  // Row n continues row parent[n] (positions [0, length)); paged caches only.
  void reorder(const std::vector<int64_t>& parent, int64_t length);
  // Rows [from, from + rows) move to [to, to + rows), positions [0, length) (the batch shrinking: the rows at
  // `to` are given up; N is the caller's to set).
  void move_rows(int64_t from, int64_t to, int64_t rows, int64_t length);
  // The decoding problem's cache fields: kt, v, their strides, the scales and the block table (batch b = row b).
  void describe(detail::DecodeProblem& p) const;

 private:
  // Element offsets: of row n's key block blk (head 0; heads k_head_stride() apart), of position j's value
  // row (head 0; heads v_head_stride() apart), and of the scale of (n, head g, position j). Paged: the block must
  // exist.
  int64_t key_block_offset(int64_t n, int64_t blk) const;
  int64_t k_head_stride() const;
  int64_t value_offset(int64_t n, int64_t j) const;
  int64_t v_head_stride() const;
  int64_t scale_offset(int64_t n, int64_t g, int64_t j) const;
  int32_t block_of(int64_t n, int64_t blk) const { return table[static_cast<size_t>(n * blocks_per_row() + blk)]; }
  int32_t take_block();
  void release(int32_t block);
  void copy_block(int32_t from, int32_t to, int64_t kept);  // an incomplete block's first `kept` positions
  void copy_row(int64_t from, int64_t to, int64_t length);  // contiguous caches
};

}  // namespace attn::layers
