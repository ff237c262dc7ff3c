"""pipeline.workers: the BLAS thread limit the explanation loops run under."""
from __future__ import annotations


def test_single_blas_thread_holds_every_blas_library_to_one_thread_and_restores_them():
    """numpy's and scipy's own BLAS builds both (a fresh library scan, not the cached
    controller's view), and the counts before are back afterwards."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    from pipeline.workers import single_blas_thread

    def blas():
        return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    before = blas()
    assert before, "no BLAS library found"
    with single_blas_thread():
        inside = blas()
    assert set(inside) == set(before)
    assert set(inside.values()) == {1}
    assert blas() == before
