#!/usr/bin/env python3
"""`mpirun -np N attn sdpa ... --ring` writes the output of `attn sdpa` (within 2e-5), for N = 2, 3, 4, causal and
not, with key padding and grouped-query K/V; a rank count or shape problem ends with an error, never a hang.
Plain Python (no NumPy): the .npy files are written and read here.

  sdpa_ring_cli_test.py ATTN MPIEXEC WORKDIR
"""
import array
import ast
import os
import random
import shutil
import subprocess
import sys


def save(path, shape, values, dtype="<f4"):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (dtype, "".join(f"{s}, " for s in shape))
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
        f.write(array.array("f", values).tobytes() if dtype == "<f4" else bytes(values))


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[8:10], "little")
    header = ast.literal_eval(data[10:10 + n].decode())
    assert header["descr"] == "<f4", header
    return header["shape"], array.array("f", data[10 + n:])


def main():
    attn, mpiexec, work = sys.argv[1:4]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chdir(work)
    rng = random.Random(7)
    B, H, Hkv, L, D, Dv = 2, 4, 2, 45, 16, 8
    for name, shape in [("q", (B, H, L, D)), ("k", (B, Hkv, L, D)), ("v", (B, Hkv, L, Dv))]:
        n = 1
        for s in shape:
            n *= s
        save(f"{name}.npy", shape, [rng.uniform(-1, 1) for _ in range(n)])
    save("pad.npy", (B, L), [1 if rng.random() < 0.25 else 0 for _ in range(B * L)], dtype="|b1")
    mpirun = [mpiexec, "--oversubscribe", "--allow-run-as-root", "--timeout", "120", "-x", "OMP_NUM_THREADS=1"]
    failures = 0
    for causal in ["none", "top-left", "bottom-right"]:
        common = ["sdpa", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--key-padding-mask", "pad.npy",
                  "--causal", causal]
        subprocess.run([attn, *common, "--out", "want.npy"], check=True)
        _, want = load("want.npy")
        for n in [2, 3, 4]:
            for layout in ["contiguous", "zigzag"]:
                out = f"ring_{causal}_{n}_{layout}.npy"
                subprocess.run([*mpirun, "-np", str(n), attn, *common, "--ring", "--ring-layout", layout,
                                "--out", out], check=True, timeout=180)
                _, got = load(out)
                diffs = [abs(a - b) for a, b in zip(want, got)]
                # max() skips a NaN after the first element: every difference must pass on its own
                ok = len(got) == len(want) and all(d <= 2e-5 for d in diffs)
                worst = max(diffs, default=float("inf")) if ok or not any(d != d for d in diffs) else float("nan")
                failures += not ok
                verdict = "ok" if ok else "FAILED"
                print(f"causal {causal:12} np {n} {layout:10}: max |ring - sdpa| = {worst:.2e} {verdict}")
    # a bad input: every rank fails with the message, mpirun ends with a non-zero status (no hang)
    save("bad_k.npy", (B, Hkv, L, D + 1), [0.0] * (B * Hkv * L * (D + 1)))
    r = subprocess.run([*mpirun, "-np", "2", attn, "sdpa", "--q", "q.npy", "--k", "bad_k.npy", "--v", "v.npy",
                        "--out", "bad.npy", "--ring"], capture_output=True, text=True, timeout=180)
    # named by the flags and the files' shapes (it had been the shards' names, "q_local", and their shapes)
    ok = r.returncode != 0 and f"--k [{B}, {Hkv}, {L}, {D + 1}]" in r.stderr and not os.path.exists("bad.npy")
    failures += not ok
    print(f"mismatched k: status {r.returncode}, {'ok' if ok else 'FAILED: ' + r.stderr[-500:]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
