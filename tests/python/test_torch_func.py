"""attn.torch under torch.func's transforms: vmap (the vmapped dimension folded into the batch), grad, vjp, jacrev and
their compositions (per-sample gradients), with every mask kind, GQA, causal alignment, ALiBi and dropout's
randomness modes, against PyTorch's float64 autograd sample by sample (a Python loop, outside any transform).
Skipped when torch is not installed."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, jacrev, vmap  # noqa: E402

import attn.torch as at  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "fuzz"))
import attention_diff  # noqa: E402

TOL = 2e-5


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference(q, k, v, mask=None, causal="none", kpm=None, gqa=False, window=0, alibi=None):
    """float64 attention with attn's masking rules (fuzz/attention_diff.py's), one sample: q [B, H, Lq, D]."""
    c = {"group": q.shape[1] // k.shape[1] if gqa else 1, "scale": None, "causal": causal, "window": window}
    return attention_diff.reference(c, q, k, v, mask, kpm, alibi)[0]


# (name, Lq, Lk, H, Hkv, options): options as attn.torch's keyword arguments, masks built per sample below
CASES = [
    ("plain", 5, 7, 2, 2, {}),
    ("causal top-left", 6, 6, 2, 2, {"is_causal": True}),
    ("causal bottom-right, window", 4, 9, 2, 2, {"causal_alignment": "bottom-right", "window": 3}),
    ("grouped-query", 5, 6, 4, 2, {"enable_gqa": True}),
    ("bool mask", 5, 7, 2, 2, {"attn_mask": "bool"}),
    ("float mask", 5, 7, 2, 2, {"attn_mask": "float"}),
    ("key padding", 5, 7, 2, 2, {"key_padding_mask": True}),
    ("alibi", 5, 7, 2, 2, {"alibi_slopes": True}),
]
N, B, D = 3, 2, 8  # vmapped samples, the batch inside each, head size


def sample_inputs(Lq, Lk, H, Hkv, options, seed):
    """(q, k, v, attn_mask or None, key_padding_mask or None, alibi or None) for N samples: [N, B, ...] each."""
    q, k, v = randn(N, B, H, Lq, D, seed=seed), randn(N, B, Hkv, Lk, D, seed=seed + 1), randn(N, B, Hkv, Lk, D,
                                                                                             seed=seed + 2)
    mask = kpm = alibi = None
    if options.get("attn_mask") == "bool":
        mask = randn(N, B, 1, Lq, Lk, seed=seed + 3) > -0.5
    elif options.get("attn_mask") == "float":
        mask = randn(N, 1, H, Lq, Lk, seed=seed + 3).masked_fill(randn(N, 1, H, Lq, Lk, seed=seed + 4) < -1.2,
                                                                  float("-inf"))
    if options.get("key_padding_mask"):
        kpm = randn(N, B, Lk, seed=seed + 5) > 0.8
    if options.get("alibi_slopes"):
        alibi = randn(N, H, seed=seed + 6).abs()
    return q, k, v, mask, kpm, alibi


def attn_fn(options):
    """attn.torch on one sample, the masks as tensors (None where absent)."""
    kw = {key: value for key, value in options.items() if key in ("is_causal", "causal_alignment", "window",
                                                                    "enable_gqa")}

    def f(q, k, v, mask, kpm, alibi):
        return at.scaled_dot_product_attention(q, k, v, attn_mask=mask, key_padding_mask=kpm, alibi_slopes=alibi,
                                               **kw)
    return f


def reference_of(options):
    causal = options.get("causal_alignment") or ("top-left" if options.get("is_causal") else "none")
    return lambda q, k, v, mask, kpm, alibi: reference(q, k, v, mask, causal, kpm, options.get("enable_gqa", False),
                                                       options.get("window", 0), alibi)


def batched_or_none(t, dims, n):
    return None if t is None else (t if dims is None else t[n])


@pytest.mark.parametrize("name, Lq, Lk, H, Hkv, options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("unbatched", [(), (1, 2), (3, 4, 5)], ids=["all-vmapped", "kv-shared", "masks-shared"])
def test_vmap_and_per_sample_gradients_match_float64(name, Lq, Lk, H, Hkv, options, unbatched):
    """vmap(f) and vmap(grad(f)) (per-sample gradients of q, k, v) against a loop over the samples in float64;
    arguments listed in `unbatched` are shared by every sample (in_dims None), the others vmapped along dim 0."""
    args = list(sample_inputs(Lq, Lk, H, Hkv, options, seed=len(name)))
    args = [t if t is None or i not in unbatched else t[0] for i, t in enumerate(args)]
    in_dims = tuple(None if t is None or i in unbatched else 0 for i, t in enumerate(args))
    f, ref = attn_fn(options), reference_of(options)
    w = randn(N, B, H, Lq, D, seed=7)
    out = vmap(f, in_dims=in_dims)(*args)
    loss = lambda q, k, v, mask, kpm, alibi, w: (f(q, k, v, mask, kpm, alibi) * w).sum()  # noqa: E731
    dq, dk, dv = vmap(grad(loss, argnums=(0, 1, 2)), in_dims=in_dims + (0,))(*args, w)
    for n in range(N):
        one = [batched_or_none(t, d, n) for t, d in zip(args, in_dims)]
        q, k, v = (t.double().requires_grad_() for t in one[:3])
        want = ref(q, k, v, *one[3:])
        assert (out[n] - want).abs().max() < TOL, (name, n)
        want_grads = torch.autograd.grad((want * w[n]).sum(), (q, k, v))
        for got, want_g in zip((dq[n], dk[n], dv[n]), want_grads):
            assert (got - want_g).abs().max() < TOL, (name, n)


def test_grad_of_a_vmapped_loss_sums_over_samples_for_shared_inputs():
    """grad(vmap(f)): a key and value shared by every sample get the sum of the samples' gradients; jacrev's rows
    are vmapped backwards."""
    q, k, v, *_ = sample_inputs(5, 6, 2, 2, {}, seed=11)
    f = attn_fn({})
    loss = lambda q, k, v: vmap(lambda q: f(q, k, v, None, None, None))(q).pow(2).sum()  # noqa: E731
    dq, dk, dv = grad(loss, argnums=(0, 1, 2))(q, k[0], v[0])
    q64, k64, v64 = q.double().requires_grad_(), k[0].double().requires_grad_(), v[0].double().requires_grad_()
    want = sum(reference(q64[n], k64, v64).pow(2).sum() for n in range(N))
    for got, w in zip((dq, dk, dv), torch.autograd.grad(want, (q64, k64, v64))):
        assert (got - w).abs().max() < TOL
    jac = jacrev(lambda q: f(q, k[0, :1], v[0, :1], None, None, None))(q[0, :1])  # [1, 2, 5, 8, 1, 2, 5, 8]
    q1 = q[0, :1].double()
    want_jac = torch.autograd.functional.jacobian(lambda q: reference(q, k[0, :1].double(), v[0, :1].double()), q1)
    assert jac.shape == want_jac.shape and (jac - want_jac).abs().max() < TOL


def test_learned_float_mask_gradient_under_grad():
    """A float attn_mask differentiated by torch.func.grad gets PyTorch's gradient (the score gradient summed over
    the dimensions it broadcasts across)."""
    q, k, v = randn(2, 2, 5, D, seed=1), randn(2, 2, 6, D, seed=2), randn(2, 2, 6, D, seed=3)
    bias = randn(1, 2, 5, 6, seed=4)
    got = grad(lambda b: at.scaled_dot_product_attention(q, k, v, attn_mask=b).pow(2).sum())(bias)
    b64 = bias.double().requires_grad_()
    want = torch.autograd.grad(F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                              attn_mask=b64).pow(2).sum(), b64)[0]
    assert got.shape == bias.shape and (got - want).abs().max() < TOL


def test_dropout_follows_vmaps_randomness_modes():
    """randomness='error' raises where the seed is drawn (as F.dropout under vmap); 'same' drops the same weights in
    every sample (equal samples give equal outputs); 'different' drops each sample's own."""
    q = randn(1, 2, 6, D, seed=5).expand(N, 1, 2, 6, D).contiguous()
    f = lambda q: at.scaled_dot_product_attention(q, q, q, dropout_p=0.5)  # noqa: E731
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(f)(q)
    same = vmap(f, randomness="same")(q)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    assert not torch.equal(same[0], at.scaled_dot_product_attention(q[0], q[0], q[0]))  # it did drop
    different = vmap(f, randomness="different")(q)
    assert not torch.equal(different[0], different[1])
    dq = vmap(grad(lambda q: f(q).sum()), randomness="same")(q)  # the backward regenerates each sample's mask
    assert torch.equal(dq[0], dq[1]) and dq.abs().sum() > 0


def test_per_sample_gradients_of_multihead_attention():
    """PyTorch's per-sample-gradient recipe (functional_call + vmap(grad)) on attn.torch.MultiheadAttention gives
    nn.MultiheadAttention's per-sample gradients with the same weights."""
    ours, theirs = at.MultiheadAttention(16, 4, batch_first=True), torch.nn.MultiheadAttention(16, 4,
                                                                                             batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = randn(N, 5, 16, seed=8)  # N samples of [L, E] (unbatched inside vmap)

    def per_sample(module):
        params = {name: p.detach() for name, p in module.named_parameters()}
        loss = lambda p, x: functional_call(module, p, (x, x, x), {"need_weights": False})[0].pow(2).sum()  # noqa
        return vmap(grad(loss), in_dims=(None, 0))(params, x)

    got, want = per_sample(ours), per_sample(theirs)
    for name in want:
        assert (got[name] - want[name]).abs().max() < 1e-4, name


def test_unsupported_transforms_raise():
    """A second derivative (reverse over reverse) and forward-mode AD (jvp, hessian's jacfwd) raise RuntimeError,
    never a silent 0."""
    q = randn(1, 2, 4, D, seed=9)
    f = lambda q: at.scaled_dot_product_attention(q, q, q).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match="once"):
        jacrev(jacrev(f))(q)
    for forward_mode in (lambda: torch.func.jvp(f, (q,), (q,)), lambda: torch.func.hessian(f)(q)):
        with pytest.raises(RuntimeError, match="jvp"):
            forward_mode()


def test_vmap_of_empty_shapes_and_of_the_custom_op():
    """Sizes of 0 (D = 0, no keys) fold too (a reshape with -1 had refused them); the custom op torch.ops.attn.sdpa,
    which torch.compile and tensor subclasses reach, has the same vmap rule: per-sample results of the plain op."""
    f = attn_fn({})
    for shape_k in ((N, B, 2, 5, 0), (N, B, 2, 0, 0)):
        q, k = torch.zeros(N, B, 2, 4, shape_k[-1]), torch.zeros(shape_k)
        out = vmap(f, in_dims=(0, 0, 0, None, None, None))(q, k, k, None, None, None)
        want = torch.stack([at.scaled_dot_product_attention(q[n], k[n], k[n]) for n in range(N)])
        assert out.shape == want.shape and torch.equal(out, want)
    q, k, v, mask, kpm, _ = sample_inputs(5, 7, 2, 2, {"attn_mask": "bool", "key_padding_mask": True}, seed=21)
    op = lambda q, k, v, mask, kpm: torch.ops.attn.sdpa(q, k, v, mask, kpm, "bottom-right", None, 0, None, 0.0,  # noqa
                                                        None, True)
    got = vmap(op, in_dims=(0, None, 0, 0, 0))(q, k[0], v, mask, kpm)
    for n in range(N):
        want = op(q[n], k[0], v[n], mask[n], kpm[n])
        for g, w in zip(got, want):
            assert torch.equal(g[n], w)
