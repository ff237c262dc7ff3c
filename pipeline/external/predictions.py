"""`import-predictions`: another tool's predictions on a dataset, stored as a run of kind 'predictions'.

The file (CSV, or Parquet) has one row per image, keyed by an `image_id`
column (the dataset's ids; a file name such as `train_00001.jpg` also matches
`train_00001`) or a `path` column (relative to the dataset root, or absolute),
and either one probability column per class, named by the class (emotion names
or their synonyms: `happy`, `angry`, ...; other columns are ignored), or a
`pred_label` column. With probabilities, rows are checked (finite, not
negative) and renormalised to sum to 1; with labels only, each prediction is
stored with probability 1 (so confidence-based views see no calibration).

Rows whose image is not in the dataset are counted and reported (with
examples), as are labels outside the dataset's classes; the rest goes through
the same class mapping, metrics and tables as `evaluate`
(`train.runner.evaluate_mapped_splits`), each image in its own dataset split.
There are no heatmaps: nothing to explain without a model.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.constants import EMOTIONS
from pipeline.errors import UserError

SUFFIXES: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ImportConfig:
    file: str
    dataset: Any                           # train.runner.DatasetSpec
    db: str = ""
    name: str | None = None                # the run's model name (default: the file's stem)


@dataclass
class MatchedPredictions:
    """The rows of a predictions file that matched the dataset (pure result of match_predictions)."""
    records: list                          # ImageRecords, file order
    probs: np.ndarray                      # (N, K) over `classes`
    classes: tuple[str, ...]
    mode: str                              # 'probabilities' | 'labels'
    key: str                               # 'image_id' | 'path'
    unmatched: list[str]                   # keys not in the dataset
    unknown_labels: dict[str, int]         # pred_label values outside the dataset's classes -> rows
    renormalised: int                      # rows whose probabilities did not sum to 1 within 1e-3


def load_predictions_table(path: str | Path) -> pd.DataFrame:
    """The file as a data frame (CSV or Parquet by suffix); UserError naming the file otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"predictions file {path}: unknown type {path.suffix!r}; use .csv or .parquet")
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:
        raise UserError(f"cannot read predictions file {path} ({type(exc).__name__}: {exc})") from None


def _class_columns(columns: Sequence[str]) -> dict[str, str]:
    """Emotion -> column, for columns named by an emotion or a synonym."""
    from pipeline.external.card import canonical_class

    out: dict[str, str] = {}
    for col in columns:
        emotion = canonical_class(col)
        if emotion in EMOTIONS and str(col).lower() not in ("image_id", "path", "pred_label", "split"):
            if emotion in out:
                raise UserError(f"columns {out[emotion]!r} and {col!r} both name the class {emotion}; keep one")
            out[emotion] = col
    return out


def match_predictions(table: pd.DataFrame, dataset, *, source: str = "predictions file") -> MatchedPredictions:
    """Match a predictions table with a dataset's records; pure (no I/O)."""
    # Long on purpose: matching by image_id or path, label or probability columns, and counting every
    # unmatched row are one pass so the report names each cause once.
    from pipeline.external.card import canonical_class

    if "image_id" in table.columns:
        key = "image_id"
        by_key = {r.image_id: r for r in dataset.records}
        stems = {}
        for r in dataset.records:
            stems.setdefault(Path(r.image_id).stem, r)
        lookup = lambda v: by_key.get(v) or stems.get(Path(v).stem)  # noqa: E731
    elif "path" in table.columns:
        key = "path"
        root = Path(dataset.root).resolve()
        by_key = {}
        for r in dataset.records:
            if r.path is not None:
                p = Path(r.path).resolve()
                by_key[p.as_posix()] = r
                if p.is_relative_to(root):
                    by_key[p.relative_to(root).as_posix()] = r
        if not by_key:
            raise UserError(f"{source}: dataset {dataset.name} holds pixels, not files; key the rows by image_id")
        lookup = lambda v: by_key.get(Path(v).as_posix()) or by_key.get(Path(v).resolve().as_posix())  # noqa: E731
    else:
        raise UserError(f"{source} has neither an image_id nor a path column (columns: "
                        f"{', '.join(map(str, table.columns))}); add one")
    keys = table[key].astype(str).str.strip()
    dupes = keys[keys.duplicated()].unique()
    if len(dupes):
        raise UserError(f"{source}: {len(dupes)} {key} values appear more than once (e.g. {dupes[0]}); "
                        "keep one row per image")
    class_cols = _class_columns(table.columns)
    if class_cols:
        mode = "probabilities"
        classes = tuple(e for e in EMOTIONS if e in class_cols)
        values = table[[class_cols[c] for c in classes]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values).all(1) | (values < 0).any(1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserError(f"{source}: {int(bad.sum())} rows have missing, non-numeric or negative probabilities "
                            f"(first: row {row + 1}, {keys.iloc[row]}); columns {', '.join(class_cols.values())} "
                            "must hold probabilities (apply a softmax to logits first)")
        sums = values.sum(1, keepdims=True)
        if (sums <= 0).any():
            raise UserError(f"{source}: rows whose probabilities are all 0 (e.g. {keys.iloc[int(np.argmin(sums))]})")
        renormalised = int((np.abs(sums[:, 0] - 1) > 1e-3).sum())
        probs = values / sums
        usable = np.ones(len(table), bool)
        unknown: dict[str, int] = {}
    elif "pred_label" in table.columns:
        mode = "labels"
        labels = table["pred_label"].astype(str).map(canonical_class)
        classes = tuple(dataset.classes)
        usable = labels.isin(classes).to_numpy()
        unknown = labels[~usable].value_counts().to_dict()
        probs = np.zeros((len(table), len(classes)))
        idx = labels[usable].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        probs[np.flatnonzero(usable), idx] = 1.0
        renormalised = 0
    else:
        raise UserError(f"{source} has no probability column named by a class ({', '.join(EMOTIONS)}, or "
                        "synonyms such as happy) and no pred_label column; add one or the other")
    records, rows, unmatched = [], [], []
    for i, k in enumerate(keys):
        r = lookup(k)
        if r is None:
            unmatched.append(k)
        elif usable[i]:
            records.append(r)
            rows.append(i)
    return MatchedPredictions(records=records, probs=probs[rows].astype(np.float32), classes=classes, mode=mode,
                              key=key, unmatched=unmatched, unknown_labels={str(k): int(v) for k, v in unknown.items()},
                              renormalised=renormalised)


def run_import_predictions(config: ImportConfig, log: Callable[[str], None] = print):
    """Import a predictions file as a run of kind 'predictions'; returns a train.runner.RunOutcome."""
    import pipeline.train.runner as runner
    from pipeline.data.loaders import load_dataset
    from pipeline.external.card import file_sha256
    from pipeline.store import db as store
    from pipeline.train.evaluation import compute_class_mapping

    path = Path(config.file).expanduser().resolve()
    table = load_predictions_table(path)
    spec = dataclasses.replace(config.dataset, root=str(Path(config.dataset.root).resolve()))
    dataset = load_dataset(**spec.as_kwargs())
    t0 = time.perf_counter()
    matched = match_predictions(table, dataset, source=f"predictions file {path}")
    if not matched.records:
        raise UserError(f"no row of {path} matches an image of {spec.name} at {spec.root} "
                        f"({len(matched.unmatched)} unmatched {matched.key}s, e.g. "
                        f"{', '.join(matched.unmatched[:MAX_EXAMPLES])}); check the key column and --root")
    try:
        mapping = compute_class_mapping(matched.classes, dataset.classes)
    except ValueError as exc:
        raise UserError(f"cannot import {path} for {spec.name}: {exc}") from None
    # evaluate_mapped_splits "predicts" arrays of row indices: the probabilities are already known.
    position = {id(r): i for i, r in enumerate(matched.records)}
    splits = tuple(s for s in ("train", "val", "test") if any(r.split == s for r in matched.records))
    arrays = {s: ([r for r in matched.records if r.split == s],
                  np.array([position[id(r)] for r in matched.records if r.split == s], dtype=np.int64))
              for s in splits}
    result = runner.evaluate_mapped_splits(lambda rows: matched.probs[rows], arrays, mapping, dataset.classes, splits)
    if result is None:
        raise UserError(f"no matched image of {path} has a class the predictions cover ({', '.join(matched.classes)})")
    tables, headline_split, unmappable = result
    acc, f1, n = runner._headline(tables["class_metrics"], headline_split)
    name = config.name or path.stem
    now = runner._utcnow()
    run_row = {
        "run_id": store.new_run_id(f"pred-{name}"), "kind": "predictions", "parent_run_id": None,
        "dataset": spec.name, "dataset_root": spec.root, "dataset_fingerprint": dataset.fingerprint,
        "is_synthetic": dataset.is_synthetic, "recipe": "imported", "model": name,
        "classes": list(mapping.classes), "code_version": runner.code_version(), "seed": 0, "device": "none",
        "started_at": now, "finished_at": now, "eval_seconds": time.perf_counter() - t0, "checkpoint_path": None,
        "test_accuracy": acc, "test_macro_f1": f1, "n_test": n,
        "config": {"dataset": spec.as_kwargs(), "source_file": str(path), "source_sha256": file_sha256(path),
                   "mode": matched.mode, "key": matched.key, "rows": int(len(table)),
                   "model_classes": list(matched.classes), "evaluated_classes": list(mapping.classes),
                   "splits": list(splits), "headline_split": headline_split,
                   "unmatched": {"count": len(matched.unmatched), "examples": matched.unmatched[:MAX_EXAMPLES]},
                   "unknown_labels": matched.unknown_labels, "renormalised_rows": matched.renormalised,
                   "unmappable": {"count": sum(unmappable.values()), "by_class": unmappable}},
    }
    store.save_run(config.db, run_row, tables)
    return runner.RunOutcome(run_row["run_id"], "complete", {
        "accuracy": acc, "macro_f1": f1, "n": n, "split": headline_split, "rows": int(len(table)),
        "matched": len(matched.records), "unmatched": len(matched.unmatched),
        "unmatched_examples": matched.unmatched[:MAX_EXAMPLES], "unknown_labels": matched.unknown_labels,
        "renormalised": matched.renormalised, "mode": matched.mode, "classes": list(mapping.classes),
        "unmappable": sum(unmappable.values()), "unmappable_by_class": unmappable,
        "splits": {s: len(arrays[s][0]) for s in splits},
    })
