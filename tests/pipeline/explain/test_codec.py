"""The stored heatmap format (pipeline/explain/codec.py): uint8 maps that round-trip within one step."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.explain.codec import decode_cam, encode_cam


def test_stored_heatmap_round_trips():
    rng = np.random.default_rng(0)
    cam = rng.random((32, 32)).astype(np.float32)
    blob = encode_cam(cam, 32)
    assert isinstance(blob, bytes) and len(blob) == 32 * 32
    back = decode_cam(blob, 32)
    assert back.dtype == np.float32 and back.shape == (32, 32)
    assert np.abs(back - cam).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(decode_cam(blob), back)
    # larger maps are downsampled to the stored size, keeping where the mass is
    big = np.zeros((100, 100), np.float32)
    big[60:90, 30:70] = 1.0
    small = decode_cam(encode_cam(big, 32), 32)
    assert small[20:28, 11:21].min() > 0.9 and small[:15].max() == 0
    with pytest.raises(ValueError):
        decode_cam(blob, 16)
