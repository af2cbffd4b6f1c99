#!/usr/bin/env python3
"""Times variants of the `attn` tool side by side (bench/cpu_tile_sweep.sh builds them): `attn bench sdpa`
on each shape, the variants alternating within every round, and prints each variant's median time, GFLOP/s,
share of the FMA peak (the highest that `attn bench sdpa` measured on the shape) and speed relative to the first variant.

    python3 bench/cpu_sweep.py base=build-sweep-cpu/base/attn 'pv6x4=bundle/run pv6x4' ...

A variant is NAME=COMMAND: COMMAND (split as a shell would) runs the tool, e.g. through a device bundle's
loader. --shape THREADS:H:L:D[:causal][:backward][:dropout=P][:dtype=T][:kv=LK][:cache=T] (repeatable) replaces the
default shapes; threads 0 = all cores; `backward` times the fused backward alone (`attn bench sdpa --backward`) instead
of the forward; `dropout=P` sets attention dropout; `dtype=bf16` (or f16) times the 16-bit kernels; `kv=LK` sets the
keys' length (default L); `cache=f32|bf16|int8` times the decoding kernel over an attn::DecodeCache of that type
(`--kv-dtype`): a memory-bound kernel, so such a shape's share is of the read bandwidth (`attn bench bandwidth` at the
shape's threads, run by every variant in every round, the highest kept), not of the FMA peak.
--pin CPU runs the one-thread shapes on that CPU (taskset): a server's cores turbo to different clocks, and
where the process lands otherwise moves its time by ±15%.
"""
import argparse
import json
import shlex
import statistics
import subprocess

DEFAULT_SHAPES = ["1:2:4096:64", "1:2:4096:128", "1:8:1024:64", "1:8:1024:128", "1:4:4096:64:causal",
                  "0:16:4096:64", "0:16:4096:128", "0:16:4096:64:causal"]


def run(cmd, shape, repeat, pin):
    threads, heads, length, dim, *rest = shape.split(":")
    if pin is not None and threads == "1":
        cmd = ["taskset", "-c", str(pin)] + cmd
    args = cmd + ["bench", "sdpa", "--heads", heads, "--q-len", length, "--head-dim", dim, "--threads", threads,
                  "--repeat", str(repeat), "--json"] + (["--causal"] if "causal" in rest else []) + (["--backward"] if "backward" in rest else [])
    args += [arg for x in rest if x.startswith("dropout=") for arg in ("--dropout", x.split("=", 1)[1])]
    args += [arg for x in rest if x.startswith("dtype=") for arg in ("--dtype", x.split("=", 1)[1])]
    args += [arg for x in rest if x.startswith("kv=") for arg in ("--kv-len", x.split("=", 1)[1])]
    args += [arg for x in rest if x.startswith("cache=") for arg in ("--kv-dtype", x.split("=", 1)[1], "--no-peak")]
    line = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    r = json.loads(line)
    if "backward" in rest:  # the backward alone: its time, rate and FLOPs (2.5× the forward's)
        r["median_ms"], r["gflops"] = r["backward_median_ms"], r["backward_gflops"]
    return r


def bandwidth(cmd, threads, pin):
    if pin is not None and threads == "1":
        cmd = ["taskset", "-c", str(pin)] + cmd
    out = subprocess.run(cmd + ["bench", "bandwidth", "--threads", threads, "--json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["gb_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=COMMAND")
    ap.add_argument("--shape", action="append",
                    help="THREADS:H:L:D[:causal][:backward][:dropout=P][:dtype=T][:kv=LK][:cache=T]")
    ap.add_argument("--rounds", type=int, default=3, choices=range(1, 1000), metavar="N")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per process (its median is one sample)")
    ap.add_argument("--pin", type=int, help="CPU to run the one-thread shapes on")
    a = ap.parse_args()
    variants = [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in a.variants]
    print("| shape | " + " | ".join(name for name, _ in variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for shape in a.shape or DEFAULT_SHAPES:
        ms = {name: [] for name, _ in variants}
        peak = 0.0  # the highest FMA peak (or bandwidth) any process measured (each one's own wanders ±5%)
        decode = ":cache=" in shape
        for rnd in range(a.rounds):  # alternate: each round starts one variant later
            if decode:  # every variant's loop (an older binary's may be the capped one: the highest counts)
                for _, cmd in variants:
                    peak = max(peak, bandwidth(cmd, shape.split(":")[0], a.pin))
            for k in range(len(variants)):
                name, cmd = variants[(k + rnd) % len(variants)]
                r = run(cmd, shape, a.repeat, a.pin)
                ms[name].append(r["median_ms"])
                if decode:
                    work, unit = r["kv_gb_per_s"] * r["median_ms"] / 1e3, "GB/s"  # GB read a call
                else:
                    peak = max(peak, r["peak_gflops"])
                    work, unit = r["gflops"] * r["median_ms"] / 1e3, "GF/s"
        base = statistics.median(ms[variants[0][0]])
        cells = []
        for name, _ in variants:
            t = statistics.median(ms[name])
            rate = work / t * 1e3
            cells.append(f"{t:.2f} ms {rate:.0f} {unit} {100 * rate / peak:.0f}% ×{base / t:.2f}")
        print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
