"""Facial regions, the share of a CAM's energy in each, and failure-mode tags.

Regions (constants.FACE_REGIONS: brows, eyes, nose, mouth, cheeks, face_rest,
background) are geometric shapes built from five landmarks (left eye, right
eye, nose tip, left and right mouth corner, as in RAF-DB's manual annotation),
in a face frame whose x axis runs along the eye line and whose unit is the
inter-ocular distance d, so tilted and scaled faces get the same shapes:

- eyes: an ellipse around each eye;
- brows: an ellipse above each eye, plus the glabella between them;
- nose: from just below the eye line down past the nose tip;
- mouth: an ellipse around the mouth corners, taking in the lips;
- cheeks: beside the nose, below the eyes;
- face_rest: the rest of a face ellipse set by the same landmarks;
- background: everything outside it.

Where shapes overlap, the earlier region in that list wins, so the regions
partition the grid and energy shares sum to 1. Images without landmarks use a
canonical template for aligned crops (`ALIGNED_TEMPLATE`, or the mean landmarks
of the dataset's images that have them: `compute_mean_landmarks`).

Everything here is pure: arrays and data frames in, arrays and data frames out.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.constants import ALIGNED_SIZE, FACE_REGIONS

# Five landmarks of a RAF-DB-style aligned 100x100 crop (x, y): eyes at y ~ 42,
# x ~ 33 and 67, nose tip, mouth corners at y ~ 72-76. Used when an image has no
# landmarks of its own and the dataset gives none to average.
ALIGNED_TEMPLATE: np.ndarray = np.array(
    [[33.0, 42.0], [67.0, 42.0], [50.0, 58.0], [37.0, 73.0], [63.0, 73.0]], dtype=np.float64)

REGION_INDEX: dict[str, int] = {name: i for i, name in enumerate(FACE_REGIONS)}


# --------------------------------------------------------------------------- region maps

def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0


def compute_region_map(landmarks: Sequence[Sequence[float]] | np.ndarray | None,
                       image_size: tuple[float, float] = (ALIGNED_SIZE, ALIGNED_SIZE),
                       grid: int = ALIGNED_SIZE) -> np.ndarray:
    """A grid x grid uint8 map of region indices (into FACE_REGIONS).

    landmarks: 5 (x, y) points in the coordinates of an image of `image_size`
    (width, height); None = ALIGNED_TEMPLATE in a 100x100 crop. The grid covers
    the whole image (as the model's square input does).
    """
    # Long on purpose: the region geometry (one ellipse or band per facial region from the landmarks) reads
    # best as one table of shapes.
    if landmarks is None:
        pts = ALIGNED_TEMPLATE.copy()
        image_size = (ALIGNED_SIZE, ALIGNED_SIZE)
    else:
        pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
        if pts.shape != (5, 2) or not np.isfinite(pts).all():
            raise ValueError(f"expected 5 finite (x, y) landmarks, got {np.asarray(landmarks).tolist()}")
    w, h = float(image_size[0]), float(image_size[1])
    pts = pts * np.array([grid / w, grid / h])
    eyes, nose, corners = pts[[0, 1]], pts[2], pts[[3, 4]]
    mid = eyes.mean(axis=0)
    axis = eyes[1] - eyes[0]
    d = float(np.hypot(*axis))
    if d < 1e-6:
        raise ValueError("the two eye landmarks coincide; cannot build face regions")
    ex = axis / d                       # along the eye line
    ey = np.array([-ex[1], ex[0]])      # perpendicular to it ...
    if float((corners.mean(axis=0) - mid) @ ey) < 0:
        ey = -ey                        # ... pointing from the eyes towards the mouth, whatever the eye order

    # Pixel centres of the grid, in the face frame (units of d).
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float64) + 0.5
    rx, ry = xs - mid[0], ys - mid[1]
    u = (rx * ex[0] + ry * ex[1]) / d
    v = (rx * ey[0] + ry * ey[1]) / d

    def frame(p):
        q = p - mid
        return float(q @ ex) / d, float(q @ ey) / d

    (eu_l, ev_l), (eu_r, ev_r) = frame(eyes[0]), frame(eyes[1])
    nu, nv = frame(nose)
    (mu_l, mv_l), (mu_r, mv_r) = frame(corners[0]), frame(corners[1])
    mu, mv = (mu_l + mu_r) / 2, (mv_l + mv_r) / 2
    mouth_half = max(abs(mu_r - mu_l) / 2, 0.2)
    nv = max(nv, 0.3)                   # nose tip below the eye line
    mv = max(mv, nv + 0.15)             # mouth below the nose

    eyes_m = _ellipse(u, v, eu_l, ev_l, 0.36, 0.19) | _ellipse(u, v, eu_r, ev_r, 0.36, 0.19)
    brows_m = (_ellipse(u, v, eu_l, ev_l - 0.39, 0.45, 0.20)
               | _ellipse(u, v, eu_r, ev_r - 0.39, 0.45, 0.20)
               | _ellipse(u, v, 0.0, -0.30, 0.20, 0.22))          # glabella
    nose_top, nose_bottom = 0.12, nv + 0.15
    nose_m = _ellipse(u, v, nu, (nose_top + nose_bottom) / 2, 0.26, (nose_bottom - nose_top) / 2)
    mouth_m = _ellipse(u, v, mu, mv, mouth_half + 0.25, 0.36)
    cheek_v = (0.2 + mv) / 2
    cheeks_m = (_ellipse(u, v, eu_l + 0.02 * np.sign(eu_l), cheek_v, 0.32, 0.36)
                | _ellipse(u, v, eu_r + 0.02 * np.sign(eu_r), cheek_v, 0.32, 0.36))
    top, chin = -1.2, mv + 0.75
    face_m = _ellipse(u, v, mu / 2, (top + chin) / 2, 1.25, (chin - top) / 2)

    out = np.full((grid, grid), REGION_INDEX["background"], dtype=np.uint8)
    # Paint from the lowest priority up, so earlier regions win overlaps.
    for name, mask in (("face_rest", face_m), ("cheeks", cheeks_m), ("mouth", mouth_m),
                       ("nose", nose_m), ("brows", brows_m), ("eyes", eyes_m)):
        out[mask] = REGION_INDEX[name]
    return out


def compute_mean_landmarks(landmarks: Sequence[Sequence[Sequence[float]] | None]) -> np.ndarray | None:
    """The mean of the given 5-point landmark sets (None entries skipped), or None if there are none."""
    pts = [np.asarray(l, dtype=np.float64).reshape(5, 2) for l in landmarks if l is not None]
    if not pts:
        return None
    return np.mean(pts, axis=0)


def compute_region_areas(region_map: np.ndarray) -> np.ndarray:
    """Share of the grid each region covers (the energy shares of a uniform map)."""
    counts = np.bincount(region_map.ravel(), minlength=len(FACE_REGIONS)).astype(np.float64)
    return counts / counts.sum()


# --------------------------------------------------------------------------- energies

def compute_region_energies(cams: np.ndarray, region_maps: np.ndarray) -> np.ndarray:
    """Share of each CAM's energy (sum of its values) in each region.

    cams: (N, H, W) non-negative maps; region_maps: one (H, W) map for all, or (N, H, W).
    Returns (N, len(FACE_REGIONS)); rows sum to 1, NaN for an all-zero map.
    """
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim == 2:
        cams = cams[None]
    maps = np.asarray(region_maps)
    k = len(FACE_REGIONS)
    flat = np.clip(cams.reshape(len(cams), -1), 0, None)
    if maps.ndim == 2:
        if maps.shape != cams.shape[1:]:
            raise ValueError(f"region map {maps.shape} does not match CAMs {cams.shape[1:]}")
        onehot = np.eye(k, dtype=np.float64)[maps.ravel()]          # (HW, k)
        sums = flat @ onehot
    else:
        if maps.shape != cams.shape:
            raise ValueError(f"region maps {maps.shape} do not match CAMs {cams.shape}")
        sums = np.stack([np.bincount(m.ravel(), weights=c, minlength=k)
                         for m, c in zip(maps.reshape(len(maps), -1), flat)])
    total = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, sums / total, np.nan)


def compute_peak_regions(cams: np.ndarray, region_maps: np.ndarray) -> list[str | None]:
    """The region holding each CAM's maximum (None for an all-zero map)."""
    cams = np.asarray(cams)
    if cams.ndim == 2:
        cams = cams[None]
    maps = np.asarray(region_maps)
    out: list[str | None] = []
    for i, cam in enumerate(cams):
        if not np.any(cam > 0):
            out.append(None)
            continue
        m = maps if maps.ndim == 2 else maps[i]
        out.append(FACE_REGIONS[int(m.ravel()[int(np.argmax(cam))])])
    return out


# --------------------------------------------------------------------------- failure modes

# The `background` tag's threshold is relative to the run as well as absolute: a CAM that puts
# BACKGROUND_RELATIVE times the run's median off-face share there (but at least
# BACKGROUND_MIN_SHARE) is looking at the background, even when that is under half its energy.
# Measured on the demo preset trained with a background-cue bias (bench/bench_cue.py): the
# run's median share was 0.035 and the cued faces' 0.25; the absolute 0.5 tagged 2 of the 4
# faces wrongly called the cued emotion, 6 x the median (0.21) all 4, and 5 of the 104
# misclassified faces without a cue.
BACKGROUND_RELATIVE = 6.0
BACKGROUND_MIN_SHARE = 0.1


def compute_background_threshold(shares: Sequence[float], background_threshold: float = 0.5) -> float:
    """The background share above which one method's CAMs of a run count as looking at the
    background: min(background_threshold, max(BACKGROUND_MIN_SHARE, BACKGROUND_RELATIVE x the
    median share over the run's images)); background_threshold when no share is finite."""
    values = np.asarray([np.nan if v is None else v for v in shares], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float(background_threshold)
    relative = max(BACKGROUND_MIN_SHARE, BACKGROUND_RELATIVE * float(np.median(values)))
    return float(min(background_threshold, relative))


def compute_failure_tags(image_ids: Sequence[str], true_labels: Sequence[str], pred_labels: Sequence[str],
                         occluders: Sequence[str | None] | None = None,
                         background_energy: Mapping[str, Sequence[float]] | None = None,
                         background_threshold: float = 0.5) -> pd.DataFrame:
    """Failure-mode tags of the misclassified images, as rows (image_id, method, tag).

    - 'confusion:<true>-><pred>' for every misclassified image (method '');
    - 'occlusion' when the dataset marks an occluder on it (method '');
    - 'background' when a method's CAM for the predicted class puts more of its energy off
      the face than `compute_background_threshold` of that method's shares over all the
      given images (at most `background_threshold`) (method = that method).
    background_energy: {method: background share of the predicted-class CAM per image}, over
    every image of the run (correct ones too: they set what is usual).
    """
    rows = []
    n = len(image_ids)
    occluders = list(occluders) if occluders is not None else [None] * n
    background_energy = background_energy or {}
    for method, values in background_energy.items():
        if len(values) != n:
            raise ValueError(f"background_energy[{method!r}] has {len(values)} values for {n} images")
    thresholds = {method: compute_background_threshold(values, background_threshold)
                  for method, values in background_energy.items()}
    for i in range(n):
        if true_labels[i] == pred_labels[i]:
            continue
        rows.append((image_ids[i], "", f"confusion:{true_labels[i]}->{pred_labels[i]}"))
        occ = occluders[i]
        if occ and occ.lower() not in ("none", ""):
            rows.append((image_ids[i], "", "occlusion"))
        for method, values in background_energy.items():
            share = values[i]
            if share is not None and np.isfinite(share) and share > thresholds[method]:
                rows.append((image_ids[i], method, "background"))
    return pd.DataFrame(rows, columns=["image_id", "method", "tag"])
