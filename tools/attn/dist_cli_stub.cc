// attn built without MPI: the distributed commands exist and explain how to get them.
#include <cstdlib>

#include "attn/error.h"
#include "dist_cli.h"

namespace attn::cli {
namespace {
constexpr const char* kWhy =
    "this attn was built without MPI (install Open MPI: apt-get install libopenmpi-dev openmpi-bin, then "
    "configure with cmake -DATTN_WITH_MPI=ON)";
}

void run_sdpa_ring(const RingSdpaArgs&) { throw ArgumentError(std::string("--ring: ") + kWhy); }

bool launched_by_mpirun() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* v = std::getenv(name); v && std::atoi(v) > 1) return true;
  return false;
}

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
