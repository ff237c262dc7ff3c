"""Benchmark: ROAD's noisy linear imputation, pytorch-grad-cam's solver against ours.

    python bench/bench_road.py [--n 50] [--size 64]

For `--n` images (3×size×size, smooth random content) and the eight masks ROAD
uses by default here (most- and least-relevant-first at 20/40/60/80 % of a
smooth random map), it times the library's `NoisyLinearImputer` (one sparse LU
per image and mask), our banded Cholesky (`solver="banded"`, the CPU default)
and our batched conjugate gradients (`solver="cg"`, the GPU default), and prints
milliseconds per image and mask (wall and CPU time of this process: on a busy
machine read the CPU time) and each solver's largest difference from the
library. Prints figures, never asserts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch
    from torch import nn
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from pipeline.explain.faithfulness import _road_keep_masks, noisy_linear_impute

    gen = torch.Generator().manual_seed(0)
    n, size = args.n, args.size
    x = nn.functional.interpolate(torch.randn(n, 3, size // 8, size // 8, generator=gen), size=(size, size),
                                  mode="bilinear") + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    cams = nn.functional.interpolate(torch.rand(n, 1, 8, 8, generator=gen), size=(size, size),
                                     mode="bilinear")[:, 0].numpy()
    masks = [torch.from_numpy(k) for morf in (True, False) for k in _road_keep_masks(cams, (20, 40, 60, 80), morf)]

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = torch.stack([fn(keep) for keep in masks])
        return out, (time.perf_counter() - wall), (time.process_time() - cpu)

    library = NoisyLinearImputer(noise=0.0)
    ref, lib_wall, lib_cpu = timed(lambda keep: torch.stack([library(x[i], keep[i].float()) for i in range(n)]))
    per = 1000.0 / (n * len(masks))
    print(f"bench_road: {n} images of 3x{size}x{size}, {len(masks)} masks each; torch threads {torch.get_num_threads()}")
    print(f"  library (sparse LU per image):  {lib_wall * per:6.2f} ms wall, {lib_cpu * per:6.2f} ms CPU per image and mask")
    for solver in ("banded", "cg"):
        out, wall, cpu = timed(lambda keep: noisy_linear_impute(x, keep, noise=0.0, solver=solver))
        diff = float((out - ref).abs().max())
        print(f"  ours, solver={solver:6s}:          {wall * per:6.2f} ms wall, {cpu * per:6.2f} ms CPU per image and mask; "
              f"{lib_wall / wall:4.1f}x the library's speed; max |diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
