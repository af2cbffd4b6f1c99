// The training loop for numbers-en-zh: data, batches, AdamW + warm-up, clipping, checkpoints.
#include "attn/train/trainer.h"
#include "attn/translator.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/safetensors.h"
#include "cpu/threads.h"
#include "io/json_fields.h"
#include "ops/nn.h"

namespace attn::train {
namespace {

struct Pair {
  std::vector<int32_t> src, tgt;  // src: words + EOS; tgt: characters (no BOS/EOS)
};

struct Batch {
  TokenBatch src, tgt_in;
  std::vector<int32_t> tgt_out;
  int64_t tokens = 0;
};

Batch make_batch(const std::vector<const Pair*>& pairs, const TransformerConfig& c) {
  Batch b;
  const int64_t B = static_cast<int64_t>(pairs.size());
  int64_t Ls = 0, Lt = 0;
  for (const Pair* p : pairs) {
    Ls = std::max<int64_t>(Ls, static_cast<int64_t>(p->src.size()));
    Lt = std::max<int64_t>(Lt, static_cast<int64_t>(p->tgt.size()) + 1);
  }
  b.src = {std::vector<int32_t>(static_cast<size_t>(B * Ls), c.pad_id), B, Ls};
  b.tgt_in = {std::vector<int32_t>(static_cast<size_t>(B * Lt), c.pad_id), B, Lt};
  b.tgt_out.assign(static_cast<size_t>(B * Lt), c.pad_id);
  for (int64_t i = 0; i < B; ++i) {
    const Pair& p = *pairs[static_cast<size_t>(i)];
    std::copy(p.src.begin(), p.src.end(), b.src.ids.begin() + i * Ls);
    b.tgt_in.ids[static_cast<size_t>(i * Lt)] = c.bos_id;  // tgt_in = BOS y1 .. yn ; tgt_out = y1 .. yn EOS
    std::copy(p.tgt.begin(), p.tgt.end(), b.tgt_in.ids.begin() + i * Lt + 1);
    std::copy(p.tgt.begin(), p.tgt.end(), b.tgt_out.begin() + i * Lt);
    b.tgt_out[static_cast<size_t>(i * Lt) + p.tgt.size()] = c.eos_id;
    b.tokens += static_cast<int64_t>(p.tgt.size()) + 1;
  }
  return b;
}

// Batches of similar lengths: sort by (target, source) length, cut into batch_size pieces.
std::vector<std::vector<const Pair*>> bucket(const std::vector<Pair>& data, int64_t batch_size) {
  std::vector<const Pair*> order;
  for (const Pair& p : data) order.push_back(&p);
  std::stable_sort(order.begin(), order.end(), [](const Pair* a, const Pair* b) {
    return std::make_pair(a->tgt.size(), a->src.size()) < std::make_pair(b->tgt.size(), b->src.size());
  });
  std::vector<std::vector<const Pair*>> batches;
  for (size_t i = 0; i < order.size(); i += static_cast<size_t>(batch_size))
    batches.emplace_back(
        order.begin() + static_cast<std::ptrdiff_t>(i),
        order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), i + static_cast<size_t>(batch_size))));
  return batches;
}

// Below this many elements the optimizer stays on one thread.
constexpr int64_t kParallelElements = 1 << 15;

// One parameter tensor as the optimizer sees it (the map lookups done once per step).
struct ParamSlot {
  float *p, *g, *m, *v;  // the parameter, its gradient and AdamW's two moments: [n] each
  int64_t n;
  bool decay;  // weight decay applies (matrices only)
};

std::vector<ParamSlot> param_slots(Transformer& model, AdamState& a, const StepOptions& o) {
  std::vector<ParamSlot> slots;
  for (auto& [name, p] : model.params())
    slots.push_back({p.f32(), model.grads().at(name).f32(), a.m.at(name).f32(), a.v.at(name).f32(), p.numel(),
                     o.weight_decay > 0.0f && p.rank() == 2});
  return slots;
}

int64_t total_elements(const std::vector<ParamSlot>& slots) {
  int64_t n = 0;
  for (const ParamSlot& s : slots) n += s.n;
  return n;
}

// AdamW (PyTorch's) on the gradients scaled by g_scale (clipping): g = g_scale·grad;
//   m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p −= lr·(m̂/(√v̂ + ε) + wd·p)
// Element by element, so vectorised and split over the threads it gives the same bits as one scalar loop, and the
// same as scaling the gradients in memory first (one pass over them fewer).
void adam_step(const std::vector<ParamSlot>& slots, AdamState& a, const StepOptions& o, float lr, float g_scale) {
  ++a.step;
  const float bc1 = 1.0f - std::pow(o.beta1, static_cast<float>(a.step)),
              bc2 = 1.0f - std::pow(o.beta2, static_cast<float>(a.step));
  const float b1 = o.beta1, b2 = o.beta2, c1 = 1.0f - o.beta1, c2 = 1.0f - o.beta2, eps = o.adam_eps;
  const float lr_wd = lr * o.weight_decay, gs = g_scale;
#pragma omp parallel if (total_elements(slots) >= kParallelElements)
  for (const ParamSlot& s : slots) {
    float *pp = s.p, *mm = s.m, *vv = s.v;
    const float* gg = s.g;
    if (s.decay) {
#pragma omp for simd schedule(static) nowait
      for (int64_t i = 0; i < s.n; ++i) {
        const float g = gg[i] * gs;
        mm[i] = b1 * mm[i] + c1 * g;
        vv[i] = b2 * vv[i] + c2 * g * g;
        pp[i] -= lr_wd * pp[i];
        pp[i] -= lr * (mm[i] / bc1) / (std::sqrt(vv[i] / bc2) + eps);
      }
    } else {
#pragma omp for simd schedule(static) nowait
      for (int64_t i = 0; i < s.n; ++i) {
        const float g = gg[i] * gs;
        mm[i] = b1 * mm[i] + c1 * g;
        vv[i] = b2 * vv[i] + c2 * g * g;
        pp[i] -= lr * (mm[i] / bc1) / (std::sqrt(vv[i] / bc2) + eps);
      }
    }
  }
}

// The gradients' global L2 norm. The squares are summed in double over fixed blocks of elements, then the blocks in
// order: the same norm for any thread count.
float gradient_norm(const std::vector<ParamSlot>& slots) {
  constexpr int64_t kBlock = 1 << 14;
  struct Block {
    const float* g;
    int64_t n;
  };
  std::vector<Block> blocks;
  for (const ParamSlot& s : slots)
    for (int64_t i = 0; i < s.n; i += kBlock) blocks.push_back({s.g + i, std::min(kBlock, s.n - i)});
  std::vector<double> partial(blocks.size());
  const int64_t nb = static_cast<int64_t>(blocks.size());
#pragma omp parallel for schedule(static) if (total_elements(slots) >= kParallelElements)
  for (int64_t b = 0; b < nb; ++b) {
    const float* g = blocks[static_cast<size_t>(b)].g;
    double sq = 0.0;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < blocks[static_cast<size_t>(b)].n; ++i) sq += static_cast<double>(g[i]) * g[i];
    partial[static_cast<size_t>(b)] = sq;
  }
  double sq = 0.0;
  for (double x : partial) sq += x;
  return static_cast<float>(std::sqrt(sq));
}

// The factor that brings a global norm down to max_norm, as torch.nn.utils.clip_grad_norm_: min(1, max_norm /
// (norm + 1e-6)), so a norm within 1e-6 below max_norm is scaled too (it had been left alone); 1 where max_norm is 0.
float clip_scale(float norm, float max_norm) {
  if (!(max_norm > 0.0f)) return 1.0f;
  const float coefficient = max_norm / (norm + 1e-6f);
  return coefficient < 1.0f ? coefficient : 1.0f;  // (a NaN norm: 1, the gradients are NaN either way)
}

std::vector<uint8_t> text_bytes(const std::string& text) {
  std::vector<uint8_t> bytes(text.begin(), text.end());
  bytes.push_back('\n');
  return bytes;
}

// The most examples a pool holds: each is generated and kept (2^62 from a checkpoint had run the machine out of
// memory).
constexpr int64_t kMaxExamples = int64_t{1} << 24;

// What a checkpoint keeps of the options beside the model, and resume_from takes back, so that --resume continues the
// run it saved whatever the options say: the data order (the pool, its batches and their shuffles come from seed,
// train_examples and batch_size) and the recipe (the warm-up schedule, AdamW's settings, label smoothing, clipping),
// as PyTorch's optimizer.load_state_dict restores its parameter groups' settings. A checkpoint from before a field
// was saved leaves the options' own there.
struct RunSettings {
  uint64_t seed = 1;
  int64_t train_examples = 0, batch_size = 0, warmup = 0;
  float lr_factor = 1.0f, beta1 = 0.9f, beta2 = 0.98f, adam_eps = 1e-9f, weight_decay = 0.0f, label_smoothing = 0.0f,
        clip_norm = 0.0f;

  static RunSettings of(const TrainOptions& o) {
    return {o.seed,  o.train_examples, o.batch_size,   o.warmup,          o.lr_factor, o.beta1,
            o.beta2, o.adam_eps,       o.weight_decay, o.label_smoothing, o.clip_norm};
  }
  void apply_to(TrainOptions* o) const {
    o->seed = seed, o->train_examples = train_examples, o->batch_size = batch_size, o->warmup = warmup;
    o->lr_factor = lr_factor, o->beta1 = beta1, o->beta2 = beta2, o->adam_eps = adam_eps;
    o->weight_decay = weight_decay, o->label_smoothing = label_smoothing, o->clip_norm = clip_norm;
  }
  // Whether key names one of these fields in train_state.json.
  static bool has_key(const std::string& key) {
    bool found = false;
    RunSettings any;
    any.for_each_integer([&](const char* name, auto&) { found = found || key == name; });
    any.for_each_float([&](const char* name, float&) { found = found || key == name; });
    return found;
  }
  // The data order's whole-number fields by their names in train_state.json.
  template <class F>
  void for_each_integer(F&& f) {
    f("shuffle_seed", seed), f("train_examples", train_examples), f("batch_size", batch_size), f("warmup", warmup);
  }
  // The recipe's float fields by their names in train_state.json.
  template <class F>
  void for_each_float(F&& f) {
    f("lr_factor", lr_factor), f("beta1", beta1), f("beta2", beta2), f("adam_eps", adam_eps);
    f("weight_decay", weight_decay), f("label_smoothing", label_smoothing), f("clip_norm", clip_norm);
  }
};

// The checkpoint's five files replace the previous ones together (io::FileSet): a failed save leaves the last
// checkpoint whole, never a model from one step beside an optimizer state from another. A process killed between
// two of the renames can still leave such a mix: the model, the optimizer state and train_state.json carry one id,
// drawn anew for each save, which resume_from checks.
void save_checkpoint(const std::string& dir, const Transformer& model, const tasks::Vocab& vocab, const AdamState& adam,
                     const std::mt19937_64& rng, int64_t epoch, int64_t batch_index, RunSettings run) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw FileError(dir + ": cannot create the checkpoint directory (" + ec.message() + ")", ec.value());
  std::random_device entropy;  // (not the training's generator: saving leaves the run's random streams alone)
  char id[40];
  std::snprintf(id, sizeof id, "step %lld, %08x%08x", static_cast<long long>(adam.step), entropy(), entropy());
  const std::map<std::string, std::string> checkpoint{{"checkpoint", id}};
  io::FileSet files;
  model.stage(files, dir, checkpoint);
  files.add("vocab.json", dir + "/vocab.json", text_bytes(vocab.to_json()));
  std::map<std::string, Tensor> state;
  for (const auto& [name, t] : adam.m) state["m." + name] = t;
  for (const auto& [name, t] : adam.v) state["v." + name] = t;
  files.add("optimizer.safetensors", dir + "/optimizer.safetensors", io::encode_safetensors(state, checkpoint));
  std::ostringstream r;
  r << rng;
  nlohmann::json state_json{
      {"step", adam.step}, {"epoch", epoch}, {"batch_index", batch_index}, {"rng", r.str()}, {"checkpoint", id}};
  run.for_each_integer([&](const char* key, auto v) { state_json[key] = v; });
  // a float widened to double, which JSON writes in full: read back and narrowed, the same float
  run.for_each_float([&](const char* key, float v) { state_json[key] = static_cast<double>(v); });
  files.add("train_state.json", dir + "/train_state.json", text_bytes(state_json.dump(1)));
  files.commit();
}

// A checkpoint directory that cannot be written fails before the first step, not after it: the nearest existing
// ancestor (the directory itself, or where it will be created) must be a writable directory, and no checkpoint file's
// name an existing directory.
void check_checkpoint_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::path up = std::filesystem::absolute(dir, ec);
  while (!std::filesystem::exists(up, ec) && up.has_parent_path() && up.parent_path() != up) up = up.parent_path();
  if (!std::filesystem::is_directory(up, ec) || ::access(up.c_str(), W_OK) != 0)
    throw ArgumentError("train: --out " + dir + " cannot be created or written (" + up.string() +
                        " is not a writable directory)");
  std::vector<std::pair<std::string, std::string>> files;
  for (const std::string& name : checkpoint_file_names()) files.emplace_back(name, dir + "/" + name);
  io::check_output_paths(files, io::OutputFolders::kMayBeCreated);
}

// A checkpoint's optimizer state and training position (train --resume), every tensor checked against the model's
// parameter of its name: a moment of another shape would have been read and written past its end by AdamW.
void resume_from(const std::string& dir, const std::vector<std::string>& overrides, const Transformer& model,
                 AdamState* adam, std::mt19937_64* rng, int64_t* epoch, int64_t* batch_index, RunSettings* run) {
  const std::string opt_path = dir + "/optimizer.safetensors", state_path = dir + "/train_state.json";
  const io::Safetensors opt = io::read_safetensors(opt_path);
  // one checkpoint's files (see save_checkpoint; checkpoints from before the ids have none)
  const auto id_of = [](const std::map<std::string, std::string>& metadata) {
    const auto it = metadata.find("checkpoint");
    return it == metadata.end() ? std::string("none") : it->second;
  };
  const std::string model_id = id_of(io::read_safetensors_metadata(dir + "/model.safetensors"));
  std::string state_id = "none";  // (read with the rest of train_state.json below)
  for (const auto& [name, p] : model.params())
    for (const char* moment : {"m.", "v."}) {
      const std::string key = moment + name;
      if (!opt.contains(key))
        throw MissingTensorError(opt_path + ": has no '" + key + "' for the model's parameter '" + name + "'");
      const Tensor& t = opt.at(key);
      if (t.dtype() != DType::kFloat32 || t.shape() != p.shape())
        throw ShapeError(opt_path + ": '" + key + "' is " + dtype_name(t.dtype()) + " " + shape_str(t.shape()) +
                         ", but the parameter '" + name + "' is float32 " + shape_str(p.shape()));
      (moment[0] == 'm' ? adam->m : adam->v)[name] = t.clone();
    }
  const std::string text = io::read_text(state_path);  // its errors name the path
  constexpr int64_t kMaxCount = int64_t{1} << 62;      // counting on from here never overflows
  try {
    const nlohmann::json st = io::parse_json(text, "");
    if (st.contains("checkpoint")) state_id = st.at("checkpoint").get<std::string>();
    for (const std::string& key : overrides) {  // (names checked by train_numbers)
      if (st.contains(key))
        throw ArgumentError("train: resuming " + dir + ", whose train_state.json holds its own " + key + " (" +
                            io::json_excerpt(st.at(key)) +
                            "): a resumed run keeps the checkpoint's data order and recipe, so it cannot be set "
                            "(start a new run to train another recipe)");
    }
    io::read_integer(st, "step", adam->step);
    io::read_integer(st, "epoch", *epoch), io::read_integer(st, "batch_index", *batch_index);
    // (checkpoints before these were saved: the options' own)
    run->for_each_integer([&](const char* key, auto& v) { io::read_integer_if_present(st, key, v); });
    if (run->train_examples < 1 || run->batch_size < 1 || run->train_examples > kMaxExamples ||
        run->batch_size > kMaxCount)
      throw FormatError("train_examples must be in [1, 2^24] and batch_size in [1, 2^62]");
    run->for_each_float([&](const char* key, float& v) {  // (their ranges: train_numbers checks the options after)
      if (!st.contains(key)) return;
      const nlohmann::json& x = st.at(key);
      if (!x.is_number() || !(std::fabs(x.get<double>()) <= std::numeric_limits<float>::max()))
        throw FormatError(std::string("\"") + key + "\" must be a number within float's range, got " +
                          io::json_excerpt(x));
      v = static_cast<float>(x.get<double>());
    });
    std::istringstream r(st.at("rng").get<std::string>());
    r >> *rng;
    if (!r || adam->step < 0 || *epoch < 0 || *batch_index < 0 || adam->step > kMaxCount || *epoch > kMaxCount ||
        *batch_index > kMaxCount)
      throw FormatError("step, epoch and batch_index must be in [0, 2^62], the rng state readable");
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(state_path + ": " + e.what());
  } catch (const FormatError& e) {
    throw FormatError(state_path + ": " + e.what());
  }
  if (model_id != state_id || id_of(opt.metadata) != state_id)
    throw FormatError(dir + ": its files come from different saves (model.safetensors: " + model_id +
                      ", optimizer.safetensors: " + id_of(opt.metadata) + ", train_state.json: " + state_id +
                      "), as a run killed while it saved leaves them; resuming would train a model with another "
                      "step's optimizer state and data position. Resume from another checkpoint or start again.");
}

// Data parallel: this rank's sentences of a global batch (contiguous, as even as possible; every rank takes the
// whole batch when it has fewer sentences than ranks) and its share of the batch's loss; *tokens = the batch's.
std::vector<const Pair*> shard_of(const std::vector<const Pair*>& batch, GradientReducer& r, int64_t* tokens) {
  const size_t n = batch.size(), ranks = static_cast<size_t>(r.size()), me = static_cast<size_t>(r.rank());
  const std::vector<const Pair*> mine =
      n < ranks ? batch
                : std::vector<const Pair*>(batch.begin() + static_cast<std::ptrdiff_t>(n * me / ranks),
                                           batch.begin() + static_cast<std::ptrdiff_t>(n * (me + 1) / ranks));
  int64_t all = 0, own = 0;
  for (const Pair* p : batch) all += static_cast<int64_t>(p->tgt.size()) + 1;
  for (const Pair* p : mine) own += static_cast<int64_t>(p->tgt.size()) + 1;
  r.share = n < ranks ? 1.0 / static_cast<double>(ranks) : static_cast<double>(own) / static_cast<double>(all);
  *tokens = all;
  return mine;
}

std::string eta(double seconds) {
  char buf[32];
  const int s = static_cast<int>(seconds);
  std::snprintf(buf, sizeof buf, s >= 3600 ? "%dh%02dm" : "%dm%02ds", s >= 3600 ? s / 3600 : s / 60,
                s >= 3600 ? s / 60 % 60 : s % 60);
  return buf;
}

}  // namespace

const std::vector<std::string>& checkpoint_file_names() {  // save_checkpoint's (and Transformer::stage's) files
  static const std::vector<std::string> names = {"model.safetensors", "config.json", "vocab.json",
                                                 "optimizer.safetensors", "train_state.json"};
  return names;
}

int64_t checkpoint_step(const std::string& dir) {
  const std::string path = dir + "/train_state.json";
  const std::string text = io::read_text(path);  // its errors name the path
  int64_t step = 0;
  try {
    io::read_integer(io::parse_json(text, ""), "step", step);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": " + e.what());
  } catch (const FormatError& e) {
    throw FormatError(path + ": " + e.what());
  }
  return step;
}

float noam_learning_rate(float lr_factor, int64_t d_model, int64_t warmup, int64_t step) {
  const float s = static_cast<float>(std::max<int64_t>(step, 1)), w = static_cast<float>(std::max<int64_t>(warmup, 1));
  return lr_factor / std::sqrt(static_cast<float>(d_model)) * std::min(1.0f / std::sqrt(s), s * std::pow(w, -1.5f));
}

StepOptions step_options(const TrainOptions& o) {
  StepOptions s;
  s.beta1 = o.beta1, s.beta2 = o.beta2, s.adam_eps = o.adam_eps, s.weight_decay = o.weight_decay;
  s.label_smoothing = o.label_smoothing, s.clip_norm = o.clip_norm, s.reducer = o.reducer;
  return s;
}

namespace {

// AdamW's and the loss's numbers (the flags train_numbers takes them from in brackets): beta1 = 1 or a NaN had made
// every parameter NaN, a label smoothing of 2 or a negative clip norm had been taken as they came.
void check_step_options(const StepOptions& o, const std::string& who) {
  const auto in = [](float x, float lo, float hi, bool hi_open) { return x >= lo && (hi_open ? x < hi : x <= hi); };
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const auto bad = [&](const std::string& what, float x, const std::string& range) {
    throw ArgumentError(who + ": " + what + " = " + std::to_string(x) + " must be " + range);
  };
  if (!in(o.beta1, 0.0f, 1.0f, true) || !in(o.beta2, 0.0f, 1.0f, true))
    bad("AdamW's beta1 and beta2, beta1", o.beta1, "in [0, 1) (beta2 = " + std::to_string(o.beta2) + ")");
  if (!(o.adam_eps > 0.0f && o.adam_eps < kInf)) bad("adam_eps", o.adam_eps, "finite and positive");
  if (!in(o.weight_decay, 0.0f, kInf, true)) bad("weight_decay (--weight-decay)", o.weight_decay, "finite and >= 0");
  if (!in(o.label_smoothing, 0.0f, 1.0f, true))
    bad("label_smoothing (--label-smoothing)", o.label_smoothing, "in [0, 1)");
  if (!in(o.clip_norm, 0.0f, kInf, true)) bad("clip_norm (--clip)", o.clip_norm, "finite and >= 0 (0: no clipping)");
}

}  // namespace

TrainingStep::TrainingStep(Transformer& model, const StepOptions& options) : model_(&model), options_(options) {
  check_step_options(options, "TrainingStep");
  for (const auto& [name, t] : model.params()) adam_.m[name] = Tensor(t.shape()), adam_.v[name] = Tensor(t.shape());
}

float TrainingStep::run(const TokenBatch& src, const TokenBatch& tgt_in, const std::vector<int32_t>& tgt_out, float lr,
                        std::mt19937_64& rng) {
  Transformer& model = *model_;
  const TransformerConfig& c = model.config();
  if (tgt_in.B < 0 || tgt_in.L < 0 || (tgt_in.L > 0 && tgt_in.B > static_cast<int64_t>(tgt_out.size()) / tgt_in.L) ||
      static_cast<int64_t>(tgt_out.size()) != tgt_in.B * tgt_in.L)
    throw ShapeError("TrainingStep: tgt_out has " + std::to_string(tgt_out.size()) + " ids for tgt_in [B, Lt] = [" +
                     std::to_string(tgt_in.B) + ", " + std::to_string(tgt_in.L) + "]");
  if (!(lr >= 0.0f && lr < std::numeric_limits<float>::infinity()))
    throw ArgumentError("TrainingStep: lr = " + std::to_string(lr) + " must be finite and >= 0");
  for (size_t i = 0; i < tgt_out.size(); ++i)  // the loss reads logits[target]: never outside the row
    if (tgt_out[i] != c.pad_id && (tgt_out[i] < 0 || tgt_out[i] >= c.tgt_vocab))
      throw ArgumentError("TrainingStep: tgt_out[" + std::to_string(i) + "] = " + std::to_string(tgt_out[i]) +
                          " is outside the target vocabulary [0, " + std::to_string(c.tgt_vocab) + ")");
  model.zero_grad();
  const Tensor logits = model.forward(src, tgt_in, true, &rng);
  if (dlogits_.shape() != logits.shape()) dlogits_ = Tensor(logits.shape());
  float loss = ops::cross_entropy_forward_backward(dlogits_.f32(), logits.f32(), tgt_out.data(), tgt_in.B * tgt_in.L,
                                                   c.tgt_vocab, options_.label_smoothing, c.pad_id);
  if (GradientReducer* reducer = options_.reducer) {
    // data parallel: gradients reduced as the backward finishes them; afterwards the whole batch's, and its loss
    reducer->begin_step(model.grads(), loss);
    BackwardOptions hooks;
    hooks.on_gradients_ready = [reducer](const std::vector<std::string>& names) { reducer->gradients_ready(names); };
    model.backward(dlogits_, hooks);
    loss = reducer->finish_step();
  } else {
    model.backward(dlogits_);
  }
  const std::vector<ParamSlot> slots = param_slots(model, adam_, options_);
  const float norm = gradient_norm(slots);
  // A step that has nothing to learn or that would poison the model changes nothing (every rank decides alike: the
  // loss and the gradients are the reduced ones): every target ignored (data parallel: the batch's loss and
  // gradients exactly 0), where PyTorch's mean over no targets is NaN, and a loss or gradient that is not finite,
  // which AdamW would carry into every moment and parameter it touches.
  const bool nothing_to_learn =
      options_.reducer ? loss == 0.0f && norm == 0.0f
                       : std::none_of(tgt_out.begin(), tgt_out.end(), [&](int32_t t) { return t != c.pad_id; });
  if (nothing_to_learn || !std::isfinite(loss) || !std::isfinite(norm))
    return std::isfinite(norm) ? loss : std::numeric_limits<float>::quiet_NaN();
  adam_step(slots, adam_, options_, lr, clip_scale(norm, options_.clip_norm));
  return loss;
}

double exact_match(const Transformer& model, const tasks::Vocab& vocab, const std::vector<tasks::Example>& examples,
                   int beam, std::vector<std::string>* outputs) {
  std::vector<std::string> src;
  for (const auto& e : examples) src.push_back(e.source);
  TranslateOptions options;
  options.beam = beam;
  const std::vector<std::string> got = Translator::borrowing(model, vocab).translate(src, options);
  int64_t right = 0;
  for (size_t i = 0; i < examples.size(); ++i) right += got[i] == examples[i].target;
  if (outputs) *outputs = got;
  return examples.empty() ? 0.0 : static_cast<double>(right) / static_cast<double>(examples.size());
}

namespace {

// The schedule's numbers, before the first step (AdamW's: check_step_options, which TrainingStep runs): a NaN or
// negative learning rate had trained to the end and written a checkpoint of NaNs.
void check_schedule_options(const TrainOptions& o) {
  if (!(o.lr_factor > 0.0f && o.lr_factor < std::numeric_limits<float>::infinity()))
    throw ArgumentError("train: lr_factor (--lr-factor) = " + std::to_string(o.lr_factor) +
                        " must be finite and positive");
  if (o.warmup < 0) throw ArgumentError("train: warmup (--warmup) = " + std::to_string(o.warmup) + " must be >= 0");
}

}  // namespace

TrainReport train_numbers(const TrainOptions& options, const std::function<void(int64_t, float)>& on_step) {
  TrainOptions o = options;
  if (o.num_threads < 0)
    throw ArgumentError("train: num_threads = " + std::to_string(o.num_threads) +
                        " (0: OpenMP's default; > 0: that many)");
  const detail::ThreadScope threads(o.num_threads);  // every op of the step and the GEMMs' pool (OpenBLAS)
  if (o.train_examples > kMaxExamples || o.val_examples > kMaxExamples)  // (each one generated and kept)
    throw ArgumentError("train: train_examples (" + std::to_string(o.train_examples) + ") and val_examples (" +
                        std::to_string(o.val_examples) + ") must be at most 2^24");
  if (o.train_examples < 1 || o.val_examples < 0 || o.batch_size < 1 || o.steps < 0 || o.eval_every < 0)
    throw ArgumentError("train: train_examples (" + std::to_string(o.train_examples) + ") and batch_size (" +
                        std::to_string(o.batch_size) + ") must be at least 1, val_examples (" +
                        std::to_string(o.val_examples) + "), steps (" + std::to_string(o.steps) + ") and eval_every (" +
                        std::to_string(o.eval_every) + ") at least 0");
  for (const std::string& key : o.resume_overrides)
    if (!RunSettings::has_key(key))
      throw ArgumentError("train: resume_overrides names '" + key + "', which is not a field of train_state.json's " +
                          "data order or recipe");
  if (o.resume_dir.empty()) {  // a resumed run takes the checkpoint's recipe, checked below
    check_schedule_options(o);
    check_step_options(step_options(o), "train");
  }
  if (!o.out_dir.empty()) check_checkpoint_dir(o.out_dir);
  const tasks::Vocab vocab = tasks::Vocab::numbers();
  o.model.src_vocab = static_cast<int64_t>(vocab.src.size());
  o.model.tgt_vocab = static_cast<int64_t>(vocab.tgt.size());
  o.model.pad_id = 0, o.model.bos_id = 1, o.model.eos_id = 2;
  Transformer model(o.model, o.seed);
  AdamState resumed;
  std::mt19937_64 rng(o.seed * 7919 + 1);
  int64_t epoch = 0, batch_index = 0;
  if (!o.resume_dir.empty()) {
    model = Transformer::load(o.resume_dir);
    o.model = model.config();
    // the task's vocabulary, which the checkpoint's must be (another one had been trained on with numbers' ids and
    // then overwritten by them, leaving a checkpoint no Translator loads)
    const tasks::Vocab saved = tasks::Vocab::load(o.resume_dir);
    if (saved.src != vocab.src || saved.tgt != vocab.tgt)
      throw FormatError(o.resume_dir + "/vocab.json: not the numbers-en-zh vocabulary this trainer uses (" +
                        std::to_string(saved.src.size()) + " source and " + std::to_string(saved.tgt.size()) +
                        " target tokens)");
    RunSettings run = RunSettings::of(o);
    resume_from(o.resume_dir, o.resume_overrides, model, &resumed, &rng, &epoch, &batch_index, &run);
    run.apply_to(&o);
    try {  // the checkpoint's recipe, checked as the options were
      check_schedule_options(o);
      check_step_options(step_options(o), "train");
    } catch (const ArgumentError& e) {
      throw FormatError(o.resume_dir +
                        "/train_state.json (its recipe, or the options' where it holds none): " + e.what());
    }
  }
  TrainingStep step(model, step_options(o));
  if (!o.resume_dir.empty()) step.state() = std::move(resumed);
  const AdamState& adam = step.state();
  if (!o.resume_dir.empty() && adam.step >= o.steps)  // nothing to do would look like success and write nothing
    throw ArgumentError("train: steps (--steps) = " + std::to_string(o.steps) + " is the total to reach, but " +
                        o.resume_dir + " has already taken " + std::to_string(adam.step) + " steps");
  // data: the training pool and the validation examples, both from the seed
  std::vector<Pair> data;
  for (const tasks::Example& e : tasks::make_examples(tasks::Split::kTrain, o.train_examples, o.seed)) {
    data.push_back({vocab.encode_source(e.source, o.model.max_len), vocab.encode_target(e.target)});
    // a target takes its characters and BOS (decoder input) or EOS (labels): refused here, not at its first batch
    if (static_cast<int64_t>(data.back().tgt.size()) + 1 > o.model.max_len)
      throw ArgumentError("train: model.max_len = " + std::to_string(o.model.max_len) + " positions, but the target " +
                          e.target + " (of " + e.source + ") takes " + std::to_string(data.back().tgt.size() + 1) +
                          " (its characters and EOS)");
  }
  const std::vector<tasks::Example> val = tasks::make_examples(tasks::Split::kValidation, o.val_examples, o.seed + 1);
  const auto batches = bucket(data, o.batch_size);
  std::vector<size_t> order(batches.size());
  auto shuffle_epoch = [&](int64_t e) {
    std::iota(order.begin(), order.end(), size_t{0});
    std::mt19937_64 shuffle_rng(o.seed * 104729 + static_cast<uint64_t>(e));
    std::shuffle(order.begin(), order.end(), shuffle_rng);
  };
  shuffle_epoch(epoch);

  TrainReport report;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens = 0;
  double loss_window = 0.0;
  int64_t window = 0;
  const int64_t first = adam.step;
  const bool writer = !o.reducer || o.reducer->rank() == 0;  // data parallel: rank 0 validates, saves, reports
  while (adam.step < o.steps) {
    if (batch_index >= static_cast<int64_t>(batches.size())) shuffle_epoch(++epoch), batch_index = 0;
    const std::vector<const Pair*>& global = batches[order[static_cast<size_t>(batch_index++)]];
    int64_t batch_tokens = 0;
    const Batch b = make_batch(o.reducer ? shard_of(global, *o.reducer, &batch_tokens) : global, o.model);
    // data parallel: each rank's dropout from its own stream, drawn from the shared one (saved in checkpoints)
    std::mt19937_64 rank_rng(o.reducer ? rng() + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(o.reducer->rank()) : 0);
    const float loss =
        step.run(b.src, b.tgt_in, b.tgt_out, noam_learning_rate(o.lr_factor, o.model.d_model, o.warmup, adam.step + 1),
                 o.reducer ? rank_rng : rng);
    if (!std::isfinite(loss))  // TrainingStep left the model as it was: the last checkpoint stays the last good one
      throw Error("train: step " + std::to_string(adam.step + 1) + "'s loss or gradients are not finite (loss " +
                  std::to_string(loss) + "): training diverged; a smaller --lr-factor or a --clip norm may help");
    tokens += o.reducer ? batch_tokens : b.tokens;
    loss_window += loss, ++window;
    if (on_step) on_step(adam.step, loss);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // every eval_every steps (0: never in between) and always after the last: the run ends with a checkpoint
    const bool eval_now = adam.step == o.steps || (o.eval_every > 0 && adam.step % o.eval_every == 0);
    if (eval_now && writer) {
      report.val_accuracy = exact_match(model, vocab, val);
      if (!o.out_dir.empty())
        save_checkpoint(o.out_dir, model, vocab, adam, rng, epoch, batch_index, RunSettings::of(o));
    }
    if (o.progress && writer && (adam.step % 10 == 0 || eval_now || adam.step == o.steps)) {
      const double frac = static_cast<double>(adam.step) / static_cast<double>(o.steps);
      const int bar = static_cast<int>(frac * 30);
      const double rate = static_cast<double>(adam.step - first) / std::max(elapsed, 1e-9);
      std::fprintf(stderr, "\r[%s%s] step %lld/%lld  loss %.3f  %.0f tok/s  val %.1f%%  ETA %s   ",
                   std::string(static_cast<size_t>(bar), '=').c_str(),
                   std::string(static_cast<size_t>(30 - bar), ' ').c_str(), static_cast<long long>(adam.step),
                   static_cast<long long>(o.steps), loss_window / std::max<int64_t>(window, 1),
                   static_cast<double>(tokens) / std::max(elapsed, 1e-9), 100.0 * report.val_accuracy,
                   eta(static_cast<double>(o.steps - adam.step) / std::max(rate, 1e-9)).c_str());
      if (eval_now) std::fprintf(stderr, "\n");
    }
    if (window >= 100)
      report.last_loss = static_cast<float>(loss_window / static_cast<double>(window)), loss_window = 0.0, window = 0;
    report.seconds = elapsed;
    report.tokens_per_second = static_cast<double>(tokens) / std::max(elapsed, 1e-9);
  }
  if (window > 0) report.last_loss = static_cast<float>(loss_window / static_cast<double>(window));
  report.steps = adam.step;
  if (o.progress && writer) std::fprintf(stderr, "\n");
  return report;
}

}  // namespace attn::train
