"""attn.cuda against PyTorch on the GPU (run by scripts/gpu_check.sh; skipped where there is no GPU).

Truth is PyTorch's float64 math on the same (rounded) inputs; the bar is PyTorch's own low-precision error: for each
case and tensor (out, dq, dk, dv), attn's max abs error against float64 must be at most twice that of
torch.nn.functional.scaled_dot_product_attention run on the same bf16/fp16 inputs (plus a floor of 1e-3 of the
tensor's magnitude). Rows whose keys are all hidden must be exactly 0 (PyTorch gives NaN there; such rows are left
out of PyTorch's error).
"""
import importlib.util
import os
import zlib

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU tests are skipped here", allow_module_level=True)

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("attn_cuda",
                                               os.path.join(_here, "..", "..", "python", "attn", "cuda.py"))
attn_cuda = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attn_cuda)
if not attn_cuda.available():
    pytest.skip("libattn_cuda not found or sees no GPU", allow_module_level=True)

F = torch.nn.functional


def visible_mask(B, Lq, Lk, causal, window, pad, device):
    """[B, 1, Lq, Lk] bool, True = may attend: the masking rule of attn/attention.h."""
    i = torch.arange(Lq, device=device)[:, None]
    j = torch.arange(Lk, device=device)[None, :]
    m = torch.ones(Lq, Lk, dtype=torch.bool, device=device)
    if causal:
        last = i + (Lk - Lq if causal == "bottom-right" else 0)
        m = j <= last
        if window:
            m = m & (j > last - window)
    m = m[None, None].expand(B, 1, Lq, Lk)
    if pad is not None:
        m = m & ~pad[:, None, None, :]
    return m


def math_reference(q, k, v, mask, scale):
    """float64 softmax(scale·QKᵀ + mask)·V with GQA by repetition; fully hidden rows → 0."""
    G = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(G, dim=1)
    v = v.repeat_interleave(G, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


CASES = [
    # B, H, Hkv, Lq, Lk, D, causal, window, padding, dtype
    (2, 4, 4, 256, 256, 64, None, 0, False, torch.bfloat16),
    (1, 8, 2, 333, 517, 128, None, 0, False, torch.bfloat16),
    (2, 4, 4, 511, 511, 128, "top-left", 0, False, torch.bfloat16),
    (1, 4, 1, 200, 700, 64, "bottom-right", 0, False, torch.float16),
    (1, 4, 4, 700, 200, 128, "bottom-right", 0, False, torch.bfloat16),
    (2, 4, 2, 640, 640, 64, "top-left", 128, False, torch.bfloat16),
    (3, 4, 4, 190, 410, 128, None, 0, True, torch.float16),
    (3, 8, 4, 300, 300, 64, "bottom-right", 64, True, torch.bfloat16),
    (1, 16, 16, 1024, 1024, 128, None, 0, False, torch.float16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_against_float64(case):
    B, H, Hkv, Lq, Lk, D, causal, window, padding, dtype = case
    # (crc32 of the case's text: hash() of a tuple holding strings changes from process to process)
    gen = torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(case).encode()))
    dev = "cuda"
    q = torch.randn(B, H, Lq, D, device=dev, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, device=dev, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, device=dev, generator=gen).to(dtype)
    d_out = torch.randn(B, H, Lq, D, device=dev, generator=gen).to(dtype)
    pad = None
    if padding:
        pad = torch.rand(B, Lk, device=dev, generator=gen) < 0.3
        pad[0] = False
        pad[-1] = True  # a batch whose every key is padding
    scale = D ** -0.5
    mask = visible_mask(B, Lq, Lk, causal, window, pad, dev)
    live = mask.any(-1, keepdim=True)  # [B, 1, Lq, 1]: rows with a visible key

    # float64 truth
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref = math_reference(q64, k64, v64, mask, scale)
    ref.backward(d_out.double())

    # PyTorch in low precision (its own error is the bar)
    qt, kt, vt = (x.clone().requires_grad_() for x in (q, k, v))
    gqa = Hkv != H
    if causal == "top-left" and not window and pad is None:
        out_t = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    elif causal is None and pad is None:
        out_t = F.scaled_dot_product_attention(qt, kt, vt, scale=scale, enable_gqa=gqa)
    else:
        out_t = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    out_t.backward(d_out)

    # attn
    qa, ka, va = (x.clone().requires_grad_() for x in (q, k, v))
    out_a, lse_a = attn_cuda.scaled_dot_product_attention(
        qa, ka, va, scale=scale, enable_gqa=gqa, causal_alignment=causal, window=window, key_padding_mask=pad,
        return_lse=True)
    out_a.backward(d_out)

    # rows with nothing visible: exactly 0 and lse −inf
    dead = (~live).expand(B, H, Lq, 1)
    assert torch.all(out_a.masked_select(dead.expand_as(out_a)) == 0)
    assert torch.all(lse_a.masked_select(dead[..., 0]) == float("-inf"))

    live_rows = live.expand(B, H, Lq, 1)
    for name, ours, theirs, truth, rows in (
            ("out", out_a, out_t, ref, live_rows),
            ("dq", qa.grad, qt.grad, q64.grad, live_rows),
            ("dk", ka.grad, kt.grad, k64.grad, None),
            ("dv", va.grad, vt.grad, v64.grad, None)):
        truth = truth.detach()
        err_a = (ours.double() - truth).abs()
        err_t = (theirs.double() - truth).abs()
        if rows is not None:
            sel = rows.expand_as(truth)
            err_a, err_t, mag = err_a[sel], err_t[sel], truth[sel].abs().max()
        else:
            mag = truth.abs().max()
        err_t = err_t.nan_to_num(0.0)  # PyTorch's NaN for a batch with every key padded
        bound = 2 * err_t.max().item() + 1e-3 * mag.item()
        assert err_a.max().item() <= bound, (
            f"{name}: attn max error {err_a.max().item():.3g}, PyTorch {err_t.max().item():.3g}, "
            f"magnitude {mag.item():.3g}")

    # the log-sum-exp of live rows against float64
    s = (q.double() @ k.double().repeat_interleave(H // Hkv, 1).transpose(-1, -2)) * scale
    lse_ref = torch.logsumexp(s.masked_fill(~mask, float("-inf")), dim=-1)
    sel = live_rows[..., 0]
    assert (lse_a.double()[sel] - lse_ref[sel]).abs().max().item() < 1e-3


def test_padding_keys_are_never_read():
    """NaN in the K and V of padding keys (torch.empty garbage) reaches no output or gradient: the result with finite
    values there, bitwise but for dq's atomic sums (they are loaded as zeros)."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    B, H, Lq, Lk, D = 2, 2, 70, 200, 64
    q, k, v, d_out = (torch.randn(B, H, n, D, device="cuda", generator=gen).to(torch.bfloat16)
                      for n in (Lq, Lk, Lk, Lq))
    pad = torch.rand(B, Lk, device="cuda", generator=gen) < 0.3
    pad[0, :5] = False
    runs = []
    for kk, vv in ((k, v), (k.masked_fill(pad[:, None, :, None], float("nan")),
                            v.masked_fill(pad[:, None, :, None], float("nan")))):
        qa, ka, va = (x.clone().requires_grad_() for x in (q, kk, vv))
        out = attn_cuda.scaled_dot_product_attention(qa, ka, va, key_padding_mask=pad)
        out.backward(d_out)
        runs.append((out, qa.grad, ka.grad, va.grad))
    for name, clean, poisoned in zip(("out", "dq", "dk", "dv"), *runs):
        assert torch.isfinite(poisoned).all(), name
        if name == "dq":  # float32 atomic adds of the key blocks, in scheduling order: equal to rounding
            torch.testing.assert_close(poisoned, clean)
        else:
            assert torch.equal(clean, poisoned), name


def test_empty_shapes_as_on_the_cpu():
    """No keys: output 0 and lse −inf, dq 0; no queries: dk and dv 0; an empty batch: empty results."""
    q = torch.randn(2, 2, 16, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    kv = torch.randn(2, 2, 0, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    out, lse = attn_cuda.scaled_dot_product_attention(q, kv, kv, return_lse=True)
    out.backward(torch.ones_like(out))
    assert out.shape == q.shape and not out.any() and bool((lse == float("-inf")).all()) and not q.grad.any()
    q0 = torch.randn(2, 2, 0, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    k = torch.randn(2, 2, 16, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    out = attn_cuda.scaled_dot_product_attention(q0, k, k, is_causal=True)
    out.sum().backward()
    assert out.shape == (2, 2, 0, 64) and k.grad is not None and not k.grad.any()
    e = torch.randn(0, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    assert attn_cuda.scaled_dot_product_attention(e, e, e).shape == e.shape


def test_dlpack_input_and_errors():
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.float16)
    cupy = pytest.importorskip("cupy")
    qc = cupy.from_dlpack(q)  # a CuPy array over the same memory: attn takes it back through DLPack
    out = attn_cuda.scaled_dot_product_attention(qc, qc, qc)
    ref = F.scaled_dot_product_attention(q.double(), q.double(), q.double())
    assert (out.double() - ref).abs().max().item() < 5e-3
    with pytest.raises(ValueError, match="96"):
        x = torch.randn(1, 2, 8, 96, device="cuda", dtype=torch.bfloat16)
        attn_cuda.scaled_dot_product_attention(x, x, x)
    with pytest.raises(TypeError, match="float32"):
        x = torch.randn(1, 2, 8, 64, device="cuda")
        attn_cuda.scaled_dot_product_attention(x, x, x)
    with pytest.raises(ValueError, match="CUDA"):
        x = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
        attn_cuda.scaled_dot_product_attention(x, x, x)


def load_attn_torch():
    """attn.torch: the installed package (so an installed attn must be this tree's), or else the source tree's with a
    stand-in for the CPU extension (on the GPU machine it is not built for that Python; CUDA tensors never reach
    it)."""
    try:
        import attn.torch as at
        return at
    except ImportError:
        import sys
        import types
        for name in [n for n in sys.modules if n == "attn" or n.startswith("attn.")]:
            del sys.modules[name]
        pkg = types.ModuleType("attn")
        pkg.__path__ = [os.path.join(_here, "..", "..", "python", "attn")]
        sys.modules["attn"] = pkg
        sys.modules["attn._attn"] = types.ModuleType("attn._attn")
        return importlib.import_module("attn.torch")


def test_attn_torch_sends_cuda_tensors_to_attn_cuda():
    at = load_attn_torch()
    torch.manual_seed(0)
    q = torch.randn(2, 4, 300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 2, 300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(2, 2, 300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pad = torch.zeros(2, 300, dtype=torch.bool, device="cuda")
    pad[1, 250:] = True
    out = at.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, key_padding_mask=pad)
    ref = attn_cuda.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, key_padding_mask=pad)
    assert torch.equal(out, ref)
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref.float().square().sum().backward()
    for g, t in zip(grads, (q, k, v)):
        assert torch.equal(g, t.grad)
    # unbatched [H, L, D]
    one = at.scaled_dot_product_attention(q[0], k[0], v[0], enable_gqa=True)
    assert torch.equal(one, attn_cuda.scaled_dot_product_attention(q[:1], k[:1], v[:1], enable_gqa=True)[0])
    # an unbatched call's key_padding_mask: [Lk] or [1, Lk], as on the CPU
    ref1 = attn_cuda.scaled_dot_product_attention(q[1:], k[1:], v[1:], enable_gqa=True, key_padding_mask=pad[1:])[0]
    for m in (pad[1], pad[1:]):
        assert torch.equal(at.scaled_dot_product_attention(q[1], k[1], v[1], enable_gqa=True, key_padding_mask=m), ref1)
    with pytest.raises(ValueError, match="attn_mask, dropout_p: not supported for CUDA"):
        at.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(300, 300, dtype=torch.bool), dropout_p=0.1)
    with pytest.raises(ValueError, match="key must be a tensor on cuda"):
        at.scaled_dot_product_attention(q, k.cpu(), v)
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        at.scaled_dot_product_attention(q.float(), k.float(), v.float())
    # under CUDA autocast float32 inputs are cast to its dtype first, as PyTorch's SDPA's are
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            cast = at.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
            want = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(2, 1),
                                                  v.float().repeat_interleave(2, 1))
        assert cast.dtype == want.dtype == dtype
        assert torch.equal(cast, attn_cuda.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype),
                                                                         enable_gqa=True))
