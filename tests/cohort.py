"""Test helper: make a store's latest run fail on one demographic cohort, so a slice search
has a known answer whatever the (one-epoch) model predicted."""
from __future__ import annotations

from pathlib import Path


def inject_cohort_errors(db: Path, *, column: str = "gender", value: str = "female",
                         source: str = "annotations") -> int:
    """Rewrite the latest run's test predictions: wrong (another class) for the images whose
    `source` demographics have `column` = `value`, right for every other image. Each image's
    probabilities are its own with two entries swapped (the predicted class's and the new one's),
    so the confidence is unchanged and the argmax is the new prediction. Returns the cohort's size."""
    import numpy as np

    from pipeline.store.db import get_run, open_store

    with open_store(db) as con:
        run = get_run(con, "latest")
        classes = [str(c) for c in run["classes"]]
        preds = con.execute(
            f"SELECT p.image_id, p.true_label, p.probs, d.{column} = ? AS inside FROM predictions p "
            "LEFT JOIN demographics d ON d.image_id = p.image_id AND d.source = ? "
            "WHERE p.run_id = ? AND p.split = 'test'", [value, source, run["run_id"]]).df()
        inside = preds["inside"].fillna(False).astype(bool).to_numpy()
        probs = np.stack(preds["probs"].to_numpy()).astype(np.float64)
        truth = np.array([classes.index(t) for t in preds["true_label"]])
        target = np.where(inside, (truth + 1) % len(classes), truth)
        rows = np.arange(len(probs))
        top = probs.argmax(1)
        swapped = probs.copy()
        swapped[rows, top], swapped[rows, target] = probs[rows, target], probs[rows, top]
        preds["pred_label"] = np.asarray(classes)[target]
        preds["correct"] = ~inside
        preds["probs"] = list(swapped)
        con.register("rewritten", preds[["image_id", "pred_label", "correct", "probs"]])
        con.execute("UPDATE predictions SET pred_label = r.pred_label, correct = r.correct, probs = r.probs "
                    "FROM rewritten r WHERE predictions.image_id = r.image_id AND predictions.run_id = ? "
                    "AND predictions.split = 'test'", [run["run_id"]])
        con.unregister("rewritten")
    return int(inside.sum())
