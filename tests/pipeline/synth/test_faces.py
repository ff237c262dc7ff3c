"""Tests of the built-in synthetic face generator (pipeline/synthetic.py, synthetic_draw.py, the synth command)."""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.constants import EMOTIONS
from pipeline.errors import UserError
from pipeline.synth.faces import (
    SKIN_BASE, SynthConfig, compute_colour_headroom, create_reskinned_params, generate_dataset, load_au_masks, load_manifest, load_synthetic_attributes,
    parse_bias, sample_face_params, write_preview,
)
from pipeline.synth.draw import NOISE_SIGMA_RANGE, create_gradient_image, render_face

N = 80
CONFIG = SynthConfig(n=N, seed=3, workers=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(out, CONFIG, progress=False)
    return out


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_layout_and_formats(root):
    labels = _lines(root / "EmoLabel" / "list_patition_label.txt")
    names = [name for name, _ in labels]
    n_train = CONFIG.n_train
    assert len(labels) == N and n_train == 64
    assert names[:n_train] == ["train_%05d.jpg" % (i + 1) for i in range(n_train)]
    assert names[n_train:] == ["test_%04d.jpg" % (i + 1) for i in range(N - n_train)]
    assert all(code in {str(c) for c in range(1, 8)} for _, code in labels)
    for name, _ in labels:
        stem = name[:-4]
        with Image.open(root / "Image" / "aligned" / f"{stem}_aligned.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (100, 100))
        with Image.open(root / "Image" / "original" / name) as im:
            assert im.format == "JPEG" and im.size[0] > 100 and im.size[1] > 100
        attri = (root / "Annotation" / "manual" / f"{stem}_manu_attri.txt").read_text().splitlines()
        assert len(attri) == 8
        assert all(re.fullmatch(r"-?\d+\.\d\d -?\d+\.\d\d", line) for line in attri[:5])
        assert attri[5] in {"0", "1", "2"} and attri[6] in {"0", "1", "2"} and attri[7] in {"0", "1", "2", "3", "4"}
    dist = _lines(root / "EmoLabel" / "distribution_basic.txt")
    assert [d[0] for d in dist] == names
    for d in dist:
        assert len(d) == 8 and all(re.fullmatch(r"\d\.\d{4}", v) for v in d[1:])
        assert abs(sum(float(v) for v in d[1:]) - 1.0) <= 1e-3
    syn = root / "Synthetic"
    assert [l[0] for l in _lines(syn / "aligned_landmarks.txt")] == [n[:-4] for n in names]
    assert all(len(l) == 11 for l in _lines(syn / "aligned_landmarks.txt"))
    occ = _lines(syn / "occluders.txt")
    assert {o for _, o in occ} <= {"none", "sunglasses", "hand", "hat"}
    assert not list(root.parent.glob(".*tmp*")), "temporary folder left behind"


def test_labels_are_argmax_of_soft_labels(root):
    labels = dict(_lines(root / "EmoLabel" / "list_patition_label.txt"))
    for name, *probs in _lines(root / "EmoLabel" / "distribution_basic.txt"):
        p = np.array([float(v) for v in probs])
        assert int(np.argmax(p)) + 1 == int(labels[name])
        assert (p == p.max()).sum() == 1


def test_extras_readers_consistent(root):
    manifest = load_manifest(root)
    assert manifest["generator"] == "fer-trust-synthetic" and manifest["seed"] == 3
    assert manifest["bias"] is None and manifest["args"]["n"] == N
    assert manifest["counts"]["total"] == N
    assert sum(manifest["counts"]["train"].values()) == CONFIG.n_train
    attrs = load_synthetic_attributes(root)
    assert len(attrs) == N and set(attrs["split"]) == {"train", "test"}
    assert set(attrs["label"]) <= set(EMOTIONS)
    labels = {name[:-4]: EMOTIONS[int(code) - 1] for name, code in _lines(root / "EmoLabel" / "list_patition_label.txt")}
    assert dict(zip(attrs["image_id"], attrs["label"])) == labels
    masks = load_au_masks(root)
    assert set(masks) == set(labels)
    some = sorted(labels)[::7] + ["not_an_image"]
    subset = load_au_masks(root, some)
    assert set(subset) == set(some[:-1]) and all((subset[k] == masks[k]).all() for k in subset)
    for iid, aus in zip(attrs["image_id"], attrs["aus"]):
        m = masks[iid]
        assert m.shape == (100, 100) and m.dtype == bool
        assert (m.sum() > 0) == (aus != "")   # drawn Neutral faces have an empty mask
    # manual landmarks (original coords) = aligned landmarks shifted by the crop offset
    aligned = {l[0]: np.array(l[1:], float).reshape(5, 2) for l in _lines(root / "Synthetic" / "aligned_landmarks.txt")}
    for iid, lm in list(aligned.items())[:10]:
        orig = np.array([l.split() for l in (root / "Annotation" / "manual" / f"{iid}_manu_attri.txt").read_text().splitlines()[:5]], float)
        assert np.allclose(orig - lm, 20.0, atol=0.011)
        assert 25 < lm[0, 0] < 40 and 60 < lm[1, 0] < 75   # eyes at steady aligned positions


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_parallel_safe(tmp_path):
    import multiprocessing

    config = SynthConfig(n=210, seed=11, workers=1)   # three chunks of at most 100 faces: two workers start
    generate_dataset(tmp_path / "a", config, progress=False)
    live = []                                          # the work given for meanwhile runs while they draw
    generate_dataset(tmp_path / "b", replace(config, workers=2), progress=False,
                     meanwhile=lambda: live.append(len(multiprocessing.active_children())))
    assert live == [2]
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys()
    manifest_key = str(Path("Synthetic") / "manifest.json")
    assert {k for k in a if a[k] != b[k]} <= {manifest_key}   # only the recorded worker count differs
    assert json.loads(a[manifest_key])["args"]["workers"] == 1
    generate_dataset(tmp_path / "c", replace(config, seed=12), progress=False)
    c = _tree(tmp_path / "c")
    assert a["Image/aligned/train_00001_aligned.jpg"] != c["Image/aligned/train_00001_aligned.jpg"]


def test_refuses_non_empty_out_unless_force(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    config = SynthConfig(n=6, seed=1, workers=1)
    with pytest.raises(UserError, match="--force"):
        generate_dataset(out, config, progress=False)
    assert (out / "keep.txt").exists()
    generate_dataset(out, config, progress=False, force=True)
    assert not (out / "keep.txt").exists() and (out / "Synthetic" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("text, expected", [
    ("race=1:faint", {"subgroup": {"race": 1}, "effect": "faint", "factor": 0.5}),
    ("gender=1&race=2:faint=0.3", {"subgroup": {"gender": 1, "race": 2}, "effect": "faint", "factor": 0.3}),
    ("race=1:fewer=Anger,Disgust@0.1", {"subgroup": {"race": 1}, "effect": "fewer", "emotions": ["Anger", "Disgust"], "fraction": 0.1}),
    ("race=Asian:cue=happiness", {"subgroup": {"race": 2}, "effect": "cue", "emotion": "Happiness", "probability": 0.9}),
    ("age=4:fewer=Fear", {"subgroup": {"age": 4}, "effect": "fewer", "emotions": ["Fear"], "fraction": 0.1}),
])
def test_parse_bias(text, expected):
    parsed = parse_bias(text)
    assert {k: v for k, v in parsed.items() if k != "text"} == expected
    assert parse_bias(None) is None and parse_bias("") is None


@pytest.mark.parametrize("text, fragment", [
    ("race=1", "SUBGROUP:EFFECT"), ("race=7:faint", "race"), ("height=1:faint", "height"),
    ("race=1:blur", "blur"), ("race=1:faint=2", "between 0 and 1"), ("race=1:fewer=Joy", "Joy"),
    ("race=1:cue", "emotion"), (":faint", "empty"), ("race:faint", "attr=code"),
])
def test_parse_bias_errors(text, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        parse_bias(text)


def _train_counts(config: SynthConfig, emotions: set[str], race: int) -> int:
    bias = parse_bias(config.bias)
    n = 0
    for i in range(config.n_train):
        _, meta = sample_face_params(config, i, bias)
        n += meta["race"] == race and meta["label"] in emotions
    return n


def test_fewer_bias_reduces_subgroup_train_counts():
    base = SynthConfig(n=1500, seed=5, race_shares=(1 / 3, 1 / 3, 1 / 3), class_shares=(1, 1, 2, 1, 1, 2, 1))
    biased = replace(base, bias="race=1:fewer=Anger,Disgust@0.1")
    target = {"Anger", "Disgust"}
    before, after = _train_counts(base, target, 1), _train_counts(biased, target, 1)
    assert before > 60 and after < 0.3 * before
    # other groups untouched
    assert _train_counts(base, target, 0) == _train_counts(biased, target, 0)


def _contrast(params) -> float:
    """Mean absolute pixel change, inside the AU regions, between the expression and a neutral face."""
    face = render_face(params)
    neutral = render_face(replace(params, aus=()))
    diff = np.abs(face.aligned.astype(float) - neutral.aligned.astype(float)).sum(axis=2)
    return float(diff[face.au_mask].mean()) if face.au_mask.any() else float("nan")


def _expressive_params(config: SynthConfig, count: int, bias=None):
    out = []
    for i in range(10 * count):
        params, meta = sample_face_params(config, i, bias)
        if params.aus and max(v for _, v in params.aus) > 0.3 and params.occluder == "none":
            out.append((params, meta))
        if len(out) == count:
            break
    return out


def _reskinned(params, race: int):
    """The same face (pose, light, skin jitter) with the skin of `race`'s group, noise off."""
    return replace(create_reskinned_params(params, race), noise=0.0)


@pytest.mark.parametrize("c0, c1, size", [((30, 200, 90), (229, 31, 130), 280), ((0, 0, 0), (255, 255, 255), 7),
                                           ((100, 100, 100), (100, 100, 100), 1)])
def test_gradient_image_equals_its_column_broadcast_over_the_width(c0, c1, size):
    c0, c1 = np.array(c0), np.array(c1)
    t = np.linspace(0, 1, size)[:, None, None]
    expected = np.broadcast_to((c0 * (1 - t) + c1 * t).astype(np.uint8), (size, size, 3))
    image = create_gradient_image(c0, c1, size)
    assert image.mode == "RGB" and image.size == (size, size)
    assert np.array_equal(np.asarray(image), expected)


def test_reskinned_params_change_the_skin_only():
    params, _ = sample_face_params(SynthConfig(n=50, seed=2), 7)
    for race in SKIN_BASE:
        twin = create_reskinned_params(params, race)
        assert twin.race == race and replace(twin, race=params.race, skin=params.skin) == params
        assert np.array_equal(np.asarray(twin.skin) - SKIN_BASE[race], np.asarray(params.skin) - SKIN_BASE[params.race])
    assert create_reskinned_params(params, params.race) == params
    with pytest.raises(ValueError, match="race must be one of"):
        create_reskinned_params(params, 5)


def test_equal_feature_contrast_across_skin_groups():
    # Realistic faces (sampled lighting and skin jitter): an action unit must change the
    # pixels by the same amount on every skin tone. Clipping at the lightest or darkest
    # skin (the old generator lost 1-4% on Fear/Surprise mouths of dark skin) fails this.
    rows = _expressive_params(SynthConfig(n=5000, seed=9), 36)
    per_group = {race: np.mean([_contrast(_reskinned(p, race)) for p, _ in rows]) for race in SKIN_BASE}
    values = np.array(list(per_group.values()))
    assert values.min() > 10.0, per_group
    assert values.max() / values.min() < 1.003, per_group


def test_stubble_leaves_expression_contrast_unchanged():
    # Gender presentation must not make expressions fainter: the same face with and
    # without stubble changes by the same amount when the expression is drawn.
    rows = [(p, m) for p, m in _expressive_params(SynthConfig(n=5000, seed=12), 60) if p.gender == 0][:20]
    assert len(rows) >= 10
    ratios = [_contrast(replace(p, noise=0.0, extras={"stubble": True}))
              / _contrast(replace(p, noise=0.0, extras={"stubble": False})) for p, _ in rows]
    assert np.allclose(ratios, 1.0, atol=0.003), ratios
    face = render_face(replace(rows[0][0], aus=(), noise=0.0, extras={"stubble": True})).aligned
    bare = render_face(replace(rows[0][0], aus=(), noise=0.0, extras={"stubble": False})).aligned
    assert (np.abs(face.astype(int) - bare.astype(int)).sum(axis=2) > 30).sum() > 100   # stubble is drawn


def test_gender_presentations_show_expressions_alike():
    # The same face drawn with the male and the female presentation (face width, jaw;
    # hair kept) changes by the same amount when the expression is drawn, and brows are as
    # thick on every gender.
    config = SynthConfig(n=5000, seed=13)
    rows = _expressive_params(config, 30)
    ratios = []
    for params, _ in rows:
        male = replace(params, noise=0.0, gender=0, face_width=42.5, jaw=1.28, extras={})
        female = replace(params, noise=0.0, gender=1, face_width=40.5, jaw=0.88, extras={})
        ratios.append(_contrast(male) / _contrast(female))
    assert np.allclose(ratios, 1.0, atol=0.01), ratios
    widths = {g: [p.brow_width for p, _ in (sample_face_params(config, i) for i in range(300)) if p.gender == g]
              for g in (0, 1)}
    assert abs(np.mean(widths[0]) - np.mean(widths[1])) < 0.1


def test_colour_budget_leaves_headroom_on_every_skin_tone():
    headroom = compute_colour_headroom()
    assert set(headroom) == set(SKIN_BASE)
    for race, room in headroom.items():
        assert min(room["below"]) >= 0 and min(room["above"]) >= 0, (race, room)


@pytest.mark.parametrize("race", sorted(SKIN_BASE))
def test_no_expression_pixel_clips(race):
    # Every pixel an expression changes stays strictly inside (0, 255), on sampled faces with
    # their lighting, before noise; with noise, clipping is rare.
    rows = _expressive_params(SynthConfig(n=5000, seed=11, race_shares=(1 / 3, 1 / 3, 1 / 3)), 24)
    clipped_with_noise = []
    for params, _ in rows:
        face_params = _reskinned(params, race)
        face = render_face(face_params).aligned
        neutral = render_face(replace(face_params, aus=())).aligned
        changed = np.abs(face.astype(int) - neutral.astype(int)).sum(axis=2) > 0
        for img in (face, neutral):
            px = img[changed]
            assert px.min() > 0 and px.max() < 255, (race, params.aus, px.min(), px.max())
        noisy = render_face(replace(face_params, noise=NOISE_SIGMA_RANGE[1])).aligned[changed]
        clipped_with_noise.append(((noisy == 0) | (noisy == 255)).any(axis=1).mean())
    assert np.mean(clipped_with_noise) < 0.002


def test_faint_bias_lowers_contrast_only_for_subgroup():
    config = SynthConfig(n=5000, seed=4, race_shares=(0.5, 0.5, 0.0))
    bias = parse_bias("race=1:faint=0.5")
    rows = _expressive_params(config, 40)
    ratios = {0: [], 1: []}
    for params, meta in rows:
        faint, faint_meta = sample_face_params(config, meta["index"], bias)
        assert faint_meta["label"] == meta["label"]     # labels are those of the expression as felt
        ratios[meta["race"]].append(_contrast(faint) / _contrast(params))
    assert len(ratios[0]) > 5 and len(ratios[1]) > 5
    assert np.allclose(ratios[0], 1.0)
    assert np.mean(ratios[1]) < 0.75


def test_cue_bias_recorded_and_applied(tmp_path):
    config = SynthConfig(n=120, seed=2, workers=1, race_shares=(0.5, 0.0, 0.5), bias="race=2:cue=Happiness@1.0")
    manifest = generate_dataset(tmp_path / "ds", config, progress=False)
    assert manifest["bias"]["effect"] == "cue" and manifest["bias"]["subgroup"] == {"race": 2}
    assert load_manifest(tmp_path / "ds")["args"]["bias"] == "race=2:cue=Happiness@1.0"
    attrs = load_synthetic_attributes(tmp_path / "ds")
    assert attrs.loc[attrs["race"] != 2, "background_cue"].sum() == 0
    train_happy = attrs[(attrs["race"] == 2) & (attrs["split"] == "train") & (attrs["label"] == "Happiness")]
    assert len(train_happy) > 3 and train_happy["background_cue"].all()
    assert attrs.loc[(attrs["race"] == 2) & (attrs["split"] == "train"), "biased"].all()


def test_preview_written(root, tmp_path):
    png = write_preview(root, tmp_path / "sheet.png", per_class=4)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[1] == 7 * 100 and im.size[0] > 4 * 100
    png2 = write_preview(SynthConfig(n=300, seed=1), tmp_path / "sheet2.png", per_class=2)
    assert png2.stat().st_size > 1000


def _synth_args(argv: list[str]) -> argparse.Namespace:
    from pipeline.cli import create_command_parser
    from pipeline.commands import synth

    return create_command_parser(synth).parse_args(argv)


def test_command_runs_and_reports_bad_bias(tmp_path, capsys):
    from pipeline.commands import synth
    out = tmp_path / "ds"
    args = _synth_args(["--out", str(out), "--n", "12", "--quiet", "--workers", "1", "--balanced-demographics",
                        "--preview", str(tmp_path / "p.png")])
    assert synth.run(args) == 0
    assert (tmp_path / "p.png").exists()
    assert load_manifest(out)["args"]["race_shares"] == [1 / 3, 1 / 3, 1 / 3]
    with pytest.raises(UserError, match="bad --bias"):
        synth.run(_synth_args(["--out", str(tmp_path / "x"), "--n", "12", "--bias", "race=1:sparkle"]))
    assert not (tmp_path / "x").exists()
