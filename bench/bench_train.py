"""Benchmark: training throughput of each architecture on random uint8 images (CPU).

Prints seconds per epoch-equivalent of `--n` images (augmentation + forward +
backward + optimiser step) and images per second, for each architecture at its
recipe's input size, with the recipe's augmentation. Not a test: it prints.

  python bench/bench_train.py [--n 512] [--archs lightcnn,lightcnn-half,resnet18,resnet50] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {"lightcnn": 64, "lightcnn-half": 64, "resnet18": 112, "resnet50": 224}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="images per measured epoch")
    parser.add_argument("--archs", default="lightcnn,lightcnn-half,resnet18,resnet50")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from pipeline.train.models import create_model
    from pipeline.train.recipes import get_recipe
    from pipeline.train.loop import SplitTensors, fit

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n={args.n}, batch {args.batch_size}")
    for arch in args.archs.split(","):
        recipe = get_recipe("resnet50-transfer" if arch.startswith("resnet") else "lightcnn-softlabel")
        size = SIZES[arch]
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (args.n, min(size, 100), min(size, 100), 3), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 6, (args.n,), generator=g)
        meta = {"image_size": size, "mean": recipe.mean, "std": recipe.std, "num_classes": 6,
                "classes": [str(i) for i in range(6)]}
        config = replace(recipe.train, epochs=2, batch_size=args.batch_size, early_stopping_patience=None)
        model = create_model(arch, 6)
        t0 = time.perf_counter()
        result = fit(model, SplitTensors(x, y), SplitTensors(x[:0], y[:0]), meta, config, progress=False,
                     log=lambda s: None)
        per_epoch = [h["seconds"] for h in result.history]
        print(f"{arch:14s} {size:3d}px  epoch seconds {', '.join(f'{s:.1f}' for s in per_epoch)}  "
              f"-> {args.n / per_epoch[-1]:.0f} img/s (total {time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
