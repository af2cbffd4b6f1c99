#!/usr/bin/env python3
"""attn against PyTorch on the CPU, in the same run, same shapes, same thread count.

    python3 bench/compare_pytorch.py [--threads 2] [--repeat 7] [--attn build/attn] [--quick]

Needs torch (pip). For each configuration it runs `attn bench ... --json` (fused and unfused) and
times torch.nn.functional.scaled_dot_product_attention / nn.MultiheadAttention in this process
(one warm-up, then the median of --repeat runs), and prints a Markdown table of medians and ratios
for docs/PERFORMANCE.md. PyTorch runs in its best honest configuration: eval mode, no_grad,
need_weights=False for nn.MultiheadAttention (its fused fast path), torch.set_num_threads(threads).
OPENBLAS_CORETYPE is reported as found; every peer runs under the same setting.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

CONFIGS = [
    # name, attn bench args, torch shapes
    dict(name="SDPA non-causal, L=4096, D=64", B=1, H=8, Lq=4096, Lk=4096, D=64, causal=False),
    dict(name="SDPA causal, L=4096, D=64", B=1, H=8, Lq=4096, Lk=4096, D=64, causal=True),
    dict(name="SDPA non-causal, L=1024, D=128", B=1, H=8, Lq=1024, Lk=1024, D=128, causal=False),
    dict(name="SDPA decode, Lq=1, Lk=8192, H=32, D=128", B=1, H=32, Lq=1, Lk=8192, D=128, causal=True),
    dict(name="MHA forward, E=512, H=8, L=2048", mha=True, B=1, E=512, H=8, L=2048),
]


def median(xs):
    return statistics.median(xs)


def time_torch(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return median(ts)


def run_attn(binary, args, threads, repeat):
    cmd = [binary, "bench"] + args + ["--threads", str(threads), "--repeat", str(repeat), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def sdpa_args(c, impl):
    a = ["sdpa", "--batch", str(c["B"]), "--heads", str(c["H"]), "--q-len", str(c["Lq"]), "--kv-len", str(c["Lk"]),
         "--head-dim", str(c["D"]), "--impl", impl]
    return a + (["--causal"] if c["causal"] else [])


def torch_sdpa(c, repeat):
    q = torch.randn(c["B"], c["H"], c["Lq"], c["D"])
    k = torch.randn(c["B"], c["H"], c["Lk"], c["D"])
    v = torch.randn(c["B"], c["H"], c["Lk"], c["D"])
    mask = None
    causal = c["causal"]
    if causal and c["Lq"] != c["Lk"]:  # bottom-right alignment, as attn bench uses
        from torch.nn.attention.bias import causal_lower_right
        mask, causal = causal_lower_right(c["Lq"], c["Lk"]), False
    with torch.no_grad():
        return time_torch(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal), repeat)


def torch_mha(c, repeat):
    m = torch.nn.MultiheadAttention(c["E"], c["H"], batch_first=True).eval()
    x = torch.randn(c["B"], c["L"], c["E"])
    with torch.no_grad():
        return time_torch(lambda: m(x, x, x, need_weights=False), repeat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--attn", default=os.path.join(os.path.dirname(__file__), "..", "build", "attn"))
    ap.add_argument("--quick", action="store_true", help="only the first configuration")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; threads {a.threads}; repeat {a.repeat}; "
          f"torch {torch.__version__}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"python {platform.python_version()}\n")
    print("| configuration | attn fused ms | attn unfused ms | PyTorch ms | fused GFLOP/s | PyTorch / fused | notes |")
    print("|---|---|---|---|---|---|---|")
    for c in CONFIGS[:1] if a.quick else CONFIGS:
        if c.get("mha"):
            args = ["mha", "--batch", str(c["B"]), "--embed-dim", str(c["E"]), "--heads", str(c["H"]),
                    "--len", str(c["L"])]
            fused = run_attn(a.attn, args + ["--impl", "fused"], a.threads, a.repeat)
            unfused = run_attn(a.attn, args + ["--impl", "unfused"], a.threads, a.repeat)
            pt = torch_mha(c, a.repeat)
            note = ""
        else:
            fused = run_attn(a.attn, sdpa_args(c, "fused"), a.threads, a.repeat)
            unfused = run_attn(a.attn, sdpa_args(c, "unfused"), a.threads, a.repeat)
            pt = torch_sdpa(c, a.repeat)
            note = f"K+V read at {fused['kv_gb_per_s']:.1f} GB/s" if c["Lq"] <= 4 else ""
        print(f"| {c['name']} | {fused['median_ms']:.2f} | {unfused['median_ms']:.2f} | {pt:.2f} | "
              f"{fused['gflops']:.0f} | {pt / fused['median_ms']:.2f}x | {note} |", flush=True)


if __name__ == "__main__":
    main()
