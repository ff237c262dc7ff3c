"""The stored form of a heatmap: a size x size uint8 map, row-major, 0..255 for [0, 1].

Torch-free on purpose: the dashboard decodes stored maps with numpy alone, and the
explain stage encodes them; both use these two functions, so the format has one home.
"""
from __future__ import annotations

import numpy as np

DEFAULT_CAM_SIZE = 32
# What heatmaps.target_layer says for a map made by perturbing the input (occlusion, RISE) rather than
# read at a layer of the network: the dashboard tells gradient-free methods by it.
INPUT_LAYER = "input"


def encode_cam(cam: np.ndarray, size: int = DEFAULT_CAM_SIZE) -> bytes:
    """A map in [0, 1] (any HxW) as size x size uint8 bytes, row-major (0..255 = [0, 1])."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"a CAM must be 2-D, got shape {cam.shape}")
    if cam.shape != (size, size):
        import cv2  # only the writer resizes; readers (the dashboard) need numpy alone

        interp = cv2.INTER_AREA if cam.shape[0] >= size and cam.shape[1] >= size else cv2.INTER_LINEAR
        cam = cv2.resize(cam, (size, size), interpolation=interp)
    q = np.clip(np.rint(np.nan_to_num(cam) * 255.0), 0, 255).astype(np.uint8)
    return q.tobytes()


def decode_cam(blob: bytes, size: int | None = None) -> np.ndarray:
    """The float32 size x size map in [0, 1] stored by encode_cam (size inferred when None)."""
    arr = np.frombuffer(bytes(blob), dtype=np.uint8)
    if size is None:
        size = int(round(np.sqrt(arr.size)))
    if arr.size != size * size:
        raise ValueError(f"a stored CAM of {arr.size} bytes is not {size}x{size}")
    return arr.reshape(size, size).astype(np.float32) / 255.0
