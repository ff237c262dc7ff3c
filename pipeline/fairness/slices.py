"""Slice discovery: cohorts nobody asked about whose error rate is well above the rest.

A slice is a conjunction of up to `max_conditions` conditions `feature = value` over
per-image features (demographics, true emotion, and where a dataset has them the
synthetic set's occluder, accessory and hair; optionally confidence bins and failure
tags). Pure functions over a data frame with one row per image, a boolean `error`
column and one column per feature.

The rules it relies on:
- Emotion difficulty is not a cohort. Error rates are compared *within true emotion*:
  a slice's errors are set against the Mantel–Haenszel expectation over emotion strata
  (the rest of each emotion's images), so a slice of hard Fear images is not found for
  being Fear, and slices defined by the emotion alone are never candidates (the
  per-class report already shows them).
- The search is paid for with held-out confirmation. The images are split at random
  (seeded) into a discovery part, where every slice with at least `min_support` images
  is scored, and a confirmation part that the search never saw, where the
  `n_candidates` best slices are tested once each (one-sided Mantel–Haenszel test,
  error rate above the rest) and corrected with Holm over those candidates only. Every
  figure stored for a slice (n, error rate, the rest's error rate, interval, p-values)
  is from the confirmation part; `n_all` counts the slice's images in the whole split.
- Confidence bins and failure tags are opt-in features: both are functions of the
  model's output (a failure tag is given to misclassified images only, so its error rate
  is 1 by construction), so they explain errors rather than find cohorts.

Why hand-written: the Mantel–Haenszel statistic is computed for every candidate at
once from bincounts (thousands of slices per search); the tests check it against
statsmodels' `StratifiedTable.test_null_odds`.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.constants import DEMOGRAPHIC_ATTRIBUTES

EMOTION = "emotion"
SYNTHETIC_FEATURES = ("occluder", "accessory", "hair")
DEFAULT_FEATURES = (*DEMOGRAPHIC_ATTRIBUTES, EMOTION, *SYNTHETIC_FEATURES)
OPTIONAL_FEATURES = ("confidence", "tag")
CONFIDENCE_BINS = (0.0, 0.5, 0.7, 0.9, 1.0)   # right-closed bins of the predicted class's probability
SLICE_COLUMNS = ["rank", "definition", "conditions", "n", "n_all", "error_rate", "rest_error_rate",
                 "ci_low", "ci_high", "p_value", "p_adjusted", "significant"]


@dataclass(frozen=True)
class SliceConfig:
    """Settings of one slice search; saved with the audit's settings."""
    features: tuple[str, ...] = DEFAULT_FEATURES   # those absent from the data are skipped
    max_conditions: int = 3
    min_support: int = 30          # images of a slice in the discovery part
    n_candidates: int = 20         # slices confirmed on the held-out part (the correction's family)
    confirm_fraction: float = 0.5  # share of the images held out for confirmation
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(DEFAULT_FEATURES) - set(OPTIONAL_FEATURES)
        if unknown:
            raise ValueError(f"unknown slice features {sorted(unknown)}; choose from "
                             f"{', '.join(DEFAULT_FEATURES + OPTIONAL_FEATURES)}")
        if not 0 < self.confirm_fraction < 1:
            raise ValueError(f"confirm_fraction must be in (0, 1), got {self.confirm_fraction}")
        if self.max_conditions < 1 or self.n_candidates < 1 or self.min_support < 1:
            raise ValueError("max_conditions, n_candidates and min_support must be positive")


def compute_confidence_bins(confidence: pd.Series) -> pd.Series:
    """Confidence as labelled bins ('0.7-0.9'), the `confidence` slice feature."""
    edges = CONFIDENCE_BINS
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    return pd.cut(confidence.astype(float), bins=list(edges), labels=labels, include_lowest=True).astype(object)


def compute_mantel_haenszel(o_slice: np.ndarray, n_slice: np.ndarray, o_total: np.ndarray,
                            n_total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mantel–Haenszel comparison of each slice with the rest of its strata, vectorised.

    Args (arrays (S, K): S slices, K strata): errors and images of the slice per stratum;
    o_total/n_total (K,) the stratum totals. Returns per slice (z, one-sided p of an error
    rate above the rest, the rest's error rate weighted to the slice's strata). Strata where
    the slice or its rest is empty carry no information and are left out, as in statsmodels.
    """
    from scipy.stats import norm

    n_rest = n_total[None, :] - n_slice
    o_rest = o_total[None, :] - o_slice
    used = (n_slice > 0) & (n_rest > 0)
    n_s, o_s = np.where(used, n_slice, 0), np.where(used, o_slice, 0)
    n_t, o_t = np.where(used, n_total, 0), np.where(used, o_total, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(used, n_s * o_t / np.where(n_t > 0, n_t, 1), 0).sum(axis=1)
        var = np.where(used & (n_t > 1), n_s * (n_t - n_s) * o_t * (n_t - o_t)
                       / np.where(n_t > 1, n_t ** 2 * (n_t - 1), 1), 0).sum(axis=1)
        z = np.where(var > 0, (o_s.sum(axis=1) - expected) / np.sqrt(var), np.nan)
        rest_rate = np.where(used, o_rest / np.where(n_rest > 0, n_rest, 1), 0)
        rest = (n_s * rest_rate).sum(axis=1) / n_s.sum(axis=1)
    return z, np.where(np.isnan(z), np.nan, norm.sf(z)), rest


def _strata(frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(frame[EMOTION])
    return codes.astype(np.int64), len(uniques)


def _score_slices(frame: pd.DataFrame, features: Sequence[str], config: SliceConfig) -> pd.DataFrame:
    """Score every slice on `frame`: conditions, n, errors, z (Mantel–Haenszel over emotions)."""
    strata, n_strata = _strata(frame)
    error = frame["error"].to_numpy(bool).astype(np.int64)
    n_total = np.bincount(strata, minlength=n_strata)
    o_total = np.bincount(strata, weights=error, minlength=n_strata)
    # Each feature factorised once (-1 = missing); a combination's group is the mixed-radix code.
    coded = {f: pd.factorize(frame[f].map(lambda v: None if pd.isna(v) else str(v))) for f in features}
    rows = []
    for r in range(1, min(config.max_conditions, len(features)) + 1):
        for combo in itertools.combinations(features, r):
            if combo == (EMOTION,):
                continue
            codes = np.stack([coded[f][0] for f in combo])
            sizes = [len(coded[f][1]) for f in combo]
            labelled = (codes >= 0).all(axis=0)
            if not labelled.any():
                continue
            group = np.ravel_multi_index(tuple(codes[:, labelled]), sizes)
            g = int(np.prod(sizes))
            cell = group * n_strata + strata[labelled]
            n_slice = np.bincount(cell, minlength=g * n_strata).reshape(g, n_strata)
            o_slice = np.bincount(cell, weights=error[labelled], minlength=g * n_strata).reshape(g, n_strata)
            keep = np.flatnonzero(n_slice.sum(axis=1) >= config.min_support)
            if not len(keep):
                continue
            z, _, _ = compute_mantel_haenszel(o_slice[keep], n_slice[keep], o_total, n_total)
            values = np.unravel_index(keep, sizes)
            for i, gi in enumerate(keep):
                conditions = tuple((f, coded[f][1][values[j][i]]) for j, f in enumerate(combo))
                rows.append((conditions, int(n_slice[gi].sum()), int(o_slice[gi].sum()), float(z[i])))
    return pd.DataFrame(rows, columns=["conditions", "n", "errors", "z"])


def slice_mask(frame: pd.DataFrame, conditions: Sequence[tuple[str, str]]) -> np.ndarray:
    """Rows of `frame` inside the slice (every condition holds)."""
    mask = np.ones(len(frame), dtype=bool)
    for feature, value in conditions:
        column = frame[feature]
        mask &= (column.notna() & (column.astype(str) == value)).to_numpy()
    return mask


def format_definition(conditions: Sequence[tuple[str, str]]) -> str:
    """A slice as readable text: 'gender = female and age = 40-69'."""
    return " and ".join(f"{f} = {v}" for f, v in conditions)


def _select_candidates(scored: pd.DataFrame, n_candidates: int) -> list[tuple[tuple[str, str], ...]]:
    """The best-scoring slices, dropping a slice that only adds a redundant condition to a
    selected one (same images: same n and errors, conditions a superset)."""
    chosen: list[tuple] = []
    signatures: list[tuple[frozenset, int, int]] = []
    for r in scored[scored["z"] > 0].sort_values("z", ascending=False).itertuples(index=False):
        conds = frozenset(r.conditions)
        if any(sig <= conds and n == r.n and e == r.errors for sig, n, e in signatures):
            continue
        chosen.append(r.conditions)
        signatures.append((conds, r.n, r.errors))
        if len(chosen) == n_candidates:
            break
    return chosen


def compute_slices(frame: pd.DataFrame, config: SliceConfig = SliceConfig()) -> pd.DataFrame:
    """Discover slices on one part of `frame`, confirm them on the other; SLICE_COLUMNS, best first.

    Args:
        frame: one row per image with `error` (bool), `emotion` (the true label) and a column
            per feature in `config.features` (strings; missing = NaN). Features absent from
            the frame are skipped; a column that is entirely missing is too.
    """
    from pipeline.fairness.audit import compute_adjusted_pvalues, compute_wilson_interval

    missing = [c for c in ("error", EMOTION) if c not in frame.columns]
    if missing:
        raise ValueError(f"slice frame lacks columns {missing}")
    features = [f for f in config.features if f in frame.columns and frame[f].notna().any()]
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(config.seed)
    confirm = rng.random(len(frame)) < config.confirm_fraction
    discovery, held_out = frame[~confirm].reset_index(drop=True), frame[confirm].reset_index(drop=True)
    scored = _score_slices(discovery, features, config)
    candidates = _select_candidates(scored, config.n_candidates) if len(scored) else []
    if not candidates:
        return pd.DataFrame(columns=SLICE_COLUMNS)

    strata, n_strata = _strata(frame)
    strata_held = strata[confirm]
    error = held_out["error"].to_numpy(bool).astype(np.int64)
    n_total = np.bincount(strata_held, minlength=n_strata)
    o_total = np.bincount(strata_held, weights=error, minlength=n_strata)
    masks = np.stack([slice_mask(held_out, c) for c in candidates])               # (S, N)
    n_slice = np.stack([np.bincount(strata_held[m], minlength=n_strata) for m in masks])
    o_slice = np.stack([np.bincount(strata_held[m], weights=error[m], minlength=n_strata) for m in masks])
    _, p, rest = compute_mantel_haenszel(o_slice, n_slice, o_total, n_total)
    n = masks.sum(axis=1)
    errors = (masks * error[None, :]).sum(axis=1)
    lo, hi = compute_wilson_interval(errors, n, config.alpha)
    out = pd.DataFrame({
        "definition": [format_definition(c) for c in candidates],
        "conditions": [json.dumps([{"feature": f, "value": v} for f, v in c]) for c in candidates],
        "n": n.astype(int), "n_all": [int(slice_mask(frame, c).sum()) for c in candidates],
        "error_rate": np.where(n > 0, errors / np.where(n > 0, n, 1), np.nan), "rest_error_rate": rest,
        "ci_low": lo, "ci_high": hi, "p_value": p})
    out["p_adjusted"] = compute_adjusted_pvalues(out["p_value"].to_numpy(float), "holm")
    out["significant"] = out["p_adjusted"] < config.alpha
    out = out.sort_values(["p_adjusted", "p_value"], kind="mergesort", na_position="last").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out[SLICE_COLUMNS]


def load_slice_conditions(conditions: str) -> list[tuple[str, str]]:
    """A stored `conditions` JSON back to (feature, value) pairs."""
    return [(c["feature"], c["value"]) for c in json.loads(conditions)]
