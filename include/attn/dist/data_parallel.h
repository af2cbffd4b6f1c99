// attn/dist/data_parallel.h: data-parallel training over MPI (built with -DATTN_WITH_MPI; link attn_dist).
//
//   mpirun -np N attn train ...   (tools/attn/train.cc uses train_numbers_data_parallel under mpirun)
// Every rank builds the same model from the seed and the same global batches; each trains on its shard of every
// batch (train::TrainOptions::reducer). After the backward the gradients, scaled by each rank's share of the
// batch's target tokens, are summed over the ranks with MPI_Allreduce in buckets of `bucket_elements` floats
// (each bucket is reduced as soon as it is packed), so every rank takes the same optimizer step
// and N ranks give the losses of one process within float reordering. Rank 0 alone validates, writes
// checkpoints and shows progress; a checkpoint holds no trace of N, so training resumes with any N.
// The all-reduce starts after the whole backward: overlapping it with the backward needs a per-parameter
// "gradient ready" hook in Transformer::backward (models/), which does not exist yet.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "attn/tensor.h"
#include "attn/train/trainer.h"

namespace attn::dist {

class MpiGradientReducer : public train::GradientReducer {
 public:
  // comm: the ranks that train together (duplicated: its messages never meet the caller's).
  explicit MpiGradientReducer(MPI_Comm comm, int64_t bucket_elements = int64_t{1} << 20);
  ~MpiGradientReducer() override;
  MpiGradientReducer(const MpiGradientReducer&) = delete;
  MpiGradientReducer& operator=(const MpiGradientReducer&) = delete;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  float reduce(std::map<std::string, Tensor>& grads, float loss) override;
  double seconds_reducing() const { return seconds_; }  // in reduce(), all steps so far

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  int64_t bucket_elements_;
  std::vector<std::vector<float>> buckets_;  // reused from step to step
  double seconds_ = 0.0;
};

// train::train_numbers over the ranks of comm (every rank calls it with the same options; out_dir and progress
// are used by rank 0 only). The report's tokens_per_second counts the whole batches; *seconds_reducing (optional)
// receives this rank's time in the gradient all-reduce (packing and waiting included).
train::TrainReport train_numbers_data_parallel(train::TrainOptions options, MPI_Comm comm,
                                               const std::function<void(int64_t, float)>& on_step = nullptr,
                                               double* seconds_reducing = nullptr);

}  // namespace attn::dist
