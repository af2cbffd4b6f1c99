"""attn.torch: attn's attention kernels inside PyTorch, differentiable, traceable by torch.compile.

    import torch, attn.torch
    q = torch.randn(2, 8, 1024, 64, requires_grad=True)
    out = attn.torch.scaled_dot_product_attention(q, q, q, is_causal=True)   # as F.scaled_dot_product_attention
    out.sum().backward()                                                     # attn's fused backward

    mha = attn.torch.MultiheadAttention(512, 8, batch_first=True)            # as nn.MultiheadAttention
    y, w = mha(x, x, x)

The forward and the backward are `torch.library` custom ops (``torch.ops.attn.sdpa`` and
``torch.ops.attn.sdpa_backward``) with fake (meta) kernels, so ``torch.compile`` traces models that use them and
``torch.library.opcheck`` passes. The backward is attn's fused (FlashAttention-2) backward from the forward's saved
output and row log-sum-exp; with dropout the forward draws a seed from torch's generator (``torch.manual_seed``
makes it reproducible) and the backward regenerates the same mask from it.

Tensors: CPU, float32, bfloat16 or float16 (query, key and value share one; bool or float masks). Contiguous
tensors reach the kernels as views of their memory, never copied (read with the GIL released: no other thread may
write or resize them during the call); the outputs are torch tensors over the memory attn wrote. Non-contiguous
inputs are made contiguous first (one copy), and a float mask of another dtype than float32 is widened to float32
(one copy). bfloat16/float16: the forward is attn's 16-bit kernel (float32 sums,
the output rounded to the inputs' dtype, lse float32); the backward is attn's bfloat16 backward (vdpbf16ps, P̃ and
dS rounded to bfloat16 for their products) where the processor has AVX512_BF16, else the float32 fused backward
on the tensors widened (one copy each, O(L)); the gradients are rounded to the inputs' dtype.
Other dtypes and bad shapes raise attn.torch.DTypeError (a TypeError) / ArgumentError (a ValueError) naming the
argument; both are RuntimeErrors too, as PyTorch's own checks raise (and AssertionErrors where nn.MultiheadAttention
asserts). Under CPU or CUDA autocast the inputs are cast to its dtype first, as PyTorch's autocast does for SDPA. A query
viewed (B, H, L, D) over (B, L, H, D) memory gives an output in that layout, as PyTorch's does. torch.jit.trace
records the custom op; meta tensors give the output's shape. attn uses torch.get_num_threads() threads. CUDA
tensors (bfloat16/float16, head size 64 or 128) go to attn.cuda's kernels:
scaled_dot_product_attention only, with causal, window and key_padding_mask (attn_mask, dropout and ALiBi are
refused there), differentiable through attn.cuda's autograd Function (not a custom op).

A float attn_mask (or MultiheadAttention's float key_padding_mask) that requires grad, a learned bias, gets
PyTorch's gradient: the score gradient summed over the dimensions the mask broadcasts across, from the weights the
forward then also returns (O(B·H·Lq·Lk) memory, as PyTorch's math path; without dropout). The attention weights
MultiheadAttention returns with need_weights=True are differentiable too (a loss on them reaches query, key and a
learned mask). With dropout in training they are the weights after dropout, the ones that made the output, as
PyTorch's: attn's weights, dropped by F.dropout on torch's generator and multiplied by V in torch (PyTorch's own math
path, the same dropped weights for the same seed). Not differentiable: alibi_slopes (refused with ArgumentError when
it requires grad) and the gradients themselves (a double backward raises RuntimeError). A query row whose keys are all
masked gives 0, as PyTorch's SDPA (nn.MultiheadAttention's need_weights path: NaN).

torch.func: vmap, grad, vjp, jacrev and their compositions (per-sample gradients with functional_call) work on CPU
tensors (not on CUDA ones); vmap folds its dimension into the batch, one kernel call for every sample (per sample only where ALiBi
slopes vary with it, or with dropout, which follows vmap's randomness flag). Not supported: forward-mode AD (jvp,
jacfwd, hessian) and second derivatives (RuntimeError), float64, torch.jit.script.
"""
import math
import numbers
import operator

try:
    import torch
except ImportError as e:  # `import attn` works without PyTorch; attn.torch does not
    raise ImportError("attn.torch needs PyTorch (pip install torch, or pip install attn[torch])") from e
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _attn
from ._torch_ops import (ArgumentError, DTypeError, FuncSdpa, _c, _fused_backward,  # noqa: F401 (the ops)
                         _gradients, _retyped, _sdpa, _sdpa_backward, _typed_errors)

ArgumentError.__module__ = DTypeError.__module__ = __name__  # (defined with the ops, which raise them too)

__all__ = ["scaled_dot_product_attention", "MultiheadAttention", "ArgumentError", "DTypeError"]


class _ModuleArgumentError(ArgumentError, AssertionError):
    """MultiheadAttention's checks where nn.MultiheadAttention asserts (embed_dim, key/value shapes, masks)."""


class _ModuleDTypeError(DTypeError, AssertionError):
    """A MultiheadAttention mask of a dtype nn.MultiheadAttention's assert refuses (integer masks)."""

_ALIGNMENTS = ("none", "top-left", "bottom-right")
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)  # query, key and value (one of them for all three)


# ---------------------------------------------------------------- argument checks (messages name the argument)
def _check_tensor(t, name, dtypes=(torch.float32,), dtype_error=DTypeError, query=None):
    """A CPU tensor (or a meta one: shapes only, through the custom op's fake kernel) of one of dtypes, on the query's
    device where the query is given (of the two devices allowed, is_meta tells them apart)."""
    if not isinstance(t, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if query is not None and t.is_meta != query.is_meta:
        raise ArgumentError(f"{name} is on {t.device}, but query is on {query.device}: move it there")
    if t.device.type not in ("cpu", "meta"):
        raise ArgumentError(f"{name} is on {t.device}: attn.torch runs on CPU tensors (move it with .cpu()); "
                            "for bf16/fp16 attention on the GPU use attn.cuda.scaled_dot_product_attention")
    if t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise dtype_error(f"{name} must be {want}, got {str(t.dtype).replace('torch.', '')} with shape "
                          f"{tuple(t.shape)}")


def _check_mask(t, name, query, dtype_error=DTypeError):
    """bool, or a float mask in float32 or the query's dtype, on the query's device."""
    if t is not None:
        _check_tensor(t, name, tuple(dict.fromkeys((torch.bool, torch.float32, query.dtype))), dtype_error, query)


def _check_qkv(query, key, value):
    """CPU tensors of one floating dtype (float32, bfloat16 or float16)."""
    T = torch.Tensor  # the usual call first, in ~0.7 µs: three plain CPU tensors of one dtype (_check_tensor's checks
    # took ~1 µs a tensor, most of it in building t.device)
    if type(query) is T and type(key) is T and type(value) is T and query.is_cpu and key.is_cpu and value.is_cpu:
        dtype = query.dtype
        if dtype in _FLOATS and key.dtype == dtype and value.dtype == dtype:
            return
    _check_tensor(query, "query", _FLOATS)
    for t, name in ((key, "key"), (value, "value")):
        _check_tensor(t, name, (query.dtype,), query=query)


def _scalar_options(scale, window, dropout_p):
    """scale (None or a real number), window (an integer in int64) and dropout_p (a real number in [0, 1]), checked
    before anything else (the CUDA route too): 2.5 had run as a window of 2, "2" as a scale of 2.0, 2**64 had come back
    as nanobind's overload list."""
    if (scale is None or type(scale) is float) and type(window) is int and type(dropout_p) is float:  # the usual call:
        if 0.0 <= dropout_p <= 1.0 and -2**63 <= window < 2**63:  # its checks without isinstance on ABCs (~1 µs)
            return window
    for x, name in ((scale, "scale"), (dropout_p, "dropout_p")):  # what PyTorch's float arguments take: a bool too
        # (dropout_p=self.training and p), and a 0-d real tensor that needs no gradient
        zero_d = isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_complex() and not x.requires_grad
        if x is not None and not zero_d and not isinstance(x, (numbers.Real, torch.SymInt, torch.SymFloat)):
            raise DTypeError(f"{name} must be a real number, got {type(x).__name__} {x!r}")
    if isinstance(window, bool):
        raise DTypeError("window must be an integer, got bool")
    try:
        window = operator.index(window)
    except TypeError:
        raise DTypeError(f"window must be an integer, got {type(window).__name__} {window!r}") from None
    if not -2**63 <= window < 2**63:
        raise ArgumentError(f"window must fit int64, got {window}")
    if not 0.0 <= float(dropout_p) <= 1.0:
        raise ArgumentError(f"dropout_p must be in [0, 1], got {dropout_p}")
    return window


def _f32_mask(t):
    """A float mask as float32 (the kernels add float32 masks); bool and None as they are."""
    return t if t is None or t.dtype in (torch.bool, torch.float32) else t.float()


def _needs_grad(t):
    return t is not None and t.requires_grad and torch.is_grad_enabled()


def _no_grad_needed(t, name):
    if _needs_grad(t):
        raise ArgumentError(f"{name} requires grad, but attn.torch differentiates query, key and value only: pass "
                         f"{name}.detach() if no gradient is wanted for it")


class _EagerSdpa(torch.autograd.Function):
    """The eager path: the same kernels as the custom ops without their dispatch (tens of microseconds a call). Not
    FuncSdpa, which torch.func needs: a Function with setup_context and a vmap rule measured 73 µs a call with inputs
    requiring grad (B = H = 1, L = 8) against this one's 22 µs."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed,
                return_weights):
        out, lse, weights = _attn.torch_sdpa(q, k, v, attn_mask, key_padding_mask, causal, scale, window,
                                             alibi_slopes, dropout_p, seed, return_weights, True,
                                             torch.get_num_threads())
        ctx.save_for_backward(q, k, v, out, lse, attn_mask, key_padding_mask, alibi_slopes, weights)
        ctx.options = (causal, scale, window, dropout_p, seed)
        ctx.set_materialize_grads(False)  # weights no loss uses: None, not [B, H, Lq, Lk] zeros to multiply
        return out, weights

    @staticmethod
    @once_differentiable  # the fused backward is not itself differentiable: a double backward raises, never a silent 0
    def backward(ctx, grad_out, grad_weights):
        q, k, v, out, lse, attn_mask, key_padding_mask, alibi_slopes, weights = ctx.saved_tensors
        causal, scale, window, dropout_p, seed = ctx.options
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
        dq, dk, dv = _fused_backward(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window,
                                     alibi_slopes, dropout_p, seed)
        return _gradients(ctx, q, k, v, attn_mask, weights, grad_out, grad_weights if weights is not None else None,
                          scale, dq, dk, dv)


def _attention(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, need_weights):
    """(out, weights or None) on 4-D tensors. Under torch.compile (or for tensor subclasses) through the custom
    op; inside torch.func's transforms through FuncSdpa; eagerly through _EagerSdpa, or straight to the kernel when no
    gradient is wanted. With dropout the seed comes from torch's default generator."""
    # contiguous before the op, not only inside it: the saved tensors and the compiled graph's strides then agree
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    _, heads, _, depth = q.shape
    if heads == 0:  # no heads (PyTorch returns the empty output): nothing for the kernels to do
        return _no_heads(q, k, v, need_weights)
    if scale is None and depth == 0:  # D = 0: every Q·Kᵀ is 0, and PyTorch weighs by the masks alone
        scale = 1.0
    attn_mask, key_padding_mask, alibi_slopes = _c(_f32_mask(attn_mask)), _c(key_padding_mask), _c(alibi_slopes)
    scale = None if scale is None else float(scale)
    window, dropout_p = int(window), float(dropout_p)
    # a float mask that requires grad (a learned bias): its gradient comes from the weights, which the forward then
    # returns too (O(B·H·Lq·Lk) memory, as PyTorch's math path)
    mask_grad = _needs_grad(attn_mask)
    if mask_grad and dropout_p > 0.0:  # the mask's gradient through the dropped weights: F.dropout on them, times V
        out, weights = _dropped_weights_attention(q, k, v, attn_mask, key_padding_mask, causal, dropout_p, scale,
                                                  window, alibi_slopes)
        return out, (weights if need_weights else None)
    want_weights = need_weights or mask_grad
    # the custom op wherever a graph is recorded (torch.compile; torch.jit.trace, which would otherwise keep the
    # kernel's output as a constant), for tensor subclasses, and for meta tensors (its fake kernel gives the shapes);
    # inside torch.func's transforms (vmap, grad, ...) the autograd Function with vmap rules they need
    # (torch._C._is_tracing: torch.jit.is_tracing without its is_scripting check, which cost 0.15 µs a call; attn.torch
    # is never scripted)
    compiling = torch.compiler.is_compiling()
    in_transform = not compiling and torch._C._functorch.peek_interpreter_stack() is not None
    if compiling or in_transform or torch._C._is_tracing() or type(q) is not torch.Tensor or q.is_meta:
        # what the kernel checks, checked here too: a graph (and a meta tensor) then fails where it is made, and
        # inside torch.func with the caller's shapes, not vmap's folded ones
        _check_kernel_options(q, k, attn_mask, key_padding_mask, causal, window)
        seed = torch.randint(0, 2**62, (), dtype=torch.int64) if dropout_p > 0.0 else None
        out, _, weights = (FuncSdpa.apply if in_transform else _sdpa)(q, k, v, attn_mask, key_padding_mask, causal,
                                                                      scale, window, alibi_slopes, dropout_p, seed,
                                                                      want_weights)
        return out, (weights if need_weights else None)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if dropout_p > 0.0 else 0
    try:  # (not _typed_errors: its call with these arguments cost ~0.8 µs a call, 10% of the per-call overhead)
        return _eager_attention(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p,
                                seed, need_weights, want_weights, mask_grad)
    except (ValueError, TypeError) as e:  # the kernels' own checks (shapes the checks above leave to them)
        raise _retyped(e) from None


def _check_kernel_options(q, k, attn_mask, key_padding_mask, causal, window):
    """On 4-D q [B, H, Lq, D] and k [B, Hkv, Lk, D]: what attn's kernel would refuse beside the public function's
    checks (the same messages' substance): the padding mask's shape, the mask's broadcast, the window."""
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Lk):
        raise ArgumentError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)} but must be [B, Lk] = "
                            f"{(B, Lk)} for query {tuple(q.shape)} and key {tuple(k.shape)}")
    if attn_mask is not None:
        scores = (B, H, Lq, Lk)
        try:
            fits = attn_mask.dim() <= 4 and tuple(torch.broadcast_shapes(tuple(attn_mask.shape), scores)) == scores
        except RuntimeError:
            fits = False
        if not fits:
            raise ArgumentError(f"attn_mask {tuple(attn_mask.shape)} does not broadcast to the scores {scores} of "
                                f"query {tuple(q.shape)} and key {tuple(k.shape)}")
    if window < 0:
        raise ArgumentError(f"window must be >= 0, got {window}")
    if window > 0 and causal == "none":
        raise ArgumentError(f"window = {window} needs a causal mask (is_causal=True or a causal_alignment): a window "
                            "counts back from each query's last visible key")


def _eager_attention(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed,
                     need_weights, want_weights, mask_grad):
    """_attention's eager path: _EagerSdpa where a gradient is wanted, else straight to the kernel."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or mask_grad):
        out, weights = _EagerSdpa.apply(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes,
                                        dropout_p, seed, want_weights)
        return out, (weights if need_weights else None)
    out, _, weights = _attn.torch_sdpa(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes,
                                       dropout_p, seed, need_weights, False, torch.get_num_threads())
    return out, weights


def _no_heads(q, k, v, need_weights):
    """(out, weights or None) for H = 0: empty, and differentiable where the inputs need grad (zero gradients)."""
    B, _, Lq, _ = q.shape
    out = q.new_zeros(B, 0, Lq, v.shape[-1])
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = out + 0 * (q.sum() + k.sum() + v.sum())
    return out, (q.new_zeros(B, 0, Lq, k.shape[2], dtype=torch.float32) if need_weights else None)


def _dropped_weights_attention(q, k, v, attn_mask, key_padding_mask, causal, dropout_p, scale=None, window=0,
                               alibi_slopes=None):
    """(out, weights) for MultiheadAttention's need_weights with dropout, as nn.MultiheadAttention computes them: attn's
    weights (differentiable), dropped by F.dropout on torch's generator (the same seed drops the same weights), then
    times V. The weights returned are the ones that made the output, as PyTorch's are. Also the path of a float mask
    that requires grad under dropout (its gradient then flows through the dropped weights, exactly)."""
    _, weights = _attention(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, 0.0, True)
    weights = F.dropout(weights, p=dropout_p)
    B, H, Lq, Lk = weights.shape
    Hkv = v.shape[1]
    out = torch.matmul(weights.to(v.dtype).reshape(B, Hkv, H // Hkv, Lq, Lk), v.unsqueeze(2))
    return out.reshape(B, H, Lq, v.shape[-1]), weights


def _autocast(*tensors, device="cpu"):
    """The device's autocast cast for a lower-precision op (PyTorch lists SDPA among them on the CPU and on CUDA):
    every floating tensor but a float64 one to the autocast dtype."""
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def _common_kv_heads(query, key, value):
    """enable_gqa with key and value of different head counts, both above 1 (PyTorch repeats each to the query's
    heads): both repeated to the least common multiple of the two, which divides H, so the grouped-query path still
    reads every key and value head for several query heads (one copy each)."""
    H, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
    if H % hk or H % hv:
        raise ArgumentError(f"enable_gqa: the query's {H} heads must be a multiple of the key's {hk} and of the "
                            f"value's {hv} (query {tuple(query.shape)}, key {tuple(key.shape)}, value "
                            f"{tuple(value.shape)})")
    g = math.lcm(hk, hv)
    return key.repeat_interleave(g // hk, dim=-3), value.repeat_interleave(g // hv, dim=-3)


def _layout_of(query, out):
    """out in query's memory layout where query is (B, H, L, D) viewed over (B, L, H, D) memory (heads split from a
    projection), as PyTorch's output is: out.transpose(1, 2).view(B, L, H * Dv) then works there too."""
    if (not query.is_contiguous() and query.dim() == 4 and out.dim() == 4 and query.transpose(1, 2).is_contiguous()
            and query.shape[1] > 1 and query.shape[2] > 1):
        return out.transpose(1, 2).contiguous().transpose(1, 2)
    return out


# ---------------------------------------------------------------- CUDA tensors: attn.cuda
def _cuda_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, causal_alignment,
                    key_padding_mask, window, alibi_slopes):
    """CUDA tensors go to attn.cuda's kernels (bfloat16/float16, D = 64 or 128, forward and backward on the GPU,
    an autograd Function rather than a custom op: torch.compile does not trace it); the options those kernels
    lack are refused by name. A CPU key_padding_mask is copied to the GPU."""
    from . import cuda as attn_cuda  # loads libattn_cuda only when a CUDA tensor arrives

    for name, t in (("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.device != query.device:
            where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
            raise ArgumentError(f"{name} must be a tensor on {query.device} as query is, got {where}")
    lacking = [name for name, given in (("attn_mask", attn_mask is not None), ("dropout_p", dropout_p > 0.0),
                                         ("alibi_slopes", alibi_slopes is not None)) if given]
    if lacking:
        raise ArgumentError(f"{', '.join(lacking)}: not supported for CUDA tensors (attn.cuda has causal, window and "
                         "key_padding_mask); move the tensors to the CPU for these options")
    if query.dim() not in (3, 4) or key.dim() != query.dim() or value.dim() != query.dim():
        raise ArgumentError(f"on CUDA, query, key and value must be [B, H, L, D] or [H, L, D], got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    unbatched = query.dim() == 3
    if unbatched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None and key_padding_mask.dim() == 1:  # [Lk] for the unbatched call
            key_padding_mask = key_padding_mask.unsqueeze(0)
    # (attn.cuda's own checks raise ValueError / TypeError: this module's types, as on the CPU)
    out = _typed_errors(attn_cuda.scaled_dot_product_attention, query, key, value, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa, causal_alignment=causal_alignment, key_padding_mask=key_padding_mask,
                        window=window)
    return out.squeeze(0) if unbatched else out


# ---------------------------------------------------------------- the functional form
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, causal_alignment=None, key_padding_mask=None, window=0,
                                 alibi_slopes=None):
    """torch.nn.functional.scaled_dot_product_attention computed by attn (forward and fused backward).

    query (..., H, Lq, D), key (..., Hkv, Lk, D), value (..., Hkv, Lk, Dv): 2 or more dimensions, CPU float32,
    bfloat16 or float16 (one dtype for the three). The dimensions before the last two broadcast as in PyTorch (a
    key of batch 1, one key head for every query head, five-dimensional inputs; fewer dimensions count as leading
    1s); broadcast keys and values are copied, except one key head, which attn's grouped-query path reads for every
    head. Returns (..., H, Lq, Dv) in that dtype. CUDA tensors (3 or 4 dimensions, bfloat16/float16, D = Dv = 64 or
    128) run on attn.cuda's kernels, without attn_mask, dropout_p or alibi_slopes.
    attn_mask: broadcastable to (..., H, Lq, Lk); bool True = may attend, or float added to the scores (float32,
    or the query's 16-bit dtype, widened to float32).
    dropout_p: attention-weight dropout (applied whenever > 0, as in PyTorch), rounded to a multiple of 2^-16
    (below 2^-17: none), the survivors scaled by 1/(1 - the rounded p): each weight keeps its expected value; the
    mask's seed comes from torch's default generator. is_causal: query i sees keys j <= i (top-left); with
    attn_mask it raises RuntimeError, as PyTorch does (causal_alignment='top-left' applies both). scale: default 1/sqrt(D).
    enable_gqa: allow H to be a multiple of Hkv (grouped-query attention, K/V never repeated in memory).
    Extras: causal_alignment 'top-left' | 'bottom-right' (query i sees j <= i + Lk - Lq; setting it implies
    causal), key_padding_mask (B, Lk) bool True = padding, window W (with causal: each query sees its last W keys),
    alibi_slopes (H,) float32 (adds -slope * |i + Lk - Lq - j|, FlashAttention's positions; |i - j| with 'top-left').
    A row whose keys are all masked gives 0, as PyTorch's. enable_gqa with key and value of different head counts
    repeats both to a common count (one copy each), as PyTorch repeats them.
    Differentiable in query, key and value, and in a float attn_mask that requires grad (the weights are then kept,
    O(B·H·Lq·Lk); with dropout they are dropped by F.dropout on torch's generator and multiplied by V), once: differentiating the gradients again (create_graph=True, then a
    second backward through them) raises RuntimeError.
    """
    window = _scalar_options(scale, window, dropout_p)
    if isinstance(query, torch.Tensor) and query.is_cuda:
        if torch.is_autocast_enabled("cuda"):  # float32 inputs become the autocast dtype, as PyTorch's SDPA's do
            query, key, value = _autocast(query, key, value, device="cuda")
        return _cuda_attention(query, key, value, attn_mask, float(dropout_p), is_causal,
                               None if scale is None else float(scale), enable_gqa,
                               causal_alignment, key_padding_mask, window, alibi_slopes)
    if torch.is_autocast_enabled("cpu"):  # PyTorch's CPU autocast casts SDPA's inputs to its lower precision
        query, key, value, attn_mask = _autocast(query, key, value, attn_mask)
    _check_qkv(query, key, value)
    _check_mask(attn_mask, "attn_mask", query)
    if key_padding_mask is not None:
        _check_tensor(key_padding_mask, "key_padding_mask", (torch.bool,), query=query)
    if alibi_slopes is not None:  # (a tensor before its requires_grad is read: a list had raised AttributeError)
        _check_tensor(alibi_slopes, "alibi_slopes", query=query)
    _no_grad_needed(alibi_slopes, "alibi_slopes")
    qs, ks, vs = query.shape, key.shape, value.shape
    n = len(qs)
    if min(n, len(ks), len(vs)) < 2:
        raise ArgumentError(f"query, key and value must have at least 2 dimensions (..., L, E), got query "
                         f"{tuple(qs)}, key {tuple(ks)} and value {tuple(vs)}")
    if not n == len(ks) == len(vs):  # fewer dimensions broadcast as leading 1s, as in PyTorch
        n = max(n, len(ks), len(vs))
        query, key, value = (t.reshape((1,) * (n - t.dim()) + tuple(t.shape)) for t in (query, key, value))
        qs, ks, vs = query.shape, key.shape, value.shape
    if attn_mask is not None and attn_mask.dim() > 2:  # the mask broadcasts into the scores, never grows them
        try:
            scores = tuple(torch.broadcast_shapes(tuple(qs[:-2]), tuple(ks[:-2])))
        except RuntimeError:  # (grouped-query heads, or shapes the checks below refuse)
            scores = tuple(qs[:-2])
        try:
            grows = tuple(torch.broadcast_shapes(scores, tuple(attn_mask.shape[:-2]))) != scores
        except RuntimeError:
            grows = True
        if grows:  # (it had been cut to the query's shape; PyTorch refuses it)
            raise ArgumentError(f"attn_mask {tuple(attn_mask.shape)} does not broadcast to the scores "
                             f"{scores + (qs[-2], ks[-2])} of query {tuple(qs)} and key {tuple(ks)}")
    if ks[-1] != qs[-1]:
        raise ArgumentError(f"query and key must have the same last dimension E, got query {tuple(qs)} and "
                         f"key {tuple(ks)}")
    if ks[-2] != vs[-2]:
        raise ArgumentError(f"key {tuple(ks)} and value {tuple(vs)} must have the same length")
    if n >= 3 and qs[-3] != ks[-3] and not enable_gqa and 1 not in (qs[-3], ks[-3]):
        raise ArgumentError(f"query has {qs[-3]} heads but key has {ks[-3]}: pass enable_gqa=True for "
                         f"grouped-query attention (query {tuple(qs)}, key {tuple(ks)})")
    if n >= 3 and not enable_gqa and vs[-3] not in (1, max(qs[-3], ks[-3])):  # PyTorch's heads broadcast, no more
        raise ArgumentError(f"value has {vs[-3]} heads, but query {tuple(qs)} and key {tuple(ks)} have "
                         f"{max(qs[-3], ks[-3])}: pass enable_gqa=True for grouped-query attention")
    if causal_alignment is not None and causal_alignment not in _ALIGNMENTS:
        raise ArgumentError(f"causal_alignment must be one of {_ALIGNMENTS} or None, got {causal_alignment!r}")
    if is_causal and attn_mask is not None:  # PyTorch's own error (causal_alignment combines the two)
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    if is_causal and causal_alignment == "none":
        raise ArgumentError("is_causal=True contradicts causal_alignment='none'")
    causal = causal_alignment or ("top-left" if is_causal else "none")
    if enable_gqa and n >= 3 and ks[-3] != vs[-3] and 1 not in (ks[-3], vs[-3]):
        key, value = _common_kv_heads(query, key, value)
        ks, vs = key.shape, value.shape
    if n == 4 and qs[0] == ks[0] == vs[0] and ks[1] == vs[1] and (ks[1] == qs[1] or enable_gqa or ks[1] == 1):
        return _layout_of(query, _attention(query, key, value, attn_mask, key_padding_mask, causal, scale, window,
                                            alibi_slopes, dropout_p, False)[0])  # the common case: no reshapes
    if n == 2:
        out = _attention(query[None, None], key[None, None], value[None, None], attn_mask, key_padding_mask, causal,
                         scale, window, alibi_slopes, dropout_p, False)[0]
        return out[0, 0]
    given = query
    query, key, value, attn_mask, batch = _broadcast_batches(query, key, value, attn_mask, key_padding_mask)
    out = _attention(query, key, value, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p,
                     False)[0]
    return _layout_of(given, out.reshape(batch + tuple(out.shape[1:])))


def _broadcast_batches(query, key, value, attn_mask, key_padding_mask):
    """Inputs of 3 or more dimensions (..., H, L, E), as PyTorch's math path broadcasts them: the batch
    dimensions (all but the last three) broadcast together and flatten into one, and a single head of query (or of
    key and value, without enable_gqa) serves every head of the other (key and value: attn's grouped-query path, no
    copy). Returns 4-D query, key, value and attn_mask, and the batch shape the output takes back."""
    try:
        batch = tuple(torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3]))
    except RuntimeError as e:
        raise ArgumentError(f"the batch dimensions of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} do not broadcast") from e
    if key.shape[-3] != value.shape[-3]:
        if 1 not in (key.shape[-3], value.shape[-3]):
            raise ArgumentError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same number of "
                             "heads (or one of them one)")
        heads = max(key.shape[-3], value.shape[-3])  # one head of either serves every head of the other
        key, value = (t.expand(t.shape[:-3] + (heads,) + t.shape[-2:]) for t in (key, value))
    if query.shape[-3] == 1 and key.shape[-3] > 1:  # one query head for every key head
        query = query.expand(query.shape[:-3] + (key.shape[-3],) + query.shape[-2:])
    if len(batch) > 1 and key_padding_mask is not None:
        raise ArgumentError(f"key_padding_mask needs one batch dimension (query, key and value of 4 dimensions), got "
                         f"query {tuple(query.shape)}")
    flat = lambda t: t.expand(batch + tuple(t.shape[-3:])).reshape((-1,) + tuple(t.shape[-3:]))
    query, key, value = flat(query), flat(key), flat(value)
    if attn_mask is not None and attn_mask.dim() > 3:
        m = attn_mask.reshape((1,) * max(0, len(batch) + 3 - attn_mask.dim()) + tuple(attn_mask.shape))
        if m.dim() != len(batch) + 3:
            raise ArgumentError(f"attn_mask {tuple(attn_mask.shape)} has more dimensions than query "
                             f"{tuple(query.shape)}")
        attn_mask = m.reshape((1,) + tuple(m.shape[-3:])) if m.shape[:-3].numel() == 1 else flat(m)
    return query, key, value, attn_mask, batch


# ---------------------------------------------------------------- the module
def _keeps_the_fast_path_away(module, args):
    """MultiheadAttention's forward pre-hook: does nothing (its presence is what counts; see __init__)."""
    return None


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention with attn's attention: same constructor, parameters, state_dict, forward.

    Parameters (as nn.MultiheadAttention): in_proj_weight [E + 2*kv, E] and in_proj_bias [E + 2*kv] when
    kdim = vdim = embed_dim, else q_proj_weight [E, E], k_proj_weight [kv, kdim], v_proj_weight [kv, vdim];
    out_proj.weight [E, E], out_proj.bias [E]; bias_k, bias_v [1, 1, kv] with add_bias_kv. kv = E (as PyTorch)
    unless num_kv_heads < num_heads (grouped-query attention): kv = num_kv_heads * E / num_heads.
    With the same torch seed and arguments the initial weights equal nn.MultiheadAttention's, and state dicts
    load both ways.

    forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
            average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights or None)
      query (L, N, E), key (S, N, kdim), value (S, N, vdim); (N, L, E)... with batch_first; unbatched (L, E).
      attn_output like query. attn_weights (N, L, S) averaged over heads, or (N, H, L, S) with
      average_attn_weights=False (unbatched: without N); differentiable; in training with dropout, after dropout
      (as PyTorch's).
      key_padding_mask (N, S): bool True = ignore the key, or float added. attn_mask (L, S) or (N*H, L, S):
      bool True = NOT allowed to attend, or float added. is_causal: a hint that attn_mask is the causal (top-left)
      mask; without attn_mask it raises RuntimeError, as nn.MultiheadAttention's general path does (its inference
      fast path, in eval under no_grad with batch_first self-attention, ignores the hint and attends unmasked). As
      there: attn_mask alone where weights are returned or key_padding_mask is given, else the causal mask alone. (The two differ
      only for an attn_mask that is not causal, or for the keys add_bias_kv and add_zero_attn append: attn_mask's
      padding leaves those visible to every query, the causal mask hides them from the first queries.)
    """

    __constants__ = ["batch_first"]

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, num_kv_heads=None):
        if embed_dim <= 0 or num_heads <= 0:
            raise ArgumentError(f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} and "
                                f"num_heads={num_heads} instead")
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise _ModuleArgumentError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if self.num_kv_heads <= 0 or num_heads % self.num_kv_heads != 0:
            raise ArgumentError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({num_heads})")
        kv = self.num_kv_heads * self.head_dim
        self._kv_dim = kv
        if not self._qkv_same_embed_dim:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = nn.Parameter(torch.empty((kv, self.kdim), **factory))
            self.v_proj_weight = nn.Parameter(torch.empty((kv, self.vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        else:
            self.in_proj_weight = nn.Parameter(torch.empty((embed_dim + 2 * kv, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(embed_dim + 2 * kv, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, kv), **factory))
            self.bias_v = nn.Parameter(torch.empty((1, 1, kv), **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()
        # nn.TransformerEncoderLayer's inference fast path (eval, no grad) reads in_proj_weight and calls
        # torch._transformer_encoder_layer_fwd itself: attn was never called there, and grouped-query weights made it
        # raise. A module with forward hooks is one the fast path declines, so this one carries a hook that does nothing.
        self.register_forward_pre_hook(_keeps_the_fast_path_away)

    def _reset_parameters(self):
        """nn.MultiheadAttention's initialisation, in its order (same seed, same weights)."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            nn.init.xavier_normal_(self.bias_v)

    # nn.MultiheadAttention's public helper (it reads num_heads only): the masks merged as its fast path merges them
    merge_masks = nn.MultiheadAttention.merge_masks

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"batch_first={self.batch_first}")

    def _forward_nested(self, x, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
        """nn.TransformerEncoder's inference path (eval, no grad, a src_key_padding_mask) nests the padded batch and
        hands its layers the nested sequences, which a layer holding this module passes on (its own fast path declines
        the module): self-attention over each sequence, as nn.MultiheadAttention's nested path, the output nested
        alike. The sequences are padded, their padding masked, and the output nested again."""
        if not (x is key and key is value) or not self.batch_first or key_padding_mask is not None or need_weights:
            raise _ModuleArgumentError("nested query, key and value: only self-attention with batch_first=True, no "
                                       "key_padding_mask and need_weights=False (nn.TransformerEncoder's inference "
                                       "path) are supported")
        lengths = [t.shape[0] for t in x.unbind()]
        padded = x.to_padded_tensor(0.0)  # [N, L, E]
        pad = torch.arange(padded.shape[1], device=padded.device)[None, :] >= torch.tensor(
            lengths, device=padded.device)[:, None]
        if attn_mask is not None:  # over the longest sequence, which the padding may not reach
            attn_mask = attn_mask[..., :padded.shape[1], :padded.shape[1]]
        out, _ = self.forward(padded, padded, padded, key_padding_mask=pad, need_weights=False, attn_mask=attn_mask,
                              is_causal=is_causal)
        return torch.nested.nested_tensor([out[i, :n] for i, n in enumerate(lengths)]), None

    def _project(self, query, key, value):
        E, kv = self.embed_dim, self._kv_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split([E, kv, kv])
        if self._qkv_same_embed_dim:
            if query is key and key is value:  # self-attention: one GEMM
                return F.linear(query, self.in_proj_weight, b).split([E, kv, kv], dim=-1)
            wq, wk, wv = self.in_proj_weight.split([E, kv, kv])
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        for t, name in ((query, "query"), (key, "key"), (value, "value")):  # (before .is_nested is read)
            if not isinstance(t, torch.Tensor):
                raise _ModuleDTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal)
        _check_qkv(query, key, value)
        _check_mask(attn_mask, "attn_mask", query, _ModuleDTypeError)
        _check_mask(key_padding_mask, "key_padding_mask", query, _ModuleDTypeError)
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise _ModuleArgumentError(f"query, key and value must all be 3-D (batched) or 2-D (unbatched), got query "
                                       f"{tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)}")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise _ModuleArgumentError(f"attn_mask must be 2-D (L, S) or 3-D (N * num_heads, L, S), got shape "
                                       f"{tuple(attn_mask.shape)}")
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            if attn_mask is not None and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
        elif not self.batch_first:
            same_kv = key is value
            same_qk = query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        N, L, E = query.shape
        if E != self.embed_dim:
            raise _ModuleArgumentError(f"query has embedding size {E} but the module expects "
                                       f"embed_dim={self.embed_dim}")
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise _ModuleArgumentError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must end in "
                                       f"kdim={self.kdim} and vdim={self.vdim}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != N:
            raise _ModuleArgumentError(f"query {tuple(query.shape)}, key {tuple(key.shape)} and value "
                                       f"{tuple(value.shape)} disagree in batch size or key length")
        if is_causal and attn_mask is None:  # as nn.MultiheadAttention: is_causal is only a hint about attn_mask
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        if is_causal:  # nn.MultiheadAttention takes is_causal as a hint about attn_mask:
            if key_padding_mask is None and not need_weights:
                attn_mask = None  # its SDPA branch: the causal mask alone, over every key (bias_k's, the zero one)
            else:
                is_causal = False  # else attn_mask alone (padded for bias_k and the zero key: every query sees those)
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None:  # in k's dtype: under autocast the projections are 16-bit and the biases float32
            k = torch.cat([k, self.bias_k.expand(N, 1, -1).to(k.dtype)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, -1).to(v.dtype)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        S = k.shape[1]
        q = q.view(N, L, H, D).transpose(1, 2)
        k = k.view(N, S, Hkv, D).transpose(1, 2)
        v = v.view(N, S, Hkv, D).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, Hkv, 1, D)], dim=2)
            v = torch.cat([v, v.new_zeros(N, Hkv, 1, D)], dim=2)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
            S += 1
        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (L, S):
                    raise ArgumentError(f"attn_mask must be ({L}, {S}) or ({N * H}, {L}, {S}), got "
                                        f"{tuple(attn_mask.shape)}")
            else:  # (N * H, L, S), or (1, H, L, S) from an unbatched call's (H, L, S): the exact shape, as PyTorch
                if tuple(attn_mask.shape[-3:]) != (N * H if batched else H, L, S):  # (unbatched: PyTorch asserts)
                    error = ArgumentError if batched else _ModuleArgumentError
                    raise error(f"attn_mask must be ({L}, {S}) or ({N * H}, {L}, {S}), got "
                                f"{tuple(attn_mask.shape[-3:])}")
                attn_mask = attn_mask.reshape(N, H, L, S)
            mask = attn_mask.logical_not() if attn_mask.dtype == torch.bool else attn_mask
        padding = None
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (N, S):
                raise _ModuleArgumentError(f"key_padding_mask must be ({N}, {S}), got {tuple(key_padding_mask.shape)}")
            if key_padding_mask.dtype == torch.bool:
                padding = key_padding_mask
            else:  # a float padding mask is added to the scores: merge it into the float mask
                add = key_padding_mask.view(N, 1, 1, S)
                if mask is None:
                    mask = add
                elif mask.dtype == torch.bool:
                    mask = torch.zeros((), dtype=add.dtype).masked_fill(~mask, -math.inf) + add
                else:
                    mask = mask + add
        dropout_p = self.dropout if self.training else 0.0
        causal = "top-left" if is_causal else "none"
        if (need_weights or _needs_grad(mask)) and dropout_p > 0.0:  # the weights after dropout, as PyTorch's
            out, weights = _dropped_weights_attention(q, k, v, mask, padding, causal, dropout_p)
        else:
            out, weights = _attention(q, k, v, mask, padding, causal, None, 0, None, dropout_p, bool(need_weights))
        # (N, H, L, D) to the layout the caller's query has, so the output is contiguous there, as PyTorch's is
        seq_first = batched and not self.batch_first
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, E) if seq_first
                            else out.transpose(1, 2).reshape(N, L, E))
        if need_weights:
            weights = weights.to(out.dtype)  # float32 from the 16-bit inputs' widened path: as nn.MultiheadAttention
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            weights = None
        if not batched:
            out = out.squeeze(0)
        return out, weights
