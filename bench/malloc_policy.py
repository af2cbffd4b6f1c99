"""The attn tool keeps freed memory mapped (glibc malloc thresholds set in tools/attn/main.cc: a kernel call's
outputs then reuse pages instead of faulting fresh ones in), and attn asks for huge pages for large tensors
(src/tensor.cc). A peer measured beside it gets the same policy (PyTorch's THP_MEM_ALLOC_ENABLE for the second):
same_malloc_policy() re-executes the calling script (with its interpreter options) with those two thresholds
added to GLIBC_TUNABLES, before torch (or CTranslate2) is imported. Thresholds already named in GLIBC_TUNABLES are
left as they are; ATTN_BENCH_MALLOC=default skips the policy (the peer then runs with glibc's defaults, attn
still with its own)."""
import os
import sys

TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def same_malloc_policy():
    current = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in current or os.environ.get("ATTN_BENCH_MALLOC") == "default":
        return
    argv = getattr(sys, "orig_argv", [sys.executable] + sys.argv)  # orig_argv keeps -u, -X ... (Python 3.10+)
    env = dict(os.environ, GLIBC_TUNABLES=f"{current}:{TUNABLES}" if current else TUNABLES)
    # attn asks for transparent huge pages for tensors of 4 MB and more (src/tensor.cc); PyTorch's CPU allocator does
    # for 2 MB and more under this variable
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    os.execve(sys.executable, [sys.executable] + argv[1:], env)
