// attn train: trains the encoder-decoder Transformer on numbers-en-zh, with a progress bar.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/train/trainer.h"
#include "common.h"
#include "dist_cli.h"

namespace attn::cli {
namespace {

struct TrainArgs {
  train::TrainOptions o;
  std::string task = "numbers-en-zh", activation = "relu";
  bool no_progress = false;
  std::string loss_log;  // "step loss" per line
  DataParallelArgs data_parallel;
  std::vector<std::string> model_flags_given;  // flags for the model, which a --resume loads from the checkpoint
};

// The lines of a loss log ("step loss") up to `last_step`: from the first on, until one is not such a line (a killed
// run's last, half written) or goes past it.
std::string log_lines_up_to(const std::string& text, int64_t last_step) {
  std::string kept;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = text.find('\n', begin);
    if (end == std::string::npos) break;  // no line break: half written
    const std::string line = text.substr(begin, end - begin);
    long long step = 0;
    double loss = 0.0;
    char rest = 0;
    if (std::sscanf(line.c_str(), "%lld %lf %c", &step, &loss, &rest) != 2 || step > last_step) break;
    kept += line + "\n";
    begin = end + 1;
  }
  return kept;
}

void run_train(TrainArgs a) {
  if (a.task != "numbers-en-zh") throw ArgumentError("--task: only numbers-en-zh exists, got '" + a.task + "'");
  // a bucket is one MPI message of floats: at most 2^31 - 1 of them, just under 8192 MB (checked without mpirun too)
  if (!(a.data_parallel.bucket_mb > 0.0) || a.data_parallel.bucket_mb >= 8192.0)
    throw ArgumentError("--bucket-mb " + std::to_string(a.data_parallel.bucket_mb) +
                        ": must be in (0, 8192) (one MPI message of float32 gradients)");
  if (!a.o.resume_dir.empty() && !a.model_flags_given.empty()) {
    std::string names;
    for (const std::string& n : a.model_flags_given) names += (names.empty() ? "" : ", ") + n;
    throw ArgumentError("--resume " + a.o.resume_dir + ": the model is the checkpoint's; " + names +
                        " cannot change it (start a new run with --out to train another model)");
  }
  a.o.model.activation = parse_activation(a.activation);
  a.o.progress = !a.no_progress;
  const bool rank0 = launcher_rank0();
  const std::string log_partial = io::sibling_path(a.loss_log, ".partial");
  struct stat partial_stat;  // (lstat: a dangling link there is someone's too)
  const bool partial_left = rank0 && !a.loss_log.empty() && ::lstat(log_partial.c_str(), &partial_stat) == 0;
  // A resumed run continues the log, as an uninterrupted run's would read: the lines up to the checkpoint's step, from
  // the FILE.partial a killed run left (which it takes over) or else from FILE, then its own. A new run never takes
  // over a FILE.partial. (A resumed run's log had held its own steps alone, and a killed run's had blocked --resume.)
  std::string carried;  // the earlier steps' lines
  // before any work or output; a FILE.partial that is not a regular file (a link: to someone's file) is never taken
  if (partial_left && (a.o.resume_dir.empty() || !S_ISREG(partial_stat.st_mode)))
    throw ArgumentError("--loss-log " + a.loss_log + ": " + log_partial +
                        " exists (another run's log, or a killed run's, which --resume continues); remove it or choose "
                        "another --loss-log");
  if (rank0 && !a.loss_log.empty() && !a.o.resume_dir.empty()) {
    struct stat log_stat;
    if (partial_left || ::stat(a.loss_log.c_str(), &log_stat) == 0)
      carried = log_lines_up_to(io::read_text(partial_left ? log_partial : a.loss_log),
                                train::checkpoint_step(a.o.resume_dir));
  }
  if (rank0 && !a.o.resume_dir.empty())  // the model, data order and recipe are the checkpoint's
    std::fprintf(stderr,
                 "training numbers-en-zh: resuming %s (its model, optimizer state, data order and recipe) up to step "
                 "%lld\n",
                 a.o.resume_dir.c_str(), static_cast<long long>(a.o.steps));
  else if (rank0)
    std::fprintf(
        stderr,
        "training numbers-en-zh: d_model %lld, %lld heads, d_ff %lld, %lld+%lld layers, %s, %lld steps of %lld "
        "sentences\n",
        static_cast<long long>(a.o.model.d_model), static_cast<long long>(a.o.model.num_heads),
        static_cast<long long>(a.o.model.d_ff), static_cast<long long>(a.o.model.num_encoder_layers),
        static_cast<long long>(a.o.model.num_decoder_layers), a.o.model.norm_first ? "pre-norm" : "post-norm",
        static_cast<long long>(a.o.steps), static_cast<long long>(a.o.batch_size));
  // under mpirun: data parallel over the ranks, rank 0 writes the checkpoints, the log and the summary
  int rank = 0;
  // the loss log grows under a temporary name and takes its own when the run ends well; a failed run removes it. It
  // may not be one of the checkpoint's files (renamed over it after the last save, it had replaced train_state.json).
  std::vector<std::pair<std::string, std::string>> outputs = {{"--loss-log", a.loss_log}};
  if (!a.loss_log.empty() && !a.o.out_dir.empty())
    for (const std::string& name : train::checkpoint_file_names())
      outputs.emplace_back("--out's " + name, a.o.out_dir + "/" + name);
  std::error_code ec;  // nor one of the checkpoint resumed from (it had replaced that train_state.json at the end)
  if (!a.loss_log.empty() && !a.o.resume_dir.empty() &&
      !(!a.o.out_dir.empty() && std::filesystem::equivalent(a.o.out_dir, a.o.resume_dir, ec)))
    for (const std::string& name : train::checkpoint_file_names())
      outputs.emplace_back("--resume's " + name, a.o.resume_dir + "/" + name);
  io::check_output_paths(outputs, io::OutputFolders::kMayBeCreated);  // (--out is created when the first checkpoint is)
  if (rank0) io::check_output_paths({{"--loss-log", a.loss_log}});    // its folder must be there, where it is written
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log(nullptr, std::fclose);
  bool log_started = false;  // this run writes FILE.partial, renamed to FILE when the run ends well
  bool log_opened = false;   // only a log this run created is removed on failure (a killed run's it took over stays)
  auto on_step = [&](int64_t step, float loss) {
    if (!a.loss_log.empty() && rank == 0) {
      if (!log) {  // created, never truncated: a FILE.partial that exists is someone else's (it had been
                   // overwritten), but for the killed run's a resumed run takes over, replaced whole by the carried
                   // lines (a rename: killed again meanwhile, it holds the old lines or the new, never fewer)
        int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
        const auto someone_elses = [&] {
          return ArgumentError("--loss-log " + a.loss_log + ": " + log_partial +
                               " exists (another run's log?); remove it or choose another --loss-log");
        };
        bool in_place = partial_left;  // FILE.partial holds the carried lines already: appended to
        const std::vector<uint8_t> carried_bytes(carried.begin(), carried.end());
        if (partial_left) {
          io::write_file_atomically(log_partial, carried_bytes);
        } else if (!carried.empty()) {  // a resumed run's FILE.partial starts with the earlier lines whole, or is not
                                        // there: written under another name, then renamed to its own only where no
                                        // file has it. Written in place, a kill amid them had left a FILE.partial that
                                        // --resume preferred to the whole FILE, losing the lines it lacked.
          const std::string staged = io::sibling_path(a.loss_log, ".partial-" + std::to_string(::getpid()));
          io::write_file_atomically(staged, carried_bytes);
          const int moved = ::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, log_partial.c_str(), RENAME_NOREPLACE),
                    move_errno = errno;
          if (moved != 0) std::remove(staged.c_str());
          if (moved != 0 && move_errno == EEXIST) throw someone_elses();
          // a file system without the flag (FAT, some network and FUSE mounts): the lines written after an exclusive
          // create below, as before (a kill amid them may then leave fewer)
          const bool unsupported =
              move_errno == EINVAL || move_errno == ENOSYS || move_errno == EOPNOTSUPP || move_errno == EPERM;
          if (moved != 0 && !unsupported)
            throw FileError(
                "--loss-log " + a.loss_log + ": cannot create " + log_partial + " (" + std::strerror(move_errno) + ")",
                move_errno);
          in_place = moved == 0;  // (this run's FILE.partial either way: removed if it fails, FILE keeping every line)
        }
        if (in_place) carried.clear(), flags = O_WRONLY | O_APPEND | O_CLOEXEC;
        const int fd = ::open(log_partial.c_str(), flags, 0666);
        if (fd < 0 && errno == EEXIST) throw someone_elses();
        if (fd >= 0)
          log.reset(::fdopen(fd, in_place ? "a" : "w")), log_started = true, log_opened = log_opened || !partial_left;
        if (fd >= 0 && !log) ::close(fd);
        // a line at a time: a killed run's FILE.partial holds every step it finished, which --resume carries on
        if (log) std::setvbuf(log.get(), nullptr, _IOLBF, BUFSIZ), std::fputs(carried.c_str(), log.get());
      }
      if (!log) throw Error("--loss-log " + a.loss_log + ": cannot write " + log_partial);
      std::fprintf(log.get(), "%lld %.9g\n", static_cast<long long>(step), static_cast<double>(loss));
    }
  };
  train::TrainReport r;
  try {
    r = launched_by_mpirun() ? train_distributed(a.o, a.data_parallel, on_step, &rank)
                             : train::train_numbers(a.o, on_step);
    if (log && (std::ferror(log.get()) != 0 || std::fclose(log.release()) != 0))  // (fclose flushes)
      throw Error("--loss-log " + a.loss_log + ": cannot finish the file");
    // written as every output is (through a symbolic link to its target, on the disk before it appears)
    if (log_started)
      io::write_file_atomically(a.loss_log, io::read_file(log_partial)), std::remove(log_partial.c_str());
  } catch (...) {
    log.reset();
    if (log_opened) std::remove(log_partial.c_str());
    throw;
  }
  if (rank != 0) return;
  std::printf("trained %lld steps in %.0f s (%.0f target tokens/s): loss %.4f, validation exact match %.2f%%%s%s\n",
              static_cast<long long>(r.steps), r.seconds, r.tokens_per_second, static_cast<double>(r.last_loss),
              100.0 * r.val_accuracy, a.o.out_dir.empty() ? "" : ", saved to ", a.o.out_dir.c_str());
}

}  // namespace

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  // The defaults are the shipped model's recipe (models/numbers-en-zh): retraining with no flags gives a model
  // of its accuracy (about 15 minutes on the 2-core machine; not its file bit for bit since the dropout changed).
  a->o.out_dir = "runs/numbers-en-zh";
  a->o.model.d_model = 128, a->o.model.num_heads = 4, a->o.model.d_ff = 256;
  a->o.model.num_encoder_layers = 3, a->o.model.num_decoder_layers = 3;
  a->o.steps = 14000, a->o.warmup = 800, a->o.eval_every = 1000;
  CLI::App* sub = app.add_subcommand(
      "train",
      "Train an encoder-decoder Transformer (numbers-en-zh: English number words -> Chinese numerals).\n"
      "Under mpirun (mpirun -np N attn train ...) data parallel: each rank trains on its shard of every batch, the "
      "gradients are summed over the ranks; rank 0 writes the checkpoints and the progress");
  sub->add_option("--task", a->task, "the task (numbers-en-zh)");
  CLI::Option* out =
      sub->add_option("--out", a->o.out_dir,
                      "checkpoint directory (model.safetensors, config.json, vocab.json, optimizer.safetensors, "
                      "train_state.json); default runs/numbers-en-zh, or with --resume the directory it resumes");
  sub->add_option(
      "--resume", a->o.resume_dir,
      "continue from this checkpoint directory: its model, optimizer state, data order and recipe (the model's "
      "flags, --seed, --train-examples, --batch-size, --lr-factor, --warmup, --label-smoothing, --clip and "
      "--weight-decay are the checkpoint's and are refused beside it, except a recipe flag an older checkpoint lacks; "
      "--steps is the total to reach)");
  sub->add_option("--steps", a->o.steps, "optimizer steps")->check(CLI::PositiveNumber);
  sub->add_option("--batch-size", a->o.batch_size, "sentences per batch (bucketed by length)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--d-model", a->o.model.d_model, "embedding size");
  sub->add_option("--heads", a->o.model.num_heads, "attention heads");
  sub->add_option("--d-ff", a->o.model.d_ff, "feed-forward size");
  sub->add_option("--encoder-layers", a->o.model.num_encoder_layers, "encoder layers");
  sub->add_option("--decoder-layers", a->o.model.num_decoder_layers, "decoder layers");
  sub->add_flag("--pre-norm", a->o.model.norm_first, "LayerNorm before each sublayer (default: after, as the paper)");
  sub->add_option("--activation", a->activation, "relu or gelu")->check(CLI::IsMember({"relu", "gelu"}));
  sub->add_flag("!--no-tie-embeddings", a->o.model.tie_embeddings, "separate output projection");
  sub->add_flag("--learned-positions", a->o.model.learned_positions, "learned instead of sinusoidal positions");
  sub->add_option("--dropout", a->o.model.dropout, "dropout on residuals, feed-forward and embeddings");
  sub->add_option("--attention-dropout", a->o.model.attention_dropout, "dropout on attention weights");
  sub->add_option("--lr-factor", a->o.lr_factor, "scale of the warm-up schedule lr = f·d^-0.5·min(s^-0.5, s·w^-1.5)");
  sub->add_option("--warmup", a->o.warmup, "warm-up steps");
  sub->add_option("--label-smoothing", a->o.label_smoothing, "label smoothing");
  sub->add_option("--clip", a->o.clip_norm, "gradient clipping (global norm)");
  sub->add_option("--weight-decay", a->o.weight_decay, "AdamW weight decay (matrices only)");
  sub->add_option("--seed", a->o.seed, "seed: data, initialisation, dropout; the same seed reproduces a run")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--train-examples", a->o.train_examples, "size of the training pool")
      ->check(CLI::Range(int64_t{1}, kMaxCount));
  sub->add_option("--eval-every", a->o.eval_every, "validate and checkpoint every N steps (0: only at the end)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--no-progress", a->no_progress, "no progress bar");
  sub->add_option("--threads", a->o.num_threads, "threads (every rank's, under mpirun); 0 = all cores")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--loss-log", a->loss_log,
                  "write each step's loss to this file (\"step loss\" per line; FILE.partial while training, "
                  "renamed to FILE when the run ends well, removed when it fails; not one of --out's files); with "
                  "--resume the log continues: the lines up to the checkpoint's step from FILE, or from the "
                  "FILE.partial a killed run left, then the new ones");
  sub->add_option(
      "--bucket-mb", a->data_parallel.bucket_mb,
      "under mpirun: MB of gradients per all-reduce, in (0, 8192), 0.25 by default (a bucket goes as soon as the "
      "backward has finished it)");
  sub->add_option("--overlap", a->data_parallel.overlap,
                  "under mpirun: how the all-reduce runs beside the backward: thread (a communication thread), "
                  "nonblocking (MPI_Iallreduce from the backward) or none (after the backward); default thread")
      ->check(CLI::IsMember({"none", "thread", "nonblocking"}));
  // the flags --resume takes from the checkpoint: refused beside it rather than silently ignored. The model's always
  // (config.json holds every field); the data order's and recipe's where train_state.json holds them (the trainer
  // checks: an older checkpoint without a field takes the flag's value)
  std::vector<CLI::Option*> model_flags;
  for (const char* name :
       {"--d-model", "--heads", "--d-ff", "--encoder-layers", "--decoder-layers", "--pre-norm", "--activation",
        "--no-tie-embeddings", "--learned-positions", "--dropout", "--attention-dropout"})
    model_flags.push_back(sub->get_option(name));
  std::vector<std::pair<CLI::Option*, std::string>> recipe_flags;  // and train_state.json's name of each
  for (const auto& [flag, key] :
       std::vector<std::pair<const char*, const char*>>{{"--seed", "shuffle_seed"},
                                                        {"--train-examples", "train_examples"},
                                                        {"--batch-size", "batch_size"},
                                                        {"--warmup", "warmup"},
                                                        {"--lr-factor", "lr_factor"},
                                                        {"--label-smoothing", "label_smoothing"},
                                                        {"--clip", "clip_norm"},
                                                        {"--weight-decay", "weight_decay"}})
    recipe_flags.emplace_back(sub->get_option(flag), key);
  sub->callback([a, out, model_flags, recipe_flags] {
    if (!a->o.resume_dir.empty() && out->count() == 0) a->o.out_dir = a->o.resume_dir;  // the run goes on where it was
    for (const CLI::Option* opt : model_flags)
      if (opt->count() > 0) a->model_flags_given.push_back(opt->get_name());
    for (const auto& [opt, key] : recipe_flags)
      if (opt->count() > 0) a->o.resume_overrides.push_back(key);
    run_train(*a);
  });
}

}  // namespace attn::cli
