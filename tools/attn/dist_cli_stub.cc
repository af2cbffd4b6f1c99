// attn built without MPI: the distributed commands exist and explain how to get them.

#include "attn/error.h"
#include "dist_cli.h"

namespace attn::cli {
namespace {
constexpr const char* kWhy =
    "this attn was built without MPI (install Open MPI: apt-get install libopenmpi-dev openmpi-bin, then "
    "configure with cmake -DATTN_WITH_MPI=ON)";
}

void run_sdpa_ring(const RingSdpaArgs&) { throw ArgumentError(std::string("--ring: ") + kWhy); }

train::TrainReport train_distributed(const train::TrainOptions&, const DataParallelArgs&,
                                     const std::function<void(int64_t, float)>&, int*) {
  throw ArgumentError(std::string("attn train under mpirun: ") + kWhy);
}

int finish_distributed(int status) { return status; }

void add_bench_ring(CLI::App& bench) {
  bench.add_subcommand("ring", "ring attention under mpirun (needs MPI)")->callback([] {
    throw ArgumentError(std::string("bench ring: ") + kWhy);
  });
}

}  // namespace attn::cli
