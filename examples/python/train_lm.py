"""A small causal Transformer language model trained in plain PyTorch, twice: once with
torch.nn.functional.scaled_dot_product_attention and once with attn.torch.scaled_dot_product_attention.

The text is the GNU GPL version 3 that Debian's base-files package ships (/usr/share/common-licenses/GPL-3,
35 kB), modelled character by character. Both runs start from the same seed with dropout off, so they see the
same weights and batches: the loss curves agree to float32 rounding, compounded over the steps (the check fails
beyond 1e-2; 1e-1 with --bf16). Prints both curves and tokens/s.

    python examples/python/train_lm.py [--steps 30] [--context 1024] [--layers 2] [--dim 128] [--heads 4]
                                       [--batch 4] [--threads N] [--text FILE] [--rounds R] [--bf16]

--bf16 trains under torch.autocast("cpu", dtype=torch.bfloat16): the projections give bfloat16 q, k, v, so both
attentions run in bfloat16 (attn's 16-bit forward and bfloat16 backward); the curves then agree to bfloat16's
rounding rather than float32's.

With --rounds R the two trainings alternate R times (the first of each pair changing every round) and the
tokens/s printed last are the medians: one pair alone moves with the machine's drift.

At context 1024 attention is most of a step, so the tokens/s differ most; at --context 256 the projections and
the MLP dominate and both run at about the same speed.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import attn.torch

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


class Block(nn.Module):
    def __init__(self, dim, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        B, L, E = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        y = self.sdpa(q, k, v, is_causal=True)  # [B, H, L, D]
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, E))
        return x + self.mlp(self.ln2(x))


class LM(nn.Module):
    def __init__(self, vocab, context, dim, heads, layers, sdpa):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, sdpa) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def train(name, sdpa, data, vocab, a):
    torch.manual_seed(a.seed)
    model = LM(vocab, a.context, a.dim, a.heads, a.layers, sdpa)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(a.seed)
    losses, tokens, seconds = [], 0, 0.0
    for step in range(a.steps):
        start = torch.randint(0, len(data) - a.context - 1, (a.batch,), generator=g)
        x = torch.stack([data[s:s + a.context] for s in start.tolist()])
        y = torch.stack([data[s + 1:s + a.context + 1] for s in start.tolist()])
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step > 0:  # the first step warms up allocators and thread pools
            seconds += time.perf_counter() - t0
            tokens += x.numel()
        losses.append(loss.item())
    tps = tokens / seconds if seconds else float("nan")
    print(f"{name:>28}: loss {losses[0]:.4f} -> {losses[-1]:.4f}   {tps:10.0f} tokens/s")
    return losses, tps


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (attn.torch follows it)")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of the two trainings (medians)")
    p.add_argument("--bf16", action="store_true", help="train under CPU autocast to bfloat16")
    a = p.parse_args()
    for name in ("rounds", "steps", "context", "batch", "dim", "heads", "layers"):  # (--steps 0 had hit an IndexError)
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    print(f"{a.text}: {len(text)} characters, vocabulary {len(chars)}; {a.layers} layers, dim {a.dim}, "
          f"{a.heads} heads, context {a.context}, batch {a.batch}, {a.steps} steps, {torch.get_num_threads()} threads"
          + (", bfloat16 autocast" if a.bf16 else ""))
    runs = {"torch": [], "attn": []}
    for r in range(a.rounds):
        order = ["torch", "attn"] if r % 2 == 0 else ["attn", "torch"]
        for side in order:
            if side == "torch":
                ref, tps = train("F.scaled_dot_product_attention", F.scaled_dot_product_attention, data, len(chars), a)
            else:
                got, tps = train("attn.torch", attn.torch.scaled_dot_product_attention, data, len(chars), a)
            runs[side].append(tps)
    tps_ref, tps_attn = statistics.median(runs["torch"]), statistics.median(runs["attn"])
    if a.rounds > 1:
        print(f"medians of {a.rounds} alternating rounds: F.sdpa {tps_ref:.0f}, attn.torch {tps_attn:.0f} tokens/s")
    diff = max(abs(x - y) for x, y in zip(ref, got))
    print("step  " + "  ".join(f"{i:>7}" for i in range(0, a.steps, max(1, a.steps // 8))))
    print("torch " + "  ".join(f"{ref[i]:7.4f}" for i in range(0, a.steps, max(1, a.steps // 8))))
    print("attn  " + "  ".join(f"{got[i]:7.4f}" for i in range(0, a.steps, max(1, a.steps // 8))))
    print(f"largest loss difference {diff:.2e}; attn.torch {tps_attn / tps_ref:.2f}x the tokens/s of F.sdpa")
    if not math.isfinite(diff) or diff > (1e-1 if a.bf16 else 1e-2):
        raise SystemExit("the loss curves disagree")


if __name__ == "__main__":
    main()
