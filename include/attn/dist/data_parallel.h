// attn/dist/data_parallel.h: data-parallel training over MPI (built with -DATTN_WITH_MPI; link attn_dist).
//
//   mpirun -np N attn train ...   (tools/attn/train.cc uses train_numbers_data_parallel under mpirun)
// Every rank builds the same model from the seed and the same global batches; each trains on its shard of every
// batch (train::TrainOptions::reducer). The gradients, scaled by each rank's share of the batch's target tokens, are
// summed over the ranks in buckets of `bucket_elements` floats, so every rank takes the same optimizer step and,
// without dropout, N ranks give the losses of one process within float reordering (each rank draws its own dropout
// masks). By default a bucket is all-reduced as soon as the
// backward has finished every gradient in it (Transformer::backward's on_gradients_ready hook), while the backward
// goes on with the layers below. Rank 0 alone validates, writes checkpoints and shows progress; a checkpoint holds
// no trace of N, so training resumes with any N. An error on one rank alone (rank 0's checkpoint write failing, an
// exception from on_step there) is not shared: the other ranks wait in their next all-reduce. The attn tool ends every
// rank with MPI_Abort then; a library caller should do the same (or catch and abort) rather than return.
#pragma once

#include <mpi.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "attn/tensor.h"
#include "attn/train/trainer.h"

namespace attn::dist {

// How a bucket's all-reduce runs beside the backward (docs/DISTRIBUTED.md has the measurements).
enum class GradientOverlap : uint8_t {
  kNone,         // after the whole backward: blocking MPI_Allreduce of each bucket
  kThread,       // a communication thread all-reduces each bucket as soon as it is full (MPI_Iallreduce polled
                 // by MPI_Test with short sleeps; needs MPI_THREAD_SERIALIZED, with less kNonBlocking is used)
  kNonBlocking,  // MPI_Iallreduce of each bucket as soon as it is full, progressed by MPI_Test on each bucket in
                 // flight at the backward's hooks, MPI_Wait on each after it
};
const char* gradient_overlap_name(GradientOverlap overlap);       // "none" | "thread" | "nonblocking"
GradientOverlap parse_gradient_overlap(const std::string& name);  // ArgumentError naming the accepted values

struct ReducerOptions {
  // Floats per all-reduce (PyTorch DDP's bucket_cap_mb, in elements): 2^16 = 0.25 MB, the fastest of 1/16, 1/4, 1
  // and 4 MB for the shipped recipe on 2 ranks (docs/DISTRIBUTED.md). Buckets are cut in the order the backward
  // finishes the gradients; a tensor may straddle two buckets. The share-weighted loss rides in the last.
  int64_t bucket_elements = int64_t{1} << 16;
  GradientOverlap overlap = GradientOverlap::kThread;
};

// Where this rank's time in the reducer went, over all steps so far (seconds, on the training thread).
struct ReducerTimes {
  double reducing = 0.0;  // in the reducer's calls: packing, launching, progressing, waiting, unpacking
  double waiting = 0.0;   // after the backward, for the all-reduces still running (the part not overlapped)
  int64_t steps = 0, buckets = 0;
};

class MpiGradientReducer : public train::GradientReducer {
 public:
  // comm: the ranks that train together (duplicated: its messages never meet the caller's).
  explicit MpiGradientReducer(MPI_Comm comm, const ReducerOptions& options = {});
  ~MpiGradientReducer() override;
  MpiGradientReducer(const MpiGradientReducer&) = delete;
  MpiGradientReducer& operator=(const MpiGradientReducer&) = delete;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // After the whole backward: every gradient in the map's order, each bucket reduced at once (any overlap mode).
  float reduce(std::map<std::string, Tensor>& grads, float loss) override;
  // Overlapped (train::GradientReducer): each gradient of `names` is scaled by share into the open bucket; a full
  // bucket starts its all-reduce. Every gradient of grads must be named exactly once between begin and finish
  // (Error otherwise), in the same order on every rank (the backward's; the first step's finish_step checks it and
  // throws Error on every rank where they differ). The ranks must agree on the gradients' sizes, the bucket size and
  // whether to overlap (kNone or not; the first step's begin_step checks them: ArgumentError). finish_step waits for
  // every bucket and copies the sums back into grads. A step left by an exception is not resumed (begin_step throws
  // after it).
  void begin_step(std::map<std::string, Tensor>& grads, float loss) override;
  void gradients_ready(const std::vector<std::string>& names) override;
  float finish_step() override;
  GradientOverlap overlap() const { return overlap_; }  // the mode in use (kThread may have become kNonBlocking)
  const ReducerTimes& times() const { return times_; }

 private:
  struct Segment {  // a run of one gradient's elements inside a bucket
    float* grad;
    int64_t offset, n;
  };
  struct Bucket {
    std::vector<float> data;
    std::vector<Segment> segments;
    MPI_Request request = MPI_REQUEST_NULL;
  };
  void start(std::map<std::string, Tensor>& grads, float loss, GradientOverlap mode);  // a step in this mode
  void put(float* grad, int64_t n, float scale);
  void launch(size_t bucket);  // the bucket is full: start its all-reduce as the mode says
  void progress();             // kNonBlocking: MPI_Test on each bucket in flight
  static void unpack(const Bucket& bucket);
  void communicate();  // the communication thread's loop (kThread)
  void check_order();  // the first step: every rank named the gradients in the same order (Error otherwise)

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  int64_t bucket_elements_;
  GradientOverlap overlap_;
  // this step
  std::map<std::string, Tensor>* grads_ = nullptr;
  float weight_ = 1.0f, loss_ = 0.0f;
  std::vector<Bucket> buckets_;                    // reused from step to step
  size_t used_ = 0, open_ = 0;                     // buckets this step, the one being filled
  int64_t at_ = 0;                                 // elements in the open bucket
  std::vector<const float*> named_;                // the gradients named so far this step
  GradientOverlap mode_ = GradientOverlap::kNone;  // this step's: overlap_, or kNone inside reduce()
  bool deferred_ = false;  // overlap_ is kNone: gradients_ready only checks, finish_step calls reduce()
  bool stepping_ = false;
  bool layout_agreed_ = false;  // the first step checked the ranks' gradients, buckets and kNone-or-not agree
  bool order_agreed_ = false;   // a step's end checked that every rank named the gradients in the same order
  uint64_t order_hash_ = 0;     // of this step's order so far (until order_agreed_)
  ReducerTimes times_;
  // kThread: the buckets to reduce, in order, and how many are done (this step)
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::deque<size_t> queue_;
  size_t reduced_ = 0;
  int status_ = MPI_SUCCESS;
  bool stop_ = false;
};

// train::train_numbers over the ranks of comm (every rank calls it with the same options; out_dir and progress
// are used by rank 0 only). The report's tokens_per_second counts the whole batches; *times (optional) receives
// this rank's time in the reducer.
train::TrainReport train_numbers_data_parallel(train::TrainOptions options, MPI_Comm comm,
                                               const ReducerOptions& reducer_options = {},
                                               const std::function<void(int64_t, float)>& on_step = nullptr,
                                               ReducerTimes* times = nullptr);

}  // namespace attn::dist
