"""Kit inputs with hostile names: stored-row frames shaped like the store's, written here, not by the audit.

The audit's internals change independently; these tests only rely on the stored
columns (schema.sql), so the rows are made directly, with group and source names
holding every LaTeX special character and long intersections that need a longtable.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from pipeline.constants import AGE_GROUPS, EMOTIONS, GENDERS
from pipeline.export.kit import Audit, KitInputs

HOSTILE_RACES = ("Caucasian", "50% & co_#1", "[$5] {x} back\\slash", "Asian ~^ <3>")
HOSTILE_SOURCE = "guess_2% & #1"
ATTRIBUTES = {"gender": ("male", "female"), "race": HOSTILE_RACES, "age": tuple(AGE_GROUPS.values())}
CLASSES = list(EMOTIONS)


def _attribute_sets() -> list[tuple[str, ...]]:
    singles = [(a,) for a in ATTRIBUTES]
    pairs = list(itertools.combinations(ATTRIBUTES, 2))
    return singles + pairs + [(a, "emotion") for a in ATTRIBUTES] + [(*p, "emotion") for p in pairs]


def make_cells_and_gaps(rng: np.random.Generator, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    values = {**ATTRIBUTES, "emotion": tuple(CLASSES)}
    cells, gaps = [], []
    for parts in _attribute_sets():
        attribute = "×".join(parts)
        metrics = ["accuracy"] if parts[-1] == "emotion" else ["accuracy", "macro_f1", "recall:Anger"]
        groups = [" | ".join(c) for c in itertools.product(*(values[p] for p in parts))]
        # Stored in text order on purpose: the exports must put them back in natural order.
        for grp, metric in itertools.product(sorted(groups), metrics):
            n = int(rng.integers(3, 400))
            v = float(rng.uniform(0.3, 0.95))
            cells.append({"run_id": "r", "source": source, "split": "test", "attribute": attribute, "grp": grp,
                          "metric": metric, "n": n, "value": v, "ci_low": max(0.0, v - 0.08),
                          "ci_high": min(1.0, v + 0.07), "low_support": n < 30})
        for metric in metrics:
            comparisons = [("best-worst", groups[-1])] + [(f"vs-rest:{g}", g) for g in groups[:3]]
            for comparison, grp in comparisons:
                gap = float(rng.normal(0.0, 0.08))
                p = float(rng.uniform(0, 0.2))
                gaps.append({"run_id": "r", "source": source, "split": "test", "attribute": attribute,
                             "metric": metric, "comparison": comparison, "grp": grp, "gap": gap,
                             "ci_low": gap - 0.05, "ci_high": gap + 0.05, "p_value": p,
                             "p_adjusted": min(1.0, p * 5), "correction": "holm", "significant": p * 5 < 0.05})
    return pd.DataFrame(cells), pd.DataFrame(gaps)


def make_hostile_inputs(seed: int = 0) -> KitInputs:
    from sklearn.metrics import classification_report

    rng = np.random.default_rng(seed)
    y_true = rng.choice(CLASSES, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.choice(CLASSES, 500))
    report = classification_report(y_true, y_pred, labels=CLASSES, output_dict=True, zero_division=0)
    metrics = [{"run_id": "r", "split": "test", "label": k, "precision": v["precision"], "recall": v["recall"],
                "f1": v["f1-score"], "support": int(v["support"])} for k, v in report.items() if k != "accuracy"]
    metrics.append({"run_id": "r", "split": "test", "label": "accuracy", "precision": None, "recall": None,
                    "f1": report["accuracy"], "support": 500})
    confusion = (pd.crosstab(pd.Series(y_true, name="true_label"), pd.Series(y_pred, name="pred_label"))
                 .stack().rename("n").reset_index().assign(run_id="r", split="test"))
    audits = []
    for source, alpha in (("annotations", 0.05), (HOSTILE_SOURCE, 0.1)):
        cells, gaps = make_cells_and_gaps(rng, source)
        audits.append(Audit(source, "test", {"alpha": alpha, "correction": "holm", "min_support": 30,
                                             "max_order": 2, "n_boot": 100, "n_perm": 100, "seed": 0},
                            cells, gaps))
    proxy = pd.DataFrame([{"dataset_fingerprint": "f" * 64, "source": HOSTILE_SOURCE, "reference": "annotations",
                           "attribute": "age", "annotated": a, "inferred": b, "n": int(rng.integers(1, 50))}
                          for a in sorted(AGE_GROUPS.values()) for b in sorted(AGE_GROUPS.values())]
                         + [{"dataset_fingerprint": "f" * 64, "source": HOSTILE_SOURCE, "reference": "annotations",
                             "attribute": "gender", "annotated": a, "inferred": b, "n": int(rng.integers(1, 50))}
                            for a in GENDERS.values() for b in GENDERS.values()])
    summary = pd.DataFrame([{"run_id": "r", "method": "gradcam++", "split": "test", "emotion": e, "correct": c,
                             "n": int(rng.integers(1, 40)), "cam_size": 32,
                             "mean_cam": rng.random((32, 32)).astype("<f4").tobytes()}
                            for e in sorted(CLASSES) for c in (True, False)])
    explanation = pd.DataFrame([{"run_id": "r", "method": m, "metric": k, "emotion": e, "value": -0.05 + 0.3 * i,
                                 "ci_low": -0.1, "ci_high": 0.4, "n": 120, "passed": i % 2 == 0}
                                for m in ("gradcam", "gradcam++")
                                for i, k in enumerate(("road_combined", "sanity_spearman", "pointing"))
                                for e in ("all", *CLASSES)])
    run = {"run_id": "20260101-000000-lightcnn-softlabel-abcd", "kind": "train", "status": "complete",
           "dataset": "synthetic", "dataset_root": "/data/set_1 & 2", "dataset_fingerprint": "f" * 64,
           "is_synthetic": True, "recipe": "lightcnn-softlabel", "model": "lightcnn-half", "classes": CLASSES,
           "config": {"epochs": 1, "lr": 0.002}, "code_version": "0.1.0+gabc", "seed": 0,
           "test_accuracy": report["accuracy"]}
    return KitInputs(run=run, class_metrics=pd.DataFrame(metrics), confusion=confusion, audits=audits,
                     proxy=proxy, heatmap_summary=summary, explanation_metrics=explanation,
                     environment={"commit": "0" * 40, "dirty": False, "packages": {"numpy": "x"}})


@pytest.fixture(scope="session")
def hostile_inputs() -> KitInputs:
    return make_hostile_inputs()


@pytest.fixture(scope="session")
def hostile_kit(hostile_inputs, tmp_path_factory):
    """The kit of the hostile inputs, written to a folder: (folder, files)."""
    from pipeline.export.kit import create_kit, write_kit

    files = create_kit(hostile_inputs)
    return write_kit(files, tmp_path_factory.mktemp("hostile_kit")), files
