"""attn.cuda: attn's GPU attention kernels (libattn_cuda, FlashAttention-2's algorithm on tensor cores) for CUDA
tensors, zero-copy, with autograd.

    import torch, attn.cuda
    q = torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = attn.cuda.scaled_dot_product_attention(q, q, q, is_causal=True)
    out.sum().backward()

Inputs: torch CUDA tensors, or any object with __dlpack__ on a CUDA device (CuPy, JAX, ...), taken zero-copy through
DLPack. bfloat16 or float16, [B, H, L, D] with D in {64, 128} and the last dimension contiguous (other strides
are passed to the kernels as they are). Kernels run on torch's current stream.

The library is found through the ATTN_CUDA_LIBRARY environment variable, next to this file, or in the build tree
(build/src/cuda/libattn_cuda.so); it is built when CMake finds nvcc (ATTN_WITH_CUDA). This module needs only
torch and that library (not attn's CPU extension), so it can be loaded on its own by file path.
"""
import ctypes
import numbers
import os

import torch
from torch.autograd.function import once_differentiable

__all__ = ["scaled_dot_product_attention", "available", "library_path"]

_i64, _i32, _f32, _vp = ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p


class _Tensor(ctypes.Structure):
    _fields_ = [("data", _vp), ("sb", _i64), ("sh", _i64), ("sl", _i64)]


class _Problem(ctypes.Structure):  # attn_cuda_problem (include/attn/cuda_c.h)
    _fields_ = [("B", _i64), ("H", _i64), ("Hkv", _i64), ("Lq", _i64), ("Lk", _i64), ("D", _i64),
                ("dtype", _i32), ("causal", _i32), ("window", _i64), ("has_scale", _i32), ("scale", _f32),
                ("q", _Tensor), ("k", _Tensor), ("v", _Tensor), ("o", _Tensor), ("lse", _vp),
                ("key_padding", _vp), ("stream", _vp)]


class _Grads(ctypes.Structure):  # attn_cuda_grads
    _fields_ = [("out", _Tensor), ("d_out", _Tensor), ("dq", _Tensor), ("dk", _Tensor), ("dv", _Tensor)]


_lib = None
_errors = {1: ValueError, 2: TypeError, 3: ValueError, 4: RuntimeError}


def library_path():
    """Where libattn_cuda.so is looked for, first match wins."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("ATTN_CUDA_LIBRARY", ""), os.path.join(here, "libattn_cuda.so"),
                  os.path.join(here, "..", "..", "build", "src", "cuda", "libattn_cuda.so")]
    for c in candidates:
        if c and os.path.exists(c):
            return os.path.abspath(c)
    return None


def _load():
    global _lib
    if _lib is None:
        path = library_path()
        if path is None:
            raise RuntimeError("attn.cuda: libattn_cuda.so not found (build with nvcc present, or set "
                               "ATTN_CUDA_LIBRARY)")
        lib = ctypes.CDLL(path)
        lib.attn_cuda_forward.argtypes = [ctypes.POINTER(_Problem), ctypes.c_char_p, ctypes.c_int]
        lib.attn_cuda_backward.argtypes = [ctypes.POINTER(_Problem), ctypes.POINTER(_Grads), ctypes.c_char_p,
                                           ctypes.c_int]
        lib.attn_cuda_device_count.argtypes = []
        _lib = lib
    return _lib


def available():
    """True when libattn_cuda loads and sees a GPU."""
    try:
        return _load().attn_cuda_device_count() > 0
    except (RuntimeError, OSError):
        return False


def _as_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        if not hasattr(x, "__dlpack__"):
            raise TypeError(f"{name} must be a torch tensor or support DLPack, got {type(x).__name__}")
        x = torch.from_dlpack(x)  # zero-copy
    if not x.is_cuda:
        raise ValueError(f"{name} must be on a CUDA device, got {x.device} with shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be bfloat16 or float16, got {x.dtype} with shape {tuple(x.shape)}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be [B, H, L, D], got shape {tuple(x.shape)}")
    return x


def _aligned(x):
    """x itself when the kernels can read it in place (last dim contiguous, 16-byte aligned, strides multiples of
    8 elements), else a contiguous copy."""
    ok = x.stride(3) == 1 and x.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in x.stride()[:3])
    return x if ok else x.contiguous()


def _view(x):
    return _Tensor(x.data_ptr(), x.stride(0), x.stride(1), x.stride(2))


def _call(fn, *args):
    buf = ctypes.create_string_buffer(1024)
    code = fn(*args, buf, len(buf))
    if code != 0:
        raise _errors.get(code, RuntimeError)(buf.value.decode(errors="replace"))


def _problem(q, k, v, o, lse, causal, window, scale, pad):
    p = _Problem()
    p.B, p.H, p.Lq, p.D = q.shape
    p.Hkv, p.Lk = k.shape[1], k.shape[2]
    p.dtype = 0 if q.dtype == torch.bfloat16 else 1
    p.causal, p.window = causal, window
    p.has_scale, p.scale = (0, 0.0) if scale is None else (1, float(scale))
    p.q, p.k, p.v, p.o = _view(q), _view(k), _view(v), _view(o)
    p.lse = lse.data_ptr()
    p.key_padding = pad.data_ptr() if pad is not None else None
    p.stream = torch.cuda.current_stream(q.device).cuda_stream
    return p


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, window, scale, pad):
        lib = _load()
        o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        with torch.cuda.device(q.device):
            _call(lib.attn_cuda_forward, ctypes.byref(_problem(q, k, v, o, lse, causal, window, scale, pad)))
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.options = (causal, window, scale, pad)
        return o, lse

    @staticmethod
    @once_differentiable  # the kernel's gradients are not on the graph: a double backward raises, never a silent 0
    def backward(ctx, d_out, d_lse):
        q, k, v, o, lse = ctx.saved_tensors
        causal, window, scale, pad = ctx.options
        d_out = _aligned(d_out.to(q.dtype))
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        g = _Grads(_view(o), _view(d_out), _view(dq), _view(dk), _view(dv))
        with torch.cuda.device(q.device):
            _call(_load().attn_cuda_backward, ctypes.byref(_problem(q, k, v, o, lse, causal, window, scale, pad)),
                  ctypes.byref(g))
        return dq, dk, dv, None, None, None, None


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, causal_alignment=None, key_padding_mask=None, window=0,
                                 return_lse=False):
    """torch.nn.functional.scaled_dot_product_attention on attn's CUDA kernels (forward and backward).

    query [B, H, Lq, D], key/value [B, Hkv, Lk, D] (Hkv = H unless enable_gqa), bfloat16 or float16 on a CUDA device.
    The positional arguments are torch's; attn_mask must be None and dropout_p 0 (the GPU kernels take a
    key_padding_mask, and no dropout).
    is_causal: query i sees keys j <= i (top-left); causal_alignment 'top-left' | 'bottom-right' (j <= i + Lk - Lq;
    setting it implies causal). window W (with causal): each query sees its last W keys. key_padding_mask [B, Lk]
    bool, True = padding. A row whose keys are all hidden gives 0. return_lse: also return the [B, H, Lq] float32
    log-sum-exp. Differentiable in query, key and value.
    """
    if attn_mask is not None:
        raise ValueError("attn_mask: the GPU kernels take no boolean or float mask; pass key_padding_mask [B, Lk] "
                         "(True = padding) or use attn.torch on CPU tensors")
    # 0 in any form F.sdpa takes: a bool (`self.training and p` in eval mode) or a 0-d tensor too
    zero = isinstance(dropout_p, (numbers.Real, torch.Tensor)) and (
        not isinstance(dropout_p, torch.Tensor) or dropout_p.dim() == 0) and float(dropout_p) == 0
    if not zero:
        raise ValueError(f"dropout_p must be 0 on the GPU (no attention dropout there), got {dropout_p!r}")
    q, k, v = (_as_tensor(x, n) for x, n in ((query, "query"), (key, "key"), (value, "value")))
    if not (q.device == k.device == v.device):  # the kernels run on q's device and read k and v there
        raise ValueError(f"query, key and value must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"query {tuple(q.shape)}, key {tuple(k.shape)} and value {tuple(v.shape)} must be "
                         "[B, H, Lq, D], [B, Hkv, Lk, D], [B, Hkv, Lk, D]")
    if k.shape[1] != q.shape[1] and not enable_gqa:
        raise ValueError(f"query has {q.shape[1]} heads and key {k.shape[1]}: pass enable_gqa=True for grouped-query "
                         "attention")
    if is_causal and causal_alignment == "none":
        raise ValueError("is_causal=True contradicts causal_alignment='none'")
    causal = {None: 1 if is_causal else 0, "none": 0, "top-left": 1, "bottom-right": 2}.get(causal_alignment)
    if causal is None:
        raise ValueError(f"causal_alignment must be 'none', 'top-left' or 'bottom-right', got {causal_alignment!r}")
    pad = None
    if key_padding_mask is not None:
        m = _as_tensor_mask(key_padding_mask, q.shape[0], k.shape[2], q.device)
        pad = m.to(torch.uint8).contiguous()
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or not 0 <= window < 2**63:
        raise ValueError(f"window must be an integer in [0, 2**63), got {window!r}")  # (ctypes had wrapped 2**64 + 3)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__} {scale!r}")
    o, lse = _Attention.apply(_aligned(q), _aligned(k), _aligned(v), causal, int(window), scale, pad)
    return (o, lse) if return_lse else o


def _as_tensor_mask(m, B, Lk, device):
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
        raise TypeError("key_padding_mask must be a bool tensor [B, Lk]")
    if tuple(m.shape) != (B, Lk):
        raise ValueError(f"key_padding_mask has shape {tuple(m.shape)}, expected [B, Lk] = [{B}, {Lk}]")
    return m.to(device)
