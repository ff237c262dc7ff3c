"""Metrics equal scikit-learn's; class mapping for cross-dataset evaluation."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.train.evaluation import (
    compute_class_mapping, compute_class_report, compute_confusion, compute_mapped_probabilities,
    create_prediction_frame,
)

CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger")


def _cases():
    rng = np.random.default_rng(0)
    yield "random", rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    y = rng.integers(0, 6, 50)
    yield "never-predicted", y, np.where(y == 2, 3, y)              # class 2 never predicted
    yield "absent-in-truth", np.where(y == 5, 0, y), y               # class 5 absent from the truth
    yield "perfect", y, y.copy()


@pytest.mark.parametrize("name,y_true,y_pred", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_report_equals_sklearn(name, y_true, y_pred):
    labels = list(range(6))
    report = compute_class_report(y_true, y_pred, CLASSES, "test").set_index("label")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(report.loc[list(CLASSES), "precision"], p)
    np.testing.assert_allclose(report.loc[list(CLASSES), "recall"], r)
    np.testing.assert_allclose(report.loc[list(CLASSES), "f1"], f)
    np.testing.assert_array_equal(report.loc[list(CLASSES), "support"], s)
    assert report.loc["accuracy", "f1"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report.loc["macro avg", "f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    assert report.loc["weighted avg", "f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0))
    pw, rw, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    assert report.loc["weighted avg", "precision"] == pytest.approx(pw)
    assert report.loc["weighted avg", "recall"] == pytest.approx(rw)


def test_confusion_equals_sklearn():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 6, 300), rng.integers(0, 6, 300)
    frame = compute_confusion(y_true, y_pred, CLASSES, "val")
    matrix = frame.pivot(index="true_label", columns="pred_label", values="n").loc[list(CLASSES), list(CLASSES)]
    np.testing.assert_array_equal(matrix.to_numpy(), confusion_matrix(y_true, y_pred, labels=list(range(6))))
    assert set(frame["split"]) == {"val"}


def test_prediction_frame():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    frame = create_prediction_frame(["a", "b"], "test", np.array([1, 2]), probs, ["X", "Y", "Z"])
    assert frame["pred_label"].tolist() == ["Y", "X"]
    assert frame["correct"].tolist() == [True, False]
    assert frame["confidence"].tolist() == pytest.approx([0.7, 0.5])
    assert frame["probs"][0] == pytest.approx([0.1, 0.7, 0.2])


def test_mapping_seven_class_model_on_six_class_set():
    seven = CLASSES + ("Neutral",)
    mapping = compute_class_mapping(seven, CLASSES)
    assert mapping.classes == CLASSES and mapping.unmappable == ()
    probs = np.array([[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.4]])
    mapped = compute_mapped_probabilities(probs, mapping)
    np.testing.assert_allclose(mapped, np.full((1, 6), 1 / 6), rtol=1e-6)


def test_mapping_six_class_model_on_seven_class_set():
    seven = CLASSES + ("Neutral",)
    mapping = compute_class_mapping(CLASSES, seven)
    assert mapping.unmappable == ("Neutral",)
    assert mapping.dataset_to_eval == (0, 1, 2, 3, 4, 5, -1)


def test_mapping_reorders_to_dataset_order():
    mapping = compute_class_mapping(("Anger", "Happiness", "Fear"), ("Fear", "Happiness", "Sadness"))
    assert mapping.classes == ("Fear", "Happiness") and mapping.model_columns == (2, 1)
    assert mapping.dataset_to_eval == (0, 1, -1)
    with pytest.raises(ValueError, match="share none"):
        compute_class_mapping(("Anger",), ("Fear",))
