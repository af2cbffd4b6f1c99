// GoogleTest under mpirun: MPI around the tests, one report (rank 0's) plus every other rank's failures, and the
// same exit status on every rank (a failure anywhere fails all).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

// The failures of a rank other than 0, prefixed with its number (rank 0 prints the usual report).
class RankFailures : public testing::EmptyTestEventListener {
 public:
  explicit RankFailures(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  // ATTN_TEST_MPI_THREAD=single: MPI without thread support, where the reducer's communication thread must give way
  // to its non-blocking mode (CTest dist_np2_thread_single)
  const char* level = std::getenv("ATTN_TEST_MPI_THREAD");
  const bool single = level != nullptr && std::strcmp(level, "single") == 0;
  int provided = 0;
  MPI_Init_thread(&argc, &argv, single ? MPI_THREAD_SINGLE : MPI_THREAD_SERIALIZED, &provided);
  testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailures(rank));
  }
  int failed = RUN_ALL_TESTS() != 0, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any && !failed) std::fprintf(stderr, "a rank other than 0 failed (see its messages above)\n");
  MPI_Finalize();
  return any;
}
