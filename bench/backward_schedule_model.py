#!/usr/bin/env python3
"""Models how busy the fused backward's threads are: its tasks (one per batch · kv-head pair and key chunk, as
src/cpu/backward_rows.h's key_chunks divides them) handed out by OpenMP's dynamic schedule, one at a time, to the
thread that is free first. A task's cost is the number of (query row, key) pairs its key blocks meet: under a causal
mask the first keys' chunk meets every row, the last one few. Prints the share of the threads' time busy for the
order and chunk count before session 17 (pair by pair) and for today's (backward_tasks: the costliest chunks first;
key_chunks: more chunks where the tasks would leave the threads' last round part empty):

    python3 bench/backward_schedule_model.py --threads 16 --heads 8 --length 1024 --causal

It leaves out what is not the schedule (memory, clocks, the dQ reduction); the measured A/B is
`bench/cpu_sweep.py` with the ATTN_SWEEP_BWD_PAIR_ORDER=1 variant (bench/device_cpu_check.sh's `order` step).
"""
import argparse
import heapq

KEY_BLOCK = 128  # Tiles::kBackwardBk


def key_chunks(pairs, threads, key_blocks, balance=True):
    """src/cpu/backward_rows.h key_chunks (without its 512 MB cap on the chunks' dQ buffers); balance=False: before
    session 17, which did not add chunks where the tasks left the threads' last round part empty."""
    if pairs <= 0 or key_blocks <= 1 or threads <= 1:
        return 1
    chunks = min((2 * threads + pairs - 1) // pairs, key_blocks) if pairs < 2 * threads else 1

    def busy(c):
        tasks = pairs * c
        return tasks / (threads * -(-tasks // threads))

    c = chunks + 1
    while balance and c <= key_blocks and busy(chunks) < 0.95:
        if busy(c) > busy(chunks):
            chunks = c
        c += 1
    return chunks


def busy_share(costs, threads):
    """The threads' busy time over their time until the last one finishes (dynamic schedule, chunk 1)."""
    free_at = [0.0] * threads
    heapq.heapify(free_at)
    for cost in costs:
        heapq.heappush(free_at, heapq.heappop(free_at) + cost)
    return sum(costs) / threads / max(free_at)


def model(threads, pairs, length, causal, balance=True):
    blocks = (length + KEY_BLOCK - 1) // KEY_BLOCK
    chunks = key_chunks(pairs, threads, blocks, balance)

    def rows_met(block):  # top-left causal: key j is seen by the rows i >= j
        return length - block * KEY_BLOCK if causal else length

    chunk_cost = [sum(rows_met(b) for b in range(blocks * c // chunks, blocks * (c + 1) // chunks))
                  for c in range(chunks)]
    pair_order = [chunk_cost[c] for _ in range(pairs) for c in range(chunks)]
    costliest_first = sorted(pair_order, reverse=True)  # stable: equal chunks keep their order
    return chunks, busy_share(pair_order, threads), busy_share(costliest_first, threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--heads", type=int, nargs="+", default=[1, 3, 8, 16], help="B · Hkv pairs")
    ap.add_argument("--length", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--causal", action="store_true")
    a = ap.parse_args()
    print("| threads | pairs | L | before session 17: chunks, pair by pair | now: chunks, costliest first |")
    print("|---|---|---|---|---|")
    for t in a.threads:
        for h in a.heads:
            for n in a.length:
                old_chunks, before, _ = model(t, h, n, a.causal, balance=False)
                chunks, _, after = model(t, h, n, a.causal)
                print(f"| {t} | {h} | {n} | {old_chunks}, {before:.0%} | {chunks}, {after:.0%} |")


if __name__ == "__main__":
    main()
