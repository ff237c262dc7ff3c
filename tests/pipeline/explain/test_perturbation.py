"""Occlusion and RISE on predict functions with a known answer: evidence in one corner."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.explain.perturbation import (OcclusionConfig, RiseConfig, compute_energy_agreement,
                                           compute_occlusion_maps,
                                           compute_perturbation_maps, compute_rise_maps, create_predict_fn,
                                           create_rise_masks)

SIZE = 24


def corner_predict(x: torch.Tensor) -> np.ndarray:
    """Class 1's evidence is the brightness of the top-left 8x8 corner; class 0 gets the rest."""
    score = x[:, :, :8, :8].mean(dim=(1, 2, 3)) * 8.0
    logits = torch.stack([torch.zeros_like(score), score - 4.0], 1)
    return torch.softmax(logits, 1).numpy()


@pytest.fixture
def images():
    x = torch.full((3, 3, SIZE, SIZE), 0.2)
    x[:, :, :8, :8] = 0.9                # the bright corner the model reads
    return x


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_maps_find_the_evidence_and_are_scaled(images, method):
    before = images.clone()
    maps = compute_perturbation_maps(corner_predict, images, [[1, 1, 1]], [method],
                                     occlusion=OcclusionConfig(window=6, stride=3),
                                     rise=RiseConfig(n_masks=300, grid=4, seed=0))[method]
    assert maps.shape == (1, 3, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.allclose(maps.max(axis=(2, 3)), 1)
    inside, outside = maps[0, :, :8, :8].mean(), maps[0, :, 12:, 12:].mean()
    assert inside > 3 * outside, (inside, outside)
    torch.testing.assert_close(images, before)  # inputs are not mutated


def test_batch_size_does_not_change_the_maps(images):
    for fn, small, large in [
        (compute_occlusion_maps, OcclusionConfig(window=6, batch_size=5), OcclusionConfig(window=6, batch_size=200)),
        (compute_rise_maps, RiseConfig(n_masks=50, batch_size=7), RiseConfig(n_masks=50, batch_size=64)),
    ]:
        a = fn(corner_predict, images, [[1, 0, 1], [0, 1, 0]], config=small)
        b = fn(corner_predict, images, [[1, 0, 1], [0, 1, 0]], config=large)
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_targets_get_their_own_maps(images):
    maps = compute_occlusion_maps(corner_predict, images, [[1, 1, 1], [0, 0, 0]], config=OcclusionConfig(window=6))
    # occluding the corner lowers class 1 and raises class 0: class 0's map has no positive evidence there
    assert maps[0, :, :8, :8].mean() > maps[1, :, :8, :8].mean()


def test_rise_masks_are_seeded_and_keep_about_p():
    a = create_rise_masks(200, (SIZE, SIZE), grid=4, p_keep=0.5, seed=3)
    b = create_rise_masks(200, (SIZE, SIZE), grid=4, p_keep=0.5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (200, SIZE, SIZE) and 0.4 < a.mean() < 0.6


def test_predict_fn_of_a_module_restores_its_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 4 * 4, 2)).train()
    predict = create_predict_fn(model)
    x = torch.rand(2, 3, 4, 4)
    np.testing.assert_allclose(predict(x), predict(x))  # eval mode inside: dropout off
    assert model.training


def test_energy_agreement_is_spearman_per_image():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.random((6, 7)), rng.random((6, 7))
    b[0] = a[0] * 2 + 1                     # same ranking
    b[1] = -a[1]                            # reversed
    a[2] = 0.5                              # constant: no ranking
    a[3, 0] = np.nan                        # unknown
    got = compute_energy_agreement(a, b)
    assert got[0] == pytest.approx(1) and got[1] == pytest.approx(-1)
    assert np.isnan(got[2]) and np.isnan(got[3])
    for i in (4, 5):
        assert got[i] == pytest.approx(spearmanr(a[i], b[i]).statistic)


def test_agreement_rows_name_the_reference():
    from pipeline.explain.perturbation import summarise_agreement

    rng = np.random.default_rng(1)
    ref = rng.random((10, 7))
    rows = summarise_agreement({"gradcam": ref, "occlusion": ref * 3, "rise": -ref}, ["Fear"] * 5 + ["Anger"] * 5,
                               "gradcam", n_boot=50)
    by = {(r["method"], r["emotion"]): r for r in rows}
    assert {r["metric"] for r in rows} == {"agree_gradcam_spearman"}
    assert by[("occlusion", "all")]["value"] == pytest.approx(1) and by[("rise", "Fear")]["value"] == pytest.approx(-1)
    assert by[("occlusion", "all")]["n"] == 10 and ("gradcam", "all") not in by
