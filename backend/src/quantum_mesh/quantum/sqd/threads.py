"""pyscf's OpenMP thread count, set for a block of work and restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def pyscf_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` OpenMP threads in pyscf's kernels (``None``: as is).

    pyscf's OpenMP kernels (integrals, FCI/SCI contractions) can be re-limited at any time.
    OpenBLAS (numpy) reads ``OPENBLAS_NUM_THREADS`` once when it loads, so processes that
    solve batches must have that variable set before they import numpy.
    """
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}.")
    from pyscf import lib

    previous = lib.num_threads()
    lib.num_threads(threads)
    try:
        yield
    finally:
        lib.num_threads(previous)
