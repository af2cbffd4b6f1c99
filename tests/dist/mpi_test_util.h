// This process's place in MPI_COMM_WORLD, for the tests that run under mpirun.
#pragma once

#include <mpi.h>

namespace attn::test {

inline int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

}  // namespace attn::test
