"""The evaluate stage for a carded model: `evaluate --model CARD` -> a run of kind 'external'.

Like the cross-dataset evaluation of a trained run (`train.runner.run_evaluate`,
whose split loop `evaluate_mapped_splits` it shares): the card's classes are
matched with the dataset's, probabilities restricted to the shared classes and
renormalised, images of classes the model lacks excluded and counted. The run
records the card (every field, the model file's SHA-256 and the card's text)
in runs.config["card"], so `explain` can load the model again and every number
traces back to the file that made it. It has no parent run and no checkpoint.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pipeline.train.runner as runner
from pipeline.errors import UserError


@dataclass(frozen=True)
class ExternalEvaluateConfig:
    card: str                              # path of the model card (.toml)
    dataset: runner.DatasetSpec
    splits: tuple[str, ...] = ("test",)
    db: str = ""
    batch_size: int = 256
    quiet: bool = False


def run_evaluate_model(config: ExternalEvaluateConfig, log: Callable[[str], None] = print) -> runner.RunOutcome:
    """Evaluate the card's model on a dataset and store the run (kind 'external')."""
    import sys

    import torch

    from pipeline.data.loaders import load_dataset
    from pipeline.external.card import load_card
    from pipeline.external.models import load_external_model
    from pipeline.store import db as store
    from pipeline.train.evaluation import compute_class_mapping

    db = Path(config.db)
    card = load_card(config.card)
    model = load_external_model(card)
    spec = dataclasses.replace(config.dataset, root=str(Path(config.dataset.root).resolve()))
    dataset = load_dataset(**spec.as_kwargs())
    try:
        mapping = compute_class_mapping(card.classes, dataset.classes)
    except ValueError as exc:
        raise UserError(f"cannot evaluate model card {card.path} on {spec.name} at {spec.root}: {exc}") from None
    run_id = store.new_run_id(f"ext-{card.name}")
    card_config = card.as_config()
    card_config["text"] = Path(card.path).read_text(encoding="utf-8")
    run_row = {
        "run_id": run_id, "kind": "external", "parent_run_id": None, "dataset": spec.name,
        "dataset_root": spec.root, "dataset_fingerprint": dataset.fingerprint, "is_synthetic": dataset.is_synthetic,
        "recipe": f"card:{card.name}", "model": f"{card.format}:{Path(card.file).name}",
        "classes": list(mapping.classes), "code_version": runner.code_version(), "seed": 0, "device": "cpu",
        "started_at": runner._utcnow(), "checkpoint_path": None,
        "config": {"dataset": spec.as_kwargs(), "card": card_config, "splits": list(config.splits),
                   "model_classes": list(card.classes), "dataset_classes": list(dataset.classes),
                   "evaluated_classes": list(mapping.classes), "unmappable_classes": list(mapping.unmappable),
                   "model_only_classes": [c for c in card.classes if c not in mapping.classes],
                   "device": "cpu", "torch_version": torch.__version__},
    }
    store.start_run(db, run_row)
    with runner.marking_failed(db, run_id, log):
        t0 = time.perf_counter()
        arrays = runner.load_split_arrays(dataset, card.input.size, config.splits,
                                          not config.quiet and sys.stderr.isatty())
        result = runner.evaluate_mapped_splits(
            lambda images: model.predict_probabilities(images, config.batch_size),
            arrays, mapping, dataset.classes, config.splits)
        if result is None:
            raise UserError(f"no image of {spec.name} at {spec.root} (splits {', '.join(config.splits)}) has a "
                            f"class the model of {card.path} knows ({', '.join(card.classes)})")
        tables, headline_split, unmappable = result
        acc, f1, n = runner._headline(tables["class_metrics"], headline_split)
        n_unmappable = sum(unmappable.values())
        run_row["config"].update(unmappable={"count": n_unmappable, "by_class": unmappable},
                                 headline_split=headline_split)
        run_row.update(finished_at=runner._utcnow(), eval_seconds=time.perf_counter() - t0, test_accuracy=acc,
                       test_macro_f1=f1, n_test=n)
        store.save_run(db, run_row, tables)
    return runner.RunOutcome(run_id, "complete", {
        "model": card.name, "format": card.format, "accuracy": acc, "macro_f1": f1, "n": n,
        "split": headline_split, "classes": list(mapping.classes), "unmappable": n_unmappable,
        "unmappable_by_class": unmappable, "model_only_classes": run_row["config"]["model_only_classes"],
    })
