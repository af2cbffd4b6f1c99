#!/usr/bin/env python3
"""Training tokens/s and translation sentences/s: attn beside PyTorch, same model size, same threads.

    python3 bench/compare_transformer.py [--threads 2] [--model models/numbers-en-zh]

attn: `attn train` on numbers-en-zh for --steps steps (its reported target tokens/s, one warm-up
excluded by taking the rate after the run) and `attn eval` over --sentences test sentences (greedy,
batches of 64, KV cache), timed from outside. PyTorch: the same architecture (embeddings x sqrt(E),
sinusoidal positions, torch.nn.Transformer, tied generator), AdamW, label-smoothed cross-entropy, on
batches of 64 sentences with the task's lengths (source 12 tokens, target 11 + 1); translation by
greedy decoding with full recomputation of the decoder at each step (nn.Transformer has no KV cache),
encoder run once, 12 steps per batch (the task's mean output length). Both at --threads threads.
"""
import argparse
import json
import os
import re
import subprocess
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before the peer is imported: see bench/malloc_policy.py
import torch


def torch_model(cfg):
    E = cfg["d_model"]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.src = torch.nn.Embedding(cfg["src_vocab"], E)
            self.tgt = torch.nn.Embedding(cfg["tgt_vocab"], E)
            self.t = torch.nn.Transformer(E, cfg["num_heads"], cfg["num_encoder_layers"], cfg["num_decoder_layers"],
                                          cfg["d_ff"], dropout=cfg["dropout"], batch_first=True,
                                          norm_first=cfg["norm_first"])
            self.bias = torch.nn.Parameter(torch.zeros(cfg["tgt_vocab"]))
            pe = torch.zeros(64, E)
            pos = torch.arange(64.0)[:, None]
            div = torch.pow(10000.0, torch.arange(0, E, 2) / E)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos / div), torch.cos(pos / div)
            self.register_buffer("pe", pe)

        def encode(self, src):
            return self.t.encoder(self.src(src) * E ** 0.5 + self.pe[: src.shape[1]])

        def decode(self, tgt, mem):
            mask = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            y = self.t.decoder(self.tgt(tgt) * E ** 0.5 + self.pe[: tgt.shape[1]], mem, tgt_mask=mask,
                               tgt_is_causal=True)
            return y @ self.tgt.weight.T + self.bias

        def forward(self, src, tgt):
            return self.decode(tgt, self.encode(src))

    return Model()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "models", "numbers-en-zh"))
    ap.add_argument("--attn", default=os.path.join(os.path.dirname(__file__), "..", "build", "attn"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--sentences", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))

    # attn training: same architecture flags as the shipped model
    args = [a.attn, "train", "--steps", str(a.steps), "--eval-every", "0", "--no-progress",
            "--out", "/tmp/attn-bench-train",
            "--d-model", str(cfg["d_model"]), "--heads", str(cfg["num_heads"]), "--d-ff", str(cfg["d_ff"]),
            "--encoder-layers", str(cfg["num_encoder_layers"]), "--decoder-layers", str(cfg["num_decoder_layers"])]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    attn_train = float(re.search(r"\(([0-9.]+) target tokens/s\)", out).group(1))

    # attn translation
    t0 = time.perf_counter()
    subprocess.run([a.attn, "eval", "--model", a.model, "--count", str(a.sentences)], check=True,
                   capture_output=True, env=env)
    attn_translate = a.sentences / (time.perf_counter() - t0)

    # PyTorch training
    m = torch_model(cfg).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    B, Ls, Lt = 64, 12, 12
    src = torch.randint(4, cfg["src_vocab"], (B, Ls))
    tgt = torch.randint(4, cfg["tgt_vocab"], (B, Lt))
    step_times = []
    for i in range(a.steps // 4 + 3):
        t0 = time.perf_counter()
        logits = m(src, tgt)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["tgt_vocab"]), tgt.reshape(-1),
                                                 label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if i >= 3:
            step_times.append(time.perf_counter() - t0)
    torch_train = B * Lt / (sum(step_times) / len(step_times))

    # PyTorch translation: greedy, full recomputation per step
    m.eval()
    n_batches = max(1, a.sentences // 64)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(n_batches):
            mem = m.encode(src)
            ys = torch.ones(B, 1, dtype=torch.long)
            for _ in range(12):
                nxt = m.decode(ys, mem)[:, -1].argmax(-1, keepdim=True)
                ys = torch.cat([ys, nxt], 1)
    torch_translate = n_batches * 64 / (time.perf_counter() - t0)

    print(f"model: d_model {cfg['d_model']}, {cfg['num_heads']} heads, d_ff {cfg['d_ff']}, "
          f"{cfg['num_encoder_layers']}+{cfg['num_decoder_layers']} layers; threads {a.threads}; "
          f"torch {torch.__version__}\n")
    print("| work | attn | PyTorch | attn / PyTorch |")
    print("|---|---|---|---|")
    print(f"| training, target tokens/s | {attn_train:.0f} | {torch_train:.0f} | {attn_train / torch_train:.2f}x |")
    print(f"| translation, sentences/s | {attn_translate:.0f} | {torch_translate:.0f} | "
          f"{attn_translate / torch_translate:.2f}x |")


if __name__ == "__main__":
    main()
