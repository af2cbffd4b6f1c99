// MPI plumbing shared by ring attention, the sequence helpers and data-parallel training.
// The dist layer uses only the library's public headers (scripts/check_layers.py) and its own.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace attn::dist::detail {

// A duplicate of the caller's communicator for one call: its messages never meet the caller's.
class CommDup {
 public:
  explicit CommDup(MPI_Comm comm);
  ~CommDup();
  CommDup(const CommDup&) = delete;
  CommDup& operator=(const CommDup&) = delete;
  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

// Throws Error naming `what` when an MPI call failed (the communicators return errors, not abort: see CommDup).
void check_mpi(int code, const char* what);

// An element count as MPI's int; throws ArgumentError naming `what` past INT_MAX elements.
int mpi_count(int64_t n, const std::string& what);

// A committed MPI datatype of `bytes` contiguous bytes (one row of a gather), freed on destruction.
class RowType {
 public:
  explicit RowType(int bytes);
  ~RowType();
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// Non-blocking messages completed by a helper thread while the caller computes:
//   start(requests) -> compute -> finish() (returns the seconds spent waiting after the compute).
// The helper polls MPI_Testall with short sleeps (a busy MPI_Waitall would take a core from the kernel).
// Without MPI_THREAD_SERIALIZED the requests are completed in finish() instead.
class Exchange {
 public:
  Exchange();
  ~Exchange();
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;
  void start(std::vector<MPI_Request> requests);
  double finish();
  bool threaded() const { return threaded_; }

 private:
  bool threaded_ = false;
  std::vector<MPI_Request> requests_;
  std::thread helper_;
  std::atomic<bool> stop_{false};  // set when the caller leaves through an exception: the helper gives up
  int status_ = MPI_SUCCESS;
};

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace attn::dist::detail
