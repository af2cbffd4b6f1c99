#!/usr/bin/env python3
"""Differential fuzzing of attn's attention against a float64 PyTorch reference, forward and backward.

Each case draws a random configuration: float32, bfloat16 or float16; batch, heads and grouped kv heads; query and key
lengths from several regimes (tiny, around the 64/128 tile edges, few queries over long keys, many short heads: the
shapes that send the kernels down their other paths: key splits, heads packed by their tasks, long tasks); head sizes
D and Dv, equal or not; bool or float masks in every broadcast shape (some rows fully masked, some -inf), key padding
(some sequences all padding), both causal alignments, sliding windows, ALiBi, a custom scale, strided (transposed)
inputs, 1 or 2 threads. It runs attn.torch.scaled_dot_product_attention and its backward, and compares the output and
the gradients of q, k and v (and of a float mask, in half the cases that have one) with PyTorch's float64 autograd over attn's masking rules (a fully masked row gives 0 and
zero gradients), the 16-bit inputs rounded first. The error is max |attn - reference| over the reference's largest
magnitude (at least 1); a case above its dtype's bound is printed as a JSON line to replay (--replay) and appended to
--failures.

    build/venv/bin/python fuzz/attention_diff.py --seconds 600 [--seed 1] [--failures /tmp/attn_fuzz.jsonl]
    build/venv/bin/python fuzz/attention_diff.py --replay '{"seed": ...}'

tests/python/test_attention_fuzz.py runs a fixed set of 300 cases (a fixed seed) in every test run.

The truth is PyTorch's (float64), never attn's own reference.
"""
import argparse
import json
import math
import random
import sys
import time

import torch

import attn
import attn.torch as at

# bound on the normalised error (output, gradients) per dtype: float32 sums of ~thousands of terms; 16-bit inputs
# rounded first (the reference sees the same values) and P rounded to 16 bits inside the 16-bit kernels
BOUNDS = {"f32": (2e-5, 2e-4), "bf16": (2.5e-2, 6e-2), "f16": (4e-3, 1.2e-2)}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
HEAD_DIMS = [1, 3, 8, 16, 24, 32, 33, 48, 64, 72, 96, 128, 160, 256]


def draw(rng):
    """One random configuration (a dict of plain values: it is the replay format)."""
    c = {"seed": rng.randrange(1 << 30)}
    c["dtype"] = rng.choices(["f32", "bf16", "f16"], [6, 2, 2])[0]
    regime = rng.choice(["tiny", "edges", "medium", "long_keys", "many_heads"])
    c["regime"] = regime
    edge = lambda: max(1, rng.choice([64, 128, 192, 256, 384, 512]) + rng.choice([-1, 0, 1]))  # noqa: E731
    if regime == "tiny":
        c["Lq"], c["Lk"] = rng.randint(1, 40), rng.randint(1, 40)
    elif regime == "edges":
        c["Lq"], c["Lk"] = edge(), edge()
    elif regime == "medium":
        c["Lq"], c["Lk"] = rng.randint(1, 700), rng.randint(1, 700)
    elif regime == "long_keys":
        c["Lq"], c["Lk"] = rng.randint(1, 80), rng.randint(500, 5000)
    else:
        c["Lq"] = rng.randint(16, 300)
        c["Lk"] = c["Lq"] if rng.random() < 0.7 else rng.randint(16, 300)
    if rng.random() < 0.5:
        c["Lk"] = c["Lq"]
    c["B"] = rng.randint(1, 3)
    c["Hkv"] = rng.randint(1, 4) if regime != "many_heads" else rng.randint(16, 100)
    c["group"] = rng.choice([1, 1, 1, 2, 3, 4, 8]) if regime != "many_heads" else rng.choice([1, 1, 2])
    c["D"] = rng.choice(HEAD_DIMS)
    c["Dv"] = c["D"] if rng.random() < 0.7 else rng.choice(HEAD_DIMS)
    c["causal"] = rng.choices(["none", "top-left", "bottom-right"], [4, 3, 3])[0]
    c["window"] = rng.randint(1, max(1, c["Lk"])) if c["causal"] != "none" and rng.random() < 0.25 else 0
    c["mask"] = rng.choices(["none", "bool", "float"], [6, 2, 2])[0]
    c["mask_shape"] = rng.choice(["LL", "11LL", "B1LL", "BHLL", "1HLL"])
    c["mask_neg_inf"] = rng.random() < 0.3
    c["hidden_rows"] = rng.random() < 0.3  # some rows see no key through the mask
    c["kpm"] = rng.random() < 0.2
    c["kpm_whole"] = rng.random() < 0.3  # one sequence all padding
    c["alibi"] = rng.random() < 0.15
    c["scale"] = round(rng.uniform(0.05, 2.0), 3) if rng.random() < 0.3 else None
    c["mask_grad"] = c["mask"] == "float" and rng.random() < 0.5  # a learned bias: its gradient is compared too
    c["magnitude"] = rng.choice([0.3, 1.0, 1.0, 3.0, 10.0])
    c["strided"] = rng.random() < 0.25
    c["threads"] = rng.choice([1, 2])
    # also through the NumPy module (its own binding: strides, dtypes), with the weights, on one implementation
    c["numpy"] = rng.random() < 0.3
    c["impl"] = rng.choice(["auto", "fused", "unfused", "reference"])
    return c


def cost(c):
    """The case's work, or inf where its float64 score tensors (several live at once) would take over 32 MB each."""
    scores = c["B"] * c["Hkv"] * c["group"] * c["Lq"] * c["Lk"]
    return scores * (c["D"] + c["Dv"]) if scores <= 4e6 else math.inf


def inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, Hkv, H, Lq, Lk, D, Dv = c["B"], c["Hkv"], c["Hkv"] * c["group"], c["Lq"], c["Lk"], c["D"], c["Dv"]
    dt = DTYPES[c["dtype"]]

    def tensor(b, h, length, d):
        if c["strided"]:  # laid out [B, L, H, d], viewed as [B, H, L, d]
            return torch.randn(b, length, h, d, generator=g).transpose(1, 2)
        return torch.randn(b, h, length, d, generator=g)

    q = (tensor(B, H, Lq, D) * c["magnitude"]).to(dt)
    k = tensor(B, Hkv, Lk, D).to(dt)
    v = tensor(B, Hkv, Lk, Dv).to(dt)
    mask = None
    if c["mask"] != "none":
        full = {"LL": (Lq, Lk), "11LL": (1, 1, Lq, Lk), "B1LL": (B, 1, Lq, Lk), "BHLL": (B, H, Lq, Lk),
                "1HLL": (1, H, Lq, Lk)}[c["mask_shape"]]
        keep = torch.rand(full, generator=g) > 0.3
        if c["hidden_rows"]:
            rows = torch.rand(full[:-1], generator=g) < 0.2
            keep = keep & ~rows[..., None]
        if c["mask"] == "bool":
            mask = keep
        else:
            mask = torch.randn(full, generator=g)
            if c["mask_neg_inf"] or c["hidden_rows"]:
                mask = mask.masked_fill(~keep, -math.inf)
            if c["dtype"] != "f32" and torch.rand(1, generator=g).item() < 0.5:
                mask = mask.to(dt)  # the query's 16-bit dtype is accepted too
    kpm = None
    if c["kpm"]:
        kpm = torch.rand(B, Lk, generator=g) < 0.3
        if c["kpm_whole"]:
            kpm[0] = True
    alibi = torch.rand(H, generator=g) if c["alibi"] else None
    w = torch.randn(B, H, Lq, Dv, generator=g)
    return q, k, v, mask, kpm, alibi, w


def scale_of(c, q):
    return c["scale"] if c["scale"] is not None else 1 / math.sqrt(q.shape[-1])


def reference(c, q, k, v, mask, kpm, alibi, dtype=torch.float64):
    """Attention with attn's masking rules in dtype (float64: the truth; float32: how far float32 arithmetic alone
    strays on this case): (output, weights P, the largest |scale·q·k|). A row that sees no key gives 0 (and no
    gradient). ALiBi's distance is |i + Lk - Lq - j| unless the alignment is top-left (FlashAttention's convention)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if c["group"] > 1:
        k, v = k.repeat_interleave(c["group"], dim=1), v.repeat_interleave(c["group"], dim=1)
    Lq, Lk = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) * scale_of(c, q)
    smax = s.detach().abs().max().item() if s.numel() else 0.0
    i = torch.arange(Lq)[:, None]
    j = torch.arange(Lk)[None, :]
    offset = 0 if c["causal"] == "top-left" else Lk - Lq
    hidden = torch.zeros(Lq, Lk, dtype=torch.bool)
    if c["causal"] != "none":
        hidden = hidden | (j > i + offset)
        if c["window"]:
            hidden = hidden | (j <= i + offset - c["window"])
    if alibi is not None:
        s = s - alibi.to(dtype)[:, None, None] * (i + offset - j).abs()
    if mask is not None:
        if mask.dtype == torch.bool:
            hidden = hidden | ~mask
        else:
            m = mask.to(dtype)
            hidden = hidden | (m == -math.inf)
            s = s + m.masked_fill(m == -math.inf, 0.0)
    if kpm is not None:
        hidden = hidden | kpm[:, None, None, :]
    hidden = hidden.expand(s.shape)
    seen = (~hidden).any(-1, keepdim=True)
    s = s.masked_fill(hidden, -math.inf).masked_fill(~seen, 0.0)
    p = torch.softmax(s, dim=-1) * seen
    return p @ v, p, smax


def flash_gradients(c, q, k, v, o, p, w, dtype):
    """The gradients of q, k, v in float32 by FlashAttention-2's backward formulas (what attn's and PyTorch's fused
    backwards compute) from the float32 reference's output o and weights p: dS = P * (dO V^T - rowsum(dO * O)), with
    O and dO rounded to dtype first as the 16-bit backwards see them. Where the softmax is nearly one-hot the two terms
    cancel, and any such backward keeps only float32's (or the 16-bit output's) digits of their difference: this sets
    the bound's scale there."""
    q, k, v, o, p = q.float(), k.float(), v.float(), o.detach(), p.detach()
    kr, vr = k, v
    if c["group"] > 1:
        kr, vr = k.repeat_interleave(c["group"], dim=1), v.repeat_interleave(c["group"], dim=1)
    o, do = o.to(dtype).float(), w.to(dtype).float()
    scale = scale_of(c, q)
    ds = p * (do @ vr.transpose(-1, -2) - (do * o).sum(-1, keepdim=True))
    dq = scale * ds @ kr
    dk = scale * ds.transpose(-1, -2) @ q
    dv = p.transpose(-1, -2) @ do
    if c["group"] > 1:
        B, H = dk.shape[0], dk.shape[1]
        dk = dk.reshape(B, H // c["group"], c["group"], *dk.shape[2:]).sum(2)
        dv = dv.reshape(B, H // c["group"], c["group"], *dv.shape[2:]).sum(2)
    return dq, dk, dv


def numpy_call(c, q, k, v, mask, kpm, alibi):
    """attn.scaled_dot_product_attention on NumPy views of the same inputs (bfloat16 as torch tensors, which it takes
    too); returns (output, weights) as torch tensors."""
    def arr(t):
        return t if t.dtype == torch.bfloat16 else t.detach().numpy()

    out, weights = attn.scaled_dot_product_attention(
        arr(q), arr(k), arr(v), attn_mask=None if mask is None else mask.float().numpy() if mask.is_floating_point()
        else mask.numpy(), scale=c["scale"], enable_gqa=c["group"] > 1,
        causal_alignment=None if c["causal"] == "none" else c["causal"],
        key_padding_mask=None if kpm is None else kpm.numpy(), window=c["window"],
        alibi_slopes=None if alibi is None else alibi.numpy(), return_weights=True, impl=c["impl"],
        num_threads=c["threads"])
    as_tensor = (lambda a: torch.from_numpy(a.astype("float32")))
    return as_tensor(out), torch.from_numpy(weights)


def run_case(c):
    """(output error, gradient error, bounds) of one configuration."""
    torch.set_num_threads(c["threads"])
    q, k, v, mask, kpm, alibi, w = inputs(c)
    kw = dict(attn_mask=mask, scale=c["scale"], enable_gqa=c["group"] > 1, key_padding_mask=kpm, window=c["window"],
              alibi_slopes=alibi, causal_alignment=None if c["causal"] == "none" else c["causal"])
    # q, k, v, and the float mask where the case differentiates it, as leaves (as drawn, float64, float32)
    differentiated = (q, k, v, mask) if c.get("mask_grad") else (q, k, v)
    masked = lambda ls: ls[3] if c.get("mask_grad") else mask  # noqa: E731
    leaves = [t.detach().requires_grad_(True) for t in differentiated]
    out = at.scaled_dot_product_attention(*leaves[:3], **{**kw, "attn_mask": masked(leaves)})
    grads = torch.autograd.grad((out.double() * w).sum(), leaves)
    rleaves = [t.detach().double().requires_grad_(True) for t in differentiated]
    ref, p, smax = reference(c, *rleaves[:3], masked(rleaves), kpm, alibi)
    rgrads = torch.autograd.grad((ref * w).sum(), rleaves)
    leaves32 = [t.detach().float().requires_grad_(True) for t in differentiated]
    ref32, p32, _ = reference(c, *leaves32[:3], masked(leaves32), kpm, alibi, torch.float32)
    grads32 = torch.autograd.grad((ref32 * w).sum(), leaves32)

    def err(a, r):
        if not torch.isfinite(a.double()).all():
            return math.inf
        return ((a.double() - r).abs().max() / max(1.0, r.abs().max().item())).item() if r.numel() else 0.0

    e_out = err(out, ref)
    if c.get("numpy"):  # the output and the weights (float32) from attn's NumPy module, on c["impl"]
        numpy_out, weights = numpy_call(c, q, k, v, mask, kpm, alibi)
        e_out = max(e_out, err(numpy_out, ref), err(weights, p.detach()))
    # the bound: the dtype's, or 10x what float32 arithmetic alone gives on this case, whichever is larger (large
    # scores and cancelling gradient terms cost float32 digits in any implementation)
    base_out, base_grad = BOUNDS[c["dtype"]]
    flash = flash_gradients(c, q, k, v, ref32, p32, w, DTYPES[c["dtype"]])
    # (the 16-bit floor is the rounded output's: 3x, not 10x, so that it stays a bound where it is large)
    def floor(errors):  # a float32 reference that overflowed sets no floor (the dtype's bound stands)
        e = max(errors)
        return e if math.isfinite(e) else 0.0

    flash_floor = floor(err(a, r) for a, r in zip(flash, rgrads)) * (10 if c["dtype"] == "f32" else 3)
    grad_floor = max(10 * floor(err(a, r) for a, r in zip(grads32, rgrads)), flash_floor)
    # scores of magnitude |S| carry float32 errors of |S|·2^-24 in the exponent, whatever sums them
    bounds = (max(base_out, 10 * floor([err(ref32, ref)]), 16 * 2.0**-24 * smax), max(base_grad, grad_floor))
    return e_out, max(err(a, r) for a, r in zip(grads, rgrads)), bounds


def fuzz(seed, seconds=math.inf, cases=None, max_cost=1.5e8, failures=None, log=print):
    """Draws configurations from seed until `seconds` pass or `cases` have run; returns the failing ones."""
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    ran, failed, worst = 0, [], {}
    while time.monotonic() < end and (cases is None or ran < cases):
        c = draw(rng)
        if cost(c) > max_cost:
            continue
        ran += 1
        try:
            e_out, e_grad, (b_out, b_grad) = run_case(c)
        except Exception as exc:  # noqa: BLE001 (a crash or a refusal of a valid input is a find too)
            e_out, e_grad, (b_out, b_grad) = math.inf, math.inf, BOUNDS[c["dtype"]]
            log(f"exception {type(exc).__name__}: {exc}")
        worst[c["dtype"]] = max(worst.get(c["dtype"], (0, 0)), (e_out / b_out, e_grad / b_grad))
        if not (e_out <= b_out and e_grad <= b_grad):  # (a NaN error fails too)
            failed.append(c)
            line = json.dumps(c)
            log(f"FAIL output {e_out:.3g} (bound {b_out:.3g}) gradients {e_grad:.3g} (bound {b_grad:.3g}): {line}")
            if failures:
                with open(failures, "a") as f:
                    f.write(line + "\n")
    shares = ", ".join(f"{k} {o:.2f}/{g:.2f}" for k, (o, g) in sorted(worst.items()))
    log(f"{ran} cases, {len(failed)} failed; worst error / bound (output/gradients): {shares}")
    return failed


def fuzz_arguments(description):
    """The arguments both fuzzers take (fuzz/mha_diff.py too)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases (a fixed seed: a fixed set)")
    ap.add_argument("--seed", type=int, default=None, help="the draw's seed (default: from the clock)")
    ap.add_argument("--replay", default=None, help="one configuration, as a printed JSON line")
    return ap


def main():
    ap = fuzz_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--max-cost", type=float, default=1.5e8, help="skip configurations above B*H*Lq*Lk*(D+Dv)")
    ap.add_argument("--failures", default=None, help="append each failing configuration (JSON line) to this file")
    args = ap.parse_args()
    if args.replay:
        c = json.loads(args.replay)
        e_out, e_grad, (b_out, b_grad) = run_case(c)
        print(f"output error {e_out:.3g} (bound {b_out:.3g}), gradient error {e_grad:.3g} (bound {b_grad:.3g})")
        return 0 if e_out <= b_out and e_grad <= b_grad else 1  # (NaN: 1)
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"seed {seed}", flush=True)
    seconds = args.seconds if args.cases is None else math.inf
    failed = fuzz(seed, seconds, args.cases, args.max_cost, args.failures, lambda s: print(s, flush=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
