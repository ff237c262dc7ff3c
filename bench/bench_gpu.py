"""Benchmark: images/s of the ResNet-50 recipe on a GPU, at RAF-DB's size.

RAF-DB's aligned crops are 100x100; the resnet50-transfer recipe resizes them to
224 on the device, with its augmentation, mixed precision (AMP) and channels-last
memory, the uint8 batches staged in pinned memory: the path `train` takes on
CUDA. Prints training images/s (augmentation + forward + backward + step, the
second epoch so that cuDNN's autotuning and the allocator's warm-up are left out)
and inference images/s (`predict_probabilities`). Not a test: it prints.

  python bench/bench_gpu.py [--n 2048] [--batch-size 64] [--device cuda:0] [--no-amp]
  python bench/bench_gpu.py --device cpu --n 64      # the same code path, on CPU, as a smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RAFDB_SIDE = 100      # RAF-DB basic's aligned images are 100x100
RAFDB_CLASSES = 7


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="images per measured epoch (RAF-DB train: 12,271)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64, the recipe's")
    parser.add_argument("--device", default="cuda", help="default cuda; cpu runs the same path slowly")
    parser.add_argument("--no-amp", action="store_true", help="float32 instead of mixed precision")
    args = parser.parse_args()

    import torch

    from pipeline.train.loop import SplitTensors, fit, predict_probabilities
    from pipeline.train.models import create_model
    from pipeline.train.recipes import get_recipe

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False): nothing to measure; "
              "run this on a machine with a GPU, or pass --device cpu for a smoke run")
        return 0
    recipe = get_recipe("resnet50-transfer")
    config = replace(recipe.train, epochs=2, batch_size=args.batch_size, early_stopping_patience=None,
                     scheduler="none", amp=not args.no_amp)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, RAFDB_SIDE, RAFDB_SIDE, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, RAFDB_CLASSES, (args.n,), generator=g)
    train = SplitTensors(images=images, labels=labels)
    val = SplitTensors(images=images[:0], labels=labels[:0])
    meta = {"image_size": recipe.image_size, "mean": list(recipe.mean), "std": list(recipe.std),
            "num_classes": RAFDB_CLASSES, "classes": [str(i) for i in range(RAFDB_CLASSES)]}
    model = create_model(recipe.arch, RAFDB_CLASSES, weights="none")
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__} on {name}; resnet50-transfer at {recipe.image_size} px from "
          f"{RAFDB_SIDE}x{RAFDB_SIDE} uint8, batch {args.batch_size}, n={args.n}, "
          f"AMP {'on' if config.amp and args.device.startswith('cuda') else 'off'}, channels-last")
    result = fit(model, train, val, meta, config, args.device, progress=False, log=lambda m: None)
    seconds = result.history[-1]["seconds"]
    print(f"train: {args.n / seconds:8.1f} images/s ({seconds:.2f} s for the second epoch)")
    predict_probabilities(model, images[:args.batch_size], meta, args.device, args.batch_size)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    predict_probabilities(model, images, meta, args.device, 256)
    seconds = time.perf_counter() - t0
    print(f"infer: {args.n / seconds:8.1f} images/s (batch 256)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
