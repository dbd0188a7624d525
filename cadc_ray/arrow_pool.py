"""Which allocator pyarrow uses while our own code reads, splits and writes tables in a process.

pyarrow 20+ allocates from mimalloc by default. In a new process's first split of 10^6 rows
(bench_scale's shape, right after preparing them) mimalloc spent 0.16-0.71 s in the kernel
where the system allocator (glibc malloc) spent 0.09-0.13 s; the split took 0.53-1.16 s
against 0.39-0.50 s (4 processes each, 2-core machine; docs/results.md, "pyarrow's
allocator"). Later splits in the same process were alike with either, and our processes
(a command, a Ray task, a Train worker) mostly prepare, split, sample or read their rows
once, so they paid the first use every time.

:func:`system_arrow_pool` switches pyarrow's default pool for a block and puts the previous
one back after it; arrays made inside keep their pool (each Arrow buffer frees to the pool
that allocated it), so the switch is safe for arrays that outlive the block. The user's
``ARROW_DEFAULT_MEMORY_POOL`` wins: with it set, nothing is switched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pyarrow as pa

ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


@contextlib.contextmanager
def system_arrow_pool() -> Iterator[None]:
    """pyarrow's default memory pool is the system allocator inside the block, unless the
    environment names a pool (``ARROW_DEFAULT_MEMORY_POOL``). Not for blocks that run
    concurrently in threads of one process: the pool is process-wide."""
    if ARROW_POOL_ENV in os.environ:
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
