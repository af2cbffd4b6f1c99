"""attn.torch's operators: the custom ops torch.ops.attn.sdpa and torch.ops.attn.sdpa_backward (fake kernels,
autograd, vmap rules), the autograd Function torch.func's transforms use, and the backward's shared pieces.
attn.torch's public functions call these; nothing here checks arguments (attn.torch does, before)."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _attn


class ArgumentError(ValueError, RuntimeError):
    """A bad argument (shape, value, option), named in the message: a ValueError, and a RuntimeError as PyTorch's own
    checks raise, so code written against torch.nn.functional catches it unchanged. (attn.torch.ArgumentError)"""


class DTypeError(TypeError, RuntimeError):
    """A tensor of a dtype attn does not take (or a non-tensor): a TypeError, and a RuntimeError as PyTorch raises.
    (attn.torch.DTypeError)"""


def _typed_errors(kernel, *args, **kwargs):
    """kernel(*args, **kwargs) with the kernels' ValueError / TypeError raised as ArgumentError / DTypeError (both
    RuntimeErrors, as PyTorch's checks raise): on every path, the custom ops' kernels included, which run where no check
    of attn.torch's comes first (a compiled graph, torch.func; a plain ValueError had escaped there)."""
    try:
        return kernel(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise _retyped(e) from None


def _retyped(e):
    """A ValueError / TypeError as ArgumentError / DTypeError (itself where it is one already)."""
    if isinstance(e, (ArgumentError, DTypeError)):
        return e
    return ArgumentError(str(e)) if isinstance(e, ValueError) else DTypeError(str(e))


def _c(t):
    return None if t is None else t.contiguous()


def _seed_int(seed):
    return 0 if seed is None else int(seed.item())


def _fused_backward(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes,
                    dropout_p, seed):
    """(dq, dk, dv) in the inputs' dtype through attn's fused backward (contiguous tensors; seed an int): float32;
    bfloat16 on vdpbf16ps where the processor has AVX512_BF16 (else, and for float16, the float32 backward on the
    tensors widened, the gradients rounded back)."""
    return _typed_errors(_attn.torch_sdpa_backward, q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal,
                         scale, window, alibi_slopes, dropout_p, seed, torch.get_num_threads())


def _weights_terms(q, k, v, attn_mask, weights, grad_out, grad_weights, scale, mask_grad):
    """What the fused backward leaves out, from the forward's weights P [B, H, Lq, Lk] (every mask, causal range and
    ALiBi already in them; rows with every key hidden are 0), in float32: the gradient of a float attn_mask that
    requires grad, and the part of dq, dk that flows through the returned weights (MultiheadAttention's
    need_weights, used in a loss). Both come from one score gradient dS = P ∘ (G − rowsum(P ∘ G)), G = dO·Vᵀ (where
    the mask needs it) + dP̂ (the weights' own gradient): the mask's is dS summed over the dimensions it broadcasts
    across; dq += scale·dS_w·K and dk += scale·dS_wᵀ·Q for the weights' part. O(B·H·Lq·Lk) memory, as PyTorch's math
    path. Returns (dq_add or None, dk_add or None, d_mask or None)."""
    if grad_weights is None and not mask_grad:
        return None, None, None
    B, H, Lq, Lk = weights.shape
    Hkv, D, Dv = v.shape[1], q.shape[3], v.shape[3]
    G = H // Hkv  # a key head's query heads, together (grouped-query attention)

    def score_gradient(g):
        return weights * (g - (weights * g).sum(-1, keepdim=True))

    d_s_w = score_gradient(grad_weights.float()) if grad_weights is not None else None
    d_mask = None
    if mask_grad:  # dS is linear in G: the output's part, plus the weights' part where there is one
        d_out = grad_out.float().reshape(B, Hkv, G, Lq, Dv)
        d_s = score_gradient(torch.matmul(d_out, v.float().unsqueeze(2).transpose(-1, -2)).reshape(B, H, Lq, Lk))
        d_mask = (d_s if d_s_w is None else d_s + d_s_w).sum_to_size(attn_mask.shape).to(attn_mask.dtype)
    if d_s_w is None:
        return None, None, d_mask
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    d_s_w = d_s_w.reshape(B, Hkv, G, Lq, Lk)
    dq = scale * torch.matmul(d_s_w, k.float().unsqueeze(2)).reshape(B, H, Lq, D)
    dk = scale * torch.matmul(d_s_w.transpose(-1, -2), q.float().reshape(B, Hkv, G, Lq, D)).sum(2)
    return dq, dk, d_mask


def _gradients(ctx, q, k, v, attn_mask, weights, grad_out, grad_weights, scale, dq, dk, dv):
    """Both backwards' return value: the fused backward's dq, dk, dv with _weights_terms added (the weights' part of
    dq and dk, the mask's gradient where ctx says it needs one), None for the options."""
    dq_w, dk_w, d_mask = _weights_terms(q, k, v, attn_mask, weights, grad_out, grad_weights, scale,
                                        ctx.needs_input_grad[3])
    add = lambda g, extra: g if extra is None else (g.float() + extra).to(g.dtype)  # noqa: E731
    return add(dq, dq_w), add(dk, dk_w), dv, d_mask, None, None, None, None, None, None, None, None


@torch.library.custom_op("attn::sdpa", mutates_args=())
def _sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
          causal: str, scale: Optional[float], window: int, alibi_slopes: Optional[Tensor], dropout_p: float,
          seed: Optional[Tensor], return_weights: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(out [B, H, Lq, Dv], lse [B, H, Lq], weights [B, H, Lq, Lk] or empty) from q [B, H, Lq, D],
    k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]; masks with attn.scaled_dot_product_attention's polarity."""
    return _sdpa_kernel(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed,
                        return_weights)


def _sdpa_kernel(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed,
                 return_weights):
    """attn::sdpa's computation: attn's kernel on the tensors made contiguous."""
    out, lse, weights = _typed_errors(_attn.torch_sdpa, q.contiguous(), k.contiguous(), v.contiguous(), _c(attn_mask),
                                      _c(key_padding_mask), causal, scale, window, _c(alibi_slopes), dropout_p,
                                      _seed_int(seed), return_weights, True, torch.get_num_threads())
    return out, lse, (weights if weights is not None else q.new_empty(0))


@_sdpa.register_fake
def _(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed, return_weights):
    B, H, Lq, _ = q.shape
    weights = q.new_empty(B, H, Lq, k.shape[2], dtype=torch.float32) if return_weights else q.new_empty(0)
    return q.new_empty(B, H, Lq, v.shape[3]), q.new_empty(B, H, Lq, dtype=torch.float32), weights


@torch.library.custom_op("attn::sdpa_backward", mutates_args=())
def _sdpa_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor,
                   attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], causal: str,
                   scale: Optional[float], window: int, alibi_slopes: Optional[Tensor], dropout_p: float,
                   seed: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of attn::sdpa from its saved out and lse and the output's gradient (fused backward)."""
    return _sdpa_backward_kernel(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window,
                                 alibi_slopes, dropout_p, seed)


def _sdpa_backward_kernel(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window,
                          alibi_slopes, dropout_p, seed):
    """attn::sdpa_backward's computation: attn's fused backward on the tensors made contiguous."""
    return _fused_backward(q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), lse.contiguous(),
                           grad_out.contiguous(), _c(attn_mask), _c(key_padding_mask), causal, scale, window,
                           _c(alibi_slopes), dropout_p, _seed_int(seed))


@_sdpa_backward.register_fake
def _(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as attn returns them


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed, _ = inputs
    out, lse, weights = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, key_padding_mask, alibi_slopes, seed, weights)
    ctx.options = (causal, scale, window, dropout_p)
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # weights no loss uses: None, not [B, H, Lq, Lk] zeros to multiply


def _backward(ctx, grad_out, _grad_lse, grad_weights, fused_backward=None):
    """attn::sdpa's (and FuncSdpa's) backward; fused_backward: the (dq, dk, dv) function, attn::sdpa_backward by
    default."""
    q, k, v, out, lse, attn_mask, key_padding_mask, alibi_slopes, seed, weights = ctx.saved_tensors
    causal, scale, window, dropout_p = ctx.options
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = (fused_backward or _sdpa_backward)(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal,
                                                    scale, window, alibi_slopes, dropout_p, seed)
    if ctx.needs_input_grad[3] and dropout_p > 0.0:  # its dS would leave the dropout out: wrong, so refused
        raise RuntimeError("attn::sdpa: a float attn_mask that requires grad needs dropout_p = 0 (attn.torch's "
                           "scaled_dot_product_attention differentiates it under dropout through the dropped weights)")
    if weights.numel() == 0 and weights.dim() == 1:  # no weights were returned (the op's empty placeholder)
        grad_weights = None
        if ctx.needs_input_grad[3]:
            raise RuntimeError("attn::sdpa: a float attn_mask that requires grad needs return_weights=True (its "
                               "gradient is taken from the weights)")
    return _gradients(ctx, q, k, v, attn_mask, weights, grad_out, grad_weights, scale, dq, dk, dv)


_sdpa.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- torch.func's transforms
# grad, vjp, jacrev and vmap (and torch.func.functional_call under them) need autograd Functions with setup_context
# and a vmap rule; the custom ops' generated autograd has no setup_context. FuncSdpa and FuncSdpaBackward are the two
# ops as such Functions, calling the kernels directly. Forward-mode AD (jvp, jacfwd) is not defined: torch.func raises.
#
# The vmap rule: vmap's dimension (size n) joins the batch dimension B, [n, B, ...] -> [n·B, ...], one kernel call
# for the whole vmapped batch. Per sample instead (n calls, stacked) where a sample's options differ or must repeat:
# ALiBi slopes that vary with the sample, and dropout (randomness='same' draws one seed for every sample, which must
# then drop the same weights in each; 'different' a seed per sample; 'error' raises where the seed is drawn).
def _folded(t, dim, n):
    """t [B, ...] (its vmapped dimension at dim, None: not vmapped) as [n·B, ...]; an unvmapped t repeated n
    times."""
    if t is None:
        return None
    t = t.expand((n,) + tuple(t.shape)) if dim is None else t.movedim(dim, 0)
    return t.reshape((n * t.shape[1],) + tuple(t.shape[2:]))  # (sizes spelled out: any of them may be 0)


def _folded_mask(mask, dim, n, batch):
    """attn_mask (rank 1 to 4, broadcast right-aligned against [B, H, Lq, Lk]) for the folded batch of n·B."""
    if mask is None:
        return None
    if dim is None:  # broadcast over the folded batch unless it has a batch dimension of its own
        return _folded(mask, None, n) if mask.dim() == 4 and mask.shape[0] > 1 else mask
    m = mask.movedim(dim, 0)
    m = m.reshape((n,) + (1,) * (5 - m.dim()) + tuple(m.shape[1:]))  # [n, B or 1, H or 1, Lq or 1, Lk]
    return m.expand((n, batch) + tuple(m.shape[2:])).reshape((n * batch,) + tuple(m.shape[2:]))


def _vmapped(apply, info, in_dims, args, alibi_at, tensors):
    """apply (a Function's apply) over vmap's dimension: (outputs, their vmapped dimensions). args[:tensors] are
    [B, ...] tensors, the attn_mask and key_padding_mask follow them, args[alibi_at] the ALiBi slopes, the seed last;
    an empty output (the weights' placeholder) stays unbatched."""
    n = info.batch_size
    if in_dims[alibi_at] is not None or args[alibi_at + 1] > 0.0:  # (dropout_p follows the slopes)
        outs = [apply(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims))) for i in range(n)]
        return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
    q, q_dim = args[0], in_dims[0]
    batch = q.shape[0] if q_dim is None else q.movedim(q_dim, 0).shape[1]  # B, the logical batch
    folded = [_folded(t, d, n) for t, d in zip(args[:tensors], in_dims[:tensors])]
    folded.append(_folded_mask(args[tensors], in_dims[tensors], n, batch))
    folded.append(_folded(args[tensors + 1], in_dims[tensors + 1], n))
    outs = apply(*folded, *args[tensors + 2:])
    placeholder = [o.dim() == 1 and o.numel() == 0 for o in outs]
    return (tuple(o if p else o.reshape((n, batch) + tuple(o.shape[1:])) for o, p in zip(outs, placeholder)),
            tuple(None if p else 0 for p in placeholder))


# Where _vmapped finds the pieces of each op's arguments: the [B, ...] tensors first, then the masks, the slopes.
_SDPA_ARGS = {"alibi_at": 8, "tensors": 3}  # q, k, v, attn_mask, key_padding_mask, causal, scale, window, slopes
_SDPA_BACKWARD_ARGS = {"alibi_at": 11, "tensors": 6}  # q, k, v, out, lse, grad_out, the masks, ..., slopes


class FuncSdpaBackward(torch.autograd.Function):
    """attn::sdpa_backward for torch.func: (dq, dk, dv), once differentiable."""

    @staticmethod
    def forward(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes,
                dropout_p, seed):
        return _sdpa_backward_kernel(q, k, v, out, lse, grad_out, attn_mask, key_padding_mask, causal, scale, window,
                                     alibi_slopes, dropout_p, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):  # the fused backward is not itself differentiable: raises, never a silent 0
        raise RuntimeError("attn.torch: the fused backward is differentiable once: a second derivative (hessian, "
                           "grad of grad) is not supported")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmapped(FuncSdpaBackward.apply, info, in_dims, args, **_SDPA_BACKWARD_ARGS)


class FuncSdpa(torch.autograd.Function):
    """attn::sdpa for torch.func: (out, lse, weights or its empty placeholder)."""

    @staticmethod
    def forward(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p, seed,
                return_weights):
        return _sdpa_kernel(q, k, v, attn_mask, key_padding_mask, causal, scale, window, alibi_slopes, dropout_p,
                            seed, return_weights)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx, grad_out, grad_lse, grad_weights):
        return _backward(ctx, grad_out, grad_lse, grad_weights, FuncSdpaBackward.apply)

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmapped(FuncSdpa.apply, info, in_dims, args, **_SDPA_ARGS)


# The custom ops batch the same way where vmap meets them (torch.compile tracing a vmapped function, tensor
# subclasses); their generated autograd has no setup_context, so torch.func's grad goes through FuncSdpa instead.
_sdpa.register_vmap(lambda info, in_dims, *args: _vmapped(_sdpa, info, in_dims, args, **_SDPA_ARGS))
_sdpa_backward.register_vmap(
    lambda info, in_dims, *args: _vmapped(_sdpa_backward, info, in_dims, args, **_SDPA_BACKWARD_ARGS))
