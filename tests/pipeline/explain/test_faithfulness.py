"""Explanation checks: bootstrap CIs, ground-truth localisation and baselines,
faithfulness (ROAD, confidence change) and the model-randomisation sanity check.

A tiny CNN learns a trivially learnable toy task (the colour of a square at a
random position), so its CAMs must find the square and differ from the CAMs of
the same network with re-initialised weights.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.explain.cams import compute_cams
from pipeline.explain.faithfulness import (_derangement, bootstrap_mean_ci, compute_confidence_change,
                                   compute_gt_localisation, compute_map_similarity, compute_road_scores,
                                   create_randomized_model, summarise, summarise_gt_localisation)

SIZE, SQUARE = 20, 6


def _toy_batch(n: int, gen: torch.Generator):
    """Grey noise with one red (class 0) or green (class 1) square at a random place."""
    x = 0.3 * torch.rand(n, 3, SIZE, SIZE, generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, SIZE - SQUARE + 1, (2,), generator=gen).tolist()
        x[i, int(y[i]), r:r + SQUARE, c:c + SQUARE] = 1.0
        masks[i, r:r + SQUARE, c:c + SQUARE] = True
    return x, y, masks


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.BatchNorm2d(16), nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.gap(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        x, y, _ = _toy_batch(32, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y, masks = _toy_batch(24, torch.Generator().manual_seed(1))
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9, f"the toy model did not learn its task (accuracy {acc:.2f})"
    return model, x, y.numpy(), masks.numpy()


def test_trained_cams_find_the_square(trained):
    model, x, y, masks = trained
    cams, _ = compute_cams(model, x, [y], ["gradcam"], model.features)
    gt = compute_gt_localisation(cams["gradcam"][0], masks)
    area = masks.mean()
    assert gt["gt_energy"].mean() > 2.5 * area
    assert gt["gt_hit"].mean() > 0.8


def test_sanity_check_tells_trained_from_random_weights(trained):
    model, x, y, _ = trained
    layer = model.features
    random_model = create_randomized_model(model, layer, x, mode="cascading", seed=0)
    a, _ = compute_cams(model, x, [y], ["gradcam"], layer)
    b, _ = compute_cams(random_model, x, [y], ["gradcam"], random_model.features)
    sim = compute_map_similarity(a["gradcam"][0], b["gradcam"][0])
    assert sim["spearman"].shape == (len(x),) and sim["ssim"].shape == (len(x),)
    assert sim["spearman"].mean() < 0.5  # passes: the maps depend on the learned weights
    # EigenCAM of the target layer ignores the layers after it: re-initialising only those
    # leaves its maps unchanged, and the check must say so.
    head_only = create_randomized_model(model, layer, x, mode="head", seed=0)
    e1, _ = compute_cams(model, x, [y], ["eigencam"], layer)
    e2, _ = compute_cams(head_only, x, [y], ["eigencam"], head_only.features)
    same = compute_map_similarity(e1["eigencam"][0], e2["eigencam"][0])
    assert same["spearman"].mean() > 0.99 and same["ssim"].mean() > 0.99


def test_randomized_copies_leave_the_model_alone(trained):
    model, x, _, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copies = {mode: create_randomized_model(model, model.features, x, mode=mode, seed=1)
              for mode in ("cascading", "head", "full")}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    changed = {mode: {k for k, v in c.state_dict().items() if not torch.equal(v, before[k])}
               for mode, c in copies.items()}
    assert "fc.weight" in changed["head"] and not any(k.startswith("features") for k in changed["head"])
    assert {"features.2.weight", "fc.weight"} <= changed["cascading"]
    assert "features.0.weight" in changed["cascading"]            # the target layer is `features` itself
    assert "features.0.weight" in changed["full"]
    with pytest.raises(ValueError):
        create_randomized_model(model, model.features, x, mode="sideways")


def test_road_and_confidence_change_reward_the_real_map(trained):
    model, x, y, _ = trained
    cams, _ = compute_cams(model, x, [y], ["gradcam"], model.features)
    cam = cams["gradcam"][0]
    torch.manual_seed(0)
    real = compute_road_scores(model, x, cam, y, percentiles=(20, 40))
    torch.manual_seed(0)
    inverted = compute_road_scores(model, x, 1.0 - cam, y, percentiles=(20, 40))
    assert set(real) == {"road_morf", "road_lerf", "road_combined"}
    assert all(v.shape == (len(x),) and np.isfinite(v).all() for v in real.values())
    # removing the pixels the real map ranks highest hurts more than removing those it ranks lowest
    assert real["road_morf"].mean() < inverted["road_morf"].mean()
    assert real["road_combined"].mean() > inverted["road_combined"].mean()
    conf = compute_confidence_change(model, x, cam, y)
    assert set(conf) == {"conf_drop", "conf_increase"} and (conf["conf_drop"] >= 0).all()
    with pytest.raises(ValueError, match="resolution"):
        compute_road_scores(model, x, cam[:, :10, :10], y)


def _smooth_cams(n: int, size: int, gen: torch.Generator) -> np.ndarray:
    coarse = torch.rand(n, 1, 4, 4, generator=gen)
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[:, 0].numpy()


@pytest.mark.parametrize("solver,tolerance", [("banded", 1e-5), ("cg", 1e-3)])
@pytest.mark.parametrize("percentile", [20, 80])
def test_batched_imputation_equals_pytorch_grad_cams(percentile, solver, tolerance):
    """Stated tolerance: imputed pixels within 1e-5 (banded Cholesky, exact up to float32)
    or 1e-3 (conjugate gradients) of the library's sparse direct solve (the noise it adds
    has std 0.01); kept pixels are untouched."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from pipeline.explain.faithfulness import noisy_linear_impute

    gen = torch.Generator().manual_seed(percentile)
    x = torch.randn(5, 3, SIZE, SIZE, generator=gen)
    cams = _smooth_cams(5, SIZE, gen)
    keep = torch.from_numpy(np.stack([c < np.percentile(c, percentile) for c in cams]))
    for noise in (0.0, 0.01):
        torch.manual_seed(1)
        ref = torch.stack([NoisyLinearImputer(noise=noise)(x[i], keep[i].float()) for i in range(len(x))])
        torch.manual_seed(1)
        ours = noisy_linear_impute(x, keep, noise=noise, solver=solver)
        assert (ours - ref).abs().max().item() < tolerance
        assert torch.equal(ours.permute(0, 2, 3, 1)[keep], x.permute(0, 2, 3, 1)[keep])
    # an image that keeps nothing has no system to solve: finite values, no error
    nothing = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    assert torch.isfinite(noisy_linear_impute(x[:1], nothing, solver=solver)).all()
    with pytest.raises(ValueError, match="does not match"):
        noisy_linear_impute(x, keep[:, :4], solver=solver)


def test_banded_imputation_on_ragged_masks_equals_the_library():
    """Non-square images, scattered masks, one kept pixel, whole rows imputed: the band
    half-width is found per image, and the solution is still the library's."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from pipeline.explain.faithfulness import noisy_linear_impute

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 13, 29, generator=gen)
    keep = torch.rand(4, 13, 29, generator=gen) < torch.tensor([0.05, 0.5, 0.95, 0.0]).view(4, 1, 1)
    keep[3, 6, 11] = True                       # one kept pixel
    keep[1, 4:7] = False                        # whole rows imputed
    ref = torch.stack([NoisyLinearImputer(noise=0.0)(x[i], keep[i].float()) for i in range(len(x))])
    ours = noisy_linear_impute(x, keep, noise=0.0)
    assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("budget_images", [1, 2, 7])
def test_images_imputed_together_equal_each_imputed_alone(monkeypatch, budget_images):
    """One band matrix holds several images' systems (block-diagonal, numbered image by
    image): the result equals solving each image on its own, to float64 rounding, whether
    the batch goes in one call or in calls of one or two images; an image that keeps no
    pixel gets zeros without disturbing its neighbours in the batch."""
    from pipeline.explain import faithfulness

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(7, 3, 9, 17, generator=gen, dtype=torch.float64)
    keep = torch.rand(7, 9, 17, generator=gen) < torch.tensor([0.2, 0.5, 0.8, 0.0, 0.5, 1.0, 0.3]).view(7, 1, 1)
    keep[0, :, -1] = False                      # a whole right column imputed: neighbours across rows
    keep[3] = False                             # keeps nothing
    alone = [faithfulness._impute_banded(x[i:i + 1].numpy(), keep[i:i + 1].numpy())[0] for i in range(len(x))]
    monkeypatch.setattr(faithfulness, "_BANDED_BYTES", 8 * 9 * 17 * 19 * budget_images)
    together = faithfulness._solve_banded(x, keep).numpy()
    for i, ref in enumerate(alone):
        assert np.abs(together[i] - ref).max() < 1e-12, i
    assert (together[3] == 0).all()
    assert np.array_equal(together[5], x[5].numpy())     # keeps everything: untouched
    assert not np.array_equal(together[0], x[0].numpy())

def test_road_scores_equal_pytorch_grad_cams_metric(trained):
    """The same seed gives the library's ROAD scores within 1e-5 (its per-image
    sparse LU against our banded Cholesky; noise drawn in the same order)."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, y, _ = trained
    x, y = x[:8], y[:8]
    cams = _smooth_cams(len(x), SIZE, torch.Generator().manual_seed(3))
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in y]
    torch.manual_seed(5)
    morf = ROADMostRelevantFirstAverage([20, 60])(x, cams, targets, model)
    lerf = ROADLeastRelevantFirstAverage([20, 60])(x, cams, targets, model)
    torch.manual_seed(5)
    ours = compute_road_scores(model, x, cams, y, percentiles=(20, 60))
    assert np.abs(ours["road_morf"] - morf).max() < 1e-5
    assert np.abs(ours["road_lerf"] - lerf).max() < 1e-5
    assert np.abs(morf).max() > 1e-3          # the comparison is not between two zeros


def test_confidence_change_equals_pytorch_grad_cams_metric(trained):
    """Our batched confidence change is the library's CamMultImageConfidenceChange."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, y, _ = trained
    cams = _smooth_cams(len(x), SIZE, torch.Generator().manual_seed(4))
    ref = np.asarray(CamMultImageConfidenceChange()(x, cams, [ClassifierOutputSoftmaxTarget(int(t)) for t in y],
                                                    model), np.float64).ravel()
    ours = compute_confidence_change(model, x, cams, y)
    np.testing.assert_allclose(ours["conf_drop"], np.maximum(-ref, 0), atol=1e-6)
    np.testing.assert_array_equal(ours["conf_increase"], (ref > 0).astype(np.float64))
    assert np.abs(ref).max() > 1e-3          # the comparison is not between two zeros


def test_gt_localisation_and_baselines_on_constructed_maps():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :5] = True        # top half
    masks[1, 5:] = True        # bottom half
    cams = masks.astype(float)  # each CAM exactly on its own region; image 2 has no GT (Neutral)
    cams[2] = 0.5
    gt = compute_gt_localisation(cams, masks, seed=0)
    assert gt.loc[0, "gt_energy"] == 1.0 and gt.loc[0, "gt_hit"] == 1.0
    assert gt.loc[0, "gt_energy_uniform"] == 0.5
    assert gt.loc[[0, 1]].notna().all().all() and gt.loc[2].isna().all()
    # the shuffled baseline uses another image's map: never the image's own
    assert gt.loc[0, "gt_energy_shuffled"] in (0.0, 0.5) and gt.loc[1, "gt_energy_shuffled"] in (0.0, 0.5)
    rows = summarise_gt_localisation(gt, ["Happiness", "Surprise", "Neutral"], "gradcam", n_boot=100)
    by = {(r["metric"], r["emotion"]): r for r in rows}
    assert by[("gt_energy", "all")]["value"] == 1.0 and by[("gt_energy", "all")]["n"] == 2
    assert by[("gt_energy", "all")]["passed"] is True          # 1.0 >= 2 x 0.5
    assert by[("pointing", "all")]["passed"] is True
    assert by[("gt_energy_uniform", "all")]["passed"] is None
    assert ("gt_energy", "Neutral") not in by                   # no ground truth, no row
    # a map as spread as the mask's area does not pass
    flat = compute_gt_localisation(np.ones((2, 10, 10)), masks[:2], seed=0)
    flat_rows = {(r["metric"], r["emotion"]): r
                 for r in summarise_gt_localisation(flat, ["A", "B"], "m", n_boot=10)}
    assert flat_rows[("gt_energy", "all")]["passed"] is False


def test_gt_localisation_equals_its_per_image_definition():
    """The whole-batch computation against the definition image by image: energy share inside
    the mask, peak (a plateau within 1e-6) mostly inside, for the map and a deranged other map."""
    rng = np.random.default_rng(5)
    n, size = 60, 12
    cams = rng.uniform(-0.2, 1, (n, size, size)) ** 3
    cams[3] = 0.0                                           # all-zero map
    cams[4] = -1.0                                          # negative only: clipped to zero
    cams[5, :2] = cams[5].max() + 1                          # a plateau peak
    masks = rng.uniform(size=(n, size, size)) < rng.uniform(0.05, 0.6, (n, 1, 1))
    masks[7] = False                                        # no ground truth
    got = compute_gt_localisation(cams, masks, seed=3)
    perm = _derangement(n, np.random.default_rng(3))
    clipped = np.clip(cams, 0, None)

    def energy_hit(cam, m):
        if not (cam > 0).any():
            return np.nan, np.nan
        peak = cam >= cam.max() - 1e-6
        return cam[m].sum() / cam.sum(), float(m[peak].mean() >= 0.5)

    for i in range(n):
        if not masks[i].any():
            assert got.loc[i].isna().all()
            continue
        expected = [*energy_hit(clipped[i], masks[i]), masks[i].mean(), *energy_hit(clipped[perm[i]], masks[i])]
        np.testing.assert_allclose(got.loc[i].to_numpy(), expected, rtol=1e-12, atol=0)
    assert got["gt_hit"].isna().sum() == 3 and got["gt_energy"].notna().sum() == n - 3   # maps 3, 4; mask 7


def test_derangement_and_bootstrap():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 101):
        p = _derangement(n, rng)
        assert sorted(p) == list(range(n)) and not np.any(p == np.arange(n))
    mean, lo, hi, n = bootstrap_mean_ci([1.0, 2.0, 3.0, np.nan, 4.0], n_boot=500)
    assert n == 4 and mean == 2.5 and 1.0 <= lo < mean < hi <= 4.0
    assert bootstrap_mean_ci([np.nan])[3] == 0
    rows = summarise([0.1, 0.2, 0.3, 0.4], ["A", "A", "B", "B"], "gradcam", "road_morf", n_boot=50)
    assert [r["emotion"] for r in rows] == ["all", "A", "B"]
    assert pd.DataFrame(rows).set_index("emotion").loc["B", "value"] == pytest.approx(0.35)


def test_average_ranks_and_map_spearman_equal_scipy():
    """Ranks with ties averaged equal scipy.stats.rankdata's, row by row; the maps' rank
    correlation equals scipy.stats.spearmanr, with constant maps scored 1 (both) or 0 (one)."""
    from scipy.stats import rankdata, spearmanr

    from pipeline.explain.faithfulness import average_ranks

    rng = np.random.default_rng(4)
    for values in (rng.integers(0, 4, size=(6, 30)).astype(float), rng.normal(size=(3, 50)),
                   np.array([[2.0, 2.0, 2.0]]), rng.integers(0, 3, size=17).astype(float)):
        assert np.array_equal(average_ranks(values), rankdata(values, axis=-1))
    a = rng.integers(0, 5, size=(5, 6, 6)).astype(float)
    b = a + rng.normal(scale=2.0, size=a.shape)
    a[3], b[4] = 1.0, 0.5
    a[4] = 0.5
    sim = compute_map_similarity(a, b)["spearman"]
    for i in range(3):
        assert sim[i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel()).statistic, abs=1e-12)
    assert sim[3] == 0.0 and sim[4] == 1.0
    assert compute_map_similarity(a[:0], b[:0])["spearman"].shape == (0,)
