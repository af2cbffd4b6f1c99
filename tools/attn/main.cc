// attn: the command-line tool. One file per subcommand; this one wires them and turns every error
// into a message on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <iostream>
#include <new>

#include "attn/error.h"
#include "attn/version.h"
#include "common.h"

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const attn::Error& e) {
    std::cerr << "attn: error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "attn: error: out of memory\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "attn: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
