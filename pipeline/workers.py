"""Process pools for CPU-bound work that is one Python loop per item (drawing faces,
single-threaded ONNX inference): `create_worker_pool(n)`, forked where the platform can,
so the workers need no re-import and inherit what the parent loaded; and
`single_blas_thread()` for loops of many small LAPACK calls."""
from __future__ import annotations

import functools
import os


def default_workers(limit: int = 4) -> int:
    """How many worker processes to start by default: the CPUs this process may use, at most `limit`."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(limit, n))


def create_worker_pool(workers: int, initializer=None):
    """A process pool of `workers` processes (forked where the platform can), each running
    `initializer()` first when given. The caller closes it."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None).Pool(workers, initializer)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    import numpy  # noqa: F401  the BLAS libraries the controller must see: numpy's and scipy's own
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_blas_thread():
    """A context that holds BLAS/LAPACK to one thread: many small factorisations or SVDs only
    contend with more (10x slower on 2 busy cores). The library scan is made once per process
    (`threadpool_limits` rescans every loaded library per call: 7 ms with torch loaded)."""
    return _blas_controller().limit(limits=1, user_api="blas")
