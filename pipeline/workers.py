"""Process pools for CPU-bound work that is one Python loop per item (drawing faces,
single-threaded ONNX inference): `create_worker_pool(n)`, forked where the platform can,
so the workers need no re-import and inherit what the parent loaded."""
from __future__ import annotations

import os


def default_workers(limit: int = 4) -> int:
    """How many worker processes to start by default: the CPUs this process may use, at most `limit`."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(limit, n))


def create_worker_pool(workers: int):
    """A process pool of `workers` processes (forked where the platform can). The caller closes it."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None).Pool(workers)
