"""Is an explanation any good? Faithfulness, a sanity check, and ground-truth localisation.

- Faithfulness (pytorch-grad-cam's metrics, computed here batched and tested equal to the
  library's): ROAD (remove and debias, Rong et
  al. 2022: pixels imputed from their neighbours in order of CAM relevance;
  most-relevant-first should hurt the target's probability, least-relevant-first
  should not) and the confidence change when the input is multiplied by the CAM.
  ROAD's imputation is our own batched solver (`noisy_linear_impute`, tested
  against the library's), every image and percentile of a batch in one call.
- Sanity check (Adebayo et al. 2018, model-parameter randomisation): the same
  method on the trained model and on a copy whose later layers are
  re-initialised; maps that barely change do not depend on what the model
  learned, and the check fails.
- Ground truth (synthetic faces, whose action-unit regions are known): share of
  CAM energy inside the regions and the pointing game (is the peak inside),
  against a uniform map and a shuffled one (another image's CAM, which keeps the
  face-centred prior of aligned crops).

Per-image values are pure numpy; `summarise` turns them into
explanation_metrics rows with percentile-bootstrap confidence intervals over images.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.explain.checks import ENERGY_FACTOR, POINTING_MARGIN

SANITY_MODES: tuple[str, ...] = ("cascading", "head", "full")


# --------------------------------------------------------------------------- statistics

def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, ci_low, ci_high, n) of the finite values; percentile bootstrap over them.
    NaNs everywhere when there are none; no interval for a single value."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n == 1 or n_boot <= 0:
        return mean, float("nan"), float("nan"), n
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(lo), float(hi), n


def summarise(values: Sequence[float] | np.ndarray, emotions: Sequence[str] | None, method: str, metric: str,
              n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """explanation_metrics rows (method, metric, emotion, value, ci_low, ci_high, n, passed=None)
    for all images ('all') and, when emotions are given, per emotion."""
    x = np.asarray(values, dtype=np.float64)
    groups: list[tuple[str, np.ndarray]] = [("all", np.ones(len(x), dtype=bool))]
    if emotions is not None:
        em = np.asarray(emotions, dtype=object)
        groups += [(e, em == e) for e in sorted(set(em.tolist()))]
    rows = []
    for name, sel in groups:
        mean, lo, hi, n = bootstrap_mean_ci(x[sel], n_boot=n_boot, seed=seed)
        if n == 0:
            continue
        rows.append(dict(method=method, metric=metric, emotion=name, value=mean, ci_low=lo, ci_high=hi,
                         n=n, passed=None))
    return rows


# --------------------------------------------------------------------------- faithfulness

# Rong et al.'s neighbour weights (pytorch-grad-cam's `neighbors_weights`): each
# imputed pixel is the weighted mean of its in-image 8-neighbours, edges 1/6,
# corners 1/12; as a 3x3 kernel that is (outer([1,2,1], [1,2,1]) - 4 * centre) / 12.
ROAD_NOISE = 0.01
IMPUTE_TOLERANCE = 1e-4


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the 8 neighbours of every pixel of (..., H, W); pixels
    outside the image count as absent (zero), as in the library's system."""
    pad_h = nn.functional.pad(v, (0, 0, 1, 1))
    t = pad_h[..., :-2, :] + 2 * v + pad_h[..., 2:, :]
    pad_w = nn.functional.pad(t, (1, 1))
    return (pad_w[..., :-2] + 2 * t + pad_w[..., 2:] - 4 * v) / 12


# The 8 neighbours (dy, dx, weight), and the 4 of them later in row-major order (the upper band).
_NEIGHBOURS = tuple((dy, dx, 1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                    if dy or dx)
_LATER_NEIGHBOURS = tuple(n for n in _NEIGHBOURS if n[0] > 0 or (n[0] == 0 and n[1] > 0))


# Bytes of band matrix per banded solve: images are solved together up to this size.
_BANDED_BYTES = 128 << 20


def _impute_banded(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The exact solution of a batch's imputation systems (images (S, C, H, W) float64,
    keep (S, H, W) bool): a copy of `images` with every imputed pixel replaced, and
    zeros where an image keeps no pixel (its system is singular).

    Numbered in row-major order over (image, row, column), an imputed pixel's unknown
    neighbours are at most W + 1 places away and never in another image, so all the
    images' systems form one symmetric positive definite band matrix of half-width
    <= W + 1, block-diagonal by image: LAPACK's banded Cholesky (`solveh_banded`)
    solves it in O(n W^2), about twice as fast as the general sparse LU the library
    uses, and to machine precision. Building the systems for the whole batch with
    numpy, and one LAPACK call per batch, costs a third less than a system per image."""
    import scipy.linalg

    s_, c, h, w = images.shape
    missing = ~keep
    out = images.copy()
    solvable = ~missing.reshape(s_, -1).all(axis=1)
    pixels = out.transpose(0, 2, 3, 1)                                 # a view: S, H, W, C
    pixels[missing & ~solvable[:, None, None]] = 0.0
    missing = missing & solvable[:, None, None]
    n = int(missing.sum())
    if n == 0:
        return out
    index = np.full((s_, h + 2, w + 2), -1, dtype=np.int64)
    index[:, 1:-1, 1:-1][missing] = np.arange(n)
    inside = np.zeros((h + 2, w + 2), dtype=bool)
    inside[1:-1, 1:-1] = True
    known = np.zeros((s_, c, h + 2, w + 2))
    known[:, :, 1:-1, 1:-1] = np.where(keep[:, None], images, 0.0)
    ss, ys, xs = np.nonzero(missing)
    ys, xs = ys + 1, xs + 1
    diag, rhs = np.zeros(n), np.zeros((n, c))
    for dy, dx, weight in _NEIGHBOURS:
        diag += weight * inside[ys + dy, xs + dx]
        rhs += weight * known[ss, :, ys + dy, xs + dx]                 # (n, C)
    rows, cols, vals = [], [], []
    for dy, dx, weight in _LATER_NEIGHBOURS:
        j = index[ss, ys + dy, xs + dx]
        has = j >= 0
        rows.append(np.flatnonzero(has))
        cols.append(j[has])
        vals.append(np.full(int(has.sum()), -weight))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    band = int((cols - rows).max(initial=0))
    ab = np.zeros((band + 1, n))
    ab[band] = diag
    ab[band + rows - cols, cols] = vals
    pixels[missing] = scipy.linalg.solveh_banded(ab, rhs, check_finite=False)
    return out


def _solve_banded(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Every image's imputation (no noise) by `_impute_banded`, as many images per LAPACK
    call as fit `_BANDED_BYTES` of band matrix, with BLAS held to one thread (its threads
    slow a band this narrow down)."""
    from pipeline.workers import single_blas_thread

    x = images.detach().cpu().double().numpy()
    k = keep.cpu().numpy().astype(bool)
    h, w = x.shape[-2:]
    per_call = max(1, _BANDED_BYTES // (8 * h * w * (w + 2)))
    with single_blas_thread():
        out = np.concatenate([_impute_banded(x[s:s + per_call], k[s:s + per_call])
                              for s in range(0, len(x), per_call)])
    return torch.from_numpy(out).to(images.device, images.dtype if images.is_floating_point() else torch.float32)


def _solve_cg(images: torch.Tensor, missing: torch.Tensor, tol: float, max_iter: int | None) -> torch.Tensor:
    """All systems of a batch solved together by Jacobi-preconditioned conjugate
    gradients on the pixel grid (the system is symmetric positive definite whenever
    an image keeps a pixel), until every system's residual is below `tol` relative
    to its right-hand side. For large batches on a GPU; missing is (S, 1, H, W) bool."""
    h, w = images.shape[-2:]
    x0 = images.float()
    m = missing.to(x0.dtype)
    diag = _neighbour_sum(torch.ones(1, 1, h, w, dtype=x0.dtype, device=x0.device))
    b = m * _neighbour_sum(x0 * (1 - m))
    x = torch.zeros_like(b)
    r = b.clone()
    z = r / diag
    p = z.clone()
    rz = (r * z).sum((2, 3), keepdim=True)
    b_norm = (b * b).sum((2, 3), keepdim=True).sqrt()
    limit = max_iter if max_iter is not None else 20 * (h + w)
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    for it in range(limit):
        ap = m * (diag * p - _neighbour_sum(p))
        pap = (p * ap).sum((2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, 1), zero)
        x += alpha * p
        r -= alpha * ap
        if it % 8 == 7:
            res = (r * r).sum((2, 3), keepdim=True).sqrt()
            if bool((res <= tol * b_norm).all()):
                break
        z = r / diag
        rz_new = (r * z).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1), zero)
        p = z + beta * p
        rz = rz_new
    return torch.where(missing, x, x0)


def noisy_linear_impute(images: torch.Tensor, keep: torch.Tensor, noise: float = ROAD_NOISE,
                        generator: torch.Generator | None = None, *, solver: str = "auto",
                        tol: float = IMPUTE_TOLERANCE, max_iter: int | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022) of a whole batch.

    images: (S, C, H, W); keep: (S, H, W) bool, False where a pixel is imputed.
    Every imputed pixel becomes the weighted mean of its neighbours (known or
    imputed), plus Gaussian noise of std `noise`. pytorch-grad-cam's
    NoisyLinearImputer builds that sparse linear system per image with scipy
    and solves it by sparse LU. Solvers:
    - "banded" (the default on a CPU): the images' systems solved exactly by a
      banded Cholesky factorisation, a batch per call; equal to the library's to
      float32 rounding.
    - "cg" (the default on a GPU): all systems at once by conjugate gradients on
      the pixel grid, to a relative residual of `tol` (imputed pixels within
      about 2e-3 of the exact solution on normalised inputs, against noise of std 0.01).
    The noise is drawn per image in order, `torch.randn(C, n_imputed)` on the CPU
    generator, which is the library's draw for draw, so with the same seed the
    result equals the library's (see the tests). An image that keeps no pixel (the
    library's solver fails on it) gets zeros plus noise.
    """
    if images.ndim != 4 or keep.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"keep {tuple(keep.shape)} does not match images {tuple(images.shape)}")
    if solver not in ("auto", "banded", "cg"):
        raise ValueError(f"unknown solver {solver!r}; choose auto, banded or cg")
    missing = (~keep.to(images.device, torch.bool)).unsqueeze(1)        # S,1,H,W
    if solver == "banded" or (solver == "auto" and images.device.type != "cuda"):
        out = _solve_banded(images, keep)
    else:
        out = _solve_cg(images, missing, tol, max_iter)
    if noise:
        # One draw per image, in order (the library's); added on the CPU through flat indices.
        c = images.shape[1]
        flat_missing = missing[:, 0].reshape(len(out), -1).cpu().numpy()
        noisy = out.float().cpu().reshape(len(out), c, -1)
        values = noisy.numpy()
        for s in range(len(out)):
            where = np.flatnonzero(flat_missing[s])
            if len(where):
                values[s][:, where] += noise * torch.randn(c, len(where), generator=generator).numpy()
        out = noisy.reshape(out.shape).to(out.device)
    return out.to(images.dtype)


def _road_keep_masks(cams: np.ndarray, percentiles: Sequence[int], most_relevant_first: bool) -> np.ndarray:
    """(len(percentiles), N, H, W) bool: the pixels ROAD keeps, as pytorch-grad-cam's
    RemoveMostRelevantFirst / RemoveLeastRelevantFirst choose them (a pixel is
    imputed when its relevance reaches the percentile of the image's map)."""
    relevance = cams if most_relevant_first else (np.float32(1) - cams)
    out = []
    for q in percentiles:
        thr = np.array([np.percentile(r, q) for r in relevance], dtype=np.float64)
        out.append(relevance < thr[:, None, None])
    return np.stack(out)


def compute_road_scores(model: nn.Module, inputs: torch.Tensor, cams: np.ndarray, targets: Sequence[int],
                        percentiles: Sequence[int] = (20, 40, 60, 80), noise: float = ROAD_NOISE,
                        generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """Per-image ROAD scores (change of the target's softmax probability, averaged
    over `percentiles` of pixels imputed), pytorch-grad-cam's
    ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage computed with the
    batched `noisy_linear_impute` (the library's per-image sparse LU, its setup and
    its per-image forward passes were 80% of the explain stage). Noise is drawn in the
    library's order (most-relevant-first, then least; percentile by percentile;
    image by image), so under the same torch seed the scores equal the library's
    within the imputation's tolerance.

    cams: (N, H, W) at the input's resolution. Returns {'road_morf' (lower = more
    faithful), 'road_lerf' (higher = more faithful), 'road_combined' = (lerf - morf) / 2}.
    """
    cams = _check_cams(cams, inputs)
    tgt = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=inputs.device).view(-1, 1)
    n, c, h, w = inputs.shape
    # Images per solver call: on a CPU the banded solver takes the whole batch (and splits
    # it by its band matrix's size); on a GPU, CG solves 2^24 pixels' systems at once.
    per_call = n if inputs.device.type != "cuda" else max(1, (1 << 24) // max(1, c * h * w))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            before = torch.softmax(model(inputs).float(), dim=-1).gather(1, tgt).view(-1).cpu().numpy()
            scores = {}
            for name, morf in (("road_morf", True), ("road_lerf", False)):
                changes = []
                for keep in torch.from_numpy(_road_keep_masks(cams, percentiles, morf)):   # one percentile
                    imputed = torch.cat([noisy_linear_impute(inputs[s:s + per_call], keep[s:s + per_call],
                                                             noise=noise, generator=generator)
                                         for s in range(0, n, per_call)])
                    probs = torch.softmax(model(imputed).float(), dim=-1)
                    changes.append(probs.gather(1, tgt).view(-1).cpu().numpy() - before)
                scores[name] = np.mean(np.float32(changes), axis=0).astype(np.float64)
    finally:
        model.train(was_training)
    morf, lerf = scores["road_morf"], scores["road_lerf"]
    return {"road_morf": morf, "road_lerf": lerf, "road_combined": (lerf - morf) / 2}


def compute_confidence_change(model: nn.Module, inputs: torch.Tensor, cams: np.ndarray,
                              targets: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-image change of the target's softmax probability when the (normalised)
    input is multiplied by the CAM (pytorch-grad-cam's CamMultImageConfidenceChange,
    computed here on the whole batch; a test compares the two):
    'conf_drop' = max(0, -change) (lower = more faithful), 'conf_increase' = change > 0."""
    cams = _check_cams(cams, inputs)
    tgt = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=inputs.device).view(-1, 1)
    mult = torch.from_numpy(cams).to(inputs.device).unsqueeze(1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            before = torch.softmax(model(inputs), dim=-1).gather(1, tgt).view(-1)
            after = torch.softmax(model(inputs * mult), dim=-1).gather(1, tgt).view(-1)
    finally:
        model.train(was_training)
    change = (after.float().cpu().numpy() - before.float().cpu().numpy()).astype(np.float64)
    return {"conf_drop": np.maximum(-change, 0.0), "conf_increase": (change > 0).astype(np.float64)}


def _check_cams(cams: np.ndarray, inputs: torch.Tensor) -> np.ndarray:
    cams = np.ascontiguousarray(cams, dtype=np.float32)
    if cams.shape != (inputs.shape[0], *inputs.shape[-2:]):
        raise ValueError(f"CAMs of shape {cams.shape} do not match inputs {tuple(inputs.shape)}; "
                         "compute them at the input's resolution")
    return cams


# --------------------------------------------------------------------------- sanity check

def _leaf_modules_in_call_order(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    seen: set[int] = set()

    def pre_hook(module, args):
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(pre_hook) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def create_randomized_model(model: nn.Module, layer: nn.Module, example: torch.Tensor,
                            mode: str = "cascading", seed: int = 0) -> nn.Module:
    """A copy of `model` with re-initialised weights (the original is untouched).

    mode: 'cascading' re-initialises the target `layer` and every layer run after
    it (Adebayo et al.'s cascade down to the explained layer); 'head' only the
    layers after it; 'full' every layer. `example`: one input batch, to find the
    order in which layers run. Layers are reset with their own reset_parameters
    (BatchNorm also forgets its running statistics).
    """
    if mode not in SANITY_MODES:
        raise ValueError(f"unknown randomisation mode {mode!r}; choose from {', '.join(SANITY_MODES)}")
    was_training = model.training
    model.eval()
    try:
        order = _leaf_modules_in_call_order(model, example[:1])
    finally:
        model.train(was_training)
    inside = {id(m) for m in layer.modules()}
    index = {id(m): i for i, m in enumerate(order)}
    first_inside = min((index[id(m)] for m in layer.modules() if id(m) in index), default=None)
    if first_inside is None:
        raise ValueError("the target layer is not run in the forward pass")
    if mode == "full":
        chosen = set(range(len(order)))
    elif mode == "cascading":
        chosen = set(range(first_inside, len(order)))
    else:
        chosen = {i for i in range(first_inside, len(order)) if id(order[i]) not in inside}
    names = {id(m): n for n, m in model.named_modules()}
    chosen_names = {names[id(order[i])] for i in chosen}
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in clone.named_modules():
            if name in chosen_names and hasattr(module, "reset_parameters"):
                module.reset_parameters()
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
    clone.train(was_training)
    return clone


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..M along the last axis of finite `values`, tied values sharing the mean of
    their ranks: scipy.stats.rankdata's 'average' method (equal to it, tested) without
    importing scipy.stats (1.2 s, the explain command's largest import)."""
    a = np.asarray(values, dtype=np.float64)
    flat = a.reshape(-1, a.shape[-1])
    m = flat.shape[1]
    order = np.argsort(flat, axis=1, kind="stable")
    ordered = np.take_along_axis(flat, order, axis=1)
    pos = np.broadcast_to(np.arange(m), flat.shape)
    first = np.ones(flat.shape, dtype=bool)                        # a tie group starts here
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones(flat.shape, dtype=bool)                         # ... and ends here
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, m - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(flat.shape)
    np.put_along_axis(ranks, order, (start + end) / 2 + 1, axis=1)
    return ranks.reshape(a.shape)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of two (N, M) stacks, the rank correlation of their values."""
    out = np.zeros(len(a))
    ca, cb = np.ptp(a, axis=1) == 0, np.ptp(b, axis=1) == 0
    out[ca & cb] = 1.0  # a constant map has no ranking: identical if both are, unrelated otherwise
    ranked = ~(ca | cb)
    if ranked.any():
        ra, rb = average_ranks(a[ranked]), average_ranks(b[ranked])
        out[ranked] = [np.corrcoef(x, y)[0, 1] for x, y in zip(ra, rb)]
    return out


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two maps in [0, 1] (Gaussian window, sigma 1.5)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: cv2.GaussianBlur(x, (7, 7), 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def compute_map_similarity(cams_a: np.ndarray, cams_b: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair similarity of two stacks of maps (N, H, W): 'spearman' rank
    correlation of the pixels and 'ssim'."""
    a, b = np.asarray(cams_a, np.float64), np.asarray(cams_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"map stacks differ in shape: {a.shape} vs {b.shape}")
    return {
        "spearman": _spearman(*(x.reshape(len(x), int(np.prod(x.shape[1:]))) for x in (a, b))),
        "ssim": np.array([_ssim(x, y) for x, y in zip(a, b)]),
    }


# --------------------------------------------------------------------------- ground truth

def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point, so every image gets another's map
    (Sattolo's algorithm: a uniformly random single cycle)."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _energy_and_hit(cams: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map (N, H, W): the energy share inside its mask, and whether its peak is inside (a
    plateau counts as one peak: inside if mostly inside); NaN for an all-zero map."""
    total = cams.sum(axis=(1, 2))
    inside = np.where(masks, cams, 0.0).sum(axis=(1, 2))
    live = (cams > 0).any(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        energy = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
        peak = cams >= cams.max(axis=(1, 2), keepdims=True) - 1e-6
        hit = ((peak & masks).sum(axis=(1, 2)) / peak.sum(axis=(1, 2)) >= 0.5).astype(np.float64)
    return energy, np.where(live, hit, np.nan)


def compute_gt_localisation(cams: np.ndarray, gt_masks: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Per-image ground-truth localisation of CAMs (N, H, W) against boolean masks (N, H, W).

    Columns: gt_energy (CAM energy share inside the mask), gt_hit (peak inside),
    gt_energy_uniform (= the mask's area share: a uniform map's energy inside,
    and its chance of a random peak inside), gt_energy_shuffled / gt_hit_shuffled
    (the same for another image's CAM, a seeded derangement). NaN where the mask
    is empty (e.g. Neutral, no action unit) or the CAM is all zero. Whole-batch numpy.
    """
    cams = np.clip(np.asarray(cams, np.float64), 0, None)
    masks = np.asarray(gt_masks, bool)
    if cams.shape != masks.shape:
        raise ValueError(f"CAMs {cams.shape} and masks {masks.shape} differ in shape")
    n = len(cams)
    perm = _derangement(n, np.random.default_rng(seed))
    out = np.full((n, 5), np.nan)
    if n == 0:
        return pd.DataFrame(out, columns=GT_LOCALISATION_COLUMNS)
    has_mask = masks.any(axis=(1, 2))
    out[:, 0], out[:, 1] = _energy_and_hit(cams, masks)
    out[:, 3], out[:, 4] = _energy_and_hit(cams[perm], masks)
    out[:, 2] = masks.mean(axis=(1, 2))
    out[~has_mask] = np.nan
    return pd.DataFrame(out, columns=GT_LOCALISATION_COLUMNS)


GT_LOCALISATION_COLUMNS = ["gt_energy", "gt_hit", "gt_energy_uniform", "gt_energy_shuffled", "gt_hit_shuffled"]


def summarise_gt_localisation(per_image: pd.DataFrame, emotions: Sequence[str], method: str,
                              energy_factor: float = ENERGY_FACTOR, pointing_margin: float = POINTING_MARGIN,
                              n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """explanation_metrics rows from compute_gt_localisation's output: gt_energy,
    gt_energy_uniform, gt_energy_shuffled, pointing, pointing_uniform,
    pointing_shuffled, per emotion and 'all'. passed is set on 'gt_energy'
    (at least `energy_factor` x the uniform baseline) and 'pointing' (at least
    `pointing_margin` above the shuffled baseline)."""
    columns = {"gt_energy": "gt_energy", "gt_energy_uniform": "gt_energy_uniform",
               "gt_energy_shuffled": "gt_energy_shuffled", "pointing": "gt_hit",
               "pointing_uniform": "gt_energy_uniform", "pointing_shuffled": "gt_hit_shuffled"}
    rows = []
    for metric, col in columns.items():
        rows += summarise(per_image[col].to_numpy(), emotions, method, metric, n_boot=n_boot, seed=seed)
    by_key = {(r["metric"], r["emotion"]): r for r in rows}
    for (metric, emotion), row in by_key.items():
        if metric == "gt_energy" and ("gt_energy_uniform", emotion) in by_key:
            row["passed"] = bool(row["value"] >= energy_factor * by_key[("gt_energy_uniform", emotion)]["value"])
        if metric == "pointing" and ("pointing_shuffled", emotion) in by_key:
            row["passed"] = bool(row["value"] >= by_key[("pointing_shuffled", emotion)]["value"] + pointing_margin)
    return rows
