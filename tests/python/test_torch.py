"""attn.torch: gradients against PyTorch's own float64 autograd for every mask kind, causal alignment and GQA;
the custom ops (opcheck, torch.compile); MultiheadAttention as a drop-in nn.MultiheadAttention; zero copies;
errors that name the argument. Skipped when torch is not installed."""
import math
import os
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import attn  # noqa: E402
import attn.torch as at  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "fuzz"))
import attention_diff  # noqa: E402

TOL = 2e-5  # float32 attn against a float64 reference (values and gradients of O(1))


def randn(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def grads(fn, *tensors):
    """fn(*tensors) and the gradients of <fn(...), w> for a fixed random w."""
    out = fn(*tensors)
    w = randn(*out.shape, seed=99, grad=False).to(out.dtype)
    gs = torch.autograd.grad((out * w).sum(), tensors)
    return out, gs


def reference(q, k, v, mask=None, causal="none", kpm=None, scale=None, gqa=False, window=0, alibi=None):
    """float64 attention with attn's masking rules, through PyTorch's autograd (fuzz/attention_diff.py's)."""
    c = {"group": q.shape[1] // k.shape[1] if gqa else 1, "scale": scale, "causal": causal, "window": window}
    return attention_diff.reference(c, q, k, v, mask, kpm, alibi)[0]


CASES = {
    "plain": {},
    "bool_mask": {"mask": "bool"},
    "float_mask": {"mask": "float"},
    "key_padding": {"kpm": True},
    "causal_top_left": {"causal": "top-left"},
    "causal_bottom_right": {"causal": "bottom-right"},
    "window": {"causal": "bottom-right", "window": 3},
    "alibi": {"causal": "top-left", "alibi": True},
    "scale": {"scale": 0.3},
    "gqa": {"gqa": True, "causal": "top-left"},
    "gqa_all_masks": {"gqa": True, "mask": "float", "kpm": True, "causal": "bottom-right"},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_float64_reference(name):
    c = CASES[name]
    B, H, Lq, Lk, D, Dv = 2, 4, 9, 13, 16, 8
    Hkv = 2 if c.get("gqa") else H
    q, k, v = randn(B, H, Lq, D, seed=1), randn(B, Hkv, Lk, D, seed=2), randn(B, Hkv, Lk, Dv, seed=3)
    mask = None
    if c.get("mask") == "bool":
        mask = torch.rand(B, 1, Lq, Lk, generator=torch.Generator().manual_seed(4)) > 0.3
    elif c.get("mask") == "float":
        mask = randn(H, Lq, Lk, seed=4, grad=False)
    kpm = None
    if c.get("kpm"):
        kpm = torch.zeros(B, Lk, dtype=torch.bool)
        kpm[0, -4:] = True
        kpm[1, :2] = True
    alibi = torch.tensor([0.5, 0.25, 0.125, 0.0625]) if c.get("alibi") else None
    causal = c.get("causal", "none")
    kw = dict(mask=mask, causal=causal, kpm=kpm, scale=c.get("scale"), gqa=c.get("gqa", False),
              window=c.get("window", 0), alibi=alibi)
    out, g = grads(lambda q, k, v: at.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=c.get("scale"), enable_gqa=c.get("gqa", False),
        causal_alignment=None if causal == "none" else causal, key_padding_mask=kpm, window=c.get("window", 0),
        alibi_slopes=alibi), q, k, v)
    ref, gref = grads(lambda q, k, v: reference(q, k, v, **kw), q, k, v)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < TOL
    for got, want, what in zip(g, gref, "qkv"):
        assert got.shape == want.shape, what
        assert (got.double() - want).abs().max() < TOL, what


def test_matches_pytorch_sdpa_and_its_gradients():
    q, k, v = randn(2, 3, 17, 8, seed=1), randn(2, 3, 17, 8, seed=2), randn(2, 3, 17, 8, seed=3)
    for causal in (False, True):
        out, g = grads(lambda q, k, v: at.scaled_dot_product_attention(q, k, v, is_causal=causal), q, k, v)
        ref, gref = grads(lambda q, k, v: F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                          is_causal=causal), q, k, v)
        assert (out.double() - ref).abs().max() < TOL
        assert all((a.double() - b).abs().max() < TOL for a, b in zip(g, gref))
    # 3-D (N, L, E) and 2-D (L, E) inputs, as PyTorch takes them
    for shape in ((3, 5, 8), (5, 8)):
        x = randn(*shape, seed=5, grad=False)
        assert torch.allclose(at.scaled_dot_product_attention(x, x, x), F.scaled_dot_product_attention(x, x, x),
                              atol=1e-6)


def test_dropout_is_reproducible_and_its_backward_uses_the_same_mask():
    q, k, v = randn(1, 2, 16, 8, seed=1), randn(1, 2, 16, 8, seed=2), randn(1, 2, 16, 8, seed=3)
    torch.manual_seed(7)
    a, ga = grads(lambda q, k, v: at.scaled_dot_product_attention(q, k, v, dropout_p=0.5), q, k, v)
    torch.manual_seed(7)
    b, gb = grads(lambda q, k, v: at.scaled_dot_product_attention(q, k, v, dropout_p=0.5), q, k, v)
    c = at.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))
    assert not torch.equal(a, c)
    # the backward is that of the function the forward computed: finite differences through the same seed
    seed = torch.tensor(12345)

    def f(q):
        return torch.ops.attn.sdpa(q, k.detach(), v.detach(), None, None, "none", None, 0, None, 0.5, seed,
                                   False)[0]

    qd = q.detach().clone().requires_grad_(True)
    w = randn(1, 2, 16, 8, seed=9, grad=False)
    (gq,) = torch.autograd.grad((f(qd) * w).sum(), qd)
    eps, idx = 1e-2, (0, 1, 3, 2)
    qp, qm = qd.detach().clone(), qd.detach().clone()
    qp[idx] += eps
    qm[idx] -= eps
    fd = ((f(qp) * w).sum() - (f(qm) * w).sum()) / (2 * eps)
    assert abs(fd.item() - gq[idx].item()) < 2e-3


def test_opcheck():
    q, k, v = randn(2, 4, 6, 8, seed=1), randn(2, 2, 7, 8, seed=2), randn(2, 2, 7, 5, seed=3)
    mask = torch.rand(6, 7, generator=torch.Generator().manual_seed(0)) > 0.2
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, -1] = True
    samples = [
        (q, k, v, None, None, "none", None, 0, None, 0.0, None, False),
        (q, k, v, mask, kpm, "bottom-right", 0.5, 0, None, 0.0, None, True),
        (q, k, v, randn(6, 7, seed=4, grad=False), None, "top-left", None, 2, torch.rand(4), 0.0, None, False),
        (q, k, v, None, None, "none", None, 0, None, 0.25, torch.tensor(3), False),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.attn.sdpa.default, args)
    out, lse, _ = torch.ops.attn.sdpa(*samples[0])
    g = randn(*out.shape, seed=5, grad=False)
    torch.library.opcheck(torch.ops.attn.sdpa_backward.default,
                          (q.detach(), k.detach(), v.detach(), out.detach(), lse, g, None, None, "none", None, 0, None,
                           0.0, None))


class TwoLayer(torch.nn.Module):
    def __init__(self, sdpa, E=32, H=4):
        super().__init__()
        self.sdpa, self.H = sdpa, H
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(E, 3 * E) for _ in range(2))
        self.proj = torch.nn.ModuleList(torch.nn.Linear(E, E) for _ in range(2))

    def forward(self, x):
        B, L, E = x.shape
        for qkv, proj in zip(self.qkv, self.proj):
            q, k, v = qkv(x).view(B, L, 3, self.H, E // self.H).permute(2, 0, 3, 1, 4)
            x = x + proj(self.sdpa(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, E))
        return x


def test_torch_compile_two_layer_model():
    torch.manual_seed(0)
    model = TwoLayer(at.scaled_dot_product_attention)
    ref = TwoLayer(F.scaled_dot_product_attention)
    ref.load_state_dict(model.state_dict())
    x = randn(2, 10, 32, seed=1, grad=False)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.square().mean().backward()
    want = ref(x)
    want.square().mean().backward()
    assert (y - want).abs().max() < 1e-5
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad - r.grad).abs().max() < 1e-5, name


def test_torch_compile_inductor():
    # inductor compiles C++: skipped only where no compiler exists (any other compile error fails: inductor wraps
    # every one in InductorError, so skipping on that type had hidden them all)
    import shutil
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("inductor needs a C++ compiler; the eager-backend test above covers tracing")
    torch.manual_seed(0)
    model = TwoLayer(at.scaled_dot_product_attention)
    ref = TwoLayer(F.scaled_dot_product_attention)  # PyTorch's own, eager: not attn compared with itself
    ref.load_state_dict(model.state_dict())
    x = randn(2, 10, 32, seed=1, grad=False)
    want = ref(x)
    got = torch.compile(model, fullgraph=True)(x)
    assert (got - want).abs().max() < 1e-5
    got.square().mean().backward()
    want.square().mean().backward()
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad - r.grad).abs().max() < 1e-5, name


# ---------------------------------------------------------------- zero copies
def test_zero_copy_inputs_and_outputs():
    q, k, v = randn(1, 2, 8, 4, seed=1), randn(1, 2, 8, 4, seed=2), randn(1, 2, 8, 4, seed=3)
    out = at.scaled_dot_product_attention(q, k, v)
    seen = attn._attn._torch_last_pointers()
    assert seen["query"] == q.data_ptr() and seen["key"] == k.data_ptr() and seen["value"] == v.data_ptr()
    assert seen["out"] == out.data_ptr()  # the result is the memory attn wrote, not a copy
    out.sum().backward()
    seen = attn._attn._torch_last_pointers()
    assert seen["query"] == q.data_ptr() and seen["dq"] == q.grad.data_ptr()


# ---------------------------------------------------------------- errors name the argument
def test_errors_name_the_argument():
    x = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="query must be float32 or bfloat16 or float16, got float64"):
        at.scaled_dot_product_attention(x.double(), x, x)
    with pytest.raises(TypeError, match="value must be float32, got bfloat16"):
        at.scaled_dot_product_attention(x, x, x.bfloat16())
    with pytest.raises(TypeError, match="attn_mask must be bool or float32, got int32"):
        at.scaled_dot_product_attention(x, x, x, attn_mask=torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        at.scaled_dot_product_attention(x, x, x, key_padding_mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="key is on meta"):
        at.scaled_dot_product_attention(x, x.to("meta"), x)
    with pytest.raises(ValueError, match="enable_gqa"):  # (one key head would broadcast, as in PyTorch)
        at.scaled_dot_product_attention(torch.randn(1, 4, 4, 8), x, x)
    with pytest.raises(ValueError, match="last dimension"):
        at.scaled_dot_product_attention(x, torch.randn(1, 2, 4, 7), x)
    with pytest.raises(ValueError, match="mask"):
        at.scaled_dot_product_attention(x, x, x, attn_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="query must be float32"):
        at.MultiheadAttention(8, 2)(x[0].double(), x[0], x[0])
    with pytest.raises(ValueError, match="alibi_slopes requires grad"):
        at.scaled_dot_product_attention(x, x, x, alibi_slopes=torch.zeros(2, requires_grad=True))
    with pytest.raises(ValueError, match="value has 4 heads"):  # (PyTorch: 8 and 4 do not broadcast)
        at.scaled_dot_product_attention(torch.randn(1, 8, 5, 16), torch.randn(1, 1, 7, 16), torch.randn(1, 4, 7, 16))
    # a mask that would widen the scores (PyTorch refuses it: "doesn't match the broadcast shape"; a 2-D query had
    # taken the mask's first [Lq, Lk] block)
    for q_shape, mask_shape in [((4, 8), (1, 1, 4, 4)), ((4, 8), (2, 4, 4)), ((1, 1, 4, 8), (1, 3, 4, 4))]:
        y = torch.randn(*q_shape)
        with pytest.raises(RuntimeError, match="broadcast shape"):
            F.scaled_dot_product_attention(y, y, y, attn_mask=torch.zeros(*mask_shape))
        with pytest.raises(ValueError, match="does not broadcast to the scores"):
            at.scaled_dot_product_attention(y, y, y, attn_mask=torch.zeros(*mask_shape))


def test_learned_mask_under_dropout_gets_the_dropped_weights_gradient():
    # A float mask that requires grad with dropout_p > 0 (it had raised): the weights dropped by F.dropout on torch's
    # generator, times V, so the same seed gives the same output and gradients as that computation in PyTorch.
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    m = torch.randn(5, 5, generator=g)
    ours, ref = m.clone().requires_grad_(), m.clone().requires_grad_()
    torch.manual_seed(3)
    got = at.scaled_dot_product_attention(q, k, v, attn_mask=ours, dropout_p=0.3)
    got.square().sum().backward()
    torch.manual_seed(3)
    w = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + ref, dim=-1), p=0.3)
    want = w @ v
    want.square().sum().backward()
    assert (got - want).abs().max() < 1e-5 and (ours.grad - ref.grad).abs().max() < 1e-4
    # the custom op itself refuses that gradient (its dS would leave the dropout out)
    mo = m.clone().requires_grad_()
    o = torch.ops.attn.sdpa(q, k, v, mo, None, "none", None, 0, None, 0.5, torch.tensor(1), True)[0]
    with pytest.raises(RuntimeError, match="needs dropout_p = 0"):
        o.sum().backward()
    # MultiheadAttention in training with a learned mask and dropout (it had raised): the mask gets a gradient
    mha = at.MultiheadAttention(8, 2, dropout=0.1, batch_first=True).train()
    mask = torch.zeros(5, 5, requires_grad=True)
    x = torch.randn(2, 5, 8)
    mha(x, x, x, attn_mask=mask, need_weights=False)[0].sum().backward()
    assert mask.grad is not None and torch.isfinite(mask.grad).all()


@pytest.mark.parametrize("shapes, mask", [
    (((2, 2, 5, 16), (1, 2, 7, 16), (1, 2, 7, 16)), None),             # key and value broadcast over the batch
    (((2, 4, 5, 16), (2, 1, 7, 16), (2, 1, 7, 16)), None),             # one key head for all, without enable_gqa
    (((2, 3, 4, 5, 16), (1, 3, 1, 7, 16), (3, 1, 7, 16)), (3, 1, 5, 7)),  # five dimensions, fewer for value
    (((2, 1, 4, 5, 16), (2, 3, 1, 7, 16), (2, 3, 1, 7, 16)), (2, 1, 4, 5, 7)),  # one query head; a full-rank mask
    (((1, 5, 16), (2, 7, 16), (2, 7, 16)), None),
    (((3, 4, 16), (7, 16), (7, 16)), None),
    (((1, 4, 5, 16), (1, 4, 7, 16), (1, 1, 7, 16)), None),            # one value head for every key head
    (((1, 5, 16), (3, 7, 16), (3, 7, 16)), (3, 5, 7)),                 # a mask as wide as the key's heads
])
def test_leading_dimensions_broadcast_as_in_pytorch(shapes, mask):
    # PyTorch's math path broadcasts every dimension before the last two (the kernels take [B, H, L, E]).
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(*s, dtype=torch.float64, generator=g) for s in shapes]
    m = None if mask is None else torch.randn(*mask, dtype=torch.float64, generator=g)
    ref = [x.clone().requires_grad_() for x in xs]
    want = F.scaled_dot_product_attention(*ref, attn_mask=m)
    want.square().sum().backward()
    ours = [x.float().requires_grad_() for x in xs]
    got = at.scaled_dot_product_attention(*ours, attn_mask=None if m is None else m.float())
    got.square().sum().backward()
    assert got.shape == want.shape
    assert (got.double() - want).abs().max() < 1e-5
    for a, b in zip(ours, ref):
        assert a.grad.shape == b.grad.shape and (a.grad.double() - b.grad).abs().max() < 1e-4


@pytest.mark.parametrize("q_shape, kv_shape, mask_shape, gqa, causal, via_op", [
    ((2, 4, 5, 16), (2, 4, 7, 16), (5, 7), False, False, False),         # one bias for every batch and head
    ((2, 4, 5, 16), (2, 4, 7, 16), (4, 5, 7), False, False, False),      # a bias per head (T5's relative positions)
    ((2, 4, 5, 16), (2, 2, 7, 16), (2, 1, 5, 7), True, False, False),    # grouped-query attention
    ((2, 4, 6, 16), (2, 4, 6, 16), (1, 4, 6, 6), False, True, False),    # with attn's causal_alignment
    ((2, 4, 5, 16), (2, 4, 7, 16), (2, 4, 5, 7), False, False, True),    # the custom op's autograd (torch.compile's)
])
def test_learned_additive_masks_get_pytorchs_gradient(q_shape, kv_shape, mask_shape, gqa, causal, via_op):
    # A float attn_mask that requires grad (a learned relative-position bias) is differentiated as PyTorch's math path
    # does: dM = dS summed over the dimensions the mask broadcasts across.
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(*s, dtype=torch.float64, generator=g) for s in (q_shape, kv_shape, kv_shape))
    m = torch.randn(*mask_shape, dtype=torch.float64, generator=g)
    ref = [t.clone().requires_grad_() for t in (q, k, v, m)]
    full = ref[3]
    if causal:
        L, S = q_shape[-2], kv_shape[-2]
        full = full + torch.zeros(L, S, dtype=torch.float64).masked_fill(torch.ones(L, S).triu(1).bool(), -math.inf)
    want = F.scaled_dot_product_attention(*ref[:3], attn_mask=full, enable_gqa=gqa)
    w = torch.randn(want.shape, dtype=torch.float64, generator=g)
    (want * w).sum().backward()
    ours = [t.float().requires_grad_() for t in (q, k, v, m)]
    if via_op:
        got = at._sdpa(*ours, None, "none", None, 0, None, 0.0, None, True)[0]
    else:
        got = at.scaled_dot_product_attention(*ours[:3], attn_mask=ours[3], enable_gqa=gqa,
                                              causal_alignment="top-left" if causal else None)
    (got * w.float()).sum().backward()
    assert (got.double() - want).abs().max() < 1e-5
    for a, b in zip(ours, ref):
        assert a.grad.shape == b.grad.shape
        assert (a.grad.double() - b.grad).abs().max() < 1e-5 * (1 + b.grad.abs().max())


def test_mha_learned_masks_get_pytorchs_gradient():
    ours, theirs = twins(8, 2, batch_first=True)
    x = randn(2, 5, 8, seed=8, grad=False)
    for module in (ours, theirs):
        bias = torch.linspace(-1, 1, 25).reshape(5, 5).requires_grad_()
        pad = torch.tensor([[0.0, 0.5, 0.0, -1.0, 0.0], [0.2, 0.0, 0.0, 0.0, -3.0]], requires_grad=True)
        module(x, x, x, attn_mask=bias, key_padding_mask=pad)[0].square().sum().backward()
        module.grads = (bias.grad, pad.grad)
    for a, b in zip(ours.grads, theirs.grads):
        assert (a - b).abs().max() < 1e-5 * (1 + b.abs().max())


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_a_loss_on_mha_weights_reaches_the_inputs_as_in_pytorch(num_kv_heads):
    # need_weights=True returns weights a loss may use (attention supervision); their gradient flows into query, key,
    # the projections and a learned mask, as through nn.MultiheadAttention's. (GQA: against the float64 math.)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 5, 8, generator=g)
    target = torch.rand(2, 2, 5, 5, generator=g)
    torch.manual_seed(0)
    ours = at.MultiheadAttention(8, 2, batch_first=True, num_kv_heads=num_kv_heads)
    bias = torch.randn(5, 5, generator=g)
    b_ours = bias.clone().requires_grad_()
    y, w = ours(x, x, x, attn_mask=b_ours, average_attn_weights=False)
    (y.square().sum() + (w - target).square().sum()).backward()
    if num_kv_heads is None:
        torch.manual_seed(0)
        theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        theirs.load_state_dict(ours.state_dict())
        b_theirs = bias.clone().requires_grad_()
        yt, wt = theirs(x, x, x, attn_mask=b_theirs, average_attn_weights=False)
        (yt.square().sum() + (wt - target).square().sum()).backward()
        pairs = [(b_ours.grad, b_theirs.grad)] + [(a.grad, b.grad) for a, b in zip(ours.parameters(),
                                                                                  theirs.parameters())]
    else:  # one kv head: the float64 math with the key and value projections shared by both heads
        xd, E, D = x.double(), 8, 4
        wq, wk, wv = (t.detach().double().requires_grad_() for t in ours.in_proj_weight.split([E, D, D]))
        bq, bk, bv = (t.detach().double().requires_grad_() for t in ours.in_proj_bias.split([E, D, D]))
        bd = bias.double().requires_grad_()
        q = (xd @ wq.T + bq).view(2, 5, 2, D).transpose(1, 2)
        k = (xd @ wk.T + bk).view(2, 5, 1, D).transpose(1, 2)
        v = (xd @ wv.T + bv).view(2, 5, 1, D).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / 2 + bd, -1)
        o = (p @ v).transpose(1, 2).reshape(2, 5, E) @ ours.out_proj.weight.double().T + ours.out_proj.bias.double()
        (o.square().sum() + (p - target).square().sum()).backward()
        pairs = [(b_ours.grad, bd.grad), (ours.in_proj_weight.grad, torch.cat([wq.grad, wk.grad, wv.grad])),
                 (ours.in_proj_bias.grad, torch.cat([bq.grad, bk.grad, bv.grad]))]
    for a, b in pairs:
        assert (a.double() - b.double()).abs().max() < 1e-4 * (1 + b.abs().max())


def test_pytorch_refusals_are_kept():
    q = randn(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="Explicit attn_mask should not be set when is_causal=True"):
        at.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(4, 4), is_causal=True)
    m = torch.zeros(4, 4, requires_grad=True)  # the public op without the weights a mask's gradient comes from
    o = torch.ops.attn.sdpa(q, q, q, m, None, "none", None, 0, None, 0.0, None, False)[0]
    with pytest.raises(RuntimeError, match="needs return_weights=True"):
        o.sum().backward()
    with pytest.raises(ValueError, match="contradicts"):
        at.scaled_dot_product_attention(q, q, q, is_causal=True, causal_alignment="none")
    # the fused backward is not differentiable: a double backward raises (it had silently given no gradient)
    g, = torch.autograd.grad(at.scaled_dot_product_attention(q, q, q).square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()
    # MultiheadAttention: a 3-D attn_mask of the right size but the wrong shape, and a 4-D one, as PyTorch
    m = at.MultiheadAttention(8, 2, batch_first=True)
    x, y = randn(1, 3, 8, grad=False), randn(1, 4, 8, grad=False)
    with pytest.raises(ValueError, match="attn_mask must be"):
        m(x, y, y, attn_mask=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="attn_mask must be"):
        m(x[0], y[0], y[0], attn_mask=torch.zeros(1, 2, 3, 4))
    assert m(x[0], y[0], y[0], attn_mask=torch.zeros(2, 3, 4))[0].shape == (3, 8)


def test_sequence_first_mha_output_is_contiguous_as_pytorchs():
    ours, theirs = twins(8, 2)
    x = randn(5, 3, 8, seed=3, grad=False)
    y, yt = ours(x, x, x)[0], theirs(x, x, x)[0]
    assert y.is_contiguous() and yt.is_contiguous()
    assert (y.view(15, 8) - yt.view(15, 8)).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_what_attn_cuda_lacks_is_refused_by_name():
    x = torch.randn(1, 2, 4, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="attn_mask, dropout_p: not supported for CUDA"):
        at.scaled_dot_product_attention(x, x, x, attn_mask=torch.ones(4, 4, dtype=torch.bool), dropout_p=0.1)
    with pytest.raises(ValueError, match="key must be a tensor on cuda"):
        at.scaled_dot_product_attention(x, x.cpu(), x)
    with pytest.raises(TypeError, match="query must be bfloat16 or float16"):
        at.scaled_dot_product_attention(x.float(), x.float(), x.float())


# ---------------------------------------------------------------- MultiheadAttention
def twins(*args, **kw):
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(*args, **kw)
    torch.manual_seed(0)
    ours = at.MultiheadAttention(*args, **kw)
    return ours, theirs


def test_mha_same_parameters_and_state_dict_round_trip():
    for kw in ({}, {"kdim": 6, "vdim": 5}, {"bias": False}, {"add_bias_kv": True}):
        ours, theirs = twins(16, 4, **kw)
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b), kw
        assert all(torch.equal(a[n], b[n]) for n in a), kw  # same seed, same initialisation
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
        ours2 = at.MultiheadAttention(16, 4, **kw)
        ours2.load_state_dict(b)
        theirs.load_state_dict(ours2.state_dict())


MHA_CASES = {
    "self_seq_first": dict(kw={}, self_attn=True),
    "cross_batch_first": dict(kw={"batch_first": True}),
    "kdim_vdim": dict(kw={"kdim": 6, "vdim": 5, "batch_first": True}),
    "bool_attn_mask_2d": dict(kw={}, mask="bool2"),
    "float_attn_mask_3d": dict(kw={"batch_first": True}, mask="float3"),
    "bool_key_padding": dict(kw={}, kpm="bool", self_attn=True),
    "float_key_padding_and_bool_mask": dict(kw={"batch_first": True}, kpm="float", mask="bool2"),
    "causal": dict(kw={"batch_first": True}, causal=True, self_attn=True),
    "unbatched": dict(kw={}, unbatched=True, mask="bool3"),
    "per_head_weights": dict(kw={}, average=False),
    "no_bias": dict(kw={"bias": False}),
    "bias_kv_zero_attn": dict(kw={"add_bias_kv": True, "add_zero_attn": True}, kpm="bool", mask="float2"),
}


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")  # nn.MHA's own
@pytest.mark.parametrize("name", sorted(MHA_CASES))
def test_mha_matches_nn_multihead_attention(name):
    c = MHA_CASES[name]
    E, H, N, L, S = 16, 4, 3, 5, 7
    ours, theirs = twins(E, H, **c["kw"])
    if c.get("self_attn"):
        S = L
    bf = c["kw"].get("batch_first", False)
    kdim, vdim = c["kw"].get("kdim", E), c["kw"].get("vdim", E)

    def shape(n, d):
        if c.get("unbatched"):
            return (n, d)
        return (N, n, d) if bf else (n, N, d)

    query = randn(*shape(L, E), seed=1, grad=False)
    key = query if c.get("self_attn") else randn(*shape(S, kdim), seed=2, grad=False)
    value = query if c.get("self_attn") else randn(*shape(S, vdim), seed=3, grad=False)
    n = 1 if c.get("unbatched") else N
    attn_mask = None
    g = torch.Generator().manual_seed(5)
    if c.get("mask") == "bool2":
        attn_mask = torch.rand(L, S, generator=g) > 0.7
        attn_mask[:, 0] = False  # every row keeps a key (PyTorch gives NaN for an empty row, attn 0)
    elif c.get("mask") == "bool3":
        attn_mask = torch.rand(H, L, S, generator=g) > 0.7
        attn_mask[..., 0] = False
    elif c.get("mask") == "float2":
        attn_mask = torch.randn(L, S, generator=g)
    elif c.get("mask") == "float3":
        attn_mask = torch.randn(n * H, L, S, generator=g)
    if c.get("causal"):
        attn_mask = torch.nn.Transformer.generate_square_subsequent_mask(L)
    kpm = None
    if c.get("kpm") == "bool":
        kpm = torch.zeros(n, S, dtype=torch.bool)
        kpm[-1, -2:] = True
    elif c.get("kpm") == "float":
        kpm = torch.zeros(n, S)
        kpm[-1, -2:] = -math.inf
        kpm[0, 1] = -1.5
    kwargs = dict(key_padding_mask=kpm, attn_mask=attn_mask, average_attn_weights=c.get("average", True),
                  is_causal=c.get("causal", False))
    y, w = ours(query, key, value, **kwargs)
    yt, wt = theirs(query, key, value, **kwargs)
    assert y.shape == yt.shape and w.shape == wt.shape
    assert (y - yt).abs().max() < 1e-5 and (w - wt).abs().max() < 1e-5
    gout = torch.randn(y.shape, generator=g)
    (y * gout).sum().backward()
    (yt * gout).sum().backward()
    for (name_, p), (_, pt) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (p.grad - pt.grad).abs().max() < 1e-4, name_
    y2, w2 = ours(query, key, value, need_weights=False, **{k: v for k, v in kwargs.items() if k != "is_causal"},
                  is_causal=kwargs["is_causal"])
    assert w2 is None and (y2 - y).abs().max() < 1e-6


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")
def test_mha_is_causal_with_appended_keys_follows_both_pytorch_paths():
    # nn.MultiheadAttention takes is_causal as a hint about attn_mask: where it returns weights (or has a key padding
    # mask) it applies attn_mask, padded so that bias_k's key and the zero key are seen by every query; else its
    # SDPA branch applies the causal mask alone over every key, which hides them from the first queries.
    L, N = 6, 2
    for kw in ({"add_bias_kv": True}, {"add_zero_attn": True}):
        ours, theirs = twins(8, 2, batch_first=True, **kw)
        x = randn(N, L, 8, seed=4, grad=False)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(L)
        for need_weights in (True, False):
            y = ours(x, x, x, attn_mask=mask, is_causal=True, need_weights=need_weights)[0]
            yt = theirs(x, x, x, attn_mask=mask, is_causal=True, need_weights=need_weights)[0]
            assert (y - yt).abs().max() < 1e-5, (kw, need_weights)
        kpm = torch.zeros(N, L, dtype=torch.bool)
        y = ours(x, x, x, attn_mask=mask, is_causal=True, need_weights=False, key_padding_mask=kpm)[0]
        yt = theirs(x, x, x, attn_mask=mask, is_causal=True, need_weights=False, key_padding_mask=kpm)[0]
        assert (y - yt).abs().max() < 1e-5, (kw, "key_padding_mask")


def test_mha_is_causal_without_attn_mask_raises_as_pytorch():
    # nn.MultiheadAttention takes is_causal only as a hint about attn_mask and raises without one (its inference fast
    # path, eval under no_grad, instead ignores is_causal and attends to every key; attn raises there too).
    ours, theirs = twins(8, 2, batch_first=True)
    x = randn(2, 5, 8, seed=5, grad=False)
    for module in (ours, theirs):
        with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
            module(x, x, x, is_causal=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="Need attn_mask"):
        ours.eval()(x, x, x, is_causal=True, need_weights=False)


def test_mha_gradients_match_float64_pytorch():
    ours, theirs = twins(16, 4, batch_first=True)
    theirs.double()
    x = randn(2, 6, 16, seed=1)
    y = ours(x, x, x, need_weights=False)[0]
    yt = theirs(x.double(), x.double(), x.double(), need_weights=False)[0]
    w = randn(*y.shape, seed=2, grad=False)
    gx, = torch.autograd.grad((y * w).sum(), x, retain_graph=True)
    (y * w).sum().backward()
    gxt, = torch.autograd.grad((yt * w.double()).sum(), x, retain_graph=True)
    (yt * w.double()).sum().backward()
    assert (y.double() - yt).abs().max() < TOL and (gx.double() - gxt).abs().max() < TOL
    for (name, p), (_, pt) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (p.grad.double() - pt.grad).abs().max() < 1e-4, name


def test_mha_grouped_query_attention_against_repeated_heads():
    torch.manual_seed(0)
    m = at.MultiheadAttention(16, 4, batch_first=True, num_kv_heads=2)
    assert m.in_proj_weight.shape == (16 + 2 * 8, 16)
    x = randn(2, 5, 16, seed=1)
    y, w = m(x, x, x, average_attn_weights=False)
    # the same layer as a float64 computation with K/V heads repeated
    E, D = 16, 4
    wq, wk, wv = m.in_proj_weight.double().split([E, 8, 8])
    bq, bk, bv = m.in_proj_bias.double().split([E, 8, 8])
    xd = x.double()
    q = (xd @ wq.T + bq).view(2, 5, 4, D).transpose(1, 2)
    k = (xd @ wk.T + bk).view(2, 5, 2, D).transpose(1, 2)
    v = (xd @ wv.T + bv).view(2, 5, 2, D).transpose(1, 2)
    o = reference(q, k, v, gqa=True).transpose(1, 2).reshape(2, 5, E)
    ref = o @ m.out_proj.weight.double().T + m.out_proj.bias.double()
    assert (y.double() - ref).abs().max() < TOL
    wd = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    gx, = torch.autograd.grad((y * wd).sum(), x)
    gxr, = torch.autograd.grad((ref * wd.double()).sum(), x)
    assert (gx.double() - gxr).abs().max() < TOL


def test_mha_trains_and_dropout_only_in_training():
    torch.manual_seed(0)
    m = at.MultiheadAttention(16, 4, dropout=0.5, batch_first=True)
    x = torch.randn(2, 6, 16)
    m.eval()
    assert torch.equal(m(x, x, x)[0], m(x, x, x)[0])
    m.train()
    assert not torch.equal(m(x, x, x)[0], m(x, x, x)[0])
    m = at.MultiheadAttention(16, 4, batch_first=True)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    target = torch.randn(2, 6, 16)
    losses = []
    for _ in range(30):
        loss = (m(x, x, x, need_weights=False)[0] - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- the eager path and the custom op agree
def test_eager_path_and_custom_op_agree():
    q, k, v = randn(2, 4, 9, 8, seed=1), randn(2, 2, 11, 8, seed=2), randn(2, 2, 11, 8, seed=3)
    kpm = torch.zeros(2, 11, dtype=torch.bool)
    kpm[0, -3:] = True
    eager, ge = grads(lambda q, k, v: at.scaled_dot_product_attention(
        q, k, v, enable_gqa=True, key_padding_mask=kpm, causal_alignment="bottom-right"), q, k, v)
    op, go = grads(lambda q, k, v: torch.ops.attn.sdpa(q, k, v, None, kpm, "bottom-right", None, 0, None, 0.0, None,
                                                        False)[0], q, k, v)
    assert torch.equal(eager, op) and all(torch.equal(a, b) for a, b in zip(ge, go))
    with torch.no_grad():
        assert torch.equal(at.scaled_dot_product_attention(q, k, v, enable_gqa=True, key_padding_mask=kpm,
                                                           causal_alignment="bottom-right"), eager)


def test_example_train_lm_runs(tmp_path):
    import os
    import subprocess
    import sys
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    script = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python", "train_lm.py")
    r = subprocess.run([sys.executable, script, "--text", str(text), "--steps", "4", "--context", "32", "--dim", "32",
                        "--batch", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tokens/s" in r.stdout and "largest loss difference" in r.stdout


def test_torch_compile_multihead_attention_with_dropout_gqa_and_padding():
    torch.manual_seed(0)
    m = at.MultiheadAttention(32, 4, batch_first=True, dropout=0.25, num_kv_heads=2)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    x = randn(2, 7, 32, seed=1, grad=False)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, -2:] = True
    m.eval()
    y, w = compiled(x, x, x, key_padding_mask=kpm)
    y0, w0 = m(x, x, x, key_padding_mask=kpm)
    assert torch.equal(y, y0) and torch.equal(w, w0)
    m.train()  # dropout: the seed comes from torch's generator, so eager and compiled draw the same mask
    torch.manual_seed(5)
    y1 = compiled(x, x, x, need_weights=False)[0]
    torch.manual_seed(5)
    y2 = m(x, x, x, need_weights=False)[0]
    assert torch.allclose(y1, y2, atol=1e-6)
    y1.sum().backward()
    assert m.in_proj_weight.grad.abs().sum() > 0


def test_import_attn_works_without_torch():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "import attn, numpy as np\n"
            "x = np.ones((3, 4), np.float32)\n"
            "assert attn.scaled_dot_product_attention(x, x, x).shape == (3, 4)\n"
            "try:\n"
            "    import attn.torch\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "attn.torch needs PyTorch" in r.stdout


def test_mha_drops_into_nn_transformer_encoder_layer():
    import copy
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    ours = copy.deepcopy(theirs)
    ours.self_attn = at.MultiheadAttention(32, 4, batch_first=True)
    ours.self_attn.load_state_dict(theirs.self_attn.state_dict())
    x = randn(2, 6, 32, seed=1, grad=False)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, -2:] = True
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # True = masked out, as nn.Transformer's masks
    y = ours(x, src_mask=causal, src_key_padding_mask=kpm, is_causal=True)
    yt = theirs(x, src_mask=causal, src_key_padding_mask=kpm, is_causal=True)
    assert (y - yt).abs().max() < 1e-5
    y.square().sum().backward()
    yt.square().sum().backward()
    for (name, p), (_, pt) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (p.grad - pt.grad).abs().max() < 1e-4, name
    # in eval without grad the layer's fast path (torch._transformer_encoder_layer_fwd) had taken attn's weights and
    # never called it; with grouped-query weights it raised
    calls, forward = [], ours.self_attn.forward
    ours.self_attn.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # (a hook of ours would hide it)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        assert (ours(x, src_key_padding_mask=kpm) - theirs(x, src_key_padding_mask=kpm)).abs().max() < 1e-5
        assert calls == [1]
        ours.self_attn = at.MultiheadAttention(32, 4, batch_first=True, num_kv_heads=2).eval()
        assert ours(x).shape == x.shape


def test_mha_in_nn_transformer_encoders_nested_inference_path():
    # nn.TransformerEncoder, in eval without grad and given a padding mask, nests the padded batch and hands its layers
    # the nested sequences; attn's MultiheadAttention had taken their shape and raised RuntimeError
    import copy
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    theirs = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    ours = copy.deepcopy(theirs)
    for mine, their in zip(ours.layers, theirs.layers):
        mine.self_attn = at.MultiheadAttention(32, 4, batch_first=True)
        mine.self_attn.load_state_dict(their.self_attn.state_dict())
    x = randn(3, 6, 32, seed=2, grad=False)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[1, -2:] = True
    kpm[2, -5:] = True
    with torch.no_grad():
        y, yt = ours(x, src_key_padding_mask=kpm), theirs(x, src_key_padding_mask=kpm)
    assert y.shape == yt.shape == x.shape
    assert (y - yt).abs().max() < 1e-5
    assert (y[1, -2:] == 0).all()  # the padding comes back as zeros, as PyTorch's


def test_misaligned_tensors_are_copied_not_read_through_a_misaligned_pointer():
    # torch.frombuffer at an odd offset: attn.torch (float32, float16) and the NumPy layer's torch float16 branch copy
    # such data (they had handed the kernels a pointer not aligned to the element)
    for dtype in (torch.float32, torch.float16):
        size = torch.tensor([], dtype=dtype).element_size()
        buffer = bytearray(3 * 2 * 5 * 8 * size + 1)
        q = torch.frombuffer(buffer, dtype=dtype, offset=1, count=3 * 2 * 5 * 8).view(3, 2, 5, 8)
        q.copy_(randn(3, 2, 5, 8, seed=1, grad=False).to(dtype))
        assert q.data_ptr() % size == 1
        want = F.scaled_dot_product_attention(q.float(), q.float(), q.float())
        got = at.scaled_dot_product_attention(q, q, q).float()
        assert (got - want).abs().max() < (2e-3 if dtype == torch.float16 else 1e-5)
        assert attn._attn._torch_last_pointers()["query"] % size == 0  # the kernel read an aligned copy
        if dtype == torch.float16:
            numpy_layer = torch.from_numpy(attn.scaled_dot_product_attention(q, q, q).astype("float32"))
            assert (numpy_layer - want).abs().max() < 2e-3


def test_scalar_options_are_checked_not_coerced():
    q = randn(1, 2, 4, 8, grad=False)
    for kwargs, error in (({"window": 2.5, "is_causal": True}, at.DTypeError), ({"scale": "2"}, at.DTypeError),
                          ({"window": 2**64, "is_causal": True}, at.ArgumentError),
                          ({"dropout_p": "0.1"}, at.DTypeError), ({"dropout_p": -0.5}, at.ArgumentError),
                          ({"dropout_p": float("nan")}, at.ArgumentError),
                          ({"alibi_slopes": [0.5, 0.25]}, at.DTypeError)):
        with pytest.raises(error):
            at.scaled_dot_product_attention(q, q, q, **kwargs)
    at.scaled_dot_product_attention(q, q, q, scale=2, window=torch.tensor(3).item(), is_causal=True)  # ints are reals
    # what PyTorch's own float arguments take: a bool dropout_p (dropout_p=self.training and p), a 0-d tensor scale
    want = F.scaled_dot_product_attention(q, q, q, scale=0.5, dropout_p=False)
    got = at.scaled_dot_product_attention(q, q, q, scale=torch.tensor(0.5), dropout_p=False)
    assert (got - want).abs().max() < 1e-5
    with pytest.raises(at.DTypeError, match="query must be a torch.Tensor"):
        at.MultiheadAttention(8, 2)(q[0].numpy(), q[0], q[0])
