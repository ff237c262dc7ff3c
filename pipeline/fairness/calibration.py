"""Calibration by group: is the model's confidence as fair as its accuracy?

Pure functions over per-image arrays. For the top-label confidence (the probability
of the predicted class) it computes, per demographic group and intersection (the
audit's plain attribute sets) and overall:

- a reliability diagram: `n_bins` equal-width confidence bins, each with its image
  count, mean confidence and accuracy;
- expected calibration error, ECE = sum over bins of n_b / n · |accuracy_b −
  confidence_b|, with a percentile bootstrap interval (images resampled within the
  group, vectorised as in the audit);
- the over-confidence gap, mean confidence − accuracy (> 0: over-confident, < 0:
  under-confident), and its difference from the rest of the attribute set's images,
  `gap_vs_rest` = group's gap − rest's gap, with a bootstrap interval and the p-value
  of the test that interval inverts (one resampling for both, so they never disagree).
  These differences are corrected like the audit's gaps: the single attributes are the
  primary family (Holm), intersections exploratory (Benjamini–Hochberg).

Temperature scaling: one temperature T fitted on the validation split by minimising
the negative log-likelihood (scipy), applied as softmax(log p / T), which equals
scaling the model's logits since log p differs from them by a per-image constant.
Everything above is reported before (`scaling = 'none'`) and after
(`scaling = 'temperature'`). Groups under `min_support` images are flagged and get no
vs-rest test.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.constants import DEMOGRAPHIC_ATTRIBUTES
from pipeline.fairness.audit import (ATTRIBUTE_SEPARATOR, FAMILIES, _bootstrap_pvalue, _encode_groups,
                                     _percentile_interval, attribute_name, compute_adjusted_pvalues,
                                     compute_attribute_sets, compute_stratified_resamples, correction_label)

OVERALL = "all"
SCALINGS = ("none", "temperature")
CALIBRATION_COLUMNS = ["scaling", "temperature", "attribute", "grp", "n", "accuracy", "confidence", "gap", "ece",
                       "ece_low", "ece_high", "gap_vs_rest", "gap_low", "gap_high", "p_value", "p_adjusted",
                       "correction", "significant", "low_support"]
BIN_COLUMNS = ["scaling", "attribute", "grp", "bin", "bin_low", "bin_high", "n", "confidence", "accuracy"]


@dataclass(frozen=True)
class CalibrationConfig:
    attributes: tuple[str, ...] = DEMOGRAPHIC_ATTRIBUTES
    max_order: int = 2
    n_bins: int = 15
    n_boot: int = 1000
    min_support: int = 30
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_bins < 2 or self.n_boot < 1 or self.max_order < 1:
            raise ValueError("n_bins must be at least 2, n_boot and max_order positive")


@dataclass
class CalibrationResult:
    groups: pd.DataFrame       # CALIBRATION_COLUMNS
    bins: pd.DataFrame         # BIN_COLUMNS
    temperature: float | None  # None when there was no validation split to fit it on


def fit_temperature(probs: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of softmax(log probs / T)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, None))
    y = np.asarray(y_true, dtype=np.int64)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    # Searched on log T so that the bracket is symmetric (T from 1/20 to 20).
    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    z = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, None)) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compute_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width bins (right-closed, the first includes 0)."""
    b = _bin_of(confidence, n_bins)
    n = np.bincount(b, minlength=n_bins)
    conf = np.bincount(b, weights=confidence, minlength=n_bins)
    acc = np.bincount(b, weights=correct.astype(float), minlength=n_bins)
    return float(np.abs(acc - conf).sum() / max(n.sum(), 1))


def _bin_of(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.ceil(np.asarray(confidence, dtype=float) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _sums(cell: np.ndarray, conf: np.ndarray, correct: np.ndarray, size: int) -> np.ndarray:
    """(size, 3) image counts, confidence sums and correct counts per cell code."""
    return np.stack([np.bincount(cell, minlength=size),
                     np.bincount(cell, weights=conf, minlength=size),
                     np.bincount(cell, weights=correct, minlength=size)], axis=-1).astype(float)


def _ece_and_gap(binned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ECE and confidence − accuracy from per-bin sums (..., n_bins, 3)."""
    n = binned[..., 0].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(binned[..., 2] - binned[..., 1]).sum(axis=-1) / n
        gap = (binned[..., 1].sum(axis=-1) - binned[..., 2].sum(axis=-1)) / n
    return ece, gap


def _attribute_rows(confidence: np.ndarray, correct: np.ndarray, groups: np.ndarray, names: list[str],
                    config: CalibrationConfig, rng: np.random.Generator) -> tuple[list[tuple], list[tuple]]:
    """Group rows (attribute-free part of CALIBRATION_COLUMNS) and reliability bins of one attribute set."""
    g, k = len(names), config.n_bins
    bins = _bin_of(confidence, k)
    point = _sums(groups * k + bins, confidence, correct, g * k).reshape(g, k, 3)
    ece, gap = _ece_and_gap(point)
    total = point.sum(axis=0)
    rest_gap = _ece_and_gap(total[None] - point)[1]
    boot_ece, boot_diff = [], []
    for idx, slots in compute_stratified_resamples(groups, g, config.n_boot, rng):
        b = idx.shape[0]
        cell = (np.arange(b)[:, None] * g + slots[None, :]) * k + bins[idx]
        sums = _sums(cell.ravel(), confidence[idx].ravel(), correct[idx].ravel(), b * g * k).reshape(b, g, k, 3)
        e, gp = _ece_and_gap(sums)
        boot_ece.append(e)
        boot_diff.append(gp - _ece_and_gap(sums.sum(axis=1, keepdims=True) - sums)[1])
    boot_ece, boot_diff = np.concatenate(boot_ece), np.concatenate(boot_diff)
    ece_lo, ece_hi = _percentile_interval(boot_ece, config.alpha)
    n = point[..., 0].sum(axis=1)
    rows, bin_rows = [], []
    for i, name in enumerate(names):
        testable = n[i] >= config.min_support and n.sum() - n[i] > 0
        if testable:
            d_lo, d_hi = _percentile_interval(boot_diff[:, i], config.alpha)
            diff, p = gap[i] - rest_gap[i], _bootstrap_pvalue(boot_diff[:, i])
        else:
            d_lo = d_hi = diff = p = np.nan
        acc = point[i, :, 2].sum() / n[i]
        rows.append((name, int(n[i]), acc, point[i, :, 1].sum() / n[i], gap[i], ece[i], ece_lo[i], ece_hi[i],
                     diff, d_lo, d_hi, p, n[i] < config.min_support))
        for j in range(k):
            if point[i, j, 0]:
                bin_rows.append((name, j, j / k, (j + 1) / k, int(point[i, j, 0]),
                                 point[i, j, 1] / point[i, j, 0], point[i, j, 2] / point[i, j, 0]))
    return rows, bin_rows


def compute_calibration(frame: pd.DataFrame, probs: np.ndarray, classes: Sequence[str],
                        config: CalibrationConfig = CalibrationConfig(), *,
                        val_probs: np.ndarray | None = None, val_labels: Sequence[str] | None = None
                        ) -> CalibrationResult:
    """Calibration per group before and after temperature scaling.

    Args:
        frame: one row per image with `true_label` and the demographic columns of
            `config.attributes` (strings, missing = NaN).
        probs: (N, K) class probabilities aligned with `classes`, rows aligned with `frame`.
        val_probs, val_labels: the validation split's probabilities and true labels, to fit the
            temperature on; without them only `scaling = 'none'` is reported.
    """
    index = {c: i for i, c in enumerate(classes)}
    frame = frame.reset_index(drop=True)
    y = frame["true_label"].map(index).to_numpy(np.int64)
    probs = np.asarray(probs, dtype=float)
    temperature = None
    scaled = {"none": probs}
    if val_probs is not None and val_labels is not None and len(val_labels):
        temperature = fit_temperature(val_probs, pd.Series(val_labels).map(index).to_numpy(np.int64))
        scaled["temperature"] = apply_temperature(probs, temperature)
    rng = np.random.default_rng(config.seed)
    group_rows, bin_rows = [], []
    sets = [(OVERALL,)] + compute_attribute_sets(config.attributes, config.max_order, with_emotion=False)
    for scaling, p in scaled.items():
        confidence = p.max(axis=1)
        correct = (p.argmax(axis=1) == y).astype(float)
        for columns in sets:
            if columns == (OVERALL,):
                groups, names, mask = np.zeros(len(frame), dtype=np.int64), [OVERALL], np.ones(len(frame), bool)
            else:
                groups, names, mask = _encode_groups(frame, columns, classes)
            if not names:
                continue
            attr = OVERALL if columns == (OVERALL,) else attribute_name(columns)
            rows, bins = _attribute_rows(confidence[mask], correct[mask], groups, names, config, rng)
            group_rows += [(scaling, attr, *r) for r in rows]
            bin_rows += [(scaling, attr, *b) for b in bins]
    groups = pd.DataFrame(group_rows, columns=["scaling", "attribute", "grp", "n", "accuracy", "confidence", "gap",
                                               "ece", "ece_low", "ece_high", "gap_vs_rest", "gap_low", "gap_high",
                                               "p_value", "low_support"])
    groups.insert(1, "temperature", temperature if temperature is not None else np.nan)
    groups["temperature"] = np.where(groups["scaling"] == "temperature", groups["temperature"], 1.0)
    groups = _correct(groups, config)
    return CalibrationResult(groups=groups[CALIBRATION_COLUMNS],
                             bins=pd.DataFrame(bin_rows, columns=BIN_COLUMNS), temperature=temperature)


def _correct(groups: pd.DataFrame, config: CalibrationConfig) -> pd.DataFrame:
    """Holm over the single attributes' vs-rest tests, BH over the intersections', per scaling."""
    groups = groups.copy()
    groups["p_adjusted"] = np.nan
    groups["correction"] = None
    single = ~groups["attribute"].str.contains(ATTRIBUTE_SEPARATOR) & (groups["attribute"] != OVERALL)
    tested = groups["p_value"].notna()
    for scaling in groups["scaling"].unique():
        here = (groups["scaling"] == scaling) & tested
        for mask, method, family in ((here & single, "holm", FAMILIES[0]), (here & ~single, "fdr_bh", FAMILIES[1])):
            if mask.any():
                groups.loc[mask, "p_adjusted"] = compute_adjusted_pvalues(groups.loc[mask, "p_value"], method)
                groups.loc[mask, "correction"] = correction_label(method, family)
    groups["significant"] = groups["p_adjusted"] < config.alpha
    return groups
