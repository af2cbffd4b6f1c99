"""attn.torch where PyTorch's behaviour is more than the numbers: tracing, autocast, layouts, degenerate shapes,
exception types and MultiheadAttention's dropped weights. PyTorch (torch.nn.functional, nn.MultiheadAttention) is the
reference throughout."""
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import attn.torch as at  # noqa: E402


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_jit_trace_records_the_op_not_its_output():
    # traced without gradients, the kernel had been called directly and its output kept as a constant of the graph
    q0, q1 = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8)
    traced = torch.jit.trace(lambda q: at.scaled_dot_product_attention(q, q, q), (q0,), check_trace=False)
    _close(traced(q1), F.scaled_dot_product_attention(q1, q1, q1))

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = at.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    model = SelfAttention().eval()
    x0, x1 = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        traced_model = torch.jit.trace(model, (x0,), check_trace=False)
        _close(traced_model(x1), model(x1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_casts_the_inputs_as_pytorchs(dtype):
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    mask = torch.randn(6, 7)
    with torch.autocast("cpu", dtype=dtype):
        ours = at.scaled_dot_product_attention(q, k.to(dtype), v, attn_mask=mask)
        theirs = F.scaled_dot_product_attention(q, k.to(dtype), v, attn_mask=mask)
    assert ours.dtype == theirs.dtype == dtype
    _close(ours.float(), theirs.float(), 2e-2)


def test_enable_gqa_with_different_key_and_value_heads():
    q = torch.randn(2, 8, 5, 16, requires_grad=True)
    k = torch.randn(2, 2, 5, 16, requires_grad=True)
    v = torch.randn(2, 4, 5, 16, requires_grad=True)
    ours = at.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    theirs = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    for a, b in zip(grads, torch.autograd.grad(theirs.square().sum(), (q, k, v))):
        _close(a, b, 1e-4)
    _close(ours, theirs)
    with pytest.raises(RuntimeError, match="multiple of the key's 3"):
        at.scaled_dot_product_attention(q, k[:, :1].expand(2, 3, 5, 16), v, enable_gqa=True)


def test_output_layout_follows_a_transposed_query():
    B, L, H, D = 2, 5, 3, 8
    q, k, v = (torch.randn(B, L, H, D).transpose(1, 2) for _ in range(3))
    ours, theirs = at.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
    assert ours.stride() == theirs.stride()
    _close(ours.transpose(1, 2).view(B, L, H * D), theirs.transpose(1, 2).view(B, L, H * D))
    contiguous = torch.randn(B, H, L, D)
    assert at.scaled_dot_product_attention(contiguous, contiguous, contiguous).is_contiguous()


def test_no_heads_and_no_head_dimension():
    q = torch.randn(2, 0, 5, 8, requires_grad=True)
    out = at.scaled_dot_product_attention(q, q, q)
    assert out.shape == F.scaled_dot_product_attention(q, q, q).shape == (2, 0, 5, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape
    # D = 0: every Q·Kᵀ is 0, so the weights come from the mask alone
    q0, k0, v, mask = torch.randn(1, 2, 3, 0), torch.randn(1, 2, 4, 0), torch.randn(1, 2, 4, 5), torch.randn(3, 4)
    _close(at.scaled_dot_product_attention(q0, k0, v, attn_mask=mask),
           F.scaled_dot_product_attention(q0, k0, v, attn_mask=mask))


def test_meta_tensors_give_the_output_shape():
    q, k, v = torch.empty(2, 4, 6, 8, device="meta"), torch.empty(2, 2, 9, 8, device="meta"), torch.empty(
        2, 2, 9, 5, device="meta")
    out = at.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 6, 5)
    with pytest.raises(ValueError, match="key is on cpu, but query is on meta"):
        at.scaled_dot_product_attention(q, torch.randn(2, 2, 9, 8), v, enable_gqa=True)


def test_the_kernels_own_checks_raise_typed_errors_on_every_path():
    """What attn.torch leaves to the kernel (the padding mask's shape, the window) raises ArgumentError (a RuntimeError)
    inside torch.func, on meta tensors, through the custom op and under torch.compile, as eagerly: a plain ValueError
    had escaped the custom-op path, and meta tensors and tracing had checked nothing."""
    q = torch.randn(2, 4, 6, 8)
    bad_kpm = torch.zeros(3, 6, dtype=torch.bool)
    calls = [dict(key_padding_mask=bad_kpm), dict(is_causal=True, window=-1), dict(window=2)]
    for kwargs in calls:
        f = lambda x: at.scaled_dot_product_attention(x, x, x, **kwargs)  # noqa: E731
        with pytest.raises(at.ArgumentError):
            f(q)
        with pytest.raises(at.ArgumentError):
            torch.func.vmap(f)(q[None])
        with pytest.raises(at.ArgumentError):
            f(q.to("meta"))
        with pytest.raises(at.ArgumentError):
            torch.compile(f, backend="eager")(q)
        with pytest.raises(RuntimeError, match="key_padding_mask|window"):  # (dynamo's, naming ours)
            torch.compile(f, backend="eager", fullgraph=True)(q)
    with pytest.raises(RuntimeError, match="key_padding_mask"):  # the op itself, called directly
        torch.ops.attn.sdpa(q, q, q, None, bad_kpm, "none", None, 0, None, 0.0, None, False)


def test_bad_arguments_raise_pytorchs_exception_types_too():
    x = torch.randn(1, 2, 4, 8)
    # PyTorch's SDPA raises RuntimeError for all of these; attn's errors are ValueError / TypeError and RuntimeError
    for call, ours in [(lambda f: f(x, torch.randn(1, 2, 4, 7), x), at.ArgumentError),
                       (lambda f: f(torch.randn(1, 4, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8),
                                    enable_gqa=True), at.ArgumentError),
                       (lambda f: f(x, x, x.bfloat16()), at.DTypeError),
                       (lambda f: f(x, x, x, attn_mask=torch.ones(4, 4, dtype=torch.int32)), at.DTypeError)]:
        with pytest.raises(RuntimeError):
            call(F.scaled_dot_product_attention)
        with pytest.raises(ours) as raised:
            call(at.scaled_dot_product_attention)
        assert isinstance(raised.value, RuntimeError)
    # nn.MultiheadAttention asserts these
    with pytest.raises(AssertionError):
        at.MultiheadAttention(10, 3)
    mha = at.MultiheadAttention(8, 2, batch_first=True)
    y = torch.randn(2, 4, 8)
    for call in [lambda m: m(torch.randn(2, 4, 6), y, y),
                 lambda m: m(y, y, y, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
                 lambda m: m(y, y, y, attn_mask=torch.zeros(4, 4, dtype=torch.int64))]:
        with pytest.raises(AssertionError):
            call(torch.nn.MultiheadAttention(8, 2, batch_first=True))
        with pytest.raises(AssertionError):
            call(mha)
    with pytest.raises(RuntimeError):  # a wrong 2-D attn_mask: RuntimeError in both
        mha(y, y, y, attn_mask=torch.zeros(3, 4, dtype=torch.bool))


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_mha_returns_the_weights_after_dropout_as_pytorch(num_kv_heads):
    E, H = 16, 4
    ours = at.MultiheadAttention(E, H, dropout=0.5, batch_first=True, num_kv_heads=num_kv_heads).train()
    x = torch.randn(3, 7, E, requires_grad=True)
    torch.manual_seed(5)
    out, w = ours(x, x, x, average_attn_weights=False)
    zeros = (w == 0).float().mean().item()
    assert 0.35 < zeros < 0.65  # about half the weights dropped, the rest scaled by 2
    assert not torch.allclose(w.sum(-1), torch.ones(3, H, 7))
    kv_heads = num_kv_heads or H
    q, k, v = (t.view(3, 7, -1, E // H).transpose(1, 2) for t in ours._project(x, x, x))
    v = v.repeat_interleave(H // kv_heads, dim=1)
    _close(out, ours.out_proj((w @ v).transpose(1, 2).reshape(3, 7, E)))  # the dropped weights made the output
    (out.sum() + w.square().sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if num_kv_heads is None:  # same seed, same parameters: the same weights dropped as nn.MultiheadAttention
        theirs = torch.nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True).train()
        theirs.load_state_dict(ours.state_dict())
        torch.manual_seed(5)
        out_t, w_t = theirs(x, x, x, average_attn_weights=False)
        _close(w, w_t)
        _close(out, out_t)


def test_mha_takes_merge_masks_output_as_its_parts():
    # merge_masks (nn.MultiheadAttention's own) folds attn_mask and key_padding_mask into one [N, H, L, S] mask: given
    # that mask as an (N·H, L, S) attn_mask, the module gives what it gives for the two parts, as nn.MultiheadAttention
    ours = at.MultiheadAttention(8, 2, batch_first=True)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 8)
    attn_mask, padding = torch.randn(5, 5), torch.zeros(3, 5).masked_fill(torch.rand(3, 5) < 0.3, -math.inf)
    padding[:, 0] = 0.0  # every row keeps a key
    assert ours.merge_masks(None, padding, x) == (padding, 1)  # one mask alone comes back as it is
    for parts in [(attn_mask, padding), (attn_mask, None)]:
        merged, kind = ours.merge_masks(*parts, x)
        assert kind == 2
        whole = ours(x, x, x, attn_mask=merged.reshape(6, 5, 5), average_attn_weights=False)
        split = ours(x, x, x, attn_mask=parts[0], key_padding_mask=parts[1], average_attn_weights=False)
        reference = theirs(x, x, x, attn_mask=parts[0], key_padding_mask=parts[1], average_attn_weights=False)
        for a, b, c in zip(whole, split, reference):
            _close(a, b)
            _close(a, c)


def test_mha_bias_kv_under_cpu_autocast():
    # the projections come out bfloat16 under autocast and bias_k / bias_v stay float32: concatenated, they had made
    # key and value float32 beside a bfloat16 query, which the kernel refused
    ours = at.MultiheadAttention(16, 4, add_bias_kv=True, batch_first=True)
    theirs = torch.nn.MultiheadAttention(16, 4, add_bias_kv=True, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = ours(x, x, x)
        out_t, w_t = theirs(x, x, x)
    assert out.dtype == out_t.dtype
    _close(out.float(), out_t.float(), 3e-2)
    _close(w.float(), w_t.float(), 3e-2)


def test_unbatched_mha_mask_of_a_wrong_shape_asserts_as_pytorchs():
    x = torch.randn(3, 8)
    for module in (torch.nn.MultiheadAttention(8, 2), at.MultiheadAttention(8, 2)):
        with pytest.raises(AssertionError):
            module(x, x, x, attn_mask=torch.zeros(3, 3, 3))
