// attn._attn: the C++ core for Python. NumPy arrays in and out without copies: inputs that are
// C-contiguous float32/bool are viewed in place (the Python layer converts anything else), outputs
// are NumPy arrays over the result tensors' own memory. The GIL is released while a kernel runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <tuple>

#include "attn/models/bert.h"

#include "attn/attn.h"
#include "attn/translator.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Read-only arrays too (np.load with mmap_mode="r", np.frombuffer, broadcast views): attn never writes its inputs.
using Array = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

constexpr nb::dlpack::dtype kFloat16{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};

// A view of a NumPy array as a Tensor (no copy); `arg` names it in errors. float16 arrays are float16 tensors;
// with `bf16_bits`, uint16 arrays are bfloat16 bit patterns (the Python layer's view of ml_dtypes/torch bfloat16).
attn::Tensor view(const Array& a, const char* arg, bool bf16_bits = false) {
  attn::DType dtype;
  if (a.dtype() == nb::dtype<float>())
    dtype = attn::DType::kFloat32;
  else if (a.dtype() == nb::dtype<bool>())
    dtype = attn::DType::kBool;
  else if (a.dtype() == kFloat16)
    dtype = attn::DType::kFloat16;
  else if (bf16_bits && a.dtype() == nb::dtype<uint16_t>())
    dtype = attn::DType::kBFloat16;
  else
    throw attn::DTypeError(std::string(arg) + " must be float32, float16, bool" + (bf16_bits ? ", bfloat16 bits" : "") +
                           " (given dtype code " + std::to_string(static_cast<int>(a.dtype().code)) + ", " +
                           std::to_string(a.dtype().bits) + " bits)");
  attn::Shape shape(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) shape[i] = static_cast<int64_t>(a.shape(i));
  return attn::Tensor::borrow(std::move(shape), dtype, const_cast<void*>(a.data()));
}

attn::Tensor view_opt(const std::optional<Array>& a, const char* arg) { return a ? view(*a, arg) : attn::Tensor(); }

// A NumPy array that owns (a share of) the tensor's storage.
nb::object to_numpy(const attn::Tensor& t) {
  if (!t.defined()) return nb::none();
  auto* keep = new attn::Tensor(t);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<attn::Tensor*>(p); });
  std::vector<size_t> shape(t.shape().begin(), t.shape().end());
  if (t.dtype() == attn::DType::kBool)
    return nb::cast(nb::ndarray<nb::numpy, bool>(keep->b8(), shape.size(), shape.data(), owner));
  if (t.dtype() == attn::DType::kFloat16)
    return nb::cast(nb::ndarray<nb::numpy>(keep->f16(), shape.size(), shape.data(), owner, nullptr, kFloat16));
  if (t.dtype() == attn::DType::kBFloat16)  // bit patterns: the Python layer views them as bfloat16
    return nb::cast(nb::ndarray<nb::numpy, uint16_t>(keep->bf16(), shape.size(), shape.data(), owner));
  return nb::cast(nb::ndarray<nb::numpy, float>(keep->f32(), shape.size(), shape.data(), owner));
}

std::pair<nb::object, nb::object> sdpa(const Array& q, const Array& k, const Array& v, const std::optional<Array>& mask,
                                       const std::optional<Array>& key_padding_mask, const std::string& causal,
                                       std::optional<float> scale, int64_t window, const std::optional<Array>& alibi,
                                       bool return_weights, const std::string& impl, int num_threads) {
  attn::AttentionOptions o;
  o.mask = view_opt(mask, "attn_mask");
  o.key_padding_mask = view_opt(key_padding_mask, "key_padding_mask");
  o.alibi_slopes = view_opt(alibi, "alibi_slopes");
  o.causal = attn::parse_causal(causal);
  o.scale = scale;
  o.window = window;
  o.return_weights = return_weights;
  o.impl = attn::parse_impl(impl);
  o.num_threads = num_threads;
  const attn::Tensor tq = view(q, "query", true), tk = view(k, "key", true), tv = view(v, "value", true);
  attn::AttentionResult r;
  {
    nb::gil_scoped_release release;
    r = attn::scaled_dot_product_attention(tq, tk, tv, o);
  }
  return {to_numpy(r.output), to_numpy(r.weights)};
}

// ---- attn.torch: torch CPU tensors in as views of their memory, torch tensors out over attn's memory; no copies.
// The tensors are read through their data_ptr() and shape, which costs far less than a DLPack round trip
// (torch's __dlpack__ is Python code: ~4 us a tensor, more than the whole kernel at small sizes). attn.torch has
// checked device and dtype; a non-contiguous or wrongly typed tensor is refused here too, never misread.

struct TorchTypes {
  nb::object float32, boolean, bfloat16, float16, from_numpy;
};

// Filled under the GIL, which every caller holds, not behind a function-local static's guard: a thread waiting on
// that guard while holding the GIL would deadlock with the one filling it should the import let the GIL go. Two
// threads may then both fill it; one copy is never freed, which is harmless.
const TorchTypes& torch_types() {
  static const TorchTypes* types = nullptr;  // (constant-initialised: no guard)
  if (types == nullptr) {
    nb::module_ torch = nb::module_::import_("torch");
    types = new TorchTypes{torch.attr("float32"), torch.attr("bool"), torch.attr("bfloat16"), torch.attr("float16"),
                           torch.attr("from_numpy")};
  }
  return *types;
}

// A view of a contiguous CPU torch tensor (float32, bfloat16, float16 or bool) as a Tensor (a copy where its data is
// not aligned to its element); `arg` names it in errors.
attn::Tensor torch_view(nb::handle t, const char* arg) {
  if (t.is_none()) return attn::Tensor();
  const TorchTypes& types = torch_types();
  const nb::object dtype = t.attr("dtype");
  attn::DType d;
  if (dtype.is(types.float32))
    d = attn::DType::kFloat32;
  else if (dtype.is(types.boolean))
    d = attn::DType::kBool;
  else if (dtype.is(types.bfloat16))
    d = attn::DType::kBFloat16;
  else if (dtype.is(types.float16))
    d = attn::DType::kFloat16;
  else
    throw attn::DTypeError(std::string(arg) + " must be float32, bfloat16, float16 or bool, got " +
                           nb::str(dtype).c_str());
  if (!nb::cast<bool>(t.attr("is_contiguous")()))
    throw attn::ArgumentError(std::string(arg) + " must be contiguous (attn.torch calls .contiguous() first)");
  const nb::tuple sizes = nb::borrow<nb::tuple>(t.attr("shape"));
  attn::Shape shape(sizes.size());
  for (size_t i = 0; i < shape.size(); ++i) shape[i] = nb::cast<int64_t>(sizes[i]);
  const auto address = nb::cast<uintptr_t>(t.attr("data_ptr")());
  auto* data = reinterpret_cast<void*>(address);
  if (address % attn::dtype_size(d) != 0) {  // (torch.frombuffer at an odd offset): copied, not read misaligned
    attn::Tensor aligned(std::move(shape), d);
    if (aligned.nbytes() != 0) std::memcpy(aligned.raw(), data, aligned.nbytes());
    return aligned;
  }
  return attn::Tensor::borrow(std::move(shape), d, data);
}

// A torch tensor over (a share of) the tensor's storage (float32, float16, or bfloat16 through a uint16 view): no
// copy.
nb::object to_torch(const attn::Tensor& t) {
  if (!t.defined()) return nb::none();
  nb::object out = torch_types().from_numpy(to_numpy(t));
  if (t.dtype() == attn::DType::kBFloat16) out = out.attr("view")(torch_types().bfloat16);
  return out;
}

// The data pointers the last torch_sdpa / torch_sdpa_backward call on this thread read and wrote, for the tests
// that check nothing was copied on the way in or out.
enum Seen { kQuery, kKey, kValue, kOut, kLse, kGradOut, kDq, kSeenCount };
thread_local uintptr_t last_pointers[kSeenCount];

uintptr_t address(const attn::Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); }

attn::AttentionOptions torch_options(nb::handle mask, nb::handle key_padding_mask, const std::string& causal,
                                     std::optional<double> scale, int64_t window, nb::handle alibi, double dropout_p,
                                     int64_t seed, int num_threads) {
  attn::AttentionOptions o;
  o.mask = torch_view(mask, "attn_mask");
  o.key_padding_mask = torch_view(key_padding_mask, "key_padding_mask");
  o.alibi_slopes = torch_view(alibi, "alibi_slopes");
  o.causal = attn::parse_causal(causal);
  if (scale) o.scale = static_cast<float>(*scale);
  o.window = window;
  o.dropout_p = static_cast<float>(dropout_p);
  o.dropout_seed = static_cast<uint64_t>(seed);
  o.num_threads = num_threads;
  return o;
}

// attn.torch's forward: (out [B, H, Lq, Dv], lse [B, H, Lq] or None, weights [B, H, Lq, Lk] or None).
std::tuple<nb::object, nb::object, nb::object> torch_sdpa(nb::handle q, nb::handle k, nb::handle v, nb::handle mask,
                                                          nb::handle key_padding_mask, const std::string& causal,
                                                          std::optional<double> scale, int64_t window, nb::handle alibi,
                                                          double dropout_p, int64_t seed, bool return_weights,
                                                          bool return_lse, int num_threads) {
  attn::AttentionOptions o =
      torch_options(mask, key_padding_mask, causal, scale, window, alibi, dropout_p, seed, num_threads);
  o.return_lse = return_lse;
  o.return_weights = return_weights;
  const attn::Tensor tq = torch_view(q, "query"), tk = torch_view(k, "key"), tv = torch_view(v, "value");
  attn::AttentionResult r;
  {
    nb::gil_scoped_release release;
    r = attn::scaled_dot_product_attention(tq, tk, tv, o);
  }
  last_pointers[kQuery] = address(tq), last_pointers[kKey] = address(tk), last_pointers[kValue] = address(tv);
  last_pointers[kOut] = address(r.output), last_pointers[kLse] = address(r.lse);
  return {to_torch(r.output), to_torch(r.lse), to_torch(r.weights)};
}

// attn.torch's backward: (dq, dk, dv) from the forward's out and lse, with the forward's options.
std::tuple<nb::object, nb::object, nb::object> torch_sdpa_backward(
    nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse, nb::handle d_out, nb::handle mask,
    nb::handle key_padding_mask, const std::string& causal, std::optional<double> scale, int64_t window,
    nb::handle alibi, double dropout_p, int64_t seed, int num_threads) {
  const attn::AttentionOptions o =
      torch_options(mask, key_padding_mask, causal, scale, window, alibi, dropout_p, seed, num_threads);
  const attn::Tensor tq = torch_view(q, "query"), tk = torch_view(k, "key"), tv = torch_view(v, "value");
  const attn::Tensor to = torch_view(out, "out"), tl = torch_view(lse, "lse"), tg = torch_view(d_out, "grad_out");
  attn::AttentionGrads g;
  {
    nb::gil_scoped_release release;
    g = attn::scaled_dot_product_attention_backward(tq, tk, tv, to, tl, tg, o);
  }
  last_pointers[kQuery] = address(tq), last_pointers[kKey] = address(tk), last_pointers[kValue] = address(tv);
  last_pointers[kOut] = address(to), last_pointers[kLse] = address(tl), last_pointers[kGradOut] = address(tg);
  last_pointers[kDq] = address(g.dq);
  return {to_torch(g.dq), to_torch(g.dk), to_torch(g.dv)};
}

attn::MultiHeadAttentionConfig make_config(int64_t E, int64_t H, int64_t Hkv, int64_t kdim, int64_t vdim, bool bias) {
  attn::MultiHeadAttentionConfig c;
  c.embed_dim = E, c.num_heads = H, c.num_kv_heads = Hkv, c.kdim = kdim, c.vdim = vdim, c.bias = bias;
  return c;
}

// Views of the arrays, no copy: their users only read them (write_safetensors) or copy them (from_state_dict), while
// the caller's dict holds the arrays. (Each had been cloned with the GIL held: a multi-GB save took twice its memory.)
std::map<std::string, attn::Tensor> views(const std::map<std::string, Array>& arrays) {
  std::map<std::string, attn::Tensor> out;
  for (const auto& [name, a] : arrays) out[name] = view(a, name.c_str());
  return out;
}

std::map<std::string, nb::object> to_numpy_map(const std::map<std::string, attn::Tensor>& tensors) {
  std::map<std::string, nb::object> out;
  for (const auto& [name, t] : tensors) out[name] = to_numpy(t);
  return out;
}

}  // namespace

NB_MODULE(_attn, m) {
  m.doc() = "attn: the Transformer attention family (C++ core)";
  m.attr("__version__") = attn::version();

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    // the message as a str, its bytes decoded as UTF-8 with an invalid byte escaped (\xff): a message quoting a file's
    // bytes (a .safetensors header's) arrives whole, where PyErr_SetString's strict decoding had left an empty error
    const auto message = [](const std::exception& e) {
      return PyUnicode_DecodeUTF8(e.what(), static_cast<Py_ssize_t>(std::strlen(e.what())), "backslashreplace");
    };
    const auto set = [&](PyObject* type, const std::exception& e) {
      if (PyObject* text = message(e)) {  // (else the decoding's MemoryError is set)
        PyErr_SetObject(type, text);
        Py_DECREF(text);
      }
    };
    try {
      std::rethrow_exception(p);
    } catch (const attn::ShapeError& e) {
      set(PyExc_ValueError, e);
    } catch (const attn::ArgumentError& e) {
      set(PyExc_ValueError, e);
    } catch (const attn::DTypeError& e) {
      set(PyExc_TypeError, e);
    } catch (const attn::MissingTensorError& e) {
      set(PyExc_KeyError, e);
    } catch (const attn::AllocationError& e) {
      set(PyExc_MemoryError, e);
    } catch (const attn::FileError& e) {
      // OSError(errno, message) is the subclass that errno names: FileNotFoundError, PermissionError, ...
      PyObject* text = message(e);
      PyObject* error = text ? PyObject_CallFunction(PyExc_OSError, "iO", e.error_number(), text) : nullptr;
      Py_XDECREF(text);
      if (error) {
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error)), error);
        Py_DECREF(error);
      }
    } catch (const attn::FormatError& e) {
      set(PyExc_ValueError, e);
    } catch (const attn::Error& e) {
      set(PyExc_RuntimeError, e);
    }
  });

  m.def("sdpa", &sdpa, "q"_a, "k"_a, "v"_a, "mask"_a.none(), "key_padding_mask"_a.none(), "causal"_a, "scale"_a.none(),
        "window"_a, "alibi_slopes"_a.none(), "return_weights"_a, "impl"_a, "num_threads"_a,
        "scaled_dot_product_attention on [B, H, L, D] float32 or float16 arrays, or uint16 arrays of bfloat16 bits "
        "(the output in the same form); see attn.scaled_dot_product_attention");

  // attn.torch (python/attn/torch.py) calls these inside its torch.library custom ops; torch is imported only then.
  m.def("torch_sdpa", &torch_sdpa, "q"_a, "k"_a, "v"_a, "mask"_a.none(), "key_padding_mask"_a.none(), "causal"_a,
        "scale"_a.none(), "window"_a, "alibi_slopes"_a.none(), "dropout_p"_a, "seed"_a, "return_weights"_a,
        "return_lse"_a, "num_threads"_a,
        "(out, lse or None, weights or None) as torch tensors over attn's memory, from contiguous CPU torch tensors "
        "(q, k, v float32, bfloat16 or float16, out in their dtype, lse and weights float32; bool or float32 masks) "
        "read in place; see attn.torch");
  m.def("torch_sdpa_backward", &torch_sdpa_backward, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "d_out"_a, "mask"_a.none(),
        "key_padding_mask"_a.none(), "causal"_a, "scale"_a.none(), "window"_a, "alibi_slopes"_a.none(), "dropout_p"_a,
        "seed"_a, "num_threads"_a,
        "(dq, dk, dv) as torch tensors in the inputs' dtype (float32, bfloat16 or float16; lse float32) from the "
        "forward's out and lse; see attn.torch");
  m.def(
      "_torch_last_pointers",
      [] {
        const char* names[kSeenCount] = {"query", "key", "value", "out", "lse", "grad_out", "dq"};
        std::map<std::string, uintptr_t> seen;
        for (int i = 0; i < kSeenCount; ++i) seen[names[i]] = last_pointers[i];
        return seen;
      },
      "the data pointers the last torch_sdpa/torch_sdpa_backward call on this thread used (for the tests)");

  nb::class_<attn::MultiHeadAttention>(m, "MultiHeadAttention")
      .def(
          "__init__",
          [](attn::MultiHeadAttention* self, int64_t E, int64_t H, int64_t Hkv, int64_t kdim, int64_t vdim, bool bias,
             uint64_t seed) {
            nb::gil_scoped_release release;  // (O(E²) random weights: other Python threads run meanwhile)
            new (self) attn::MultiHeadAttention(make_config(E, H, Hkv, kdim, vdim, bias), seed);
          },
          "embed_dim"_a, "num_heads"_a, "num_kv_heads"_a, "kdim"_a, "vdim"_a, "bias"_a, "seed"_a)
      .def_static(
          "from_state_dict",
          [](const std::map<std::string, Array>& sd, int64_t E, int64_t H, int64_t Hkv, int64_t kdim, int64_t vdim,
             bool bias, const std::string& prefix) {
            const std::map<std::string, attn::Tensor> tensors = views(sd);
            nb::gil_scoped_release release;  // the arrays stay referenced by sd, which the caller holds
            return attn::MultiHeadAttention::from_state_dict(tensors, make_config(E, H, Hkv, kdim, vdim, bias), prefix);
          },
          "state_dict"_a, "embed_dim"_a, "num_heads"_a, "num_kv_heads"_a, "kdim"_a, "vdim"_a, "bias"_a, "prefix"_a)
      .def(
          "state_dict",
          [](const attn::MultiHeadAttention& m, const std::string& prefix) {
            // copies, every one: some of the C++ state dict shares the layer's storage (out_proj.weight) and some is
            // built (in_proj_weight), and writing into a live weight while another thread's forward reads it races
            std::map<std::string, attn::Tensor> tensors;
            {
              nb::gil_scoped_release release;  // (the copies: O(E²), other Python threads run meanwhile)
              tensors = m.state_dict(prefix);
              for (auto& [name, t] : tensors) t = t.clone();
            }
            return to_numpy_map(tensors);
          },
          "prefix"_a = "")
      .def(
          "forward",
          [](const attn::MultiHeadAttention& mha, const Array& query, const Array& key, const Array& value,
             const std::optional<Array>& attn_mask, const std::optional<Array>& key_padding_mask, bool causal,
             bool need_weights, bool average, const std::string& impl, int num_threads) {
            attn::MhaOptions o;
            o.attn_mask = view_opt(attn_mask, "attn_mask");
            o.key_padding_mask = view_opt(key_padding_mask, "key_padding_mask");
            o.causal = causal;
            o.need_weights = need_weights;
            o.average_attn_weights = average;
            o.impl = attn::parse_impl(impl);
            o.num_threads = num_threads;
            const attn::Tensor q = view(query, "query"), k = view(key, "key"), v = view(value, "value");
            attn::MhaOutput r;
            {
              nb::gil_scoped_release release;
              r = mha.attention(q, k, v, o);
            }
            return std::make_pair(to_numpy(r.output), to_numpy(r.weights));
          },
          "query"_a, "key"_a, "value"_a, "attn_mask"_a.none(), "key_padding_mask"_a.none(), "causal"_a,
          "need_weights"_a, "average_attn_weights"_a, "impl"_a, "num_threads"_a);

  // The library's Translator: model directory, vocabulary, normalisation and validation, batches, beam.
  nb::class_<attn::Translator>(m, "Translator")
      .def_static(
          "load",
          [](const std::string& dir, const std::string& quantize) {
            const attn::Quantization q = attn::parse_quantization(quantize);
            nb::gil_scoped_release release;
            return attn::Translator::load(dir, q);
          },
          "model_dir"_a, "quantize"_a = "none",
          "a model directory (config.json, model.safetensors, vocab.json); quantize: none, int8 or bf16")
      .def("num_parameters", [](const attn::Translator& t) { return t.model().num_parameters(); })
      .def("config_json", [](const attn::Translator& t) { return t.model().config().to_json(); })
      .def(
          "translate",
          [](const attn::Translator& t, const std::vector<std::string>& sentences, int beam, int64_t max_length,
             int64_t batch_size, int num_threads, const std::string& kv_cache, float length_penalty) {
            attn::TranslateOptions options;
            options.beam = beam;
            options.length_penalty = length_penalty;
            options.max_length = max_length;
            options.batch_size = batch_size;
            options.num_threads = num_threads;
            options.kv_cache = attn::parse_kv_cache(kv_cache);
            nb::gil_scoped_release release;
            return t.translate(sentences, options);
          },
          "sentences"_a, "beam"_a = 1, "max_length"_a = 0, "batch_size"_a = 64, "num_threads"_a = 0,
          "kv_cache"_a = "f32", "length_penalty"_a = 0.6f);

  m.def("normalize_source", &attn::tasks::normalize_source, "text"_a,
        "the numbers task's input normalisation (lower case, single spaces), as attn translate applies it");
  m.def("grammar_problem", &attn::tasks::grammar_problem, "text"_a,
        "why a phrase is outside the numbers task's grammar (the phrases the model was trained on), or None");

  nb::class_<attn::SentenceEncoder>(m, "SentenceEncoder")
      .def_static(
          "load",
          [](const std::string& dir, const std::string& dtype, const std::string& quantize) {
            const attn::DType d = attn::parse_dtype(dtype);
            const attn::Quantization q = attn::parse_quantization(quantize);
            if (q != attn::Quantization::kNone && d != attn::DType::kFloat32 &&
                !(q == attn::Quantization::kBFloat16 && d == attn::DType::kBFloat16))
              throw attn::ArgumentError("SentenceEncoder.load: dtype " + dtype + " and quantize " + quantize +
                                        " exclude each other");
            nb::gil_scoped_release release;
            return q == attn::Quantization::kNone ? attn::SentenceEncoder::load(dir, d)
                                                  : attn::SentenceEncoder::load(dir, q);
          },
          "dir"_a, "dtype"_a = "f32", "quantize"_a = "none",
          "a Hugging Face BERT directory (config.json, vocab.txt, model.safetensors); dtype f32 or bf16 (the dense "
          "layers in bfloat16); quantize none, int8 (the dense layers' int8 copies) or bf16")
      .def("token_ids", &attn::SentenceEncoder::token_ids, "sentence"_a)
      .def(
          "embed",
          [](const attn::SentenceEncoder& e, const std::vector<std::string>& sentences, int64_t batch_size,
             int num_threads) {
            attn::Tensor t;
            {
              nb::gil_scoped_release release;
              t = e.embed(sentences, batch_size, num_threads);
            }
            return to_numpy(t);
          },
          "sentences"_a, "batch_size"_a = 32, "num_threads"_a = 0);

  m.def(
      "load_safetensors",
      [](const std::string& path, const std::string& prefix) {
        attn::io::Safetensors st;
        {
          nb::gil_scoped_release release;
          st = attn::io::read_safetensors(path, prefix);
          attn::io::widen_to_float32(st.tensors);  // NumPy has no bfloat16: F16/BF16 come back as float32
        }
        return std::make_pair(to_numpy_map(st.tensors), st.metadata);
      },
      "path"_a, "prefix"_a = "",
      "(tensors, metadata) of a .safetensors file; tensors as float32/bool NumPy arrays (those whose names start "
      "with prefix)");
  m.def(
      "save_safetensors",
      [](const std::string& path, const std::map<std::string, Array>& tensors,
         const std::map<std::string, std::string>& metadata) {
        const std::map<std::string, attn::Tensor> arrays = views(tensors);
        nb::gil_scoped_release release;  // the arrays stay referenced by tensors, which the caller holds
        attn::io::write_safetensors(path, arrays, metadata);
      },
      "path"_a, "tensors"_a, "metadata"_a = std::map<std::string, std::string>());
}
