"""Class activation maps (CAMs) for batches of images, and their compact storage.

The CAM formulas are pytorch-grad-cam's (`GradCAM`, `GradCAMPlusPlus`,
`HiResCAM`, `XGradCAM`, `LayerCAM`, `EigenCAM`, `ScoreCAM`: each class's
`get_cam_image` / `get_cam_weights` turns a target layer's activations and
gradients into a map, and `scale_cam_image` rescales it). What this module does
differently is how activations and gradients are obtained, so that one batch
costs little more than a plain forward pass:

- one forward pass serves every method and every target (predicted and true
  class): the target layer's output is captured by a forward hook;
- the hook hands the rest of the network a fresh leaf copy of that output and
  switches autograd on only from there, so the layers below the target layer
  run without building a graph, and a backward pass goes through the head only
  (the gradient of a class score with respect to the target layer's output does
  not depend on anything below it, so the maps equal the library's own);
- the hook lives in a context manager per batch and is removed on exit, even on
  error, and nothing outlives the batch, so thousands of images do not grow memory.

ScoreCAM is computed with the library's formula, one image at a time but batched
over channels and targets (one masked forward pass scores every class at once),
without the library's per-image progress bar; it still costs one forward pass per
channel of the target layer and is never a default.

Maps come out as float32 arrays in [0, 1] (min-max scaled per image, as the
library does). pipeline.explain.codec stores one as `cam_size`x`cam_size` uint8
bytes (32x32 = 1 KB), the `heatmaps.cam` column's format.

Grad-CAM and Grad-CAM++ (the demo's methods) and the rescaling are written here,
equal to the library's (tests compare every method); the other methods take their
formulas from pytorch-grad-cam, imported on first use, not with this module: its
package pulls torchvision's model zoo, scikit-learn and torch._dynamo (3 s).
"""
from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.constants import ENERGY_COLUMNS

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM


class _LazyMethods(Mapping):
    """Method name -> pytorch-grad-cam class, imported on first look-up: the
    package's __init__ pulls torchvision's model zoo and scikit-learn (seconds),
    which `import pipeline.explain.cams` (and the method-name checks of the CLI)
    should not pay for."""

    def __init__(self, paths: dict[str, str]):
        self._paths = paths

    def __getitem__(self, name: str) -> type[BaseCAM]:
        module, cls = self._paths[name].split(":")
        return getattr(importlib.import_module(module), cls)

    def __contains__(self, name: object) -> bool:  # Mapping's would import the class to answer
        return name in self._paths

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


# Method name (as stored in heatmaps.method) -> pytorch-grad-cam class.
METHODS: Mapping[str, type[BaseCAM]] = _LazyMethods({
    "gradcam": "pytorch_grad_cam.grad_cam:GradCAM",
    "gradcam++": "pytorch_grad_cam.grad_cam_plusplus:GradCAMPlusPlus",
    "hirescam": "pytorch_grad_cam.hirescam:HiResCAM",
    "xgradcam": "pytorch_grad_cam.xgrad_cam:XGradCAM",
    "layercam": "pytorch_grad_cam.layer_cam:LayerCAM",
    "eigencam": "pytorch_grad_cam.eigen_cam:EigenCAM",
    "scorecam": "pytorch_grad_cam.score_cam:ScoreCAM",
})
GRADIENT_METHODS: frozenset[str] = frozenset({"gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"})
CLASS_AGNOSTIC_METHODS: frozenset[str] = frozenset({"eigencam"})  # same map whatever the target
DEFAULT_METHODS: tuple[str, ...] = ("gradcam",)


def validate_methods(methods: Sequence[str], known: Sequence[str] = METHODS,
                     what: str = "CAM method") -> tuple[str, ...]:
    """The method names, lower-cased, de-duplicated and checked against `known` (ValueError naming a bad one)."""
    out = []
    for m in methods:
        key = m.strip().lower()
        if key not in known:
            raise ValueError(f"unknown {what} {m!r}; choose from {', '.join(known)}")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError(f"no {what} given; choose from {', '.join(known)}")
    return tuple(out)


# --------------------------------------------------------------------------- target layer

def find_layer(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule called `name` ("layer4.1", "layer4[-1]", "block3.2.body"),
    and its canonical dotted name (negative indices resolved). ValueError when absent."""
    parts = [p for p in re.split(r"[.\[\]]+", name.strip()) if p]
    if not parts:
        raise ValueError(f"empty target layer name {name!r}")
    module, resolved = model, []
    for part in parts:
        children = dict(module.named_children())
        if re.fullmatch(r"-?\d+", part) and isinstance(module, (nn.Sequential, nn.ModuleList)):
            idx = int(part)
            if not -len(module) <= idx < len(module):
                raise ValueError(f"target layer {name!r}: index {idx} out of range for "
                                 f"{'.'.join(resolved) or 'model'} ({len(module)} children)")
            idx %= len(module)
            module, part = module[idx], str(idx)
        elif part in children:
            module = children[part]
        else:
            here = ".".join(resolved) or "the model"
            raise ValueError(f"target layer {name!r}: {here} has no child {part!r} "
                             f"(children: {', '.join(children) or 'none'})")
        resolved.append(part)
    return module, ".".join(resolved)


def resolve_target_layer(model: nn.Module, name: str | None = None) -> tuple[nn.Module, str]:
    """`name`'s module, or the model's default target layer (layer4[-1] for ResNets,
    the last block for the light CNN) when name is None."""
    if name:
        return find_layer(model, name)
    from pipeline.train.models import default_target_layer

    return default_target_layer(model)


# --------------------------------------------------------------------------- capture

class _Capture:
    activation: torch.Tensor | None = None


@contextlib.contextmanager
def capture_target_layer(model: nn.Module, layer: nn.Module) -> Iterator[_Capture]:
    """Hook `layer` for one batch: its output is replaced by a leaf tensor that
    requires grad (kept as `capture.activation`) and autograd is switched on
    from there. Run the forward pass under `torch.no_grad()`; the hook is removed
    on exit, also on error."""
    capture = _Capture()

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target layer {type(module).__name__} returns {type(output).__name__}, "
                            "not a tensor; choose another --target-layer")
        leaf = output.detach().requires_grad_(True)
        capture.activation = leaf
        # The enclosing no_grad() restores the previous grad mode when it exits.
        torch.set_grad_enabled(True)
        # A clone, so in-place operations downstream (ReLU(inplace=True)) cannot
        # overwrite the stored activation or trip over a leaf.
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()
        capture.activation = None


# --------------------------------------------------------------------------- CAM formulas

class _NoHooks:
    def release(self) -> None:  # what BaseCAM.__del__ calls
        pass


def _method_instance(method: str) -> BaseCAM:
    # The formulas (get_cam_image/get_cam_weights) only need the object, not the
    # hooks BaseCAM.__init__ would register on the model, so skip __init__.
    inst = METHODS[method].__new__(METHODS[method])
    inst.activations_and_grads = _NoHooks()
    return inst


def _eigen_projection(activations: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's get_2d_projection (first principal component of the
    centred activations) with an economy SVD: the same first component, but
    20x faster for wide layers (2048 channels) than the library's full SVD."""
    from pipeline.workers import single_blas_thread

    activations = np.nan_to_num(activations.astype(np.float32, copy=False))
    out = []
    # Many small SVDs: BLAS threads only add contention (10x slower on 2 busy cores).
    with single_blas_thread():
        for a in activations:
            flat = a.reshape(a.shape[0], -1).T
            flat = flat - flat.mean(axis=0)
            _, _, vt = np.linalg.svd(flat, full_matrices=False)
            out.append((flat @ vt[0]).reshape(a.shape[1:]))
    return np.float32(out)


def _min_max(cams: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling of (B, H, W), the library's `scale_cam_image` without resizing."""
    cams = cams - cams.min(axis=(1, 2), keepdims=True)
    return cams / (np.float32(1e-7) + cams.max(axis=(1, 2), keepdims=True))


def _scale(cam: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """The library's post-processing: ReLU, min-max per image, resize to (W, H)
    (cv2's bilinear resize, as `scale_cam_image` does), then ReLU and min-max
    again (its multi-layer aggregation with one layer)."""
    import cv2

    cam = _min_max(np.maximum(cam, 0).astype(np.float32, copy=False))
    if tuple(cam.shape[-2:][::-1]) != tuple(out_size):
        cam = np.float32([cv2.resize(c, tuple(out_size)) for c in cam])
    return _min_max(np.maximum(cam, 0)).astype(np.float32, copy=False)


def _gradcam_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM's channel weights: the spatial mean of the gradients."""
    return grads.mean(axis=(2, 3))


def _gradcam_plusplus_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++'s channel weights (Chattopadhyay et al. 2018, eq. 19, with the
    library's eps and its zeroing of alpha where the gradient is 0)."""
    g2 = grads ** 2
    sum_acts = acts.sum(axis=(2, 3), keepdims=True)
    alpha = g2 / (2 * g2 + sum_acts * g2 * grads + 0.000001)
    alpha = np.where(grads != 0, alpha, 0)
    return (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))


# Methods whose channel weights are written here (tested equal to the library's), so the
# default methods never import pytorch-grad-cam (3 s: its package pulls torchvision's
# model zoo, scikit-learn and torch._dynamo).
_CHANNEL_WEIGHTS = {"gradcam": _gradcam_weights, "gradcam++": _gradcam_plusplus_weights}


def _scorecam_weights(model: nn.Module, inputs: torch.Tensor, activations: torch.Tensor,
                      target_sets: np.ndarray, batch_size: int) -> np.ndarray:
    """ScoreCAM's channel weights (pytorch-grad-cam's formula) for each target set:
    softmax over channels of the target logit on the input masked by each
    upsampled, min-max-scaled activation map. Returns (n_sets, B, C)."""
    n_sets, b = target_sets.shape
    c = activations.shape[1]
    weights = np.empty((n_sets, b, c), dtype=np.float32)
    upsample = nn.UpsamplingBilinear2d(size=tuple(inputs.shape[-2:]))
    with torch.no_grad():
        for i in range(b):
            up = upsample(activations[i:i + 1].float())[0]            # C,H,W
            flat = up.reshape(c, -1)
            mins = flat.min(dim=1).values.view(c, 1, 1)
            maxs = flat.max(dim=1).values.view(c, 1, 1)
            up = (up - mins) / (maxs - mins + 1e-8)
            scores = []
            for start in range(0, c, batch_size):
                masked = inputs[i:i + 1] * up[start:start + batch_size, None]
                scores.append(model(masked).float())
            scores = torch.cat(scores)                                  # C,K
            for s in range(n_sets):
                weights[s, i] = torch.softmax(scores[:, int(target_sets[s, i])], dim=0).cpu().numpy()
    return weights


def compute_cams(model: nn.Module, inputs: torch.Tensor, target_sets: Sequence[Sequence[int]] | np.ndarray,
                 methods: Sequence[str], layer: nn.Module, out_size: tuple[int, int] | None = None,
                 scorecam_batch_size: int = 128) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """CAMs of one batch for several methods and targets, from one forward pass.

    inputs: normalised N,C,H,W batch (not modified).
    target_sets: class indices, shape (n_sets, N): e.g. [predicted, true].
    layer: the target layer module (see resolve_target_layer).
    out_size: (width, height) of the maps; default the input's size.
    Returns ({method: float32 array (n_sets, N, H, W) in [0, 1]}, logits (N, K)).
    The model is put in eval mode for the call and its mode restored after.
    """
    methods = validate_methods(methods)
    targets = np.asarray(target_sets, dtype=np.int64)
    if targets.ndim == 1:
        targets = targets[None]
    n = inputs.shape[0]
    if targets.shape[1] != n:
        raise ValueError(f"target_sets has {targets.shape[1]} targets per set for a batch of {n}")
    if out_size is None:
        out_size = (int(inputs.shape[-1]), int(inputs.shape[-2]))
    was_training = model.training
    model.eval()
    try:
        with capture_target_layer(model, layer) as cap:
            with torch.no_grad():
                logits = model(inputs)
            if cap.activation is None:
                raise ValueError("the target layer was not called in the forward pass; choose another --target-layer")
            act_t = cap.activation
            grads: list[np.ndarray] = []
            if any(m in GRADIENT_METHODS for m in methods):
                if not logits.requires_grad:
                    raise ValueError("the model's output does not depend on the target layer; "
                                     "choose another --target-layer")
                tgt = torch.as_tensor(targets, device=logits.device)
                for s in range(len(targets)):
                    score = logits.gather(1, tgt[s].view(-1, 1)).sum()
                    (g,) = torch.autograd.grad(score, act_t, retain_graph=s < len(targets) - 1)
                    grads.append(g.detach().float().contiguous().cpu().numpy())
            act_t = act_t.detach()
            acts = act_t.float().contiguous().cpu().numpy()
            logits_np = logits.detach().float().cpu().numpy()
            del logits
        scorecam_w = None
        if "scorecam" in methods:  # after the hook is gone: plain no-grad forward passes
            scorecam_w = _scorecam_weights(model, inputs, act_t, targets, scorecam_batch_size)
        del act_t
    finally:
        model.train(was_training)

    return compute_cams_from_activations(inputs, acts, grads, targets, methods, out_size,
                                         scorecam_weights=scorecam_w), logits_np


def compute_cams_from_activations(inputs: torch.Tensor, acts: np.ndarray, grads: Sequence[np.ndarray],
                                  target_sets: np.ndarray, methods: Sequence[str], out_size: tuple[int, int], *,
                                  scorecam_weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The maps of each method from a target layer's activations (B, C, h, w) and, for the
    gradient methods, the gradient of each target set's scores with respect to them
    (one (B, C, h, w) array per set). Used by compute_cams, and by models whose layer
    cannot be hooked (TorchScript: pipeline.external.models). Returns
    {method: float32 (n_sets, B, H, W) in [0, 1]}."""
    targets = np.asarray(target_sets, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for method in methods:
        per_set = []
        if method in CLASS_AGNOSTIC_METHODS:
            cam = _scale(_eigen_projection(acts), out_size)
            per_set = [cam] * len(targets)
        elif method == "scorecam":
            if scorecam_weights is None:
                raise ValueError("scorecam needs its channel weights (compute_cams computes them)")
            for s in range(len(targets)):
                raw = (scorecam_weights[s][:, :, None, None] * acts).sum(axis=1)
                per_set.append(_scale(raw, out_size))
        elif method in _CHANNEL_WEIGHTS:
            for s in range(len(targets)):
                weights = _CHANNEL_WEIGHTS[method](acts, grads[s])
                per_set.append(_scale((weights[:, :, None, None] * acts).sum(axis=1), out_size))
        else:
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            inst = _method_instance(method)
            for s in range(len(targets)):
                cls_targets = [ClassifierOutputTarget(int(t)) for t in targets[s]]
                # the formulas ignore the layer argument: they only read activations and gradients
                raw = inst.get_cam_image(inputs, None, cls_targets, acts, grads[s], False)
                per_set.append(_scale(raw, out_size))
        out[method] = np.stack(per_set).astype(np.float32)
    return out


def compute_heatmap_summary(heatmaps, outcomes, split: str):
    """The heatmap_summary rows of one method: its 'pred'-target maps averaged per (true emotion, correct).

    heatmaps: rows as stored in `heatmaps` (image_id, target, cam_size, cam as
    uint8 bytes, e_* energies; NaN/None = unknown). outcomes: image_id,
    true_label, correct of the explained predictions. Returns one row per
    group: emotion, correct, split, n, the mean of each e_* (unknown values
    skipped, as SQL avg does; the float32 values as stored), cam_size and
    mean_cam, the mean of the stored maps / 255 as float32 little-endian bytes.
    Pure: no I/O.
    """
    columns = ["emotion", "correct", "split", "n", *ENERGY_COLUMNS, "cam_size", "mean_cam"]
    pred = heatmaps[heatmaps["target"] == "pred"]
    if pred.empty:
        return pd.DataFrame(columns=columns)
    df = pred.merge(outcomes[["image_id", "true_label", "correct"]], on="image_id", how="inner", validate="1:1")
    energies = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce").astype(np.float32).astype(np.float64)
                             if c in df.columns else np.nan for c in ENERGY_COLUMNS}, index=df.index)
    rows = []
    for (emotion, correct), g in df.groupby(["true_label", "correct"], sort=True):
        sizes = g["cam_size"].unique()
        if len(sizes) != 1:
            raise ValueError(f"heatmaps of one method mix cam sizes {sorted(sizes)}; cannot average them")
        size = int(sizes[0])
        total = np.zeros(size * size, np.int64)
        cams = g["cam"].tolist()
        for s in range(0, len(cams), 65536):  # bounded memory on big runs
            block = np.frombuffer(b"".join(cams[s:s + 65536]), dtype=np.uint8).reshape(-1, size * size)
            total += block.sum(axis=0, dtype=np.int64)
        mean_cam = (total / (255.0 * len(g))).astype("<f4").reshape(size, size)
        rows.append({"emotion": emotion, "correct": bool(correct), "split": split, "n": len(g),
                     **energies.loc[g.index].mean().to_dict(), "cam_size": size, "mean_cam": mean_cam.tobytes()})
    return pd.DataFrame(rows, columns=columns)
