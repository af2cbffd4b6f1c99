// Data-parallel training: the bucketed gradient all-reduce (after the backward or overlapped with it), and
// train_numbers with it.
#include "attn/dist/data_parallel.h"

#include <algorithm>
#include <chrono>

#include "attn/error.h"
#include "mpi_util.h"

namespace attn::dist {
namespace {
// The communication thread's pause between two MPI_Test calls on a bucket in flight.
constexpr int kPollMicroseconds = 20;
// FNV-1a over the positions of the gradients in the order they are named (the first step's check across ranks).
constexpr uint64_t kOrderHashSeed = 1469598103934665603ull, kOrderHashPrime = 1099511628211ull;
}  // namespace

const char* gradient_overlap_name(GradientOverlap overlap) {
  switch (overlap) {
    case GradientOverlap::kNone: return "none";
    case GradientOverlap::kThread: return "thread";
    case GradientOverlap::kNonBlocking: return "nonblocking";
  }
  return "?";
}

GradientOverlap parse_gradient_overlap(const std::string& name) {
  for (GradientOverlap o : {GradientOverlap::kNone, GradientOverlap::kThread, GradientOverlap::kNonBlocking})
    if (name == gradient_overlap_name(o)) return o;
  throw ArgumentError("gradient overlap must be \"none\", \"thread\" or \"nonblocking\", got \"" + name + "\"");
}

MpiGradientReducer::MpiGradientReducer(MPI_Comm comm, const ReducerOptions& options)
    : bucket_elements_(options.bucket_elements), overlap_(options.overlap) {
  if (options.bucket_elements < 1)
    throw ArgumentError("MpiGradientReducer: bucket_elements = " + std::to_string(options.bucket_elements) +
                        ", must be >= 1");
  detail::mpi_count(options.bucket_elements, "MpiGradientReducer: bucket_elements");
  detail::check_mpi(MPI_Comm_dup(comm, &comm_), "MpiGradientReducer: MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  if (overlap_ == GradientOverlap::kThread) {
    // The thread makes MPI calls only between begin_step and finish_step, when the caller makes none (SERIALIZED).
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    if (level >= MPI_THREAD_SERIALIZED)
      thread_ = std::thread([this] { communicate(); });
    else
      overlap_ = GradientOverlap::kNonBlocking;
  }
}

MpiGradientReducer::~MpiGradientReducer() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (Bucket& b : buckets_)  // left in flight by an exception between begin_step and finish_step
    if (b.request != MPI_REQUEST_NULL) MPI_Wait(&b.request, MPI_STATUS_IGNORE);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

float MpiGradientReducer::reduce(std::map<std::string, Tensor>& grads, float loss) {
  std::vector<std::string> names;  // the map's order: the same on every rank
  for (const auto& [name, g] : grads) names.push_back(name);
  const auto t0 = std::chrono::steady_clock::now();
  const double waited = times_.waiting;
  start(grads, loss, GradientOverlap::kNone);  // every gradient is final: each bucket reduced at once, here
  gradients_ready(names);
  const float mean_loss = finish_step();
  times_.waiting = waited + detail::seconds_since(t0);  // after the backward: none of it overlapped
  return mean_loss;
}

void MpiGradientReducer::begin_step(std::map<std::string, Tensor>& grads, float loss) {
  start(grads, loss, overlap_);
  deferred_ = overlap_ == GradientOverlap::kNone;  // the names are only checked; finish_step calls reduce()
}

void MpiGradientReducer::start(std::map<std::string, Tensor>& grads, float loss, GradientOverlap mode) {
  const auto t0 = std::chrono::steady_clock::now();
  if (stepping_)  // (begin_step or reduce, whichever was called)
    throw ArgumentError(
        "MpiGradientReducer: a step is already open (begin_step or reduce called again before its "
        "finish_step)");
  mode_ = mode;
  deferred_ = false;
  int64_t total = 1;  // every gradient, then the share-weighted loss
  for (const auto& [name, g] : grads) total += g.numel();
  if (!layout_agreed_) {  // ranks with other models or bucket sizes had sent all-reduces of different counts (a hang),
    // and ranks that overlap beside ranks that do not blocking and non-blocking all-reduces, which MPI does not match
    const int64_t blocking = overlap_ == GradientOverlap::kNone ? 1 : 0;  // (kThread and kNonBlocking match)
    int64_t mine[6] = {total, -total, bucket_elements_, -bucket_elements_, blocking, -blocking}, most[6];
    detail::check_mpi(MPI_Allreduce(mine, most, 6, MPI_INT64_T, MPI_MAX, comm_), "MpiGradientReducer: MPI_Allreduce");
    if (most[0] != -most[1] || most[2] != -most[3] || most[4] != -most[5])
      throw ArgumentError(
          "MpiGradientReducer: the ranks disagree on the gradients' size (" + std::to_string(-most[1]) + " to " +
          std::to_string(most[0]) + " floats with the loss), the bucket size (" + std::to_string(-most[3]) + " to " +
          std::to_string(most[2]) + " floats) or the overlap mode; rank " + std::to_string(rank_) + " has " +
          std::to_string(total) + ", " + std::to_string(bucket_elements_) + " and " + gradient_overlap_name(overlap_));
    layout_agreed_ = true;
  }
  order_hash_ = kOrderHashSeed;
  used_ = static_cast<size_t>((total + bucket_elements_ - 1) / bucket_elements_);
  if (buckets_.size() < used_) buckets_.resize(used_);
  for (size_t b = 0; b < used_; ++b) {
    const int64_t first = static_cast<int64_t>(b) * bucket_elements_;
    buckets_[b].data.resize(static_cast<size_t>(std::min(bucket_elements_, total - first)));
    buckets_[b].segments.clear();
  }
  grads_ = &grads;
  weight_ = static_cast<float>(share);
  loss_ = loss;
  open_ = 0, at_ = 0;
  named_.clear();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    reduced_ = 0, status_ = MPI_SUCCESS;
  }
  stepping_ = true;
  times_.reducing += detail::seconds_since(t0);
}

void MpiGradientReducer::gradients_ready(const std::vector<std::string>& names) {
  const auto t0 = std::chrono::steady_clock::now();
  if (!stepping_) throw ArgumentError("MpiGradientReducer::gradients_ready: called outside begin_step .. finish_step");
  for (const std::string& name : names) {
    const auto it = grads_->find(name);
    if (it == grads_->end())
      throw ArgumentError("MpiGradientReducer::gradients_ready: no gradient named '" + name + "'");
    float* g = it->second.f32();
    if (std::find(named_.begin(), named_.end(), g) != named_.end())
      throw Error("MpiGradientReducer::gradients_ready: '" + name + "' named twice in one step");
    named_.push_back(g);
    if (!order_agreed_)  // the order the buckets are filled in, as positions in the map (the same names everywhere)
      order_hash_ = (order_hash_ ^ static_cast<uint64_t>(std::distance(grads_->begin(), it))) * kOrderHashPrime;
    if (!deferred_) put(g, it->second.numel(), weight_);
  }
  if (mode_ == GradientOverlap::kNonBlocking) progress();
  times_.reducing += detail::seconds_since(t0);
}

float MpiGradientReducer::finish_step() {
  const auto t0 = std::chrono::steady_clock::now();
  if (!stepping_) throw ArgumentError("MpiGradientReducer::finish_step: called without begin_step");
  if (named_.size() != grads_->size()) {
    // With nothing launched the step is dropped and a new one may begin. Once a bucket's all-reduce is in flight, the
    // reducer stays in this step (begin_step throws), as after any exception inside one: a new step would refill
    // buckets that MPI or the communication thread still reads and writes.
    if (open_ == 0) stepping_ = false;
    for (auto& [name, g] : *grads_)  // the first one missing
      if (std::find(named_.begin(), named_.end(), g.f32()) == named_.end())
        throw Error("MpiGradientReducer::finish_step: the gradient '" + name + "' was never named ready (" +
                    std::to_string(named_.size()) + " of " + std::to_string(grads_->size()) + ")");
  }
  stepping_ = false;
  if (deferred_) {
    times_.reducing += detail::seconds_since(t0);
    return reduce(*grads_, loss_);
  }
  float weighted_loss = weight_ * loss_;
  put(&weighted_loss, 1, 1.0f);  // the last element of the last bucket: launches it
  const auto waiting_from = std::chrono::steady_clock::now();
  if (mode_ == GradientOverlap::kThread) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return reduced_ == used_; });
    detail::check_mpi(status_, "MpiGradientReducer: MPI_Iallreduce (communication thread)");
  } else if (mode_ == GradientOverlap::kNonBlocking) {
    for (size_t b = 0; b < used_; ++b) {
      detail::check_mpi(MPI_Wait(&buckets_[b].request, MPI_STATUS_IGNORE), "MpiGradientReducer: MPI_Wait");
      unpack(buckets_[b]);
    }
  }
  times_.waiting += detail::seconds_since(waiting_from);
  if (!order_agreed_) check_order();
  const float mean_loss = buckets_[used_ - 1].data.back();
  times_.reducing += detail::seconds_since(t0);
  ++times_.steps, times_.buckets += static_cast<int64_t>(used_);
  return mean_loss;
}

// The first step's buckets are summed (none in flight): did every rank fill them with the same gradients in the same
// order? A rank whose backward named them in another order had its buckets summed element by element with other
// tensors' gradients, silently wrong; every rank throws instead, before the step's gradients are used.
void MpiGradientReducer::check_order() {
  uint64_t mine[2] = {order_hash_, ~order_hash_}, most[2];  // the largest hash and the complement of the smallest
  detail::check_mpi(MPI_Allreduce(mine, most, 2, MPI_UINT64_T, MPI_MAX, comm_), "MpiGradientReducer: MPI_Allreduce");
  if (most[0] != ~most[1])
    throw Error(
        "MpiGradientReducer: the ranks named the gradients ready in different orders, so their buckets held "
        "different tensors; gradients_ready must follow the same order on every rank (rank " +
        std::to_string(rank_) + ")");
  order_agreed_ = true;
}

// scale·grad[0 .. n) into the open bucket and the next ones; each bucket that fills up is launched.
void MpiGradientReducer::put(float* grad, int64_t n, float scale) {
  int64_t done = 0;
  while (done < n) {
    Bucket& b = buckets_[open_];
    const int64_t take = std::min<int64_t>(n - done, static_cast<int64_t>(b.data.size()) - at_);
    const float* x = grad + done;
    float* out = b.data.data() + at_;
    for (int64_t i = 0; i < take; ++i) out[i] = scale * x[i];
    b.segments.push_back({grad + done, at_, take});
    done += take, at_ += take;
    if (at_ == static_cast<int64_t>(b.data.size())) {
      launch(open_);
      ++open_, at_ = 0;
    }
  }
}

void MpiGradientReducer::launch(size_t bucket) {
  Bucket& b = buckets_[bucket];
  const int count = detail::mpi_count(static_cast<int64_t>(b.data.size()), "MpiGradientReducer: a bucket");
  switch (mode_) {
    case GradientOverlap::kNone:
      detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, b.data.data(), count, MPI_FLOAT, MPI_SUM, comm_),
                        "MpiGradientReducer: MPI_Allreduce");
      unpack(b);
      break;
    case GradientOverlap::kNonBlocking:
      detail::check_mpi(MPI_Iallreduce(MPI_IN_PLACE, b.data.data(), count, MPI_FLOAT, MPI_SUM, comm_, &b.request),
                        "MpiGradientReducer: MPI_Iallreduce");
      break;
    case GradientOverlap::kThread: {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(bucket);
      }
      wake_.notify_one();
      break;
    }
  }
}

void MpiGradientReducer::progress() {
  // libnbc advances a collective only inside MPI calls: one test of every bucket in flight moves them along
  for (size_t b = 0; b < open_; ++b) {
    if (buckets_[b].request == MPI_REQUEST_NULL) continue;
    int done = 0;
    detail::check_mpi(MPI_Test(&buckets_[b].request, &done, MPI_STATUS_IGNORE), "MpiGradientReducer: MPI_Test");
  }
}

// The sums back into the gradients (their backward is over: nothing else touches them until finish_step returns).
void MpiGradientReducer::unpack(const Bucket& bucket) {
  for (const Segment& s : bucket.segments) std::copy_n(bucket.data.data() + s.offset, s.n, s.grad);
}

void MpiGradientReducer::communicate() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    // Stopping drains the queue first: a bucket launched here is launched by every rank (an exception on this rank
    // stops it launching more), so its all-reduce completes, and the destructor does not hang.
    wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;
    const size_t b = queue_.front();
    queue_.pop_front();
    int status = status_;  // after a failure the remaining buckets are only counted
    lock.unlock();
    Bucket& bucket = buckets_[b];
    if (status == MPI_SUCCESS) {
      // non-blocking, polled with short sleeps: a blocking MPI_Allreduce spins while it waits for the other ranks,
      // taking the core the backward needs (docs/DISTRIBUTED.md, "Overlap")
      MPI_Request request = MPI_REQUEST_NULL;
      status = MPI_Iallreduce(MPI_IN_PLACE, bucket.data.data(), static_cast<int>(bucket.data.size()), MPI_FLOAT,
                              MPI_SUM, comm_, &request);
      for (int done = 0; status == MPI_SUCCESS && !done;) {
        status = MPI_Test(&request, &done, MPI_STATUS_IGNORE);
        if (!done) std::this_thread::sleep_for(std::chrono::microseconds(kPollMicroseconds));
      }
      if (status == MPI_SUCCESS) unpack(bucket);
    }
    lock.lock();
    status_ = status;
    if (++reduced_ == used_) done_.notify_one();
  }
}

train::TrainReport train_numbers_data_parallel(train::TrainOptions options, MPI_Comm comm,
                                               const ReducerOptions& reducer_options,
                                               const std::function<void(int64_t, float)>& on_step,
                                               ReducerTimes* times) {
  MpiGradientReducer reducer(comm, reducer_options);
  options.reducer = &reducer;
  train::TrainReport report = train::train_numbers(options, on_step);
  if (times) *times = reducer.times();
  return report;
}

}  // namespace attn::dist
