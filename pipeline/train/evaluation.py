"""Classification metrics and class-set mapping: pure functions over arrays.

Numbers equal scikit-learn's (`accuracy_score`, `f1_score(average="macro")`,
`precision_recall_fscore_support`, `confusion_matrix`) on the same arrays, with
zero_division=0: a class never predicted has precision 0, a class absent from
the truth has recall 0 (and is still listed, support 0, so the macro average is
over all of the model's classes, as sklearn's with `labels=`).

Frames match the store's tables (without run_id):
- `compute_class_report` -> class_metrics rows: split, label, precision, recall, f1, support
  (one row per class, then 'accuracy', 'macro avg', 'weighted avg').
- `compute_confusion` -> confusion rows: split, true_label, pred_label, n (every pair).
- `create_prediction_frame` -> predictions rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def compute_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as j."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def compute_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """precision, recall, f1, support per class (zero_division=0)."""
    cm = compute_confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(0)
    support = cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def compute_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float((y_true == np.asarray(y_pred)).mean()) if len(y_true) else float("nan")


def compute_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return float(compute_per_class(y_true, y_pred, num_classes)["f1"].mean())


def compute_class_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str],
                         split: str) -> pd.DataFrame:
    """Per-class precision/recall/F1/support plus accuracy, macro and weighted averages."""
    k = len(classes)
    pc = compute_per_class(y_true, y_pred, k)
    rows = [{"split": split, "label": c, "precision": pc["precision"][i], "recall": pc["recall"][i],
             "f1": pc["f1"][i], "support": int(pc["support"][i])} for i, c in enumerate(classes)]
    n = int(pc["support"].sum())
    acc = compute_accuracy(y_true, y_pred)
    rows.append({"split": split, "label": "accuracy", "precision": acc, "recall": acc, "f1": acc, "support": n})
    rows.append({"split": split, "label": "macro avg", "precision": pc["precision"].mean(),
                 "recall": pc["recall"].mean(), "f1": pc["f1"].mean(), "support": n})
    w = pc["support"] / n if n else np.zeros(k)
    rows.append({"split": split, "label": "weighted avg", "precision": float(w @ pc["precision"]),
                 "recall": float(w @ pc["recall"]), "f1": float(w @ pc["f1"]), "support": n})
    frame = pd.DataFrame(rows)
    frame["support"] = frame["support"].astype("int64")
    return frame


def compute_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], split: str) -> pd.DataFrame:
    """The confusion matrix in long form (every true x predicted pair, zeros included)."""
    cm = compute_confusion_matrix(y_true, y_pred, len(classes))
    return pd.DataFrame([{"split": split, "true_label": t, "pred_label": p, "n": int(cm[i, j])}
                         for i, t in enumerate(classes) for j, p in enumerate(classes)],
                        columns=["split", "true_label", "pred_label", "n"])


def create_prediction_frame(image_ids: Sequence[str], split: str | Sequence[str], y_true: np.ndarray,
                            probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """predictions rows: image_id, split, true_label, pred_label, confidence, correct, probs."""
    probs = np.asarray(probs, dtype=np.float32)
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({
        "image_id": list(image_ids),
        "split": list(split) if not isinstance(split, str) else [split] * len(y_true),
        "true_label": names[y_true] if len(y_true) else [],
        "pred_label": names[pred] if len(pred) else [],
        "confidence": probs.max(1) if len(probs) else np.zeros(0, np.float32),
        "correct": pred == y_true,
        "probs": [row.tolist() for row in probs],
    })


@dataclass(frozen=True)
class ClassMapping:
    """How a model's classes meet a dataset's classes in cross-dataset evaluation.

    classes: the evaluated classes (in both sets, in the dataset's order);
    model_columns: their columns in the model's output;
    dataset_to_eval: dataset label index -> evaluated index, or -1 (unmappable:
    the model cannot predict that class, its images are excluded).
    """
    classes: tuple[str, ...]
    model_columns: tuple[int, ...]
    dataset_to_eval: tuple[int, ...]
    unmappable: tuple[str, ...]


def compute_class_mapping(model_classes: Sequence[str], dataset_classes: Sequence[str]) -> ClassMapping:
    shared = tuple(c for c in dataset_classes if c in model_classes)
    if not shared:
        raise ValueError(f"the model's classes {list(model_classes)} share none with the dataset's "
                         f"{list(dataset_classes)}")
    return ClassMapping(
        classes=shared,
        model_columns=tuple(list(model_classes).index(c) for c in shared),
        dataset_to_eval=tuple(shared.index(c) if c in shared else -1 for c in dataset_classes),
        unmappable=tuple(c for c in dataset_classes if c not in model_classes),
    )


def compute_mapped_probabilities(probs: np.ndarray, mapping: ClassMapping) -> np.ndarray:
    """Restrict the model's probabilities to the evaluated classes and renormalise rows to 1."""
    sub = np.asarray(probs, dtype=np.float64)[:, list(mapping.model_columns)]
    total = sub.sum(1, keepdims=True)
    out = np.divide(sub, total, out=np.full_like(sub, 1.0 / sub.shape[1]), where=total > 0)
    return out.astype(np.float32)
