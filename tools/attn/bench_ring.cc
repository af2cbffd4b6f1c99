// attn bench ring: ring attention under mpirun. Each rank makes only its own chunk (memory O(L/N)); rank 0
// prints the time (the slowest rank's median), every rank's peak RSS and share of the time spent waiting.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "attn/dist/ring_attention.h"
#include "attn/error.h"
#include "common.h"
#include "dist_cli.h"
#include "mpi_session.h"

namespace attn::cli {
namespace {

struct RingBench {
  int64_t batch = 1, heads = 1, kv_heads = 0, length = 4096, head_dim = 64;
  bool causal = false, backward = false, json = false;
  std::string layout;
  int threads = 0, repeat = 3, warmup = 1;
};

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x.size() % 2 ? x[x.size() / 2] : 0.5 * (x[x.size() / 2 - 1] + x[x.size() / 2]);
}

void run_ring_bench(const RingBench& a) {
  dist::MpiSession& mpi = mpi_session();
  const int r = mpi.rank(), n = mpi.size();
  const int64_t hkv = a.kv_heads > 0 ? a.kv_heads : a.heads;
  dist::RingOptions o;
  o.attention.causal = a.causal ? CausalAlignment::kTopLeft : CausalAlignment::kNone;
  o.attention.num_threads = a.threads;
  o.attention.return_lse = a.backward;
  o.layout = !a.layout.empty() ? dist::parse_layout(a.layout)
             : a.causal        ? dist::SequenceLayout::kZigzag
                               : dist::SequenceLayout::kContiguous;
  int64_t local = 0;
  for (const dist::Segment& s : dist::sequence_segments(a.length, r, n, o.layout)) local += s.end - s.begin;
  const uint64_t seed = 1000 * static_cast<uint64_t>(r);
  const Tensor q = random_tensor({a.batch, a.heads, local, a.head_dim}, seed + 1),
               k = random_tensor({a.batch, hkv, local, a.head_dim}, seed + 2),
               v = random_tensor({a.batch, hkv, local, a.head_dim}, seed + 3);
  const Tensor d_out = a.backward ? random_tensor({a.batch, a.heads, local, a.head_dim}, seed + 4) : Tensor();
  std::vector<double> ms, wait_share, bwd_ms, bwd_wait;
  int64_t bytes = 0;
  for (int i = 1 - a.warmup; i <= a.repeat; ++i) {  // runs i <= 0 warm up
    MPI_Barrier(MPI_COMM_WORLD);
    const dist::RingResult f = dist::ring_attention(q, k, v, MPI_COMM_WORLD, o);
    if (i > 0) ms.push_back(1e3 * f.stats.seconds), wait_share.push_back(f.stats.wait_seconds / f.stats.seconds);
    bytes = f.stats.bytes_sent;
    if (a.backward) {
      MPI_Barrier(MPI_COMM_WORLD);
      const dist::RingGrads g = dist::ring_attention_backward(q, k, v, f.output, f.lse, d_out, MPI_COMM_WORLD, o);
      if (i > 0) bwd_ms.push_back(1e3 * g.stats.seconds), bwd_wait.push_back(g.stats.wait_seconds / g.stats.seconds);
    }
  }
  // per rank: forward median ms, its waiting share, backward median ms and share, peak RSS, bytes sent
  const std::vector<double> mine = {
      median(ms),    median(wait_share),        a.backward ? median(bwd_ms) : 0.0, a.backward ? median(bwd_wait) : 0.0,
      peak_rss_mb(), static_cast<double>(bytes)};
  std::vector<double> all(mine.size() * static_cast<size_t>(n));
  MPI_Gather(mine.data(), static_cast<int>(mine.size()), MPI_DOUBLE, all.data(), static_cast<int>(mine.size()),
             MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (r != 0) return;
  const size_t w = mine.size();
  double slowest = 0.0, slowest_bwd = 0.0, max_wait = 0.0, max_rss = 0.0;
  for (int s = 0; s < n; ++s) {
    const double* x = &all[static_cast<size_t>(s) * w];
    slowest = std::max(slowest, x[0]), slowest_bwd = std::max(slowest_bwd, x[2]);
    max_wait = std::max(max_wait, x[1]), max_rss = std::max(max_rss, x[4]);
  }
  const double flops = 4.0 * static_cast<double>(a.batch) * static_cast<double>(a.heads) *
                       static_cast<double>(a.length) * static_cast<double>(a.length) * static_cast<double>(a.head_dim) *
                       (a.causal ? 0.5 : 1.0);
  if (a.json) {
    std::printf(
        "{\"bench\": \"ring\", \"ranks\": %d, \"B\": %lld, \"H\": %lld, \"Hkv\": %lld, \"L\": %lld, \"D\": %lld, "
        "\"causal\": %s, \"layout\": \"%s\", \"median_ms\": %.3f, \"gflops\": %.2f, \"max_wait_share\": %.4f, "
        "\"max_peak_rss_mb\": %.1f",
        n, static_cast<long long>(a.batch), static_cast<long long>(a.heads), static_cast<long long>(hkv),
        static_cast<long long>(a.length), static_cast<long long>(a.head_dim), a.causal ? "true" : "false",
        dist::layout_name(o.layout), slowest, flops / (slowest * 1e-3) / 1e9, max_wait, max_rss);
    if (a.backward) std::printf(", \"backward_median_ms\": %.3f", slowest_bwd);
    std::printf(", \"per_rank\": [");
    for (int s = 0; s < n; ++s) {
      const double* x = &all[static_cast<size_t>(s) * w];
      std::printf(
          "%s{\"ms\": %.3f, \"wait_share\": %.4f, \"backward_ms\": %.3f, \"backward_wait_share\": %.4f, "
          "\"peak_rss_mb\": %.1f, \"bytes_sent\": %.0f}",
          s ? ", " : "", x[0], x[1], x[2], x[3], x[4], x[5]);
    }
    std::printf("]}\n");
    return;
  }
  std::printf("ring attention, %d ranks, %s layout: B=%lld H=%lld Hkv=%lld L=%lld D=%lld%s\n", n,
              dist::layout_name(o.layout), static_cast<long long>(a.batch), static_cast<long long>(a.heads),
              static_cast<long long>(hkv), static_cast<long long>(a.length), static_cast<long long>(a.head_dim),
              a.causal ? " causal" : "");
  std::printf("forward  %10.2f ms (slowest rank's median of %d)  %.2f GFLOP/s\n", slowest, a.repeat,
              flops / (slowest * 1e-3) / 1e9);
  if (a.backward) std::printf("backward %10.2f ms\n", slowest_bwd);
  std::printf("%-5s %12s %10s %12s %10s %12s %12s\n", "rank", "forward ms", "waiting", "backward ms", "waiting",
              "peak RSS MB", "MB sent");
  for (int s = 0; s < n; ++s) {
    const double* x = &all[static_cast<size_t>(s) * w];
    std::printf("%-5d %12.2f %9.1f%% %12.2f %9.1f%% %12.1f %12.1f\n", s, x[0], 100.0 * x[1], x[2], 100.0 * x[3], x[4],
                x[5] / 1e6);
  }
}

}  // namespace

void add_bench_ring(CLI::App& bench) {
  auto a = std::make_shared<RingBench>();
  CLI::App* sub = bench.add_subcommand(
      "ring",
      "ring attention under mpirun (mpirun -np N attn bench ring ...): time (the slowest rank), GFLOP/s, each rank's "
      "peak RSS and share of the time spent waiting for messages");
  sub->add_option("--batch", a->batch, "B")->check(CLI::PositiveNumber);
  sub->add_option("--heads", a->heads, "H")->check(CLI::PositiveNumber);
  sub->add_option("--kv-heads", a->kv_heads, "Hkv (default H)")->check(CLI::NonNegativeNumber);
  sub->add_option("--length", a->length, "L: the whole sequence, cut across the ranks")->check(CLI::PositiveNumber);
  sub->add_option("--head-dim", a->head_dim, "D = Dv")->check(CLI::PositiveNumber);
  sub->add_flag("--causal", a->causal, "causal (top-left)");
  sub->add_option("--layout", a->layout, "contiguous or zigzag (default zigzag with --causal)")
      ->check(CLI::IsMember({"contiguous", "zigzag"}));
  sub->add_option("--threads", a->threads, "threads per rank; 0 = the cores mpirun gave the rank")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--repeat", a->repeat, "timed runs after the warm-up")->check(CLI::PositiveNumber);
  sub->add_option("--warmup", a->warmup, "untimed runs first (default 1)")->check(CLI::NonNegativeNumber);
  sub->add_flag("--backward", a->backward, "also time the ring backward");
  sub->add_flag("--json", a->json, "one JSON line");
  sub->callback([a] { run_ring_bench(*a); });
}

}  // namespace attn::cli
