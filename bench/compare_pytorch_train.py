#!/usr/bin/env python3
"""Training-step throughput: `attn bench train` beside PyTorch, same shape, batch, dropout and threads.

    /tmp/torchvenv/bin/python bench/compare_pytorch_train.py build/attn [--threads 2] [--rounds 3]
        [--d-model 128 --heads 4 --d-ff 256 --layers 3 --vocab 0 --batch 64 --src-len 7 --tgt-len 8]
        [--dropout 0.1 --attention-dropout 0 --steps 10 --warmup 3 --repeat 3]

The defaults are `attn bench train`'s: the shipped model's shape (models/numbers-en-zh) and attn train's batch.
PyTorch's peer is what attn's Transformer computes: token embeddings x sqrt(E) + sinusoidal positions with dropout,
torch.nn.Transformer (post-norm, ReLU, batch_first, causal decoder self-attention, attention-weight dropout
set to --attention-dropout as attn's separate option), the output projection tied
to the target embedding plus a bias, cross-entropy with label smoothing 0.1, clipping to norm 1, AdamW
(betas 0.9/0.98, eps 1e-9). Both sides train on the same kind of synthetic batch: random tokens, every sentence
exactly src-len / tgt-len long (no padding), drawn once. The figure is target tokens per second (batch x tgt-len
per step), the median over --repeat timed runs of --steps steps after --warmup untimed steps.

The two sides alternate (A/B) for --rounds rounds so drifting machine load hits both alike; the table gives the
median over every timed run of each side and the ratio attn / PyTorch. Not part of the test suite.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before the peer is imported: see bench/malloc_policy.py
import torch

# attn bench train's defaults: the shipped model's vocabularies when --vocab is 0
SHIPPED_SRC_VOCAB, SHIPPED_TGT_VOCAB = 35, 19


class Seq2Seq(torch.nn.Module):
    def __init__(self, a, src_vocab, tgt_vocab):
        super().__init__()
        E = a.d_model
        self.E = E
        self.src = torch.nn.Embedding(src_vocab, E)
        self.tgt = torch.nn.Embedding(tgt_vocab, E)
        self.drop = torch.nn.Dropout(a.dropout)
        self.t = torch.nn.Transformer(E, a.heads, a.layers, a.layers, a.d_ff, dropout=a.dropout, batch_first=True)
        # nn.Transformer drops attention weights with its one dropout; attn has a separate attention_dropout
        for layer in list(self.t.encoder.layers) + list(self.t.decoder.layers):
            for mha in (layer.self_attn, getattr(layer, "multihead_attn", None)):
                if mha is not None:
                    mha.dropout = a.attention_dropout
        self.bias = torch.nn.Parameter(torch.zeros(tgt_vocab))
        n = max(a.src_len, a.tgt_len)
        pe = torch.zeros(n, E)
        pos = torch.arange(float(n))[:, None]
        div = torch.pow(10000.0, torch.arange(0, E, 2) / E)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos / div), torch.cos(pos / div)
        self.register_buffer("pe", pe)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(a.tgt_len))

    def forward(self, src, tgt):
        s = self.drop(self.src(src) * math.sqrt(self.E) + self.pe[: src.shape[1]])
        t = self.drop(self.tgt(tgt) * math.sqrt(self.E) + self.pe[: tgt.shape[1]])
        y = self.t(s, t, tgt_mask=self.mask, tgt_is_causal=True)
        return y @ self.tgt.weight.T + self.bias  # tied generator


def torch_runs(a):
    """Target tokens/s of each timed run of PyTorch's training step."""
    torch.manual_seed(1)
    src_vocab = a.vocab or SHIPPED_SRC_VOCAB
    tgt_vocab = a.vocab or SHIPPED_TGT_VOCAB
    m = Seq2Seq(a, src_vocab, tgt_vocab).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    src = torch.randint(3, src_vocab, (a.batch, a.src_len))
    tgt = torch.randint(3, tgt_vocab, (a.batch, a.tgt_len))
    tgt_in = torch.cat([torch.ones(a.batch, 1, dtype=torch.long), tgt[:, :-1]], 1)  # BOS y1 .. y(n-1)

    def step():
        logits = m(src, tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, tgt_vocab), tgt.reshape(-1), label_smoothing=0.1)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    for _ in range(a.warmup):
        step()
    out = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        out.append(a.batch * a.tgt_len * a.steps / (time.perf_counter() - t0))
    return out


def attn_runs(a, env):
    """Target tokens/s of each timed run of `attn bench train` (one process; each timed run is one value)."""
    args = [a.attn, "bench", "train", "--json", "--threads", str(a.threads)]
    for flag in ("d_model", "heads", "d_ff", "layers", "vocab", "batch", "src_len", "tgt_len", "dropout",
                 "attention_dropout", "steps", "warmup"):
        args += ["--" + flag.replace("_", "-"), str(getattr(a, flag))]
    out = []
    for _ in range(a.repeat):  # one timed run per process keeps each value a single run, as PyTorch's
        line = subprocess.run(args + ["--repeat", "1"], check=True, capture_output=True, text=True,
                              env=env).stdout.strip().splitlines()[-1]
        run = json.loads(line)
        out.append(run["target_tokens_per_s"])
        a.attn_blas = run.get("blas", "?")  # OpenBLAS's kernel family (OPENBLAS_CORETYPE or its own choice)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("attn", help="path to the attn binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3, help="encoder layers and decoder layers (each)")
    ap.add_argument("--vocab", type=int, default=0, help="source and target vocabulary; 0 = the shipped 35 / 19")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--src-len", type=int, default=7, help="numbers-en-zh's mean: 6.6")
    ap.add_argument("--tgt-len", type=int, default=8, help="numbers-en-zh's mean: 8.4")
    ap.add_argument("--dropout", type=float, default=0.1, help="residuals, feed-forward, embeddings")
    ap.add_argument("--attention-dropout", type=float, default=0.0, help="attention weights (attn's default 0)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed runs")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per side per round")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))

    attn, peer = [], []
    for r in range(a.rounds):
        for side in (("attn", "torch") if r % 2 == 0 else ("torch", "attn")):
            if side == "attn":
                attn += attn_runs(a, env)
            else:
                peer += torch_runs(a)
    ma, mp = statistics.median(attn), statistics.median(peer)
    print(f"training step (forward, label-smoothed CE, backward, clip, AdamW): d_model {a.d_model}, {a.heads} heads, "
          f"d_ff {a.d_ff}, {a.layers}+{a.layers} layers, vocab {a.vocab or f'{SHIPPED_SRC_VOCAB}/{SHIPPED_TGT_VOCAB}'}"
          f"; batch {a.batch} x (src {a.src_len}, tgt {a.tgt_len}), dropout {a.dropout}, {a.threads} threads; "
          f"torch {torch.__version__}; {a.rounds} A/B rounds of {a.repeat} runs x {a.steps} steps; attn's GEMMs: "
          f"OpenBLAS {a.attn_blas} kernels (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); "
          f"PyTorch's: {'MKL' if torch.backends.mkl.is_available() else 'its default BLAS'}\n")
    print("| | attn | PyTorch | attn / PyTorch |")
    print("|---|---|---|---|")
    print(f"| target tokens/s, median | {ma:.0f} | {mp:.0f} | {ma / mp:.2f}x |")
    print(f"| min .. max | {min(attn):.0f} .. {max(attn):.0f} | {min(peer):.0f} .. {max(peer):.0f} | |")


if __name__ == "__main__":
    main()
