"""The counterfactual-twins stage: a synthetic run's predictions on its test faces drawn again
with each skin tone (and, for the cue bias, with and without the cue), stored in
`twin_predictions`.

The faces come from the set's own generator arguments (its manifest), so only runs trained
on the built-in synthetic set have twins. The drawing is `pipeline.synth.twins`; this
module loads the run's best checkpoint, predicts every variant and replaces the run's rows
of each kind in one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.synth.twins import TWIN_KINDS, BackgroundTwins, TwinRequest


@dataclass(frozen=True)
class TwinsConfig:
    kinds: tuple[str, ...] = TWIN_KINDS
    n_images: int | None = None            # test faces per kind (a seeded random subset); None = all
    seed: int = 0
    device: str = "cpu"                    # or "auto" (CUDA when present), "cuda", ...
    batch_size: int = 256
    workers: int = 2                       # processes drawing the twins (as the synthetic set's)


def create_twin_frame(twins: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The `twin_predictions` rows (without run_id and kind) of twins and their probabilities."""
    pred = probs.argmax(1)
    return twins.assign(pred_label=np.asarray(classes)[pred],
                        confidence=probs[np.arange(len(pred)), pred].astype(np.float32),
                        correct=np.asarray(classes)[pred] == twins["true_label"].to_numpy(),
                        probs=list(probs.astype(np.float32)))


def create_twin_requests(synth, classes, image_size: int, root: str | Path, config: TwinsConfig) -> list[TwinRequest]:
    """The twin images a model of `classes` and input size `image_size`, trained on the set at
    `root` made with generator arguments `synth`, is shown: one request per kind of `config`."""
    size = min(int(image_size), 100)
    return [TwinRequest(synth, tuple(str(c) for c in classes), kind, size, str(Path(root).resolve()),
                        config.n_images, config.seed) for kind in config.kinds]


def create_stored_twins(db: str | Path, run: str, config: TwinsConfig = TwinsConfig(),
                        log: Callable[[str], None] = print, background: BackgroundTwins | None = None) -> dict:
    """Predict and store the twins of `run` (id, prefix or 'latest'); returns {kind: rows}.
    `background`: images already being drawn (`BackgroundTwins`); a kind it does not hold,
    or holds for other settings, is drawn here."""
    from pipeline.store import db as store
    from pipeline.synth.faces import load_synth_config
    from pipeline.synth.twins import create_twin_images
    from pipeline.train.loop import predict_probabilities
    from pipeline.train.models import load_run_model

    bad = [k for k in config.kinds if k not in TWIN_KINDS]
    if bad or not config.kinds:
        raise UserError(f"twin kinds must be among {', '.join(TWIN_KINDS)}, got {', '.join(config.kinds) or 'none'}")
    with store.open_store(db, read_only=True) as con:
        row = store.get_run(con, run)
    run_id = row["run_id"]
    root = Path(row["dataset_root"] or "")
    if row["kind"] != "train" or not row.get("is_synthetic"):
        raise UserError(f"run {run_id} is not a training run on the built-in synthetic set; counterfactual twins "
                        "need the generator's face parameters (train on `python -m pipeline synth` output)")
    if not (root / "Synthetic" / "manifest.json").is_file():
        raise UserError(f"the synthetic set of run {run_id} is no longer at {root} (Synthetic/manifest.json "
                        "missing); regenerate it there with the same `synth` arguments")
    if not row.get("checkpoint_path") or not Path(row["checkpoint_path"]).is_file():
        raise UserError(f"run {run_id} has no checkpoint at {row.get('checkpoint_path')}; twins need the model")
    from pipeline.train.runner import resolve_device

    device = resolve_device(config.device)
    model, meta = load_run_model(db, row, device)   # from the store's runs/ folder, SHA-256 checked
    classes = [str(c) for c in meta["classes"]]
    synth = load_synth_config(root)
    frames = {}
    for request in create_twin_requests(synth, classes, meta["image_size"], root, config):
        drawn = background.take(request) if background is not None else None
        if drawn is None:
            faces = request.faces()
            twins, images = create_twin_images(faces, request.kind, size=request.size, workers=config.workers,
                                               root=root)
            drawn = (twins, images, len(faces))
        twins, images, n_faces = drawn
        probs = predict_probabilities(model, images, meta, device, config.batch_size)
        frames[request.kind] = create_twin_frame(twins, probs, classes)
        log(f"{request.kind} twins: {n_faces} faces, {len(twins)} images predicted")
    with store.open_store(db) as con, store.transaction(con):
        counts = {kind: store.replace_rows(con, "twin_predictions", frame, run_id=run_id, kind=kind)
                  for kind, frame in frames.items()}
    return {"run_id": run_id, "rows": counts, "frames": frames, "classes": classes,
            "bias": synth.bias}
