#!/usr/bin/env python3
"""attn's fused CPU attention beside llama.cpp's (ggml's GGML_OP_FLASH_ATTN_EXT, the op llama.cpp's models run with
flash attention on), the same shapes and threads, alternating in one run.

    python3 bench/compare_llamacpp.py --ggml DIR [--threads 1 2] [--lengths 1024 4096] [--dims 64 128] [--rounds 3]
                                      [--decode]

DIR is a ggml checkout (https://github.com/ggml-org/ggml; llama.cpp's ggml/ directory is the same code): the script
builds it (CMake, Release, GGML_NATIVE: the machine's own instruction sets, OpenMP) into DIR/build-attn unless that
exists, compiles bench/ggml_attention.cc against it, and times both sides: `attn bench sdpa --json` (float32 K and V)
and ggml's op with K and V in float32 and in float16 (llama.cpp's default KV cache type; it converts Q to float16 for
Q·Kᵀ). B 1, H 8 query and key/value heads, Lq = Lk = L, scale 1/sqrt(D); causal: attn's is_causal, ggml's a float16 mask
of 0 and -inf. GFLOP/s counts 4·L²·D·H, halved for causal, for both. Each cell: the medians of --repeat calls per
process, alternated for --rounds rounds, then the median over rounds. --decode adds llama.cpp's own case, one query
against a long KV sequence (Lq 1, Lk 8192, H 32, D 128, no mask: issue #3's decode shape), with GB/s of K and V read;
there attn also runs its bfloat16 KV cache (`attn bench sdpa --kv-dtype bf16`), the 2-byte peer of llama.cpp's float16.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def build_harness(ggml_dir, out_dir):
    build = os.path.join(ggml_dir, "build-attn")
    if not os.path.exists(os.path.join(build, "src", "libggml.so")):  # (a half-finished build is redone)
        subprocess.run(["cmake", "-S", ggml_dir, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                        "-DGGML_BUILD_TESTS=OFF", "-DGGML_BUILD_EXAMPLES=OFF", "-DGGML_OPENMP=ON",
                        "-DBUILD_SHARED_LIBS=ON"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", build, "-j", str(os.cpu_count() or 1)], check=True,
                       stdout=subprocess.DEVNULL)
    libs = os.path.join(build, "src")
    exe = os.path.join(out_dir, "ggml_attention")
    subprocess.run(["g++", "-O2", "-std=c++17", "-I", os.path.join(ggml_dir, "include"),
                    os.path.join(HERE, "ggml_attention.cc"), "-L", libs, "-lggml", "-lggml-base", "-lggml-cpu",
                    "-Wl,-rpath," + libs, "-o", exe], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ggml", required=True, help="a ggml checkout")
    ap.add_argument("--attn", default=os.path.join(HERE, "..", "build", "attn"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode", action="store_true", help="also one query against Lk 8192 (H 32, D 128)")
    a = ap.parse_args()
    a.threads = sorted(set(a.threads))  # (one CPU: [1, 1])
    out_dir = os.path.join(HERE, "..", "build", "bench")
    os.makedirs(out_dir, exist_ok=True)
    ggml_exe = build_harness(os.path.abspath(a.ggml), out_dir)
    commit = ggml_commit(os.path.abspath(a.ggml))

    def json_line(cmd):
        try:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"{' '.join(cmd)} failed ({e.returncode}):\n{e.stderr}")
        return json.loads(out.splitlines()[-1])

    def attn(t, L, D, causal, heads=a.heads, q_len=None, kv_dtype=None):
        cmd = [a.attn, "bench", "sdpa", "--heads", str(heads), "--q-len", str(q_len or L), "--kv-len", str(L),
               "--head-dim", str(D), "--threads", str(t), "--repeat", str(a.repeat), "--json"]
        cmd += ["--kv-dtype", kv_dtype] if kv_dtype else []
        return json_line(cmd + (["--causal"] if causal else []))

    def ggml(t, L, D, causal, kv, heads=a.heads, q_len=None):
        cmd = [ggml_exe, "--heads", str(heads), "--kv-heads", str(heads), "--len", str(L), "--q-len", str(q_len or L),
               "--head-dim", str(D), "--kv-type", kv, "--threads", str(t), "--repeat", str(a.repeat)]
        return json_line(cmd + (["--causal"] if causal else []))

    peak = {}
    rows = []
    for t in a.threads:
        for D in a.dims:
            for L in a.lengths:
                for causal in (False, True):
                    times = {"attn": [], "f32": [], "f16": []}
                    runs = [("attn", lambda: attn(t, L, D, causal)), ("f32", lambda: ggml(t, L, D, causal, "f32")),
                            ("f16", lambda: ggml(t, L, D, causal, "f16"))]
                    for rnd in range(a.rounds):  # alternating: each round starts one later
                        for i in range(len(runs)):
                            name, run = runs[(i + rnd) % len(runs)]
                            r = run()
                            times[name].append(r["median_ms"])
                            if name == "attn":
                                peak[t] = max(peak.get(t, 0.0), r["peak_gflops"])
                    med = {k: statistics.median(v) for k, v in times.items()}
                    flops = 4.0 * L * L * D * a.heads / (2.0 if causal else 1.0)
                    rows.append((t, D, L, causal, med, flops))
                    print(f"  threads {t} D {D} L {L} causal {causal}: attn {med['attn']:.2f} ms, ggml f32 "
                          f"{med['f32']:.2f}, f16 {med['f16']:.2f}", flush=True)
    decode = []
    for t in a.threads if a.decode else []:
        times = {"attn": [], "attn-bf16": [], "f32": [], "f16": []}
        runs = [("attn", lambda: attn(t, 8192, 128, False, 32, 1)),
                ("attn-bf16", lambda: attn(t, 8192, 128, False, 32, 1, "bf16")),
                ("f32", lambda: ggml(t, 8192, 128, False, "f32", 32, 1)),
                ("f16", lambda: ggml(t, 8192, 128, False, "f16", 32, 1))]
        for rnd in range(max(a.rounds, 5)):
            for i in range(len(runs)):
                name, run = runs[(i + rnd) % len(runs)]
                times[name].append(run()["median_ms"])
        decode.append((t, {k: statistics.median(v) for k, v in times.items()}))
    print(f"\n{cpu_name()}, {os.cpu_count()} CPUs; ggml {commit} (GGML_NATIVE); "
          f"FMA peak " + ", ".join(f"{peak[t]:.0f} GFLOP/s on {t} thread(s)" for t in sorted(peak)) + "\n")
    print("| threads | D | L | causal | attn ms | attn GFLOP/s | % of peak | llama.cpp f32 K/V ms | llama.cpp f16 K/V ms "
          "| f32 / attn | f16 / attn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t, D, L, causal, med, flops in rows:
        g = flops / med["attn"] / 1e6
        print(f"| {t} | {D} | {L} | {'yes' if causal else 'no'} | {med['attn']:.2f} | {g:.1f} | {100 * g / peak[t]:.0f}% "
              f"| {med['f32']:.2f} | {med['f16']:.2f} | {med['f32'] / med['attn']:.2f}× | "
              f"{med['f16'] / med['attn']:.2f}× |")
    if decode:
        kv_bytes = 2 * 32 * 8192 * 128  # K and V elements, one query head per KV head
        print("\nDecode: one query, Lk 8192, H 32, D 128; GB/s of K and V read (float32: 4 bytes an element, float16: 2)\n")
        print("| threads | attn f32 ms | GB/s | llama.cpp f32 K/V ms | GB/s | f32 / attn | attn bf16 K/V ms | GB/s "
              "| llama.cpp f16 K/V ms | GB/s | f16 / attn bf16 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for t, med in decode:
            gbs = lambda name, size: kv_bytes * size / med[name] / 1e6  # noqa: E731
            print(f"| {t} | {med['attn']:.3f} | {gbs('attn', 4):.1f} | {med['f32']:.3f} | {gbs('f32', 4):.1f} | "
                  f"{med['f32'] / med['attn']:.2f}× | {med['attn-bf16']:.3f} | {gbs('attn-bf16', 2):.1f} | "
                  f"{med['f16']:.3f} | {gbs('f16', 2):.1f} | {med['f16'] / med['attn-bf16']:.2f}× |")


def ggml_commit(ggml_dir):
    """DIR's commit when DIR is the top of a git checkout (not a snapshot inside another repository), else unknown."""
    try:
        top = subprocess.run(["git", "-C", ggml_dir, "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True).stdout.strip()
        if top and os.path.realpath(top) == os.path.realpath(ggml_dir):
            return subprocess.run(["git", "-C", ggml_dir, "log", "-1", "--format=%h %cs"], capture_output=True,
                                  text=True).stdout.strip()
    except OSError:  # no git
        pass
    return "unknown commit (not a git checkout: name it in the notes)"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
