#!/usr/bin/env python3
"""Differential fuzzing of attn.torch.MultiheadAttention against torch.nn.MultiheadAttention in float64.

Each case draws a random module and call: heads and head size, kdim/vdim, bias, add_bias_kv, add_zero_attn,
batch_first or sequence first or unbatched, self- or cross-attention, attention masks (bool or float, 2-D or per
head, some -inf), key padding masks (bool or float), is_causal with its mask, need_weights and
average_attn_weights, 1 or 2 threads. attn's module (float32) and PyTorch's (float64, the same state dict) run the
same call; the outputs, the weights, and the gradients of the inputs and every parameter must agree within 10× what
PyTorch's own float32 module strays from float64 on the case (or 2e-5 of the largest value, whichever is larger).
Rows whose keys are all masked are not drawn: PyTorch gives NaN there, attn 0 (a documented difference). The
gradients' errors are relative to the case's largest gradient (see run_case).

    build/venv/bin/python fuzz/mha_diff.py --seconds 300 [--seed 1]
    build/venv/bin/python fuzz/mha_diff.py --replay '{"seed": ...}'

tests/python/test_attention_fuzz.py runs a fixed set of 500 cases (a fixed seed) in every test run.
"""
import copy
import json
import math
import random
import sys
import time
import warnings

import torch

import attn.torch as at
from attention_diff import fuzz_arguments  # (this directory)

warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
warnings.filterwarnings("ignore", message=".*is_causal.*")


def draw(rng):
    c = {"seed": rng.randrange(1 << 30), "H": rng.randint(1, 6), "head_dim": rng.choice([1, 2, 3, 4, 8, 16])}
    E = c["H"] * c["head_dim"]
    c["kdim"] = E if rng.random() < 0.7 else rng.randint(1, 24)
    c["vdim"] = c["kdim"] if rng.random() < 0.5 else (E if rng.random() < 0.5 else rng.randint(1, 24))
    c["bias"] = rng.random() < 0.8
    c["add_bias_kv"] = rng.random() < 0.2
    c["add_zero_attn"] = rng.random() < 0.2
    c["layout"] = rng.choice(["seq_first", "batch_first", "unbatched"])
    c["N"] = 1 if c["layout"] == "unbatched" else rng.randint(1, 4)
    c["L"] = rng.randint(1, 40)
    c["self_attn"] = c["kdim"] == E and c["vdim"] == E and rng.random() < 0.4
    c["S"] = c["L"] if c["self_attn"] else rng.randint(1, 40)
    c["causal"] = c["L"] == c["S"] and rng.random() < 0.25
    c["mask"] = "none" if c["causal"] else rng.choice(["none", "none", "bool2", "bool3", "float2", "float3"])
    c["mask_neg_inf"] = rng.random() < 0.3
    c["kpm"] = rng.choice(["none", "none", "bool", "float"])
    c["need_weights"] = rng.random() < 0.6
    c["average"] = rng.random() < 0.5
    c["threads"] = rng.choice([1, 2])
    return c


def build(c):
    """attn's module, PyTorch's float64 and float32 twins with the same state, and the call's arguments (None: an empty
    row)."""
    g = torch.Generator().manual_seed(c["seed"])
    E = c["H"] * c["head_dim"]
    kw = dict(bias=c["bias"], add_bias_kv=c["add_bias_kv"], add_zero_attn=c["add_zero_attn"],
              batch_first=c["layout"] == "batch_first")
    if c["kdim"] != E or c["vdim"] != E:
        kw.update(kdim=c["kdim"], vdim=c["vdim"])
    torch.manual_seed(c["seed"])
    ours = at.MultiheadAttention(E, c["H"], **kw)
    with torch.no_grad():  # random biases too (nn's initialise them to 0)
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    theirs32 = torch.nn.MultiheadAttention(E, c["H"], **kw)  # float32: how far float32 alone strays on the case
    theirs32.load_state_dict(ours.state_dict())
    theirs = copy.deepcopy(theirs32).double()
    N, L, S = c["N"], c["L"], c["S"]

    def seq(n, d):
        if c["layout"] == "unbatched":
            return torch.randn(n, d, generator=g)
        return torch.randn(N, n, d, generator=g) if c["layout"] == "batch_first" else torch.randn(n, N, d, generator=g)

    query = seq(L, E)
    key = query if c["self_attn"] else seq(S, c["kdim"])
    value = query if c["self_attn"] else seq(S, c["vdim"])
    H = c["H"]
    hidden = torch.zeros(N, H, L, S, dtype=torch.bool)  # what the masks hide, to refuse empty rows
    attn_mask = None
    if c["causal"]:
        attn_mask = torch.nn.Transformer.generate_square_subsequent_mask(L)
        hidden |= attn_mask == -math.inf
    elif c["mask"] != "none":
        shape = (L, S) if c["mask"].endswith("2") else ((N * H if c["layout"] != "unbatched" else H), L, S)
        if c["mask"].startswith("bool"):
            attn_mask = torch.rand(shape, generator=g) < 0.3  # True = not allowed (nn.MultiheadAttention)
            h = attn_mask
        else:
            attn_mask = torch.randn(shape, generator=g)
            if c["mask_neg_inf"]:
                attn_mask = attn_mask.masked_fill(torch.rand(shape, generator=g) < 0.3, -math.inf)
            h = attn_mask == -math.inf
        hidden |= h if h.dim() == 2 else h.reshape(N, H, L, S)
    kpm = None
    if c["kpm"] != "none":
        pad = torch.rand(N, S, generator=g) < 0.3
        hidden |= pad[:, None, None, :]
        if c["kpm"] == "bool":
            kpm = pad
        else:
            kpm = torch.randn(N, S, generator=g).masked_fill(pad, -math.inf)
        if c["layout"] == "unbatched":
            kpm = kpm[0]
    empty = hidden.all(-1).any() and not (c["add_bias_kv"] or c["add_zero_attn"])
    if empty:
        return None
    args = dict(key_padding_mask=kpm, attn_mask=attn_mask, need_weights=c["need_weights"],
                average_attn_weights=c["average"], is_causal=c["causal"])
    return ours, theirs, theirs32, (query, key, value), args


def run_case(c):
    """The worst error over the bound among the output, the weights and every gradient (None: not drawn)."""
    built = build(c)
    if built is None:
        return None
    ours, theirs, theirs32, inputs, args = built
    torch.set_num_threads(c["threads"])

    def call(module, dtype):
        xs = [x.to(dtype).requires_grad_(True) for x in inputs]
        if c["self_attn"]:
            xs = [xs[0]] * 3
        cast = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in args.items()}
        y, w = module(*xs, **cast)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
        leaves = list(dict.fromkeys(xs)) + list(module.parameters())
        grads = torch.autograd.grad((y * gy).sum(), leaves, allow_unused=True)
        return [y, w] + list(grads)

    got, ref, ref32 = call(ours, torch.float32), call(theirs, torch.float64), call(theirs32, torch.float32)

    # The gradients' errors are taken against the case's largest gradient, not each tensor's own: where rows see one
    # key (or nearly), the query-side gradients are 0 (or nearly) in the math and in PyTorch's float32 module, while
    # FlashAttention-2's dS = P (dP - rowsum(dO * O)), attn's as PyTorch's own fused backward's, keeps float32 noise
    # of the size of the other gradients' rounding there.
    grad_scale = max([1.0] + [r.abs().max().item() for r in ref[2:] if r is not None and r.numel()])

    def err(a, r, scale):
        if a is None or r is None:
            return 0.0 if a is None and r is None else math.inf
        if a.shape != r.shape or not torch.isfinite(a).all():
            return math.inf
        return ((a.double() - r).abs().max() / max(scale, r.abs().max().item())).item() if r.numel() else 0.0

    worst = 0.0
    for n, (a, r, b) in enumerate(zip(got, ref, ref32)):
        scale = 1.0 if n < 2 else grad_scale
        floor = err(b, r, scale)  # a float32 module that overflowed sets no floor
        ratio = err(a, r, scale) / max(2e-5, 10 * floor if math.isfinite(floor) else 0.0)
        worst = max(worst, ratio if not math.isnan(ratio) else math.inf)
    return worst


def fuzz(seed, seconds=math.inf, cases=None, log=print):
    """Draws cases from seed until `seconds` pass or `cases` have run; returns the failing configurations."""
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    ran, failed, top = 0, [], 0.0
    while time.monotonic() < end and (cases is None or ran < cases):
        c = draw(rng)
        try:
            worst = run_case(c)
        except Exception as exc:  # noqa: BLE001 (a crash or a refusal of a valid call is a find too)
            worst = math.inf
            log(f"exception {type(exc).__name__}: {exc}")
        if worst is None:
            continue
        ran += 1
        top = max(top, worst)
        if not worst <= 1:
            failed.append(c)
            log(f"FAIL worst error / bound {worst:.3g}: {json.dumps(c)}")
    log(f"{ran} cases, {len(failed)} failed; worst error / bound {top:.2f}")
    return failed


def main():
    args = fuzz_arguments(__doc__.split("\n\n")[0]).parse_args()
    if args.replay:
        worst = run_case(json.loads(args.replay))
        print(f"worst error / bound {worst}")
        return 0 if worst is None or worst <= 1 else 1
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"seed {seed}", flush=True)
    seconds = args.seconds if args.cases is None else math.inf
    return 1 if fuzz(seed, seconds, args.cases, lambda s: print(s, flush=True)) else 0


if __name__ == "__main__":
    sys.exit(main())
