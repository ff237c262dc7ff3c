"""Gradient-free explanations: occlusion sensitivity and RISE, for any model that predicts.

Both are pure functions over a batched predict function: `predict(x)` takes a
float tensor N,3,H,W of RGB values in [0, 1] and returns class probabilities
(N, K) as numpy. Nothing here needs gradients, hooks or weights, so they
explain TorchScript, PyTorch and ONNX models alike (and trained runs, where
they can be compared with Grad-CAM). Perturbed copies of several images are
packed into the same predict batch, so a batch is always full.

- Occlusion sensitivity (Zeiler & Fergus 2014): a window slides over the image
  with a stride; each position is filled with the image's mean colour, and the
  drop of each target's probability is spread over the pixels the window
  covered (averaged over the windows covering a pixel).
- RISE (Petsiuk et al. 2018): n random masks, each a coarse binary grid (cells
  kept with probability p) upsampled bilinearly and randomly shifted; the map
  is the probability-weighted mean of the masks, divided by p. Masked-out
  pixels are blended to the mean colour, as in occlusion, rather than to black.

One set of forward passes serves every target (predicted and true class). Maps
come out like the CAMs of `pipeline.explain.cams`: float32 (n_sets, N, H, W),
negative evidence clipped, min-max scaled per image to [0, 1] (a flat map is 0).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PredictFn = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class OcclusionConfig:
    window: int | None = None            # side of the occluding square; None = a quarter of the image side
    stride: int | None = None            # None = half the window
    batch_size: int = 64                 # perturbed images per predict call


@dataclass(frozen=True)
class RiseConfig:
    n_masks: int = 500
    grid: int = 8                        # the masks' coarse grid is grid x grid cells
    p_keep: float = 0.5
    batch_size: int = 64
    seed: int = 0


# Method name (as stored in heatmaps.method) -> its settings class.
PERTURBATION_METHODS: dict[str, type] = {"occlusion": OcclusionConfig, "rise": RiseConfig}


def _as_targets(target_sets: Sequence[Sequence[int]] | np.ndarray, n: int) -> np.ndarray:
    targets = np.asarray(target_sets, dtype=np.int64)
    if targets.ndim == 1:
        targets = targets[None]
    if targets.shape[1] != n:
        raise ValueError(f"target_sets has {targets.shape[1]} targets per set for {n} images")
    return targets


def _scale(maps: np.ndarray) -> np.ndarray:
    """ReLU, then min-max per map over its last two axes; constant maps become 0."""
    maps = np.maximum(maps, 0.0)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 1e-12).astype(np.float32)


def _batches(n_images: int, n_per_image: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image index, perturbation index) pairs over every image, batch_size at a time."""
    total = n_images * n_per_image
    for start in range(0, total, max(1, batch_size)):
        flat = np.arange(start, min(start + batch_size, total))
        yield flat // n_per_image, flat % n_per_image


def _window_positions(size: int, window: int, stride: int) -> list[int]:
    pos = list(range(0, size - window + 1, stride))
    if pos[-1] != size - window:  # the last window touches the edge
        pos.append(size - window)
    return pos


def compute_occlusion_maps(predict: PredictFn, images: torch.Tensor, target_sets, *,
                           config: OcclusionConfig = OcclusionConfig()) -> np.ndarray:
    """Occlusion sensitivity maps (n_sets, N, H, W) in [0, 1] for RGB [0, 1] images N,3,H,W."""
    n, _, h, w = images.shape
    targets = _as_targets(target_sets, n)
    window = config.window or max(2, min(h, w) // 4)
    stride = config.stride or max(1, window // 2)
    if window > min(h, w):
        raise ValueError(f"occlusion window {window} is larger than the {h}x{w} input")
    boxes = [(y, x) for y in _window_positions(h, window, stride) for x in _window_positions(w, window, stride)]
    images = images.detach().float()
    fill = images.mean(dim=(2, 3), keepdim=True)                       # N,3,1,1
    base = predict(images)
    rows = np.arange(n)
    base_t = np.stack([base[rows, t] for t in targets])                # n_sets, N
    drop = np.zeros((len(targets), n, len(boxes)), np.float64)
    for img, box in _batches(n, len(boxes), config.batch_size):
        x = images[img].clone()
        for k, b in enumerate(box):
            y0, x0 = boxes[b]
            x[k, :, y0:y0 + window, x0:x0 + window] = fill[img[k]]
        probs = predict(x)
        for s in range(len(targets)):
            drop[s, img, box] = base_t[s, img] - probs[np.arange(len(img)), targets[s, img]]
    total = np.zeros((len(targets), n, h, w), np.float64)
    cover = np.zeros((h, w), np.float64)
    for b, (y0, x0) in enumerate(boxes):
        total[:, :, y0:y0 + window, x0:x0 + window] += drop[:, :, b, None, None]
        cover[y0:y0 + window, x0:x0 + window] += 1
    return _scale(total / np.maximum(cover, 1))


def create_rise_masks(n_masks: int, size: tuple[int, int], *, grid: int = 8, p_keep: float = 0.5,
                      seed: int = 0) -> np.ndarray:
    """RISE's masks (n_masks, H, W) float32 in [0, 1]: a grid x grid binary grid (cells kept with
    probability p_keep), upsampled bilinearly to (grid + 1) cells and cropped at a random shift."""
    h, w = size
    rng = np.random.default_rng(seed)
    cell_h, cell_w = int(np.ceil(h / grid)), int(np.ceil(w / grid))
    coarse = torch.from_numpy((rng.random((n_masks, 1, grid, grid)) < p_keep).astype(np.float32))
    up = F.interpolate(coarse, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    dy, dx = rng.integers(0, cell_h, n_masks), rng.integers(0, cell_w, n_masks)
    return np.stack([up[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n_masks)]).astype(np.float32)


def compute_rise_maps(predict: PredictFn, images: torch.Tensor, target_sets, *,
                      config: RiseConfig = RiseConfig()) -> np.ndarray:
    """RISE maps (n_sets, N, H, W) in [0, 1] for RGB [0, 1] images N,3,H,W (masks seeded by config.seed)."""
    n, _, h, w = images.shape
    targets = _as_targets(target_sets, n)
    masks_np = create_rise_masks(config.n_masks, (h, w), grid=config.grid, p_keep=config.p_keep, seed=config.seed)
    masks = torch.from_numpy(masks_np)[:, None]                        # M,1,H,W
    images = images.detach().float()
    fill = images.mean(dim=(2, 3), keepdim=True)
    weights = np.zeros((len(targets), n, config.n_masks), np.float64)   # p_target(image * mask)
    for img, m in _batches(n, config.n_masks, config.batch_size):
        mk = masks[m].to(images.device)
        probs = predict(images[img] * mk + fill[img] * (1 - mk))
        for s in range(len(targets)):
            weights[s, img, m] = probs[np.arange(len(img)), targets[s, img]]
    flat = masks_np.reshape(config.n_masks, -1).astype(np.float64)
    sal = (weights.reshape(-1, config.n_masks) @ flat).reshape(len(targets), n, h, w)
    return _scale(sal / (config.n_masks * config.p_keep))


def compute_perturbation_maps(predict: PredictFn, images: torch.Tensor, target_sets, methods: Sequence[str], *,
                              occlusion: OcclusionConfig = OcclusionConfig(),
                              rise: RiseConfig = RiseConfig()) -> dict[str, np.ndarray]:
    """{method: (n_sets, N, H, W)} for each of `methods` ('occlusion', 'rise')."""
    out = {}
    for m in methods:
        if m == "occlusion":
            out[m] = compute_occlusion_maps(predict, images, target_sets, config=occlusion)
        elif m == "rise":
            out[m] = compute_rise_maps(predict, images, target_sets, config=rise)
        else:
            raise ValueError(f"unknown gradient-free method {m!r}; choose from {', '.join(PERTURBATION_METHODS)}")
    return out


def compute_energy_agreement(energies: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image, the Spearman rank correlation of two methods' region energies (N, R) each, e.g.
    occlusion against Grad-CAM over the facial regions: 1 = the same ranking of regions. NaN where a
    row is constant or unknown (no ranking to compare)."""
    from pipeline.explain.faithfulness import average_ranks

    a, b = np.asarray(energies, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"energy arrays differ in shape: {a.shape} vs {b.shape}")
    out = np.full(len(a), np.nan)
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    if ok.any():
        ra, rb = average_ranks(a[ok]), average_ranks(b[ok])
        ra -= ra.mean(1, keepdims=True)
        rb -= rb.mean(1, keepdims=True)
        denom = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
        out[ok] = np.divide((ra * rb).sum(1), denom, out=np.full(len(ra), np.nan), where=denom > 0)
    return out


def summarise_agreement(energies: dict[str, np.ndarray], emotions: Sequence[str], reference: str, *,
                        n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """explanation_metrics rows 'agree_<reference>_spearman' for every other method: the mean per-image
    Spearman correlation of its region energies with the reference method's (same images, same order),
    overall and per emotion, with bootstrap CIs."""
    from pipeline.explain.faithfulness import summarise

    rows: list[dict] = []
    for method, e in energies.items():
        if method != reference:
            rows += summarise(compute_energy_agreement(e, energies[reference]), emotions, method,
                              f"agree_{reference}_spearman", n_boot=n_boot, seed=seed)
    return rows


def create_predict_fn(model: torch.nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      device: str | torch.device = "cpu") -> PredictFn:
    """A predict function over RGB [0, 1] batches: softmax(model(transform(x))), no gradients, eval mode.
    transform: e.g. the model's normalisation (None for models that take [0, 1] input, such as
    pipeline.external.models.CardModel)."""
    def predict(x: torch.Tensor) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                x = x.to(device)
                logits = model(transform(x) if transform is not None else x)
                return torch.softmax(logits.float(), 1).cpu().numpy()
        finally:
            model.train(was_training)
    return predict
