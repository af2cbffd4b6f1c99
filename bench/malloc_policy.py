"""The attn tool keeps freed memory mapped (glibc malloc thresholds set in tools/attn/main.cc: a kernel call's
outputs then reuse pages instead of faulting fresh ones in). A peer measured beside it gets the same policy:
same_malloc_policy() re-executes the calling script with GLIBC_TUNABLES set to it, before torch (or
CTranslate2) is imported. A GLIBC_TUNABLES already in the environment is left as it is (export
GLIBC_TUNABLES= to measure the peer with glibc's defaults)."""
import os
import sys

TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def same_malloc_policy():
    if "GLIBC_TUNABLES" in os.environ:
        return
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, GLIBC_TUNABLES=TUNABLES))
