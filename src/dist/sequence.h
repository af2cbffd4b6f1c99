// Rows of a tensor along one dimension, and where each rank's rows sit in the global sequence.
#pragma once

#include <cstdint>
#include <vector>

#include "attn/dist/ring_attention.h"
#include "attn/tensor.h"

namespace attn::dist::detail {

// One run of a rank's rows: global positions [global, global + length) are its local rows [local, local + length).
struct Piece {
  int64_t global = 0, local = 0, length = 0;
};

// Where rank `rank`'s rows lie when the ranks hold lengths[0..N) rows (any lengths) in `layout`:
// kContiguous: one piece; kZigzag: its first (L + 1) / 2 rows, then its last L / 2 (empty pieces dropped).
std::vector<Piece> pieces_of(const std::vector<int64_t>& lengths, int rank, SequenceLayout layout);

// Rows [begin, begin + n) of t along `dim`: t itself for the whole range, a view when the dimensions before
// `dim` are all 1, a copy otherwise.
Tensor rows(const Tensor& t, int dim, int64_t begin, int64_t n);
// dst[rows begin .. begin + src.dim(dim)) along dim  +=  src   (float32) or  =  src (copy = true, any dtype).
void put_rows(Tensor& dst, int dim, int64_t begin, const Tensor& src, bool copy);

}  // namespace attn::dist::detail
