// attn: the command-line tool. One file per subcommand; this one wires them and turns every error
// into a message on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <iostream>
#include <new>

#include "attn/error.h"
#include "attn/version.h"
#include "common.h"
#include "dist_cli.h"

int main(int argc, char** argv) {
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
  int status = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    status = app.exit(e);
  } catch (const attn::Error& e) {
    std::cerr << "attn: error: " << e.what() << "\n";
    status = 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "attn: error: out of memory\n";
    status = 3;
  } catch (const std::exception& e) {
    std::cerr << "attn: error: " << e.what() << "\n";
    status = 2;
  }
  // under mpirun: MPI is finalised, or on a failure every rank is ended (none is left waiting)
  return attn::cli::finish_distributed(status);
}
