"""Keep freed CPU memory in the process, so large temporaries do not fault in fresh pages.

Dendrites multiply the per-sample-position work of a layer: a dendrite phase holds K copies
of every layer output, a neuron phase D, and the backward of each makes temporaries of that
size. glibc's allocator serves blocks that large with ``mmap`` and gives them back to the
operating system when freed, so every batch pays page faults to zero them again. Measured on
the MNIST-example CNN (2 threads, `bench/epoch_cost.py`), that made a dendrite epoch with
K = 4 1.5-1.6x its floor and 1.1-1.2x with memory kept; a plain epoch did not change.

`keep_cpu_memory` tells glibc to serve every block from its heap and never trim it: the
process keeps its peak memory instead of returning it between batches. It changes the
allocator of the whole process, so the library never calls it by itself: a training script
(or the ``perforate`` command) opts in. The same from the shell, before Python starts::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python train.py

(jemalloc or tcmalloc preloaded with ``LD_PRELOAD`` do the same.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: The largest trim threshold ``mallopt`` takes (an int): never trim in practice.
NEVER_TRIM = 2**31 - 1


def keep_cpu_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (no ``mmap`` blocks, no trimming).

    Process-wide; call once, at the start. Returns True if applied, False where the C library
    is not glibc (macOS, Windows, musl): nothing is changed there.
    """
    libc = _glibc()
    if libc is None:
        logger.info("keep_cpu_memory: not glibc, nothing changed")
        return False
    applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                      NEVER_TRIM))
    logger.info("keep_cpu_memory: glibc malloc keeps freed memory (%s)",
                "applied" if applied else "refused")
    return applied


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
