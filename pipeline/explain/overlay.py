"""Drawing CAMs and facial regions over images, for display (the dashboard, figures).

Pure: arrays in, a uint8 RGB array out (`to_pil` wraps one as a Pillow image).
Nothing is written to disk, and CAMs are drawn at display time from the stored
low-resolution maps (pipeline.explain.cams.decode_cam), never stored as overlays.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from pipeline.constants import FACE_REGIONS

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
}

# One colour per region (RGB), in FACE_REGIONS order.
REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "brows": (230, 159, 0), "eyes": (86, 180, 233), "nose": (0, 158, 115), "mouth": (213, 94, 0),
    "cheeks": (204, 121, 167), "face_rest": (240, 228, 66), "background": (90, 90, 90),
}


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    return img[:, :, :3]


def colorize_cam(cam: np.ndarray, size: tuple[int, int], colormap: str = "jet") -> np.ndarray:
    """A map in [0, 1] as a (height, width, 3) uint8 RGB heat image, resized smoothly to size=(width, height)."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {', '.join(COLORMAPS)}")
    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    cam = cv2.resize(cam, size, interpolation=cv2.INTER_CUBIC)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), COLORMAPS[colormap])
    return cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)


def create_cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45,
                       colormap: str = "jet", scale: int = 1) -> np.ndarray:
    """The image (HxW[x3], uint8 or float in [0, 1]) blended with the CAM's heat colours.

    alpha: weight of the heat map (0 = image only). scale: integer upscaling of
    the output (small 100x100 crops read better at 2-3x). The inputs are not modified.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_rgb_uint8(image)
    if scale > 1:
        img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
    heat = colorize_cam(cam, (img.shape[1], img.shape[0]), colormap)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def create_region_overlay(image: np.ndarray, region_map: np.ndarray, alpha: float = 0.35,
                          outline: bool = True) -> np.ndarray:
    """The image with each facial region tinted in its REGION_COLOURS colour
    (background left untinted), optionally with region outlines."""
    img = _as_rgb_uint8(image)
    h, w = img.shape[:2]
    labels = cv2.resize(np.asarray(region_map, dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    palette = np.array([REGION_COLOURS[r] for r in FACE_REGIONS], dtype=np.float32)
    tint = palette[labels]
    is_face = labels != FACE_REGIONS.index("background")
    out = img.astype(np.float32)
    out[is_face] = (1 - alpha) * out[is_face] + alpha * tint[is_face]
    if outline:
        edges = np.zeros((h, w), dtype=bool)
        edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edges[1:, :] |= labels[1:, :] != labels[:-1, :]
        out[edges] = palette[labels[edges]]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def to_pil(array: np.ndarray) -> Image.Image:
    """A uint8 RGB array as a Pillow image."""
    return Image.fromarray(_as_rgb_uint8(array))
