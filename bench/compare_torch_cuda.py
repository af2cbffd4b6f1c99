"""attn.cuda against torch.nn.functional.scaled_dot_product_attention on the GPU (bf16), forward and backward.

    python3 bench/compare_torch_cuda.py [--rounds 5] [--json FILE]

For each shape, attn and PyTorch alternate (A/B) for --rounds rounds; each round times --iters calls with CUDA
events after a warm-up; the figure is the median round. TFLOP/s counts the useful work as FlashAttention does:
forward 4·B·H·Lq·Lk·D (halved when causal), backward 2.5× that. PyTorch picks its own backend (cuDNN or
FlashAttention on an H100/H200).
"""
import argparse
import importlib.util
import json
import os
import statistics

import torch

F = torch.nn.functional
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("attn_cuda", os.path.join(_here, "..", "python", "attn", "cuda.py"))
attn_cuda = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attn_cuda)

SHAPES = [  # B, H, L, D, causal
    (4, 16, 4096, 128, False),
    (4, 16, 4096, 128, True),
    (2, 16, 8192, 64, False),
    (2, 16, 8192, 64, True),
]


def timed(fn, iters):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}")
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    torch.matmul(a, b)
    ceiling = max(2 * 8192 ** 3 / timed(lambda: torch.matmul(a, b), args.iters) for _ in range(3)) / 1e12
    del a, b
    print(f"ceiling: bf16 matrix product 8192^3 {ceiling:.0f} TFLOP/s (best of 3 rounds of {args.iters})")
    results = []
    for B, H, L, D, causal in SHAPES:
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        d_out = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
        flops = 4 * B * H * L * L * D * (0.5 if causal else 1.0)
        impls = {
            "attn": lambda: attn_cuda.scaled_dot_product_attention(q, k, v, is_causal=causal),
            "torch": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        }
        times = {(name, what): [] for name in impls for what in ("fwd", "bwd")}
        for name, f in impls.items():  # warm-up
            out = f()
            out.backward(d_out)
        torch.cuda.synchronize()
        for _ in range(args.rounds):
            for name, f in impls.items():
                with torch.no_grad():
                    t_fwd = timed(f, args.iters)
                out = f()

                def bwd():
                    torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)

                t_bwd = timed(bwd, args.iters)
                times[(name, "fwd")].append(t_fwd)
                times[(name, "bwd")].append(t_bwd)
        row = {"B": B, "H": H, "L": L, "D": D, "causal": causal}
        for (name, what), ts in times.items():
            t = statistics.median(ts)
            work = flops * (2.5 if what == "bwd" else 1.0)
            row[f"{name}_{what}_ms"] = t * 1e3
            row[f"{name}_{what}_tflops"] = work / t / 1e12
        results.append(row)
        share = {k: f"{v:.0f} ({100 * v / ceiling:.0f}%)" for k, v in row.items() if k.endswith("_tflops")}
        print(f"B={B} H={H} L={L} D={D} causal={causal}: "
              f"fwd attn {share['attn_fwd_tflops']} vs torch {share['torch_fwd_tflops']} TFLOP/s, "
              f"bwd attn {share['attn_bwd_tflops']} vs torch {share['torch_bwd_tflops']} TFLOP/s "
              f"(median of {args.rounds} alternating rounds; % of the ceiling)", flush=True)
        del q, k, v, d_out
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "ceiling_tflops": ceiling, "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
