"""Counterfactual twins of synthetic test faces: the same face drawn again with one thing changed.

- `skin` twins: every face drawn with each skin-tone group's tone (`create_reskinned_params`),
  nothing else changed. Recall per emotion on the twins, by skin tone, is the model's own
  dependence on skin tone, separated from which images each group happened to draw.
- `cue` twins: every face of a `cue` bias's subgroup (all faces when the set has no cue
  bias) drawn with and without the background cue. A model that learned the shortcut
  predicts the cued emotion more often on the cued twin.

Pure: parameters in, uint8 images out, as the model sees a stored image (the dataset's
JPEG round trip, then the resize the loader does); the caller predicts and stores.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.constants import RACES
from pipeline.synth.draw import FaceParams, render_face
from pipeline.synth.faces import (SKIN_BASE, SynthConfig, _in_subgroup, create_reskinned_params,
                                  encode_jpeg, image_id, parse_bias, sample_face_params)
from pipeline.workers import create_worker_pool

TWIN_KINDS = ("skin", "cue")
CUE_VARIANTS = ("cue", "no cue")


def select_test_faces(config: SynthConfig, *, classes: list[str], kind: str, n_images: int | None = None,
                      seed: int = 0) -> list[tuple[FaceParams, dict]]:
    """Test faces (params, ground truth with 'image_id') whose label is among `classes`; for
    `cue` twins only the cue bias's subgroup. At most `n_images`, a seeded random subset."""
    if kind not in TWIN_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TWIN_KINDS)}, got {kind!r}")
    faces = _test_faces(config, classes, kind, range(config.n_train, config.n))
    if n_images is not None and len(faces) > n_images:
        pick = np.sort(np.random.default_rng(seed).permutation(len(faces))[:n_images])
        faces = [faces[i] for i in pick]
    return faces


def _test_faces(config: SynthConfig, classes, kind: str, indices) -> list[tuple[FaceParams, dict]]:
    """`select_test_faces` over the images `indices` (all that qualify, no subset), in their order."""
    bias = parse_bias(config.bias)
    faces = []
    for index in indices:
        params, meta = sample_face_params(config, index, bias)
        if meta["label"] not in classes:
            continue
        if kind == "cue" and bias is not None and bias["effect"] == "cue" and not _in_subgroup(
                bias, meta["gender"], meta["race"], meta["age"]):
            continue
        faces.append((params, {**meta, "image_id": image_id(config, index)}))
    return faces


def create_twin_variants(params: FaceParams, kind: str) -> list[tuple[str, FaceParams]]:
    """(variant name, params) of one face: a skin group's name per tone, or 'cue' / 'no cue'."""
    if kind == "skin":
        return [(RACES[race], create_reskinned_params(params, race)) for race in SKIN_BASE]
    if kind == "cue":
        return [(CUE_VARIANTS[0], replace(params, cue=True)), (CUE_VARIANTS[1], replace(params, cue=False))]
    raise ValueError(f"kind must be one of {', '.join(TWIN_KINDS)}, got {kind!r}")


def render_as_loaded(params: FaceParams, size: int, reuse: dict | None = None) -> np.ndarray:
    """The aligned face as the loader reads it from disk (pipeline.data.images): JPEG round
    trip, libjpeg's reduced-scale draft where it applies, RGB, bilinear resize. `reuse`:
    as in `draw.render_face` (the same pixels, faster for consecutive twins of one face)."""
    return _decode_as_loaded(encode_jpeg(render_face(params, reuse).aligned), size)


def _decode_as_loaded(jpeg: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _render_chunk(job: tuple[list[FaceParams | Path], int]) -> np.ndarray:
    """Draw each face, or decode it from its stored file (a Path): the same pixels either way.
    Consecutive twins of one face share its background and pixel noise (`draw.render_face`)."""
    params, size = job
    reuse: dict = {}
    return np.stack([_decode_as_loaded(p.read_bytes(), size) if isinstance(p, Path)
                     else render_as_loaded(p, size, reuse) for p in params])


TWIN_COLUMNS = ["image_id", "variant", "drawn_as", "true_label"]   # one row per twin image


def _twin_jobs(faces: list[tuple[FaceParams, dict]], kind: str,
               root: Path | None) -> tuple[pd.DataFrame, list[FaceParams | Path]]:
    """The twins' frame and, in its order, each twin's params, or its stored file where the
    twin is the face as the dataset holds it."""
    rows, twins = [], []
    for params, meta in faces:
        drawn_as = RACES[meta["race"]] if kind == "skin" else CUE_VARIANTS[0 if meta["background_cue"] else 1]
        stored = None if root is None else root / "Image" / "aligned" / f"{meta['image_id']}_aligned.jpg"
        for variant, twin in create_twin_variants(params, kind):
            rows.append({"image_id": meta["image_id"], "variant": variant, "drawn_as": drawn_as,
                         "true_label": meta["label"]})
            twins.append(stored if variant == drawn_as and stored is not None and stored.is_file() else twin)
    return pd.DataFrame(rows, columns=TWIN_COLUMNS), twins


def _no_images(size: int) -> np.ndarray:
    return np.zeros((0, size, size, 3), np.uint8)


def _chunks(twins: list[FaceParams | Path], size: int, workers: int) -> list[tuple[list[FaceParams | Path], int]]:
    chunk = max(1, min(100, -(-len(twins) // (4 * max(1, workers)))))    # about 4 chunks per worker
    return [(twins[s:s + chunk], size) for s in range(0, len(twins), chunk)]


def create_twin_images(faces: list[tuple[FaceParams, dict]], kind: str, *, size: int, workers: int = 1,
                       root: Path | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Every variant of every face: a frame (image_id, variant, drawn_as, true_label) and the
    images (N, size, size, 3) uint8 in the frame's order. `drawn_as` is the variant the face
    has in the dataset (its skin group, or whether it carries the cue). `workers` processes
    draw them (drawing is deterministic, so the images do not depend on it).

    With the dataset's `root`, a face's own variant (the twin equal to the face) is decoded
    from its stored aligned image rather than drawn again: the generator wrote exactly that
    JPEG, so the pixels are the same (a test) and a third of the skin twins cost a decode."""
    frame, twins = _twin_jobs(faces, kind, root)
    if not twins:
        return frame, _no_images(size)
    jobs = _chunks(twins, size, workers)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return frame, np.concatenate([_render_chunk(job) for job in jobs])
    with create_worker_pool(workers) as pool:
        return frame, np.concatenate(pool.map(_render_chunk, jobs))


@dataclass(frozen=True)
class TwinRequest:
    """What one kind of twin images is drawn from: the set's generator arguments, the model's
    classes and input size, the face subset (n_images, seed) and the dataset's folder."""
    config: SynthConfig
    classes: tuple[str, ...]
    kind: str
    size: int
    root: str
    n_images: int | None = None
    seed: int = 0

    def faces(self) -> list[tuple[FaceParams, dict]]:
        return select_test_faces(self.config, classes=list(self.classes), kind=self.kind, n_images=self.n_images,
                                 seed=self.seed)


def _lowest_priority() -> None:
    """Pool initializer: run only on CPU time nobody else wants (SCHED_IDLE where Linux has it)."""
    try:
        if hasattr(os, "nice"):
            os.nice(19)
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        pass


def _draw_faces_of(job: tuple[TwinRequest, list[int]]) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Worker: the twins of the request's test faces among the images `indices` (frame, images, faces)."""
    request, indices = job
    faces = _test_faces(request.config, list(request.classes), request.kind, indices)
    frame, twins = _twin_jobs(faces, request.kind, Path(request.root))
    return frame, _render_chunk((twins, request.size)) if twins else _no_images(request.size), len(faces)


class BackgroundTwins:
    """Twin images drawn by lowest-priority worker processes while this process goes on with
    other work: they take CPU time only when a core would be idle. `take(request)` returns
    (frame, images, faces) for a request it was started with, waiting for what is left, and
    None for any other (the caller then draws); the images equal `create_twin_images`'s (a
    test). The demo starts one after training, while explain, demographics and audit leave
    a core idle, and its twins stage takes the images. `close()` (or the with block) stops it."""

    def __init__(self, requests: list[TwinRequest], workers: int = 2):
        self._pool = create_worker_pool(workers, initializer=_lowest_priority)
        self._closed = False
        self._pending: dict = {}
        try:
            for request in requests:
                # The images to draw from: all test images (each worker selects its share of the
                # faces), or those of the seeded subset, selected here.
                indices = (list(range(request.config.n_train, request.config.n)) if request.n_images is None
                           else [meta["index"] for _, meta in request.faces()])
                step = max(1, -(-len(indices) // (4 * workers)))
                self._pending[request] = self._pool.map_async(
                    _draw_faces_of, [(request, indices[s:s + step]) for s in range(0, len(indices), step)])
        except BaseException:
            self.close()
            raise

    def take(self, request: TwinRequest) -> tuple[pd.DataFrame, np.ndarray, int] | None:
        result = self._pending.pop(request, None)
        if result is None:
            return None
        parts = result.get() or [(pd.DataFrame(columns=TWIN_COLUMNS), _no_images(request.size), 0)]
        if not self._pending:
            self.close()
        return (pd.concat([part[0] for part in parts], ignore_index=True),
                np.concatenate([part[1] for part in parts]), sum(part[2] for part in parts))

    @property
    def worker_pids(self) -> list[int]:
        """The drawing processes' ids (empty once closed)."""
        return [] if self._closed else [w.pid for w in self._pool._pool]    # multiprocessing's own list

    def close(self) -> None:
        self._pending.clear()
        if not self._closed:
            self._closed = True
            self._pool.terminate()
            self._pool.join()

    def __enter__(self) -> "BackgroundTwins":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compute_twin_recall(twins: pd.DataFrame) -> pd.DataFrame:
    """Recall per true emotion (rows, plus '(accuracy)') and variant (columns), with n
    (faces per emotion): from a frame with true_label, variant, correct."""
    recall = twins.pivot_table(index="true_label", columns="variant", values="correct", aggfunc="mean")
    overall = twins.groupby("variant")["correct"].mean()
    recall.loc["(accuracy)"] = overall
    n_faces = twins.groupby("true_label")["image_id"].nunique()
    recall["n"] = n_faces.reindex(recall.index).fillna(twins["image_id"].nunique()).astype(int)
    recall.columns.name = None
    return recall


def compute_cue_shift(twins: pd.DataFrame, emotion: str) -> pd.DataFrame:
    """For `cue` twins: per variant, the share of faces predicted as `emotion` and the mean
    probability of `emotion` (column prob_cued), over faces not labelled `emotion` and over
    all; from a frame with variant, true_label, pred_label, prob_cued."""
    out = []
    for scope, sub in (("not " + emotion, twins[twins["true_label"] != emotion]), ("all", twins)):
        for variant, g in sub.groupby("variant"):
            out.append({"faces": scope, "variant": variant, "n": len(g),
                        "predicted_cued": float((g["pred_label"] == emotion).mean()),
                        "mean_prob_cued": float(g["prob_cued"].mean())})
    return pd.DataFrame(out, columns=["faces", "variant", "n", "predicted_cued", "mean_prob_cued"])
