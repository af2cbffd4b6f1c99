// attn mha: nn.MultiheadAttention on .npy inputs with weights from a .safetensors state dict.
#include <map>
#include <memory>
#include <string>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/safetensors.h"
#include "attn/layers/multi_head_attention.h"
#include "common.h"

namespace attn::cli {
namespace {

struct MhaArgs {
  std::string weights, query, key, value, out, attn_mask, key_padding_mask, need_weights, impl = "auto";
  int64_t num_heads = 0, num_kv_heads = 0;
  bool causal = false, average = false;
  int threads = 0;
};

// The config a state dict implies: E from out_proj.weight, kdim/vdim from separate projections,
// bias from in_proj_bias.
MultiHeadAttentionConfig infer_config(const io::Safetensors& st, int64_t num_heads, int64_t num_kv_heads) {
  MultiHeadAttentionConfig c;
  const Tensor& wo = st.at("out_proj.weight");
  if (wo.rank() != 2)
    throw ShapeError("--weights: out_proj.weight has shape " + shape_str(wo.shape()) + ", expected [E, E]");
  c.embed_dim = wo.dim(0);
  c.num_heads = num_heads;
  c.num_kv_heads = num_kv_heads;
  if (!st.contains("in_proj_weight")) {
    const Tensor& wk = st.at("k_proj_weight");
    const Tensor& wv = st.at("v_proj_weight");
    if (wk.rank() != 2 || wv.rank() != 2)
      throw ShapeError("--weights: k_proj_weight " + shape_str(wk.shape()) + " and v_proj_weight " +
                       shape_str(wv.shape()) + " must be matrices");
    c.kdim = wk.dim(1);
    c.vdim = wv.dim(1);
  }
  c.bias = st.contains("in_proj_bias");
  return c;
}

void run_mha(const MhaArgs& a) {
  if (a.key.empty() != a.value.empty())
    throw ArgumentError("--key and --value go together (give both, or neither for self-attention)");
  if (a.average && a.need_weights.empty()) throw ArgumentError("--average-attn-weights needs --need-weights FILE");
  if (a.out.empty()) throw ArgumentError("--out: an empty path; name the file to write");  // (it had failed at the end)
  io::check_output_paths({{"--out", a.out}, {"--need-weights", a.need_weights}});
  io::Safetensors st;
  try {
    st = io::read_safetensors(a.weights);
    io::widen_to_float32(st.tensors);
  } catch (const AllocationError& e) {  // (exit status 3, as any exhausted memory: not a bad file)
    throw AllocationError(std::string("--weights: ") + e.what());
  } catch (const Error& e) {
    throw FormatError(std::string("--weights: ") + e.what());
  }
  const MultiHeadAttention mha =
      MultiHeadAttention::from_state_dict(st.tensors, infer_config(st, a.num_heads, a.num_kv_heads));
  // every tensor of the file is one the layer uses, as torch's strict load_state_dict: bias_k / bias_v (add_bias_kv)
  // had been dropped in silence, and the output had differed from PyTorch's
  const std::map<std::string, Tensor> used = mha.state_dict();
  std::string unexpected;
  for (const auto& [name, t] : st.tensors)
    if (!used.count(name)) unexpected += (unexpected.empty() ? "'" : ", '") + name + "'";
  if (!unexpected.empty())
    throw ArgumentError(
        "--weights " + a.weights + ": the layer has no parameter for " + unexpected +
        " (nn.MultiheadAttention's add_bias_kv and add_zero_attn are not supported; the file should hold "
        "in_proj_weight or q/k/v_proj_weight, out_proj.weight and, with bias, in_proj_bias and "
        "out_proj.bias)");
  const Tensor query = load_npy_flag("--query", a.query);
  const Tensor key = a.key.empty() ? query : load_npy_flag("--key", a.key);
  const Tensor value = a.value.empty() ? query : load_npy_flag("--value", a.value);
  MhaOptions o;
  if (!a.attn_mask.empty()) o.attn_mask = load_npy_flag("--attn-mask", a.attn_mask);
  if (!a.key_padding_mask.empty()) o.key_padding_mask = load_npy_flag("--key-padding-mask", a.key_padding_mask);
  o.causal = a.causal;
  o.need_weights = !a.need_weights.empty();
  o.average_attn_weights = a.average;
  o.impl = parse_impl(a.impl);
  o.num_threads = a.threads;
  const MhaOutput r = mha.attention(query, key, value, o);
  std::vector<OutputFile> outputs = {{"--out", a.out, r.output}};
  if (o.need_weights) outputs.push_back({"--need-weights", a.need_weights, r.weights});
  write_outputs(outputs);
}

}  // namespace

void add_mha(CLI::App& app) {
  auto args = std::make_shared<MhaArgs>();
  CLI::App* sub = app.add_subcommand(
      "mha",
      "Multi-head attention with torch.nn.MultiheadAttention's semantics (batch_first=True).\n"
      "Without --key/--value it is self-attention (Q, K, V all from --query); with them, e.g. cross-attention\n"
      "(Q from the decoder, K and V from the encoder output).\n"
      "A query row whose keys are all masked gets output from a zero attention vector (never NaN).");
  sub->add_option("--weights", args->weights,
                  "PyTorch state dict (.safetensors): in_proj_weight/in_proj_bias or q_proj_weight, k_proj_weight, "
                  "v_proj_weight; out_proj.weight, out_proj.bias")
      ->required();
  sub->add_option("--num-heads", args->num_heads, "number of heads H (must divide E)")->required();
  sub->add_option("--num-kv-heads", args->num_kv_heads,
                  "key/value heads for grouped-query attention (must divide H); default H");
  sub->add_option("--query", args->query, "query [B, Lq, E] (.npy)")->required();
  sub->add_option("--key", args->key, "key [B, Lk, kdim] (.npy); default: the query");
  sub->add_option("--value", args->value, "value [B, Lk, vdim] (.npy); default: the query");
  sub->add_option("--out", args->out, "output [B, Lq, E] (.npy); written only if everything succeeds")->required();
  sub->add_option("--attn-mask", args->attn_mask,
                  "[Lq, Lk] or [B*H, Lq, Lk] (.npy). bool: TRUE = MASKED OUT, may NOT attend (nn.MultiheadAttention "
                  "polarity, the opposite of `attn sdpa --mask`). float: added to the scores");
  sub->add_option("--key-padding-mask", args->key_padding_mask,
                  "[B, Lk] (.npy). bool: TRUE = PADDING, ignored. float: added to the scores");
  sub->add_flag("--causal", args->causal, "add a causal mask: query i sees keys j <= i (masked self-attention)");
  sub->add_option("--need-weights", args->need_weights,
                  "also write the attention weights, per head [B, H, Lq, Lk] (.npy)");
  sub->add_flag("--average-attn-weights", args->average,
                "with --need-weights: average the weights over heads -> [B, Lq, Lk]");
  sub->add_option("--impl", args->impl, "implementation: auto, fused, unfused or reference")
      ->check(CLI::IsMember({"auto", "fused", "unfused", "reference"}));
  sub->add_option("--threads", args->threads, "threads; 0 = all cores")->check(CLI::NonNegativeNumber);
  sub->callback([args] { run_mha(*args); });
}

}  // namespace attn::cli
