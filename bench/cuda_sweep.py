"""Times one or more builds of libattn_cuda (tile-size variants, bench/cuda_tile_sweep.sh) on the shapes of the CUDA
issue, and checks each against PyTorch's float32 math on a small odd-sized case so that a fast wrong variant shows.

    python3 bench/cuda_sweep.py NAME=path/libattn_cuda.so [...]

Variants alternate within each round (A/B/C...); the figure is the median of --rounds rounds of --iters calls.
"""
import argparse
import importlib.util
import os
import statistics

import torch

from compare_torch_cuda import timed  # bench/ is the script's folder, so on sys.path

F = torch.nn.functional
_here = os.path.dirname(os.path.abspath(__file__))


def load(path):
    os.environ["ATTN_CUDA_LIBRARY"] = path
    spec = importlib.util.spec_from_file_location("attn_cuda_" + str(abs(hash(path))),
                                                  os.path.join(_here, "..", "python", "attn", "cuda.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    m._load()
    return m


def check(m, D, causal):
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v, do = (torch.randn(2, 4, 1000, D, device="cuda", generator=g).bfloat16() for _ in range(4))
    qs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = m.scaled_dot_product_attention(*qs, is_causal=causal)
    out.backward(do)
    rs = [x.float().requires_grad_() for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*rs, is_causal=causal)
    ref.backward(do.float())
    errs = [(out.float() - ref).abs().max().item()]
    errs += [(a.grad.float() - r.grad).abs().max().item() / r.grad.abs().max().item() for a, r in zip(qs, rs)]
    return max(errs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check (profiling runs)")
    ap.add_argument("--shapes", default="4,16,4096,128,0;4,16,4096,128,1;2,16,8192,64,0;2,16,8192,64,1")
    args = ap.parse_args()
    mods = {}
    for spec in args.variants:
        name, path = spec.split("=", 1)
        mods[name] = load(path)
    for name, m in ([] if args.no_check else mods.items()):
        print(f"{name}: check max error D64 {check(m, 64, True):.3g} D128 {check(m, 128, False):.3g}", flush=True)
    for shape in args.shapes.split(";"):
        B, H, L, D, causal = (int(x) for x in shape.split(","))
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
        flops = 4 * B * H * L * L * D * (0.5 if causal else 1)
        fns = {n: (lambda m=m: m.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)))
               for n, m in mods.items()}
        if not args.no_check:
            fns["torch"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
        t = {n: ([], []) for n in fns}
        for f in fns.values():
            f().backward(do)
        for _ in range(args.rounds):
            for n, f in fns.items():
                with torch.no_grad():
                    t[n][0].append(timed(f, args.iters))
                out = f()
                t[n][1].append(timed(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), args.iters))
        line = " ".join(f"{n} {flops / statistics.median(a) / 1e12:.0f}/{2.5 * flops / statistics.median(b) / 1e12:.0f}"
                        for n, (a, b) in t.items())
        print(f"B={B} H={H} L={L} D={D} causal={causal} fwd/bwd TFLOP/s: {line}", flush=True)
        del q, k, v, do


if __name__ == "__main__":
    main()
