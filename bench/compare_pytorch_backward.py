#!/usr/bin/env python3
"""attn's fused attention backward against PyTorch's CPU SDPA backward, in the same run, alternating A/B.

    python3 bench/compare_pytorch_backward.py [--attn build/attn] [--threads 1 2] [--rounds 3] [--repeat 3]
                                              [--quick] [--lengths 1024 2048 4096] [--dims 64 128]

Needs torch (pip). For every shape (L in {1024, 2048, 4096}, D in {64, 128}, causal or not; B=1, H=8) and
thread count it alternates `attn bench sdpa --backward --json` and PyTorch (F.scaled_dot_product_attention
forward + backward, its CPU flash kernel, torch.set_num_threads(threads)) for --rounds rounds of --repeat
runs each, and prints a Markdown table of the medians: forward+backward ms, backward-alone ms, GFLOP/s
(forward 4·L²·D·H, backward 2.5× that, halved when causal), share of the FMA peak that each `attn bench sdpa`
process measures after it times (its peak_gflops, `attn bench peak`'s loop for 0.2 s; the highest over the rounds: a
peak measured while another tenant took part of the machine reads low and overstates the share),
and PyTorch / attn. Also a dropout row (p = 0.1 vs 0) for the fused cost.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before the peer is imported: see bench/malloc_policy.py
import torch
import torch.nn.functional as F


def run_attn(binary, c, threads, repeat, dropout=0.0):
    cmd = [binary, "bench", "sdpa", "--backward", "--batch", "1", "--heads", str(c["H"]), "--q-len", str(c["L"]),
           "--head-dim", str(c["D"]), "--threads", str(threads), "--repeat", str(repeat), "--json"]
    if c["causal"]:
        cmd.append("--causal")
    if dropout:
        cmd += ["--dropout", str(dropout)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_torch(c, repeat):
    H, L, D = c["H"], c["L"], c["D"]
    q, k, v = (torch.rand(1, H, L, D, requires_grad=True) * 2 - 1 for _ in range(3))
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    d_out = torch.rand(1, H, L, D) * 2 - 1
    both, bwd = [], []
    # warm-up
    F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"]).backward(d_out)
    for _ in range(repeat):
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"])
        t1 = time.perf_counter()
        out.backward(d_out)
        t2 = time.perf_counter()
        both.append((t2 - t0) * 1e3)
        bwd.append((t2 - t1) * 1e3)
    return statistics.median(both), statistics.median(bwd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default="build/attn")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="L=1024 and 2048, D=64 only")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    a = ap.parse_args()
    shapes = [dict(H=8, L=L, D=D, causal=causal) for L in a.lengths for D in a.dims for causal in (False, True)]
    if a.quick:
        shapes = [s for s in shapes if s["L"] <= 2048 and s["D"] == 64]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    print("| threads | shape | attn fwd+bwd ms | attn bwd ms | attn bwd GFLOP/s (% peak) | torch fwd+bwd ms |"
          " torch bwd ms | torch / attn (fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in a.threads:
        torch.set_num_threads(threads)
        for c in shapes:
            attn_both, attn_bwd, torch_both, torch_bwd, peak = [], [], [], [], []
            for _ in range(a.rounds):  # alternate A/B
                r = run_attn(a.attn, c, threads, a.repeat)
                attn_both.append(r["median_ms"])
                attn_bwd.append(r["backward_median_ms"])
                peak.append(r["peak_gflops"])
                tb, tw = run_torch(c, a.repeat)
                torch_both.append(tb)
                torch_bwd.append(tw)
            med = statistics.median
            fwd_flops = 4.0 * c["L"] ** 2 * c["D"] * c["H"] / (2 if c["causal"] else 1)
            bwd_gflops = 2.5 * fwd_flops / (med(attn_bwd) * 1e-3) / 1e9
            name = f"L={c['L']} D={c['D']}{' causal' if c['causal'] else ''}"
            print(f"| {threads} | {name} | {med(attn_both):.1f} | {med(attn_bwd):.1f} | {bwd_gflops:.1f} "
                  f"({100 * bwd_gflops / max(peak):.0f}%) | {med(torch_both):.1f} | {med(torch_bwd):.1f} | "
                  f"{med(torch_both) / med(attn_both):.2f}× |", flush=True)
        # the cost of fused dropout, alternating p = 0 and p = 0.1
        c = dict(H=8, L=2048, D=64, causal=False)
        p0, p1 = [], []
        for _ in range(a.rounds):
            p0.append(run_attn(a.attn, c, threads, a.repeat)["median_ms"])
            p1.append(run_attn(a.attn, c, threads, a.repeat, dropout=0.1)["median_ms"])
        print(f"| {threads} | L=2048 D=64 dropout 0.1 vs 0 | {statistics.median(p1):.1f} vs {statistics.median(p0):.1f}"
              f" (+{100 * (statistics.median(p1) / statistics.median(p0) - 1):.1f}%) | | | | | |", flush=True)


if __name__ == "__main__":
    main()
