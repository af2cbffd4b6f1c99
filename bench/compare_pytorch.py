#!/usr/bin/env python3
"""attn against PyTorch on the CPU, in the same run, same shapes, same thread count.

    python3 bench/compare_pytorch.py [--threads 2] [--repeat 7] [--attn build/attn] [--quick]
    python3 bench/compare_pytorch.py --dtypes f32 bf16 f16 --threads 1 2 --rounds 3 [--lengths 1024 2048]

Needs torch (pip). For each configuration it runs `attn bench ... --json` (fused and unfused) and
times torch.nn.functional.scaled_dot_product_attention / nn.MultiheadAttention in this process
(one warm-up, then the median of --repeat runs), and prints a Markdown table of medians and ratios
for docs/PERFORMANCE.md. PyTorch runs in its best honest configuration: eval mode, no_grad,
need_weights=False for nn.MultiheadAttention (its fused fast path), torch.set_num_threads(threads).
OPENBLAS_CORETYPE is reported as found; every peer runs under the same setting.

With --dtypes, the SDPA grid instead: for each thread count, length and head dimension, attn's fused kernel
in every dtype (`attn bench sdpa --dtype`) and PyTorch's SDPA in the same dtypes (torch.bfloat16/float16
tensors), alternated A/B for --rounds rounds, medians of the per-round medians; the table gives attn bf16
against attn f32 and against PyTorch bf16.
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


def sdpa_args(c, impl, dtype="f32"):
    a = ["sdpa", "--dtype", dtype, "--batch", str(c["B"]), "--heads", str(c["H"]), "--q-len", str(c["Lq"]), "--kv-len", str(c["Lk"]),
         "--head-dim", str(c["D"]), "--impl", impl]
    return a + (["--causal"] if c["causal"] else [])


TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def torch_sdpa(c, repeat, dtype="f32"):
    dt = TORCH_DTYPES[dtype]
    # uniform in [-1, 1), as `attn bench` draws its inputs: the kernels' lazy rescaling makes speed depend a little on
    # the data (normal inputs had given the two sides different scores)
    uniform = lambda *shape: (torch.rand(*shape) * 2 - 1).to(dt)  # noqa: E731
    q = uniform(c["B"], c["H"], c["Lq"], c["D"])
    k = uniform(c["B"], c["H"], c["Lk"], c["D"])
    v = uniform(c["B"], c["H"], c["Lk"], c["D"])
    mask = None
    causal = c["causal"]
    if causal and c["Lq"] == 1:  # one query at the end sees every key: no mask, as attn is given none
        causal = False
    elif causal and c["Lq"] != c["Lk"]:  # bottom-right alignment, as attn bench uses
        from torch.nn.attention.bias import causal_lower_right
        mask, causal = causal_lower_right(c["Lq"], c["Lk"]), False
    with torch.no_grad():
        return time_torch(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal), repeat)


def torch_mha(c, repeat):
    m = torch.nn.MultiheadAttention(c["E"], c["H"], batch_first=True).eval()
    x = torch.rand(c["B"], c["L"], c["E"]) * 2 - 1
    with torch.no_grad():
        return time_torch(lambda: m(x, x, x, need_weights=False), repeat)


def dtype_grid(a, cpu):
    """attn fused and PyTorch SDPA per dtype, alternated A/B, medians over rounds."""
    print(f"machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; rounds {a.rounds} x repeat {a.repeat}; "
          f"load before: {os.getloadavg()[0]:.2f}\n")
    cols = " | ".join(f"attn {d} ms | PyTorch {d} ms" for d in a.dtypes)
    print(f"| threads | L | D | causal | {cols} | attn bf16 GFLOP/s | bf16 / attn f32 | bf16 vs PyTorch bf16 |")
    print("|" + "---|" * (4 + 2 * len(a.dtypes) + 3))
    for threads in a.threads:
        torch.set_num_threads(threads)
        for L in a.lengths:
            for D in a.dims:
                for causal in a.causal:
                    c = dict(B=1, H=a.heads, Lq=L, Lk=L, D=D, causal=bool(causal))
                    runs = {(w, d): [] for w in ("attn", "torch") for d in a.dtypes}
                    gf = []
                    for _ in range(a.rounds):
                        for d in a.dtypes:
                            r = run_attn(a.attn, sdpa_args(c, "fused", d), threads, a.repeat)
                            runs[("attn", d)].append(r["median_ms"])
                            if d == "bf16":
                                gf.append(r["gflops"])
                            runs[("torch", d)].append(torch_sdpa(c, a.repeat, d))
                    m = {key: median(v) for key, v in runs.items()}
                    cells = " | ".join(f"{m[('attn', d)]:.1f} | {m[('torch', d)]:.1f}" for d in a.dtypes)
                    extra = ""
                    if "bf16" in a.dtypes and "f32" in a.dtypes:
                        extra = (f"{median(gf):.0f} | {m[('attn', 'f32')] / m[('attn', 'bf16')]:.2f}x | "
                                 f"{m[('torch', 'bf16')] / m[('attn', 'bf16')]:.2f}x")
                    print(f"| {threads} | {L} | {D} | {'yes' if causal else 'no'} | {cells} | {extra} |", flush=True)
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="one; with --dtypes, several")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--attn", default=os.path.join(os.path.dirname(__file__), "..", "build", "attn"))
    ap.add_argument("--quick", action="store_true", help="only the first configuration")
    ap.add_argument("--dtypes", nargs="+", choices=["f32", "bf16", "f16"], help="the SDPA dtype grid instead")
    ap.add_argument("--rounds", type=int, default=3, help="--dtypes: A/B rounds")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048], help="--dtypes: L = Lq = Lk")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="--dtypes: head dimensions")
    ap.add_argument("--heads", type=int, default=8, help="--dtypes: H (B = 1)")
    ap.add_argument("--causal", type=int, nargs="+", default=[0], help="--dtypes: 0 and/or 1")
    a = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    if a.dtypes:
        return dtype_grid(a, cpu)
    a.threads = a.threads[0]
    torch.set_num_threads(a.threads)
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
