// The attn tool's distributed commands (dist_cli.cc with MPI; dist_cli_stub.cc without, where each says so):
// attn sdpa --ring, attn bench ring, attn train under mpirun.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>

#include "attn/train/trainer.h"

namespace attn::cli {

// attn sdpa --ring: the flags of attn sdpa that ring attention supports.
struct RingSdpaArgs {
  std::string q, k, v, out, key_padding_mask, causal = "none", impl = "auto";
  std::string layout;  // "contiguous" | "zigzag"; "" = zigzag when causal, else contiguous
  std::optional<float> scale;
  int threads = 0;
};
// Every rank reads the inputs and keeps its chunk of the sequence; rank 0 gathers the output and writes it.
void run_sdpa_ring(const RingSdpaArgs& args);

// Whether mpirun (Open MPI or a PMI launcher) started this process as one of several ranks.
inline bool launched_by_mpirun() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* v = std::getenv(name); v && std::atoi(v) > 1) return true;
  return false;
}
// Whether this process is rank 0 (the one that writes a command's outputs), from the launcher's environment, before
// MPI starts; true outside mpirun.
inline bool launcher_rank0() {
  if (!launched_by_mpirun()) return true;
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* v = std::getenv(name)) return std::string(v) == "0";
  return true;
}
// The exit status of attn: MPI is finalised if it was started; a failure with several ranks ends them all
// (MPI_Abort), so a rank that fails never leaves the others waiting.
int finish_distributed(int status);

void add_bench_ring(CLI::App& bench);  // attn bench ring (bench_ring.cc)

// attn train's data-parallel flags (used under mpirun only; dist::ReducerOptions).
struct DataParallelArgs {
  double bucket_mb = 0.25;         // --bucket-mb: MB of gradients per all-reduce
  std::string overlap = "thread";  // --overlap: none | thread | nonblocking
};

// attn train under mpirun: data parallel over every rank (attn/dist/data_parallel.h). *rank receives this rank.
train::TrainReport train_distributed(const train::TrainOptions& options, const DataParallelArgs& data_parallel,
                                     const std::function<void(int64_t, float)>& on_step, int* rank);

}  // namespace attn::cli
