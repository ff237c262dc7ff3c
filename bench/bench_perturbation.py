"""Cost of the gradient-free explanations (occlusion, RISE) per image, against Grad-CAM (CPU).

Prints, per model, seconds per image of a plain forward pass, Grad-CAM
(predicted + true class, `explain.cams.compute_cams`), occlusion sensitivity
and RISE (both targets from the same perturbed passes), their ratio to
Grad-CAM, and the settings and predict batch sizes used. The models run
through the same path `explain` uses for them: PyTorch modules directly, and
with --onnx also as an ONNX export run by onnxruntime (`external.models`).
Random weights: cost does not depend on training.

    python bench/bench_perturbation.py [--models lightcnn-half:64,lightcnn:64,resnet18:112]
        [--images 8] [--batch 64] [--rise-masks 500] [--onnx] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.explain.cams import compute_cams, resolve_target_layer  # noqa: E402
from pipeline.explain.perturbation import (OcclusionConfig, RiseConfig, compute_occlusion_maps,  # noqa: E402
                                           compute_rise_maps, create_predict_fn)
from pipeline.train.models import create_model  # noqa: E402


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _onnx_predict(model, size: int, folder: Path):
    from pipeline.external.card import InputSpec, load_card, render_card
    from pipeline.external.models import load_external_model

    x = torch.rand(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(folder / "m.onnx"), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    card = folder / "m.toml"
    card.write_text(render_card(name="bench", format="onnx", file="m.onnx", classes=[f"c{i}" for i in range(7)],
                                input=InputSpec(size=size)))
    return create_predict_fn(load_external_model(load_card(card)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lightcnn-half:64,lightcnn:64,resnet18:112", help="arch:input_size, comma-separated")
    p.add_argument("--images", type=int, default=8, help="images explained per measurement")
    p.add_argument("--batch", type=int, default=64, help="perturbed images per predict call (and Grad-CAM batch)")
    p.add_argument("--rise-masks", type=int, default=RiseConfig().n_masks)
    p.add_argument("--onnx", action="store_true", help="also time the models exported to ONNX (onnxruntime)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.images
    occ = OcclusionConfig(batch_size=args.batch)
    rise = RiseConfig(n_masks=args.rise_masks, batch_size=args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n} images per measurement, "
          f"Grad-CAM batch {min(n, args.batch)} images, occlusion/RISE batch {args.batch} perturbed images per "
          f"forward pass; occlusion window = side/4, stride = window/2; RISE {rise.n_masks} masks, "
          f"grid {rise.grid}, p {rise.p_keep}")
    print(f"{'model':<15}{'input':>6}{'runtime':>13}  {'method':<22}{'ms/image':>10}{'x Grad-CAM':>12}{'passes/img':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in (s for s in args.models.split(",") if s):
            arch, size = spec.split(":")
            size = int(size)
            model = create_model(arch, 7).eval()
            x = torch.rand(n, 3, size, size)
            targets = [np.arange(n) % 7, (np.arange(n) + 1) % 7]
            layer, _ = resolve_target_layer(model)
            window = max(2, size // 4)
            passes_occ = len(range(0, size - window + 1, window // 2)) ** 2 + 1

            def gradcam():
                for b in range(0, n, args.batch):
                    compute_cams(model, x[b:b + args.batch], [t[b:b + args.batch] for t in targets], ["gradcam"],
                                 layer)
            gradcam()
            t_cam = min(_seconds(gradcam) for _ in range(2)) / n
            predict = create_predict_fn(model)
            t_fwd = min(_seconds(lambda: predict(x)) for _ in range(3)) / n
            rows = [("torch", "plain forward", t_fwd, 1), ("torch", "gradcam (pred+true)", t_cam, 1)]
            runtimes = [("torch", predict)]
            if args.onnx:
                runtimes.append(("onnxruntime", _onnx_predict(model, size, Path(tmp))))
            for runtime, fn in runtimes:
                rows.append((runtime, "occlusion", _seconds(lambda: compute_occlusion_maps(fn, x, targets, config=occ)) / n,
                             passes_occ))
                rows.append((runtime, "rise", _seconds(lambda: compute_rise_maps(fn, x, targets, config=rise)) / n,
                             rise.n_masks))
            for runtime, name, t, passes in rows:
                print(f"{arch:<15}{size:>6}{runtime:>13}  {name:<22}{t * 1000:>10.1f}{t / t_cam:>12.1f}{passes:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
