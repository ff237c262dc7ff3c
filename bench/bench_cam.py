"""Cost of CAMs relative to a plain forward pass of the same model and batch (CPU).

Prints, per model and method, seconds per batch and the ratio to a plain
no-grad forward pass: for the predicted class only, and for predicted + true
class together (what `explain` computes for misclassified images). The
library's own `__call__` (hooks + full backward) is timed for Grad-CAM as a
reference. Random weights: cost does not depend on training.

    python bench/bench_cam.py [--models lightcnn:64:64,resnet18:112:32,resnet50:224:8]
                              [--methods gradcam,...] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.explain.cams import METHODS, compute_cams, resolve_target_layer  # noqa: E402
from pipeline.train.models import create_model  # noqa: E402


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ratio(fn, forward, repeats: int) -> tuple[float, float]:
    """(median seconds of fn, median of fn/forward timed back to back): pairing
    each run with a forward pass right before it cancels most of the noise of a
    shared machine."""
    fn()  # warm-up
    times, ratios = [], []
    for _ in range(repeats):
        tf = _seconds(forward)
        t = _seconds(fn)
        times.append(t)
        ratios.append(t / tf)
    return statistics.median(times), statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lightcnn:64:64,resnet18:112:32,resnet50:224:8",
                   help="arch:input_size:batch, comma-separated")
    p.add_argument("--methods", default=",".join(m for m in METHODS if m != "scorecam"))
    p.add_argument("--scorecam-models", default="lightcnn-half:64:8",
                   help="models on which ScoreCAM is timed too (it costs one forward per channel)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = [m for m in args.methods.split(",") if m]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'model':<16}{'input':>6}{'batch':>6}  {'method':<18}{'s/batch':>9}{'x fwd (pred)':>14}{'x fwd (pred+true)':>19}")
    specs = [(s, methods) for s in args.models.split(",") if s]
    specs += [(s, ["scorecam"]) for s in args.scorecam_models.split(",") if s]
    for spec, meths in specs:
        arch, size, batch = spec.split(":")
        size, batch = int(size), int(batch)
        model = create_model(arch, 7).eval().to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        layer, _ = resolve_target_layer(model)

        def forward():
            with torch.no_grad():
                model(x)
        forward()
        t_fwd = statistics.median(_seconds(forward) for _ in range(args.repeats))
        print(f"{arch:<16}{size:>6}{batch:>6}  {'plain forward':<18}{t_fwd:>9.4f}{1.0:>14.2f}")
        pred = np.arange(batch) % 7
        true = (pred + 1) % 7
        reps = 1 if meths == ["scorecam"] else args.repeats
        for method in meths:
            t1, r1 = _ratio(lambda: compute_cams(model, x, [pred], [method], layer), forward, reps)
            _, r2 = _ratio(lambda: compute_cams(model, x, [pred, true], [method], layer), forward, reps)
            print(f"{'':<28}  {method:<18}{t1:>9.4f}{r1:>14.2f}{r2:>19.2f}")
        if meths != ["scorecam"]:
            t_all, r_all = _ratio(lambda: compute_cams(model, x, [pred, true], meths, layer), forward, args.repeats)
            print(f"{'':<28}  {'all ' + str(len(meths)) + ' together':<18}{t_all:>9.4f}{'':>14}{r_all:>19.2f}")
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            def library():
                with GradCAM(model, [layer]) as cam:
                    cam(x, [ClassifierOutputTarget(int(c)) for c in pred])
            t_lib, r_lib = _ratio(library, forward, args.repeats)
            print(f"{'':<28}  {'library GradCAM':<18}{t_lib:>9.4f}{r_lib:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
