// The attn tool's one MPI session (dist_cli.cc): started by the first command that needs it.
#pragma once

#include "attn/dist/ring_attention.h"

namespace attn::cli {
dist::MpiSession& mpi_session();
}
