// Data-parallel training: the gradient all-reduce in buckets, and train_numbers with it.
#include "attn/dist/data_parallel.h"

#include <chrono>

#include "attn/error.h"
#include "mpi_util.h"

namespace attn::dist {

MpiGradientReducer::MpiGradientReducer(MPI_Comm comm, int64_t bucket_elements) : bucket_elements_(bucket_elements) {
  if (bucket_elements < 1)
    throw ArgumentError("MpiGradientReducer: bucket_elements = " + std::to_string(bucket_elements) + ", must be >= 1");
  detail::check_mpi(MPI_Comm_dup(comm, &comm_), "MpiGradientReducer: MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiGradientReducer::~MpiGradientReducer() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

float MpiGradientReducer::reduce(std::map<std::string, Tensor>& grads, float loss) {
  const auto t0 = std::chrono::steady_clock::now();
  const float w = static_cast<float>(share);
  // pack share·grads into buckets (the map's order: the same on every rank), the share-weighted loss last; each
  // bucket's all-reduce starts as soon as it is full
  std::vector<MPI_Request> requests;
  size_t b = 0;
  auto bucket = [&]() -> std::vector<float>& {
    if (buckets_.size() <= b) buckets_.emplace_back();
    return buckets_[b];
  };
  auto launch = [&](std::vector<float>& buf) {
    MPI_Request req;
    detail::check_mpi(
        MPI_Iallreduce(MPI_IN_PLACE, buf.data(),
                       detail::mpi_count(static_cast<int64_t>(buf.size()), "MpiGradientReducer: a bucket"), MPI_FLOAT,
                       MPI_SUM, comm_, &req),
        "MpiGradientReducer: MPI_Iallreduce");
    requests.push_back(req);
    ++b;
  };
  bucket().clear();
  for (auto& [name, g] : grads) {
    const float* x = g.f32();
    for (int64_t i = 0; i < g.numel(); ++i) {
      std::vector<float>& buf = bucket();
      buf.push_back(w * x[i]);
      if (static_cast<int64_t>(buf.size()) == bucket_elements_) launch(buf), bucket().clear();
    }
  }
  bucket().push_back(w * loss);
  launch(bucket());
  detail::check_mpi(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE),
                    "MpiGradientReducer: MPI_Waitall");
  // unpack in the same order
  size_t at = 0;
  b = 0;
  for (auto& [name, g] : grads) {
    float* x = g.f32();
    for (int64_t i = 0; i < g.numel(); ++i) {
      x[i] = buckets_[b][at];
      if (++at == buckets_[b].size()) ++b, at = 0;
    }
  }
  const float total = buckets_[b][at];
  seconds_ += detail::seconds_since(t0);
  return total;
}

train::TrainReport train_numbers_data_parallel(train::TrainOptions options, MPI_Comm comm,
                                               const std::function<void(int64_t, float)>& on_step) {
  MpiGradientReducer reducer(comm);
  options.reducer = &reducer;
  return train::train_numbers(options, on_step);
}

}  // namespace attn::dist
