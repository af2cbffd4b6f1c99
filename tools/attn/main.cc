// attn: the command-line tool. One file per subcommand; this one wires them and turns every error
// into a message on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <new>

#include "attn/error.h"
#include "attn/version.h"
#include "common.h"
#include "dist_cli.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace {
// A kernel call's outputs are fresh tensors of a few MB, freed before the next call. glibc's defaults hand
// such blocks back to the OS (the heap's top past 2× the adaptive mmap threshold, or the mapping itself), so the
// next call faults every page in again: ~1100 faults a call of a causal backward at L = 1024 (H 8, D 64), 7% of its
// time on the development VM. Here blocks up to 32 MB (glibc's largest threshold) come from the heap and freed
// memory stays mapped (the process's resident set stays at its peak). GLIBC_TUNABLES
// glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824 does the same for any process;
// bench/*.py give PyTorch's process those so that both sides of a comparison allocate alike.
void keep_freed_memory_mapped() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}
}  // namespace

int main(int argc, char** argv) {
  keep_freed_memory_mapped();
  CLI::App app{
      "attn: the Transformer attention family, exact and fast.\n"
      "  softmax(scale · Q·Kᵀ + M) · V, with PyTorch's semantics.\n"
      "Start with `attn explain` for a walk-through of the five mechanisms."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("attn ") + attn::version());
  attn::cli::add_explain(app);
  attn::cli::add_sdpa(app);
  attn::cli::add_mha(app);
  attn::cli::add_bench(app);
  attn::cli::add_translate(app);
  attn::cli::add_train(app);
  attn::cli::add_viz(app);
  attn::cli::add_embed(app);
  attn::cli::add_bench_ring(*app.get_subcommand("bench"));
  // a parse error quotes the argument it refused: escaped as every other message (a terminal control sequence in an
  // argument must not reach the terminal)
  app.failure_message([](const CLI::App* from, const CLI::Error& e) {
    return attn::cli::terminal_safe(CLI::FailureMessage::simple(from, e));
  });
  int status = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    status = app.exit(e);
  } catch (const attn::AllocationError& e) {  // (a tensor too large: its shape named)
    std::cerr << "attn: error: out of memory: " << attn::cli::terminal_safe(e.what()) << "\n";
    status = 3;
  } catch (const attn::Error& e) {
    std::cerr << "attn: error: " << attn::cli::terminal_safe(e.what()) << "\n";
    status = 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "attn: error: out of memory\n";
    status = 3;
  } catch (const std::exception& e) {
    std::cerr << "attn: error: " << attn::cli::terminal_safe(e.what()) << "\n";
    status = 2;
  }
  // What a command printed must have reached standard output: a full disk or a closed pipe is a failure, not a
  // truncated file with exit status 0 (embed's rows, translate's lines are the data itself).
  std::cout.flush();
  if (std::fflush(stdout) != 0 || std::ferror(stdout) || std::cout.fail()) {
    std::cerr << "attn: error: writing standard output failed\n";
    if (status == 0) status = 2;
  }
  // under mpirun: MPI is finalised, or on a failure every rank is ended (none is left waiting)
  return attn::cli::finish_distributed(status);
}
