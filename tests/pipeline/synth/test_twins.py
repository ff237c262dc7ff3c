"""Counterfactual twins: one thing changed per variant, images as the loader reads them."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from pipeline.constants import RACES
from pipeline.data.images import load_images_array
from pipeline.data.loaders import load_dataset
from pipeline.synth.draw import compute_cue_mask, render_face
from pipeline.synth.faces import BALANCED, SynthConfig, generate_dataset, sample_face_params
from pipeline.synth.twins import (compute_cue_shift, compute_twin_recall, create_twin_images, create_twin_variants,
                                  select_test_faces)

ALL_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
CUE = SynthConfig(n=60, seed=4, workers=1, test_fraction=0.5, bias="race=2:cue=Happiness@0.9", **BALANCED)


def test_cue_changes_only_its_four_corner_triangles():
    mask = compute_cue_mask()
    assert np.array_equal(mask, mask[:, ::-1]) and np.array_equal(mask, mask[::-1])   # a flip keeps it in place
    near = binary_dilation(mask, np.ones((3, 3), bool), iterations=3)     # blur spreads it by a pixel or two
    for index in range(4):
        params, _ = sample_face_params(CUE, index)
        with_cue = render_face(replace(params, cue=True)).aligned.astype(int)
        without = render_face(replace(params, cue=False)).aligned.astype(int)
        changed = np.abs(with_cue - without).max(axis=2) > 0
        assert changed[mask].mean() > 0.3 and not changed[~near].any()


def test_skin_twins_change_the_skin_only():
    params, meta = sample_face_params(CUE, 1)
    variants = dict(create_twin_variants(params, "skin"))
    assert list(variants) == list(RACES.values())
    assert variants[RACES[meta["race"]]] == params                        # its own tone is the face itself
    for twin in variants.values():
        assert replace(twin, race=params.race, skin=params.skin) == params


def test_faces_drawn_with_reuse_are_the_faces_drawn_alone():
    """Twins of one face share its background and pixel noise through `reuse`; any order of
    faces (a face, its twins, another face, the first again) draws the same pixels as alone."""
    a, _ = sample_face_params(CUE, 1)
    b, _ = sample_face_params(CUE, 2)
    sequence = [*(t for _, t in create_twin_variants(a, "skin")), b, a, replace(a, noise=0.0),
                *(t for _, t in create_twin_variants(a, "cue")), replace(b, noise=a.noise), b]
    reuse: dict = {}
    for params in sequence:
        shared, alone = render_face(params, reuse), render_face(params)
        assert np.array_equal(shared.original, alone.original) and np.array_equal(shared.aligned, alone.aligned)
    assert reuse["background"][0][0] == b.background_seed and reuse["noise"][0][0] == b.noise_seed


def test_twin_images_match_what_the_loader_reads(tmp_path):
    root = tmp_path / "ds"
    generate_dataset(root, CUE, progress=False)
    records = {r.image_id: r for r in load_dataset("synthetic", root, num_classes=7).split("test")}
    faces = select_test_faces(CUE, classes=["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"],
                              kind="skin", n_images=5)
    for size in (64, 32):
        frame, images = create_twin_images(faces, "skin", size=size)
        assert len(frame) == 5 * 3 and images.shape == (15, size, size, 3)
        own = frame[frame["variant"] == frame["drawn_as"]]
        stored = load_images_array([records[i] for i in own["image_id"]], size)
        assert np.array_equal(images[own.index.to_numpy()], stored)      # the face as drawn is the stored image
        from_root = create_twin_images(faces, "skin", size=size, root=root)
        assert from_root[0].equals(frame) and np.array_equal(from_root[1], images)
    # drawn by worker processes in chunks: the same images in the same order
    many = select_test_faces(CUE, classes=["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"],
                             kind="skin", n_images=40)
    one_frame, one = create_twin_images(many, "skin", size=32)
    two_frame, two = create_twin_images(many, "skin", size=32, workers=2)
    assert len(one) == 3 * len(many) > 8 and np.array_equal(one, two) and one_frame.equals(two_frame)


def test_a_face_s_own_twin_is_decoded_from_its_stored_file_not_drawn(tmp_path, monkeypatch):
    from pipeline.synth import twins

    root = tmp_path / "ds"
    generate_dataset(root, CUE, progress=False)
    for kind, variants in (("skin", 3), ("cue", 2)):
        faces = select_test_faces(CUE, classes=ALL_CLASSES, kind=kind)
        drawn_frame, drawn = create_twin_images(faces, kind, size=24)
        calls = []
        real = twins.render_as_loaded
        monkeypatch.setattr(twins, "render_as_loaded",
                            lambda p, size, reuse=None: calls.append(p) or real(p, size, reuse))
        frame, images = create_twin_images(faces, kind, size=24, root=root)
        monkeypatch.setattr(twins, "render_as_loaded", real)
        assert len(calls) == (variants - 1) * len(faces) > 0
        assert frame.equals(drawn_frame) and np.array_equal(images, drawn)
    # a stored file that is gone: that face is drawn again
    faces = select_test_faces(CUE, classes=ALL_CLASSES, kind="skin", n_images=3)
    (root / "Image" / "aligned" / f"{faces[0][1]['image_id']}_aligned.jpg").unlink()
    assert np.array_equal(create_twin_images(faces, "skin", size=24, root=root)[1],
                          create_twin_images(faces, "skin", size=24)[1])


def test_twins_drawn_in_the_background_are_the_twins_drawn_here(tmp_path):
    """`BackgroundTwins` draws in lowest-priority processes what `create_twin_images` draws:
    the same frame and pixels for each request it was started with; any other request (other
    size, classes, kind or subset) is None, so the caller draws it; it stops its processes."""
    from pipeline.synth.twins import BackgroundTwins, TwinRequest

    root = tmp_path / "ds"
    generate_dataset(root, CUE, progress=False)
    skin = TwinRequest(CUE, tuple(ALL_CLASSES[:6]), "skin", 24, str(root.resolve()))
    cue = TwinRequest(CUE, tuple(ALL_CLASSES[:6]), "cue", 24, str(root.resolve()), n_images=5, seed=3)
    background = BackgroundTwins([skin, cue])
    pids = background.worker_pids
    if hasattr(os, "SCHED_IDLE"):                                         # Linux
        assert len(pids) == 2 and all(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in pids)
    for request in (replace(skin, size=16), replace(skin, classes=tuple(ALL_CLASSES)), replace(cue, seed=4)):
        assert background.take(request) is None
    for request in (cue, skin):
        faces = request.faces()
        frame, images, n_faces = background.take(request)
        here_frame, here = create_twin_images(faces, request.kind, size=request.size, root=root)
        assert n_faces == len(faces) > 0 and frame.equals(here_frame) and np.array_equal(images, here)
        assert background.take(request) is None                          # taken once
    assert background.worker_pids == [] and not any(_alive(pid) for pid in pids)   # stopped once all are taken
    with BackgroundTwins([skin]) as unused:
        pids = unused.worker_pids
    assert pids and not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cue_twins_are_the_subgroup_and_the_summaries():
    faces = select_test_faces(CUE, classes=["Happiness", "Sadness", "Anger", "Surprise", "Fear", "Disgust"], kind="cue")
    assert faces and all(meta["race"] == 2 for _, meta in faces)
    frame, images = create_twin_images(faces, "cue", size=16)
    assert set(frame["variant"]) == {"cue", "no cue"} and len(images) == 2 * len(faces)
    # a model that always says Happiness on the cued twin and is right otherwise
    frame["pred_label"] = np.where(frame["variant"] == "cue", "Happiness", frame["true_label"])
    frame["correct"] = frame["pred_label"] == frame["true_label"]
    frame["prob_cued"] = np.where(frame["variant"] == "cue", 0.9, 0.1)
    shift = compute_cue_shift(frame, "Happiness").set_index(["faces", "variant"])
    assert shift.loc[("not Happiness", "cue"), "predicted_cued"] == 1.0
    assert shift.loc[("not Happiness", "no cue"), "predicted_cued"] == 0.0
    recall = compute_twin_recall(frame)
    assert recall.loc["(accuracy)", "no cue"] == 1.0 and recall["n"].sum() > len(faces)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        select_test_faces(CUE, classes=["Happiness"], kind="hair")


def test_cue_lies_in_the_background_region():
    """So that a CAM drawn to the cue counts as background energy (the `background` failure tag)."""
    from pipeline.explain.regions import REGION_INDEX, compute_region_map

    for index in range(6):
        params, _ = sample_face_params(CUE, index)
        regions = compute_region_map(render_face(params).landmarks)
        assert (regions[compute_cue_mask()] == REGION_INDEX["background"]).mean() > 0.95
