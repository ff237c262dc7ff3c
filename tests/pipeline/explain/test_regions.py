"""Facial region maps, CAM energy per region and failure tags."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.constants import FACE_REGIONS
from pipeline.explain.regions import (ALIGNED_TEMPLATE, compute_background_threshold, compute_failure_tags, compute_mean_landmarks,
                              compute_peak_regions, compute_region_areas, compute_region_energies,
                              compute_region_map)

# Landmarks of a synthetic face (aligned 100x100): eyes, nose tip, mouth corners.
SYNTH = np.array([[33.5, 42.0], [67.4, 42.8], [50.0, 60.4], [36.7, 76.1], [62.6, 76.7]])


def _blob(center, sigma=3.0, size=100):
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma ** 2))


@pytest.mark.parametrize("landmarks", [None, SYNTH], ids=["template", "landmarks"])
def test_regions_partition_the_grid_and_sit_where_faces_are(landmarks):
    m = compute_region_map(landmarks)
    assert m.shape == (100, 100) and m.dtype == np.uint8
    assert set(np.unique(m)) == set(range(len(FACE_REGIONS)))  # every region present
    pts = ALIGNED_TEMPLATE if landmarks is None else landmarks
    name = lambda x, y: FACE_REGIONS[m[int(y), int(x)]]  # noqa: E731
    assert name(*pts[0]) == "eyes" and name(*pts[1]) == "eyes"
    assert name(pts[0][0], pts[0][1] - 13) == "brows"
    assert name(50, pts[0][1] - 10) == "brows"                 # glabella
    assert name(50, (pts[0][1] + pts[2][1]) / 2 + 3) == "nose"
    assert name(50, (pts[3][1] + pts[4][1]) / 2) == "mouth"
    assert name(pts[0][0] - 2, (pts[0][1] + pts[3][1]) / 2 + 2) == "cheeks"
    assert name(50, 8) == "face_rest"                         # forehead
    assert name(1, 1) == name(98, 1) == "background"
    np.testing.assert_allclose(compute_region_areas(m).sum(), 1.0)


def test_regions_follow_scale_rotation_and_grid():
    base = compute_region_map(SYNTH)
    # the same face in a 200x200 image: landmarks scale with it
    scaled = compute_region_map(SYNTH * 2, image_size=(200, 200), grid=100)
    assert (scaled == base).mean() > 0.99
    # rotating the landmarks 90 degrees about the image centre rotates the map
    c = np.array([50.0, 50.0])
    rot = (SYNTH - c) @ np.array([[0.0, 1.0], [-1.0, 0.0]]) + c   # (x, y) -> (50 - (y - 50), 50 + (x - 50))
    rotated = compute_region_map(rot)
    assert (np.rot90(base, k=-1) == rotated).mean() > 0.97
    # the eyes' and mouth corners' order in the annotation does not matter
    swapped = compute_region_map(SYNTH[[1, 0, 2, 4, 3]])
    assert (swapped == base).mean() > 0.99
    with pytest.raises(ValueError):
        compute_region_map([[1, 2], [3, 4]])


@pytest.mark.parametrize("landmarks", [None, SYNTH], ids=["template", "landmarks"])
def test_energy_shares_sum_to_one(landmarks):
    rng = np.random.default_rng(0)
    cams = rng.random((5, 100, 100))
    m = compute_region_map(landmarks)
    e = compute_region_energies(cams, m)
    assert e.shape == (5, len(FACE_REGIONS))
    np.testing.assert_allclose(e.sum(axis=1), 1.0)
    # per-image maps give the same as one shared map
    np.testing.assert_allclose(compute_region_energies(cams, np.stack([m] * 5)), e)
    # a uniform map's shares are the region areas
    np.testing.assert_allclose(compute_region_energies(np.ones((1, 100, 100)), m)[0], compute_region_areas(m))


def test_energies_with_a_map_per_image_equal_each_image_s_own_sums():
    """Different region maps per image: each row is that image's energy per region of its own
    map (bit for bit), not its neighbour's."""
    rng = np.random.default_rng(1)
    cams = rng.random((4, 100, 100))
    maps = np.stack([compute_region_map(SYNTH + shift) for shift in (0, 6, -5, 11)])
    assert len({m.tobytes() for m in maps}) == 4
    e = compute_region_energies(cams, maps)
    for c, m, row in zip(cams, maps, e):
        sums = np.bincount(m.ravel(), weights=c.ravel(), minlength=len(FACE_REGIONS))
        assert np.array_equal(row, sums / sums.sum())


def test_a_heatmap_on_the_mouth_is_mouth_energy():
    m = compute_region_map(SYNTH)
    mouth = (SYNTH[3] + SYNTH[4]) / 2
    e = compute_region_energies(_blob(mouth, sigma=3.0)[None], m)[0]
    assert e[FACE_REGIONS.index("mouth")] > 0.95
    assert compute_peak_regions(_blob(mouth)[None], m) == ["mouth"]
    eyes = compute_region_energies((_blob(SYNTH[0], 2) + _blob(SYNTH[1], 2))[None], m)[0]
    assert eyes[FACE_REGIONS.index("eyes")] > 0.9
    corner = compute_region_energies(_blob((3, 3), 2)[None], m)[0]
    assert corner[FACE_REGIONS.index("background")] > 0.9


def test_an_all_zero_map_has_no_shares():
    e = compute_region_energies(np.zeros((1, 100, 100)), compute_region_map(None))
    assert np.isnan(e).all()
    assert compute_peak_regions(np.zeros((1, 100, 100)), compute_region_map(None)) == [None]


def test_mean_landmarks():
    assert compute_mean_landmarks([None, None]) is None
    mean = compute_mean_landmarks([SYNTH, None, SYNTH + 2])
    np.testing.assert_allclose(mean, SYNTH + 1)


def test_failure_tags_on_constructed_cases():
    ids = ["a", "b", "c", "d"]
    true = ["Fear", "Happiness", "Anger", "Sadness"]
    pred = ["Surprise", "Happiness", "Neutral", "Fear"]
    occ = ["none", "sunglasses", "hand", None]
    bg = {"gradcam": [0.7, 0.9, 0.2, np.nan], "layercam": [0.1, 0.9, 0.6, 0.8]}
    tags = compute_failure_tags(ids, true, pred, occ, bg, background_threshold=0.5)
    got = set(map(tuple, tags[["image_id", "method", "tag"]].to_numpy()))
    assert got == {
        ("a", "", "confusion:Fear->Surprise"), ("a", "gradcam", "background"),
        ("c", "", "confusion:Anger->Neutral"), ("c", "", "occlusion"), ("c", "layercam", "background"),
        ("d", "", "confusion:Sadness->Fear"), ("d", "layercam", "background"),
    }  # b is correct: no tags, whatever its CAM or occluder
    assert compute_failure_tags([], [], []).empty
    with pytest.raises(ValueError):
        compute_failure_tags(ids, true, pred, occ, {"gradcam": [0.1]})


def test_background_tag_is_relative_to_what_the_run_usually_shows():
    """A model that puts 4% of its CAM off the face is looking at the background at 30%,
    under the absolute half; one that usually puts 30% there is not, up to the half."""
    n = 40
    ids = [f"i{k}" for k in range(n)]
    true, pred = ["Fear"] * n, ["Fear"] * (n - 3) + ["Happiness"] * 3       # the last three are wrong
    focused = [0.04] * (n - 3) + [0.3, 0.2, 0.6]
    diffuse = [0.3] * (n - 3) + [0.45, 0.2, 0.6]
    assert compute_background_threshold(focused) == pytest.approx(0.24)       # 6 x the median 0.04
    assert compute_background_threshold(diffuse) == 0.5                       # capped by the absolute share
    assert compute_background_threshold([0.0] * 5) == 0.1                     # never below a tenth
    assert compute_background_threshold([np.nan, None], 0.4) == 0.4
    tags = compute_failure_tags(ids, true, pred, None, {"focused": focused, "diffuse": diffuse})
    got = set(map(tuple, tags.loc[tags["tag"] == "background", ["image_id", "method"]].to_numpy()))
    assert got == {("i37", "focused"), ("i39", "focused"), ("i39", "diffuse")}
