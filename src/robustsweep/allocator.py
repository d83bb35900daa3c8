"""Keep freed memory in the process for the next training step (glibc malloc on Linux).

PyTorch's CPU tensors come straight from malloc. glibc serves large blocks
with ``mmap`` and returns them with ``munmap`` on free, and trims the top of
its heap back to the OS, both under thresholds it adjusts as it goes. A
training step frees its activations and gradients and allocates the same
sizes again a moment later, so with the defaults every step page-faults
megabytes of fresh memory. Measured on this project's 2-core CPU, one M1
step at batch 128 with channels-last weights: about 3,000 page faults and
13.6-14.7 ms without this tuning, 8 page faults and 10.4-10.6 ms with it
(bench/results-cpu.md). PyTorch's CPU performance guide reaches for jemalloc
or tcmalloc through ``LD_PRELOAD`` for the same reason; two ``mallopt``
calls do it in-process, with no extra library and no change to any number
computed.

The cost: memory a process has freed stays in its heap up to the largest it
needed, instead of going back to the OS between steps.
"""

from __future__ import annotations

import ctypes
import functools
import sys

#: mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap: glibc's largest allowed mmap threshold on 64-bit
#: (HEAP_MAX_SIZE / 2), above any activation or gradient of M1 at the evaluation batch of 256.
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap goes back to the OS only beyond this.
TRIM_THRESHOLD = 2**30


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Tune glibc's malloc for this process (once); True where applied, False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's soname; musl and others have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
