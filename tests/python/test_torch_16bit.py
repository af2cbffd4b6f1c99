"""attn.torch on bfloat16 and float16 CPU tensors: the forward through attn's 16-bit kernel, the backward through
the float32 fused backward on the widened tensors. Against a float64 reference on the same rounded inputs, with
FlashAttention's rule for the tolerance: at most twice PyTorch's own error in that dtype (its F.sdpa forward and
backward), plus half a unit of the dtype's rounding of the largest value. Also: dropout's mask is the float32
path's, the custom ops pass opcheck, inputs are read in place, and the dtypes are checked by name."""
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import attn  # noqa: E402
import attn.torch as at  # noqa: E402
from test_torch import TwoLayer, randn, reference  # noqa: E402

DTYPES = (torch.bfloat16, torch.float16)
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # unit roundoff

CASES = {
    "plain": {},
    "causal_bottom_right": {"causal": "bottom-right"},
    "gqa_padding_float_mask": {"gqa": True, "kpm": True, "mask": "float", "causal": "top-left"},
    "bool_mask": {"mask": "bool"},
}


def inputs(dtype, c):
    """q, k, v in dtype (leaves requiring grad), the masks, and the options of case c."""
    B, H, Lq, Lk, D = 2, 4, 19, 23, 32
    Hkv = 2 if c.get("gqa") else H
    q, k, v = (randn(*shape, seed=s, grad=False).to(dtype).requires_grad_(True)
               for s, shape in ((1, (B, H, Lq, D)), (2, (B, Hkv, Lk, D)), (3, (B, Hkv, Lk, D))))
    mask = None
    if c.get("mask") == "bool":
        mask = torch.rand(B, 1, Lq, Lk, generator=torch.Generator().manual_seed(4)) > 0.3
        mask[..., -1] = True  # no row fully masked: PyTorch gives NaN there, attn 0
    elif c.get("mask") == "float":
        mask = randn(H, Lq, Lk, seed=4, grad=False).to(dtype)
    kpm = None
    if c.get("kpm"):
        kpm = torch.zeros(B, Lk, dtype=torch.bool)
        kpm[0, -4:] = True
        kpm[1, 3:5] = True
    return q, k, v, mask, kpm, c.get("causal", "none"), c.get("gqa", False)


def torch_sdpa(q, k, v, mask, kpm, causal, gqa):
    """PyTorch's F.sdpa with the same masking (one combined mask in the inputs' dtype or bool)."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal != "none":
        offset = Lk - Lq if causal == "bottom-right" else 0
        allowed = torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None] + offset
    if kpm is not None:
        allowed = allowed & ~kpm[:, None, None, :]
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    add = torch.zeros((), dtype=q.dtype).masked_fill(~allowed, -math.inf)
    if mask is not None and mask.dtype != torch.bool:
        add = add + mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=add.to(q.dtype), enable_gqa=gqa)


def errors(fn, q, k, v, w, ref):
    """max |error| of fn's output and of its q, k, v gradients (of <out, w>) against ref's (float64)."""
    out = fn(q, k, v)
    gs = torch.autograd.grad((out * w.to(out.dtype)).sum(), (q, k, v))
    return [(a.double() - b).abs().max().item() for a, b in zip((out,) + gs, ref)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_16bit_forward_and_gradients_within_twice_pytorchs_error(dtype, name):
    q, k, v, mask, kpm, causal, gqa = inputs(dtype, CASES[name])
    w = randn(*q.shape[:-1], v.shape[-1], seed=99, grad=False)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))  # the rounded inputs, exactly
    ref_out = reference(qd, kd, vd, mask=mask, causal=causal, kpm=kpm, gqa=gqa)
    ref = (ref_out,) + torch.autograd.grad((ref_out * w.double()).sum(), (qd, kd, vd))

    def ours(q, k, v):
        return at.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, key_padding_mask=kpm,
                                               causal_alignment=None if causal == "none" else causal)

    out = ours(q, k, v)
    assert out.dtype == dtype and out.shape == ref_out.shape
    got = errors(ours, q, k, v, w, ref)
    theirs = errors(lambda q, k, v: torch_sdpa(q, k, v, mask, kpm, causal, gqa), q, k, v, w, ref)
    for what, e, t, r in zip(("out", "dq", "dk", "dv"), got, theirs, ref):
        floor = UNIT[dtype] * r.abs().max().item() / 2  # half an ulp of the largest value
        assert e <= 2 * t + floor, f"{what}: attn {e:.3g}, PyTorch {t:.3g}, floor {floor:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_16bit_dropout_uses_the_float32_paths_mask(dtype):
    """The 16-bit forward drops the same weights as the float32 forward for a seed, and the backward (float32,
    on the widened tensors) regenerates that mask: both match the float32 path on the same values."""
    q, k, v = (randn(1, 2, 40, 16, seed=s, grad=False).to(dtype).requires_grad_(True) for s in (1, 2, 3))
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    w = randn(1, 2, 40, 16, seed=9, grad=False)
    seed = torch.tensor(4321)
    results = []
    for a, b, c in ((q, k, v), (q32, k32, v32)):
        out = torch.ops.attn.sdpa(a, b, c, None, None, "top-left", None, 0, None, 0.3, seed, False)[0]
        results.append((out,) + torch.autograd.grad((out * w.to(out.dtype)).sum(), (a, b, c)))
    for got, want, what in zip(*results, ("out", "dq", "dk", "dv")):
        # a weight dropped in one and kept in the other would differ by ~its value / 0.7, far above this
        assert (got.double() - want.double()).abs().max() <= 8 * UNIT[dtype] * want.abs().max(), what


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_16bit_custom_ops_pass_opcheck_and_read_inputs_in_place(dtype):
    q, k, v = (randn(2, 4, 6, 8, seed=s, grad=False).to(dtype) for s in (1, 2, 3))
    mask = randn(6, 6, seed=4, grad=False)
    for args in ((q, k, v, None, None, "none", None, 0, None, 0.0, None, False),
                 (q, k, v, mask, None, "bottom-right", 0.5, 0, None, 0.0, None, True),
                 (q, k, v, None, None, "none", None, 0, None, 0.25, torch.tensor(3), False)):
        torch.library.opcheck(torch.ops.attn.sdpa.default, args)
    out, lse, _ = torch.ops.attn.sdpa(q, k, v, None, None, "none", None, 0, None, 0.0, None, False)
    assert out.dtype == dtype and lse.dtype == torch.float32
    seen = attn._attn._torch_last_pointers()
    assert seen["query"] == q.data_ptr() and seen["value"] == v.data_ptr() and seen["out"] == out.data_ptr()
    g = randn(*out.shape, seed=5, grad=False).to(dtype)
    torch.library.opcheck(torch.ops.attn.sdpa_backward.default,
                          (q, k, v, out, lse, g, None, None, "none", None, 0, None, 0.0, None))


def test_16bit_torch_compile_two_layer_model():
    torch.manual_seed(0)
    model = TwoLayer(at.scaled_dot_product_attention).to(torch.bfloat16)
    ref = TwoLayer(F.scaled_dot_product_attention).to(torch.bfloat16)
    ref.load_state_dict(model.state_dict())
    x = randn(2, 10, 32, seed=1, grad=False).to(torch.bfloat16)
    y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    y.float().square().mean().backward()
    want = ref(x)
    want.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and (y.float() - want.float()).abs().max() < 3e-2
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        assert p.grad.dtype == torch.bfloat16 and (p.grad.float() - r.grad.float()).abs().max() < 1e-2, name


def test_16bit_multihead_attention_matches_nn_multihead_attention():
    torch.manual_seed(0)
    ours = at.MultiheadAttention(32, 4, batch_first=True).to(torch.bfloat16)
    theirs = torch.nn.MultiheadAttention(32, 4, batch_first=True).to(torch.bfloat16)
    theirs.load_state_dict(ours.state_dict())
    x = randn(2, 11, 32, seed=1, grad=False).to(torch.bfloat16)
    y, wy = ours(x, x, x)
    z, wz = theirs(x, x, x)
    assert y.dtype == wy.dtype == torch.bfloat16
    assert (y.float() - z.float()).abs().max() < 3e-2 and (wy.float() - wz.float()).abs().max() < 1e-2
    y.float().square().mean().backward()
    z.float().square().mean().backward()
    for (name, p), r in zip(ours.named_parameters(), theirs.parameters()):  # bf16's rounding, relative to the largest
        assert p.grad.dtype == torch.bfloat16
        assert (p.grad.float() - r.grad.float()).abs().max() <= 3e-2 * r.grad.float().abs().max() + 1e-3, name


def test_16bit_dtypes_are_checked_by_name():
    x = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="key must be bfloat16, got float16"):
        at.scaled_dot_product_attention(x.bfloat16(), x.half(), x.bfloat16())
    with pytest.raises(TypeError, match="value must be float16, got float32"):
        at.scaled_dot_product_attention(x.half(), x.half(), x)
    with pytest.raises(TypeError, match="attn_mask must be bool or float32 or float16, got int32"):
        at.scaled_dot_product_attention(x.half(), x.half(), x.half(), attn_mask=torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="attn_mask must be bool or float32 or bfloat16, got float16"):
        at.scaled_dot_product_attention(x.bfloat16(), x.bfloat16(), x.bfloat16(), attn_mask=torch.zeros(4, 4).half())
