// attn sdpa --ring and the MPI session of the attn tool.
#include "dist_cli.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "attn/dist/data_parallel.h"
#include "attn/dist/ring_attention.h"
#include "attn/error.h"
#include "common.h"
#include "mpi_session.h"

namespace attn::cli {
namespace {
std::unique_ptr<dist::MpiSession> g_session;
}

dist::MpiSession& mpi_session() {
  if (!g_session) g_session = std::make_unique<dist::MpiSession>(nullptr, nullptr);
  return *g_session;
}

int finish_distributed(int status) {
  if (!g_session) return status;
  std::fflush(stdout), std::fflush(stderr);
  if (status != 0 && g_session->size() > 1) MPI_Abort(MPI_COMM_WORLD, status);  // ends every rank
  g_session.reset();
  return status;
}

train::TrainReport train_distributed(const train::TrainOptions& options, const DataParallelArgs& data_parallel,
                                     const std::function<void(int64_t, float)>& on_step, int* rank) {
  dist::MpiSession& mpi = mpi_session();
  *rank = mpi.rank();
  // (--bucket-mb is in (0, 8192): run_train checked it)
  dist::ReducerOptions reducer;
  reducer.bucket_elements = std::clamp<int64_t>(std::llround(data_parallel.bucket_mb * (1 << 20) / sizeof(float)), 1,
                                                std::numeric_limits<int>::max());
  reducer.overlap = dist::parse_gradient_overlap(data_parallel.overlap);
  dist::ReducerTimes times;
  const train::TrainReport r = dist::train_numbers_data_parallel(options, MPI_COMM_WORLD, reducer, on_step, &times);
  if (*rank == 0)
    std::fprintf(stderr,
                 "data parallel over %d ranks (overlap %s, buckets of %.3g MB, %.1f per step): rank 0 spent %.2f s of "
                 "%.2f s in the gradient all-reduce, %.2f s (%.1f %%) of it waiting after the backward\n",
                 mpi.size(), data_parallel.overlap.c_str(), data_parallel.bucket_mb,
                 times.steps ? static_cast<double>(times.buckets) / static_cast<double>(times.steps) : 0.0,
                 times.reducing, r.seconds, times.waiting, 100.0 * times.waiting / std::max(r.seconds, 1e-9));
  return r;
}

void run_sdpa_ring(const RingSdpaArgs& a) {
  dist::MpiSession& mpi = mpi_session();
  const Tensor q = load_npy_flag("--q", a.q), k = load_npy_flag("--k", a.k), v = load_npy_flag("--v", a.v);
  for (const auto& [flag, t] : {std::pair{"--q", &q}, {"--k", &k}, {"--v", &v}})
    if (t->rank() != 4)
      throw ShapeError(std::string(flag) + " has shape " + shape_str(t->shape()) + "; --ring needs [B, H, L, D]");
  // the whole tensors' sizes, named by their flags, before any is cut into the ranks' shards (a mismatch had been named
  // by the shards' own names and shapes, and on the other ranks only as "rank 0 rejected its inputs")
  const std::string shapes =
      " (--q " + shape_str(q.shape()) + ", --k " + shape_str(k.shape()) + ", --v " + shape_str(v.shape()) + ")";
  if (k.dim(0) != q.dim(0) || v.dim(0) != q.dim(0) || v.dim(1) != k.dim(1) || v.dim(2) != k.dim(2) ||
      k.dim(3) != q.dim(3))
    throw ShapeError("--q, --k and --v disagree" + shapes +
                     "; expected [B, H, Lq, D], [B, Hkv, Lk, D], [B, Hkv, Lk, Dv]");
  if (k.dim(1) == 0 || q.dim(1) % k.dim(1) != 0)
    throw ShapeError("--q's heads H = " + std::to_string(q.dim(1)) +
                     " are not a multiple of --k's Hkv = " + std::to_string(k.dim(1)) + shapes);
  dist::RingOptions o;
  o.attention.causal = parse_causal(a.causal);
  o.attention.scale = a.scale;
  o.attention.impl = parse_impl(a.impl);
  o.attention.num_threads = a.threads;
  o.layout = !a.layout.empty()                              ? dist::parse_layout(a.layout)
             : o.attention.causal != CausalAlignment::kNone ? dist::SequenceLayout::kZigzag
                                                            : dist::SequenceLayout::kContiguous;
  const int r = mpi.rank(), n = mpi.size();
  if (!a.key_padding_mask.empty()) {
    const Tensor pad = load_npy_flag("--key-padding-mask", a.key_padding_mask);
    if (pad.shape() != Shape{k.dim(0), k.dim(2)})
      throw ShapeError("--key-padding-mask has shape " + shape_str(pad.shape()) +
                       "; expected [B, Lk] = " + shape_str({k.dim(0), k.dim(2)}));
    o.attention.key_padding_mask = dist::shard_sequence(pad, 1, r, n, o.layout);
  }
  const dist::RingResult res =
      dist::ring_attention(dist::shard_sequence(q, 2, r, n, o.layout), dist::shard_sequence(k, 2, r, n, o.layout),
                           dist::shard_sequence(v, 2, r, n, o.layout), MPI_COMM_WORLD, o);
  const Tensor out = dist::gather_sequence(res.output, 2, MPI_COMM_WORLD, o.layout, 0);
  if (r == 0) write_outputs({{"--out", a.out, out}});
}

}  // namespace attn::cli
