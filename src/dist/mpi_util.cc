// MPI plumbing: the session, per-call communicators, checked counts, overlapped message completion.
#include "mpi_util.h"

#include <climits>

#include "attn/dist/ring_attention.h"
#include "attn/error.h"

namespace attn::dist {

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    detail::check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    owns_ = true;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

namespace detail {

CommDup::CommDup(MPI_Comm comm) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  // errors come back as codes (check_mpi turns them into exceptions) instead of aborting inside MPI
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

CommDup::~CommDup() {
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw Error(std::string(what) + " failed: " + std::string(text, static_cast<size_t>(len)));
}

int mpi_count(int64_t n, const std::string& what) {
  if (n < 0 || n > INT_MAX)
    throw ArgumentError(what + ": a count of " + std::to_string(n) + " in one message, more than MPI's " +
                        std::to_string(INT_MAX) + " (split the heads or the batch across calls)");
  return static_cast<int>(n);
}

Exchange::Exchange() {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  threaded_ = level >= MPI_THREAD_SERIALIZED;
}

RowType::RowType(int bytes) {
  check_mpi(MPI_Type_contiguous(bytes, MPI_BYTE, &type_), "MPI_Type_contiguous");
  const int committed = MPI_Type_commit(&type_);
  if (committed != MPI_SUCCESS) MPI_Type_free(&type_);
  check_mpi(committed, "MPI_Type_commit");
}

RowType::~RowType() {
  if (type_ != MPI_DATATYPE_NULL) MPI_Type_free(&type_);
}

Exchange::~Exchange() {
  stop_ = true;  // only reached with a helper still running when an exception unwinds past finish()
  if (helper_.joinable()) helper_.join();
}

void Exchange::start(std::vector<MPI_Request> requests) {
  requests_ = std::move(requests);
  status_ = MPI_SUCCESS;
  if (!threaded_ || requests_.empty()) return;
  helper_ = std::thread([this] {
    for (;;) {
      int done = 0;
      status_ = MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE);
      if (done || status_ != MPI_SUCCESS || stop_) return;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
}

double Exchange::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  if (helper_.joinable()) {
    helper_.join();
  } else if (!requests_.empty()) {
    status_ = MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  requests_.clear();
  check_mpi(status_, "ring exchange (MPI_Testall/MPI_Waitall)");
  return seconds_since(t0);
}

}  // namespace detail
}  // namespace attn::dist
