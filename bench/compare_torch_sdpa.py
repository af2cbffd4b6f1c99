"""attn.torch against torch.nn.functional.scaled_dot_product_attention on CPU: forward+backward at one size and
the per-call overhead at a tiny one (B=1, H=1, L=8), in the same process with the same threads.
    python bench/compare_torch_sdpa.py [--L 1024] [--B 1] [--H 8] [--D 64] [--causal] [--seconds 2] [--threads N]
                                       [--dtype float32|bfloat16|float16] [--vmap N]
--vmap N also times per-sample gradients, torch.func.vmap(torch.func.grad(loss)) over N samples of [B, H, L, D]
(attn.torch folds the samples into one batch; PyTorch's SDPA has no batching rule and runs them one by one).
The tensors of both are in --dtype (16-bit: attn's 16-bit forward kernel and its float32 backward on widened copies;
PyTorch's own 16-bit CPU kernels)."""
import argparse
import statistics
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before torch is imported: see bench/malloc_policy.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attn  # noqa: E402
import attn.torch as at  # noqa: E402


def per_call(fn, seconds):
    """The median seconds per call of 5 timed rounds (after one warm-up call)."""
    return statistics.median(round_times(fn, seconds))


def round_times(fn, seconds):
    """Seconds per call in each of 5 timed rounds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            fn()
            n += 1
        times.append((time.perf_counter() - t0) / n)
    return times


def pair(fa, fb, seconds):
    """The median seconds per call of both over their 15 rounds, alternated A/B in 3 blocks so that a burst of load
    elsewhere hits both alike (the project's rule: medians; this had reported the minimum)."""
    a, b = [], []
    for _ in range(3):
        a += round_times(fa, seconds / 3)
        b += round_times(fb, seconds / 3)
    return statistics.median(a), statistics.median(b)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--L", type=int, default=1024)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (attn.torch follows it); 0 = as is")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--vmap", type=int, default=0, help="also per-sample gradients over this many samples")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    q, k, v = (torch.randn(a.B, a.H, a.L, a.D).to(dtype).requires_grad_(True) for _ in range(3))
    g = torch.randn(a.B, a.H, a.L, a.D).to(dtype)

    def step(sdpa):
        def run():
            out = sdpa(q, k, v, is_causal=a.causal)
            torch.autograd.grad(out, (q, k, v), g)
        return run

    print(f"threads {torch.get_num_threads()}, B={a.B} H={a.H} L={a.L} D={a.D} causal={a.causal} {a.dtype}")
    t_torch, t_attn = pair(step(F.scaled_dot_product_attention), step(at.scaled_dot_product_attention), a.seconds)
    print(f"fwd+bwd  torch {t_torch * 1e3:8.2f} ms   attn.torch {t_attn * 1e3:8.2f} ms   "
          f"speed-up {t_torch / t_attn:.2f}x")
    with torch.no_grad():
        t_torch, t_attn = pair(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=a.causal),
                               lambda: at.scaled_dot_product_attention(q, k, v, is_causal=a.causal), a.seconds)
    print(f"fwd      torch {t_torch * 1e3:8.2f} ms   attn.torch {t_attn * 1e3:8.2f} ms   "
          f"speed-up {t_torch / t_attn:.2f}x")

    if a.vmap:
        per_sample(a, dtype)

    # overhead: a tiny problem through attn.torch, against the extension called directly (kernel + binding)
    x = torch.randn(1, 1, 8, 8)
    xn, nt = x.numpy(), torch.get_num_threads()
    t_op = per_call(lambda: at.scaled_dot_product_attention(x, x, x), a.seconds / 2)
    t_raw = per_call(lambda: attn._attn.torch_sdpa(x, x, x, None, None, "none", None, 0, None, 0.0, 0, False, False,
                                                   nt), a.seconds / 2)
    t_numpy = per_call(lambda: attn._attn.sdpa(xn, xn, xn, None, None, "none", None, 0, None, False, "auto", nt),
                       a.seconds / 2)
    t_torch = per_call(lambda: F.scaled_dot_product_attention(x, x, x), a.seconds / 2)
    xg = x.clone().requires_grad_(True)
    t_op_grad = per_call(lambda: at.scaled_dot_product_attention(xg, xg, xg), a.seconds / 2)
    print(f"B=1 H=1 L=8: attn.torch {t_op * 1e6:.1f} us/call, {t_op_grad * 1e6:.1f} us with inputs requiring grad; "
          f"the extension called directly {t_raw * 1e6:.1f} us (NumPy entry {t_numpy * 1e6:.1f} us): "
          f"{(t_op - t_raw) * 1e6:.1f} us of attn.torch overhead; F.sdpa {t_torch * 1e6:.1f} us")

def per_sample(a, dtype):
    """vmap(grad) over a.vmap samples: both functions under the same transforms, alternated."""
    from torch.func import grad, vmap

    qs, ks, vs, gs = (torch.randn(a.vmap, a.B, a.H, a.L, a.D).to(dtype) for _ in range(4))

    def run(sdpa):
        loss = lambda q, k, v, g: (sdpa(q, k, v, is_causal=a.causal) * g).sum()  # noqa: E731
        fn = vmap(grad(loss, argnums=(0, 1, 2)))
        return lambda: fn(qs, ks, vs, gs)

    import warnings
    with warnings.catch_warnings():  # PyTorch's "no batching rule" warning, once per call
        warnings.simplefilter("ignore")
        t_torch, t_attn = pair(run(F.scaled_dot_product_attention), run(at.scaled_dot_product_attention), a.seconds)
    print(f"vmap(grad) over {a.vmap} samples  torch {t_torch * 1e3:8.2f} ms   attn.torch {t_attn * 1e3:8.2f} ms   "
          f"speed-up {t_torch / t_attn:.2f}x")


if __name__ == "__main__":
    main()
