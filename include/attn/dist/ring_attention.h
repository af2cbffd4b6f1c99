// attn/dist/ring_attention.h: ring attention (sequence parallelism) over MPI.
//
// Built only with MPI (cmake -DATTN_WITH_MPI=ON, the default when Open MPI is found); link attn_dist.
// Each rank of `comm` holds one chunk of the sequence: its queries q_local [B, H, Lq_r, D] and its keys and
// values k_local [B, Hkv, Lk_r, D], v_local [B, Hkv, Lk_r, Dv]. The K/V chunks travel around the ring (rank r
// sends to r + 1, receives from r − 1) in non-blocking point-to-point messages that a helper thread completes
// while the fused kernel computes on the chunk that arrived before; each rank merges the partial results of
// its queries by log-sum-exp. After N − 1 steps every query has seen every key:
//   output_local = the rows of scaled_dot_product_attention(q, k, v) that belong to this rank.
// The backward sends the K/V chunks around once more, with their partial dK/dV behind them (FlashAttention-2's
// ring backward: each block's contribution comes from scaled_dot_product_attention_backward given the global
// output and log-sum-exp of the local queries), and a last hop returns each dK/dV to its owner.
//
// Layouts (which global positions a rank's rows hold; the lengths may differ from rank to rank):
//   kContiguous  rank r holds rows [Σ_{s<r} L_s, Σ_{s≤r} L_s) of the sequence.
//   kZigzag      the sequence is cut into 2N chunks; rank r holds chunks r and 2N − 1 − r, in that order
//                (its first (L_r + 1) / 2 rows, then its last L_r / 2). With a causal mask every rank then has
//                the same work, where kContiguous leaves rank 0 one block and rank N − 1 all N.
// shard_sequence / gather_sequence cut a full tensor into a rank's chunk and put the chunks back together.
//
// Supported options (AttentionOptions): scale, causal (kTopLeft or kBottomRight, over the global lengths),
// key_padding_mask given LOCALLY as [B, Lk_r] bool (true = padding; it travels with its keys), grouped-query
// attention (H a multiple of Hkv), impl, num_threads. A boolean or float mask, a window, ALiBi slopes,
// dropout and return_weights throw ArgumentError. Every rank must call with the same B, H, Hkv, D, Dv,
// layout and options: the ranks exchange their shapes first, and a mismatch throws ShapeError on every rank
// (naming the rank and its shape) instead of hanging. An error one rank meets inside a step (e.g. out of memory in
// its block's SDPA) is shared once the step's messages complete: every rank throws. One that fails outside the
// exchange or inside MPI can leave the others waiting: the attn tool ends all ranks with MPI_Abort then.
//
// Thread support: the helper thread needs MPI_THREAD_SERIALIZED (MpiSession asks for it). Under
// MPI_THREAD_SINGLE or FUNNELED the messages are completed after each block's compute instead (correct, not
// overlapped).
#pragma once

#include <mpi.h>

#include <cstdint>

#include "attn/attention.h"
#include "attn/tensor.h"

namespace attn::dist {

// Initialises MPI (MPI_THREAD_SERIALIZED) unless it already is, and finalises it on destruction if it did.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  bool owns_ = false;
  int rank_ = 0, size_ = 1;
};

enum class SequenceLayout : uint8_t { kContiguous, kZigzag };
// "contiguous" | "zigzag", and the inverse (ArgumentError naming the accepted values).
const char* layout_name(SequenceLayout layout);
SequenceLayout parse_layout(const std::string& name);

struct RingOptions {
  AttentionOptions attention;  // see above for what is supported; key_padding_mask is local [B, Lk_r]
  SequenceLayout layout = SequenceLayout::kContiguous;
};

// Where the time went on this rank (the forward or the backward alone).
struct RingStats {
  double seconds = 0.0;       // the whole call
  double wait_seconds = 0.0;  // waiting for messages the compute did not hide (the shape exchange included)
  int64_t bytes_sent = 0;     // by this rank
  int steps = 0;              // blocks computed (N)
};

struct RingResult {
  Tensor output;  // [B, H, Lq_r, Dv]: this rank's rows
  Tensor lse;     // [B, H, Lq_r] when options.attention.return_lse: global log-sum-exp of each local row
  RingStats stats;
};

struct RingGrads {
  Tensor dq;  // [B, H, Lq_r, D]
  Tensor dk;  // [B, Hkv, Lk_r, D]: every rank's queries' contributions to this rank's keys
  Tensor dv;  // [B, Hkv, Lk_r, Dv]
  RingStats stats;
};

// The forward. Collective over comm: every rank calls it. Throws ShapeError, DTypeError or ArgumentError
// naming the argument, the rank and the shapes.
RingResult ring_attention(const Tensor& q_local, const Tensor& k_local, const Tensor& v_local, MPI_Comm comm,
                          const RingOptions& options = {});

// The backward: out_local [B, H, Lq_r, Dv] and lse_local [B, H, Lq_r] from the forward (return_lse), d_out_local
// = dLoss/dOutput for the local rows. Pass the forward's options unchanged. Collective over comm.
RingGrads ring_attention_backward(const Tensor& q_local, const Tensor& k_local, const Tensor& v_local,
                                  const Tensor& out_local, const Tensor& lse_local, const Tensor& d_out_local,
                                  MPI_Comm comm, const RingOptions& options = {});

// The rows [begin, end) of global positions that rank `rank` of `size` holds along dimension `dim` when the
// sequence has `length` rows cut as evenly as possible (lengths differ by at most 1 per chunk): one segment for
// kContiguous, two for kZigzag (the second may be empty).
struct Segment {
  int64_t begin = 0, end = 0;
};
std::vector<Segment> sequence_segments(int64_t length, int rank, int size, SequenceLayout layout);

// This rank's chunk of a full tensor along `dim` (a copy), cut as sequence_segments says.
Tensor shard_sequence(const Tensor& full, int dim, int rank, int size, SequenceLayout layout);

// The inverse, collective over comm: every rank passes its chunk (any lengths along dim; the others equal);
// `root` receives the full tensor, the other ranks an undefined Tensor.
Tensor gather_sequence(const Tensor& local, int dim, MPI_Comm comm, SequenceLayout layout, int root = 0);

}  // namespace attn::dist
