// attn/train/trainer.h: training the encoder–decoder Transformer on the numbers-en-zh task.
//
// Label-smoothed cross-entropy that ignores padding, AdamW with the original paper's warm-up schedule
//   lr(step) = lr_factor · d_model^−0.5 · min(step^−0.5, step · warmup^−1.5),
// gradient clipping by global norm, batches bucketed by length, a fixed seed reproducing a run, and
// checkpoints (model.safetensors + config.json + vocab.json + optimizer.safetensors + train_state.json)
// from which training resumes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"

namespace attn::train {

// Data-parallel training (attn/dist/data_parallel.h implements it over MPI): each rank runs the step on its shard
// of every global batch, and between the backward and the clipping TrainingStep::run hands this rank's
// gradients to reduce(), which leaves on every rank the gradients of the whole batch's mean loss.
class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // grads: of this rank's shard's mean loss `loss`. Afterwards grads = Σ_ranks share·grads on every rank; returns
  // Σ_ranks share·loss (the batch's mean loss).
  virtual float reduce(std::map<std::string, Tensor>& grads, float loss) = 0;

  // The same reduction overlapped with the backward. TrainingStep::run calls begin_step(grads, loss) before the
  // backward, gradients_ready(names) from the backward's hook (BackwardOptions::on_gradients_ready) as groups of
  // gradients become final, and finish_step() after it, which returns what reduce() returns and leaves grads as it
  // does. These defaults reduce everything in finish_step() (no overlap).
  virtual void begin_step(std::map<std::string, Tensor>& grads, float loss) {
    pending_grads_ = &grads;
    pending_loss_ = loss;
  }
  virtual void gradients_ready(const std::vector<std::string>& names) { (void)names; }
  virtual float finish_step() { return reduce(*pending_grads_, pending_loss_); }
  // This rank's share of the next step's loss: its target tokens / the global batch's (set by train_numbers).
  double share = 1.0;

 private:
  std::map<std::string, Tensor>* pending_grads_ = nullptr;  // the default begin_step .. finish_step
  float pending_loss_ = 0.0f;
};

struct TrainOptions {
  TransformerConfig model;  // vocab sizes are filled in from the task
  std::string out_dir;      // checkpoints go here ("" = none)
  std::string resume_dir;   // continue from this checkpoint: its model, optimizer state, data order and recipe (the
                            // seed, train_examples, batch_size, lr_factor, warmup, AdamW's settings, label_smoothing
                            // and clip_norm it saved replace these options'; steps stays the total to reach)
  // With resume_dir: the fields of the data order and recipe the caller set itself, by their names in
  // train_state.json ("shuffle_seed" for seed, "train_examples", "batch_size", "warmup", "lr_factor", "beta1",
  // "beta2", "adam_eps", "weight_decay", "label_smoothing", "clip_norm"). One the checkpoint holds is refused
  // (ArgumentError: its value would silently win); one an older checkpoint lacks is taken from these options.
  std::vector<std::string> resume_overrides;
  int64_t steps = 6000;
  int64_t batch_size = 64;  // sentences per batch
  float lr_factor = 1.0f;
  int64_t warmup = 500;
  float beta1 = 0.9f, beta2 = 0.98f, adam_eps = 1e-9f, weight_decay = 0.0f;
  float label_smoothing = 0.1f;
  float clip_norm = 1.0f;
  uint64_t seed = 1;
  int64_t train_examples = 200000;
  int64_t val_examples = 500;
  int64_t eval_every = 1000;  // validation accuracy and a checkpoint every this many steps (0: only at the end)
  bool progress = true;       // a progress bar on stderr
  int num_threads = 0;        // threads of every op and GEMM (0: OpenMP's default, OMP_NUM_THREADS or all cores)
  // Data parallel (nullptr: one process): each rank trains on its shard of every batch (the same global batches
  // and, without dropout, the same losses within float reordering for any number of ranks); only rank 0 validates,
  // writes checkpoints and shows progress. Dropout masks come from a per-rank stream drawn from the shared one, so
  // with dropout (the default 0.1) the losses depend on the number of ranks.
  GradientReducer* reducer = nullptr;
};

struct TrainReport {
  int64_t steps = 0;
  float last_loss = 0.0f;     // mean loss of the last window: this run's steps taken 100 at a time, the last fewer
  double val_accuracy = 0.0;  // exact match on the validation examples
  double seconds = 0.0;
  double tokens_per_second = 0.0;  // target tokens
};

// AdamW's state: the first and second moments of every parameter (by its name) and the steps taken.
struct AdamState {
  std::map<std::string, Tensor> m, v;
  int64_t step = 0;
};

// What one optimisation step does beside the forward and backward (TrainOptions' fields of the same names).
struct StepOptions {
  float beta1 = 0.9f, beta2 = 0.98f, adam_eps = 1e-9f, weight_decay = 0.0f;  // AdamW (decay: matrices only)
  float label_smoothing = 0.1f;
  float clip_norm = 1.0f;              // global gradient norm; 0 = no clipping
  GradientReducer* reducer = nullptr;  // data parallel: around and during the backward (see GradientReducer)
};
StepOptions step_options(const TrainOptions& o);

// The learning rate of step `step` (1 = the first) under the original paper's warm-up schedule (the formula at the
// top), which train_numbers follows: lr_factor · d_model^−0.5 · min(step^−0.5, step · warmup^−1.5).
float noam_learning_rate(float lr_factor, int64_t d_model, int64_t warmup, int64_t step);

// One teacher-forced training step of a model on a batch:
//   zero_grad -> forward(training) -> label-smoothed cross-entropy over the targets that are not pad_id
//   -> backward -> clipping by global norm -> AdamW at learning rate lr.
// The optimizer's moments and the step's own buffers are allocated once and reused from step to step. The clipping
// factor is applied inside the AdamW update, so model.grads() keep the gradients as the backward left them.
class TrainingStep {
 public:
  // Fresh (zero) moments for every parameter of model, which must outlive this object.
  TrainingStep(Transformer& model, const StepOptions& options);
  // src [B, Ls], tgt_in [B, Lt], tgt_out [B·Lt] (pad_id: not counted). Returns the batch's mean loss. A batch
  // with every target pad_id (data parallel: the reduced loss and gradients exactly 0) leaves the model and the
  // optimizer as they are and returns 0; so does a non-finite loss or gradient, and returns NaN or that loss.
  float run(const TokenBatch& src, const TokenBatch& tgt_in, const std::vector<int32_t>& tgt_out, float lr,
            std::mt19937_64& rng);
  AdamState& state() { return adam_; }
  const AdamState& state() const { return adam_; }

 private:
  Transformer* model_;
  StepOptions options_;
  AdamState adam_;
  Tensor dlogits_;  // [B, Lt, Vt], reused while the batch shape stays
};

// The files a checkpoint directory holds (model.safetensors, config.json, vocab.json, optimizer.safetensors,
// train_state.json), which train_numbers replaces together.
const std::vector<std::string>& checkpoint_file_names();
// The optimizer step a checkpoint directory was saved at (its train_state.json's "step"), which --resume continues
// from; FileError / FormatError naming the file.
int64_t checkpoint_step(const std::string& dir);

// Trains (or resumes), writing checkpoints to out_dir. `on_step` (optional) sees (step, loss).
TrainReport train_numbers(const TrainOptions& options, const std::function<void(int64_t, float)>& on_step = nullptr);

// Exact-match accuracy of model on examples, decoding with `beam`; `outputs` receives the translations.
double exact_match(const Transformer& model, const tasks::Vocab& vocab, const std::vector<tasks::Example>& examples,
                   int beam = 1, std::vector<std::string>* outputs = nullptr);

}  // namespace attn::train
