// Sequence layouts: which rows each rank holds, cutting a tensor into chunks and gathering them back.
#include "sequence.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>

#include "attn/error.h"
#include "mpi_util.h"

namespace attn::dist {
namespace detail {
namespace {

struct Split {
  int64_t outer = 1, length = 0, inner = 1;  // t viewed as [outer, length, inner] around dim
};

Split split_at(const Tensor& t, int dim, const char* what) {
  if (dim < 0 || dim >= t.rank())
    throw ArgumentError(std::string(what) + ": dim " + std::to_string(dim) + " for a tensor of shape " +
                        shape_str(t.shape()));
  Split s;
  for (int i = 0; i < dim; ++i) s.outer *= t.shape()[static_cast<size_t>(i)];
  s.length = t.shape()[static_cast<size_t>(dim)];
  for (int i = dim + 1; i < t.rank(); ++i) s.inner *= t.shape()[static_cast<size_t>(i)];
  return s;
}

size_t element_size(const Tensor& t) { return dtype_size(t.dtype()); }  // 2 for bfloat16 and float16 (had been 1)

}  // namespace

std::vector<Piece> pieces_of(const std::vector<int64_t>& lengths, int rank, SequenceLayout layout) {
  const size_t n = lengths.size(), r = static_cast<size_t>(rank);
  std::vector<Piece> out;
  if (layout == SequenceLayout::kContiguous) {
    const int64_t begin = std::accumulate(lengths.begin(), lengths.begin() + rank, int64_t{0});
    if (lengths[r] > 0) out.push_back({begin, 0, lengths[r]});
    return out;
  }
  // zigzag: first halves of ranks 0..N-1 in order, then second halves of ranks N-1..0
  auto first = [&](size_t s) { return (lengths[s] + 1) / 2; };
  auto second = [&](size_t s) { return lengths[s] / 2; };
  int64_t before_first = 0, all_first = 0, after_second = 0;
  for (size_t s = 0; s < n; ++s) {
    if (s < r) before_first += first(s);
    all_first += first(s);
    if (s > r) after_second += second(s);
  }
  if (first(r) > 0) out.push_back({before_first, 0, first(r)});
  if (second(r) > 0) out.push_back({all_first + after_second, first(r), second(r)});
  return out;
}

Tensor rows(const Tensor& t, int dim, int64_t begin, int64_t n) {
  const Split s = split_at(t, dim, "rows");
  if (begin < 0 || n < 0 || begin + n > s.length)
    throw ArgumentError("rows [" + std::to_string(begin) + ", " + std::to_string(begin + n) + ") of dim " +
                        std::to_string(dim) + " of a tensor of shape " + shape_str(t.shape()));
  if (begin == 0 && n == s.length) return t;
  Shape shape = t.shape();
  shape[static_cast<size_t>(dim)] = n;
  const size_t es = element_size(t);
  auto* base = static_cast<std::byte*>(const_cast<void*>(t.raw()));
  if (s.outer == 1) {
    auto owner = std::make_shared<Tensor>(t);  // keeps t's storage alive as long as the view
    return Tensor::borrow(shape, t.dtype(), base + static_cast<size_t>(begin * s.inner) * es, owner);
  }
  Tensor out(shape, t.dtype());
  auto* o = static_cast<std::byte*>(out.raw());
  const size_t chunk = static_cast<size_t>(n * s.inner) * es;
  for (int64_t i = 0; i < s.outer; ++i)
    std::memcpy(o + static_cast<size_t>(i) * chunk, base + static_cast<size_t>((i * s.length + begin) * s.inner) * es,
                chunk);
  return out;
}

void put_rows(Tensor& dst, int dim, int64_t begin, const Tensor& src, bool copy) {
  const Split d = split_at(dst, dim, "put_rows"), s = split_at(src, dim, "put_rows");
  if (d.outer != s.outer || d.inner != s.inner || begin < 0 || begin + s.length > d.length ||
      dst.dtype() != src.dtype())
    throw ShapeError("put_rows: " + shape_str(src.shape()) + " into rows from " + std::to_string(begin) + " of " +
                     shape_str(dst.shape()));
  const int64_t run = s.length * s.inner;
  if (copy) {
    const size_t es = element_size(dst);
    auto* o = static_cast<std::byte*>(dst.raw());
    const auto* in = static_cast<const std::byte*>(src.raw());
    for (int64_t i = 0; i < s.outer; ++i)
      std::memcpy(o + static_cast<size_t>((i * d.length + begin) * d.inner) * es,
                  in + static_cast<size_t>(i * run) * es, static_cast<size_t>(run) * es);
    return;
  }
  float* o = dst.f32();
  const float* in = src.f32();
  for (int64_t i = 0; i < s.outer; ++i) {
    float* out_row = o + (i * d.length + begin) * d.inner;
    const float* in_row = in + i * run;
    for (int64_t j = 0; j < run; ++j) out_row[j] += in_row[j];
  }
}

}  // namespace detail

const char* layout_name(SequenceLayout layout) { return layout == SequenceLayout::kZigzag ? "zigzag" : "contiguous"; }

SequenceLayout parse_layout(const std::string& name) {
  if (name == "contiguous") return SequenceLayout::kContiguous;
  if (name == "zigzag") return SequenceLayout::kZigzag;
  throw ArgumentError("sequence layout '" + name + "': expected contiguous or zigzag");
}

std::vector<Segment> sequence_segments(int64_t length, int rank, int size, SequenceLayout layout) {
  if (size < 1 || rank < 0 || rank >= size || length < 0)
    throw ArgumentError("sequence_segments: rank " + std::to_string(rank) + " of " + std::to_string(size) +
                        ", length " + std::to_string(length));
  // chunk c of `chunks` has length / chunks rows, one more for the first length % chunks
  const int64_t chunks = layout == SequenceLayout::kZigzag ? 2 * size : size;
  auto chunk = [&](int64_t c) {
    const int64_t base = length / chunks, extra = length % chunks;
    return Segment{c * base + std::min(c, extra), (c + 1) * base + std::min(c + 1, extra)};
  };
  if (layout == SequenceLayout::kContiguous) return {chunk(rank)};
  return {chunk(rank), chunk(2 * int64_t{size} - 1 - rank)};
}

Tensor shard_sequence(const Tensor& full, int dim, int rank, int size, SequenceLayout layout) {
  if (dim < 0 || dim >= full.rank())
    throw ArgumentError("shard_sequence: dim " + std::to_string(dim) + " for a tensor of shape " +
                        shape_str(full.shape()));
  const std::vector<Segment> segs = sequence_segments(full.dim(dim), rank, size, layout);
  int64_t n = 0;
  for (const Segment& s : segs) n += s.end - s.begin;
  Shape shape = full.shape();
  shape[static_cast<size_t>(dim)] = n;
  Tensor out(shape, full.dtype());
  int64_t at = 0;
  for (const Segment& s : segs) {
    detail::put_rows(out, dim, at, detail::rows(full, dim, s.begin, s.end - s.begin), true);
    at += s.end - s.begin;
  }
  return out;
}

Tensor gather_sequence(const Tensor& local, int dim, MPI_Comm comm, SequenceLayout layout, int root) {
  detail::CommDup c(comm);
  // A bad dim or root is told to every rank through the Allgather below (rank -1 in its header): had the rank that
  // found it thrown here, the others would wait in the Allgather for it
  const bool dim_ok = dim >= 0 && dim < local.rank(), root_ok = root >= 0 && root < c.size();
  const std::string mistake =
      !dim_ok    ? "dim " + std::to_string(dim) + " for a tensor of shape " + shape_str(local.shape())
      : !root_ok ? "root " + std::to_string(root) + " is not a rank of " + std::to_string(c.size())
                 : "";
  // every rank's length, and what must agree (the root sizes every rank's message from its own): rank, dtype, dim,
  // root and the sizes around dim
  enum : size_t { kLength, kRank, kDType, kDim, kRoot, kOuter, kPerRow, kCount };
  std::array<int64_t, kCount> mine{};
  mine[kRank] = -1;
  int64_t per_row = 0;
  if (mistake.empty()) {
    Shape row_shape = local.shape();
    row_shape[static_cast<size_t>(dim)] = 1;
    per_row = shape_numel(row_shape);
    int64_t outer = 1;
    for (int i = 0; i < dim; ++i) outer *= local.dim(i);
    mine = {local.dim(dim), local.rank(), static_cast<int64_t>(local.dtype()), dim, root, outer, per_row};
  }
  std::vector<std::array<int64_t, kCount>> headers(static_cast<size_t>(c.size()));
  detail::check_mpi(MPI_Allgather(mine.data(), kCount, MPI_INT64_T, headers.data(), kCount, MPI_INT64_T, c.get()),
                    "gather_sequence: MPI_Allgather");
  if (!mistake.empty()) throw ArgumentError("gather_sequence: " + mistake);
  for (size_t s = 0; s < headers.size(); ++s)
    if (headers[s][kRank] < 0)
      throw ArgumentError("gather_sequence (rank " + std::to_string(c.rank()) + "): rank " + std::to_string(s) +
                          " was given a dim or root it cannot use");
  const auto disagree = [&](size_t s) {
    return ShapeError("gather_sequence (rank " + std::to_string(c.rank()) + "): rank " + std::to_string(s) +
                      " disagrees with rank 0 on the tensor's rank, dtype, sizes other than dim, dim or root " +
                      "(this rank: " + dtype_name(local.dtype()) + " " + shape_str(local.shape()) + ", dim " +
                      std::to_string(dim) + ", root " + std::to_string(root) + ")");
  };
  std::vector<int64_t> lengths;
  for (size_t s = 0; s < headers.size(); ++s) {
    lengths.push_back(headers[s][kLength]);
    for (size_t f = kRank; f < kCount; ++f)
      if (headers[s][f] != headers[0][f]) throw disagree(s);  // the same verdict on every rank: none waits for another
  }
  // the sizes themselves, now that every rank has the same number of them ([1, 6, L, 4] and [2, 3, L, 4] have the same
  // outer and per_row products: rank 1's rows had been read as rank 0's shape)
  Shape others = local.shape();
  others[static_cast<size_t>(dim)] = 0;
  std::vector<int64_t> all_sizes(others.size() * headers.size());
  detail::check_mpi(MPI_Allgather(others.data(), static_cast<int>(others.size()), MPI_INT64_T, all_sizes.data(),
                                  static_cast<int>(others.size()), MPI_INT64_T, c.get()),
                    "gather_sequence: MPI_Allgather of the sizes");
  for (size_t s = 1; s < headers.size(); ++s)
    if (!std::equal(all_sizes.begin(), all_sizes.begin() + static_cast<int64_t>(others.size()),
                    all_sizes.begin() + static_cast<int64_t>(s * others.size())))
      throw disagree(s);
  // Counted in rows (one position along dim with every other index: an MPI type of row_bytes bytes), so a gather
  // whose total passes 2 GiB still works; a rank past INT_MAX rows or a row past INT_MAX bytes is refused (alike on
  // every rank: the sizes are the agreed ones).
  const int64_t row_bytes = per_row * static_cast<int64_t>(dtype_size(local.dtype()));
  std::vector<int> counts(lengths.size()), offsets(lengths.size());
  int64_t total_rows = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    counts[s] = detail::mpi_count(lengths[s], "gather_sequence (rows of rank " + std::to_string(s) + ")");
    offsets[s] = detail::mpi_count(total_rows, "gather_sequence (rows before rank " + std::to_string(s) + ")");
    total_rows += lengths[s];
  }
  std::vector<std::byte> all(c.rank() == root ? static_cast<size_t>(total_rows * row_bytes) : 0);
  if (row_bytes > 0) {
    const detail::RowType row(detail::mpi_count(row_bytes, "gather_sequence (bytes of one row)"));
    detail::check_mpi(MPI_Gatherv(local.raw(), counts[static_cast<size_t>(c.rank())], row.get(), all.data(),
                                  counts.data(), offsets.data(), row.get(), root, c.get()),
                      "gather_sequence: MPI_Gatherv");
  }
  if (c.rank() != root) return Tensor();
  Shape shape = local.shape();
  shape[static_cast<size_t>(dim)] = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  Tensor full(shape, local.dtype());
  for (int s = 0; s < c.size(); ++s) {
    Shape part_shape = local.shape();
    part_shape[static_cast<size_t>(dim)] = lengths[static_cast<size_t>(s)];
    const Tensor part =
        Tensor::borrow(part_shape, local.dtype(), all.data() + offsets[static_cast<size_t>(s)] * row_bytes, nullptr);
    for (const detail::Piece& p : detail::pieces_of(lengths, s, layout))
      detail::put_rows(full, dim, p.global, detail::rows(part, dim, p.local, p.length), true);
  }
  return full;
}

}  // namespace attn::dist
