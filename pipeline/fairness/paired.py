"""Paired comparison of two runs on the same test images: did a change (a mitigation, a new
recipe) move overall accuracy, and did it close the gaps between groups?

Pure computation over one frame with a row per image both runs predicted: `correct_a`,
`correct_b` (booleans) and the demographic columns (e.g. gender, race, age), with
None/NaN for an image the source did not label. Because both runs saw the same images,
the comparison is paired:

- McNemar's test (statsmodels) on the images exactly one run got right: exact binomial
  when fewer than 25 are discordant, else the chi-square statistic with continuity
  correction.
- Paired bootstrap (scipy.stats.bootstrap over image indices, so both runs are resampled
  together) of the change of every accuracy gap: for each attribute (and each intersection
  of two) and each group with at least `min_support` images, gap = accuracy of the rest -
  accuracy of the group (> 0: the group does worse, as in the audit's `vs-rest`), and the
  spread best - worst over the supported groups (`best-worst`). change = gap(B) - gap(A):
  < 0 means run B narrowed the gap. Intervals are percentile intervals; an interval that
  excludes 0 is a change the test set resolves, uncorrected for the number of gaps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.constants import GROUP_SEPARATOR

EXACT_BELOW = 25      # discordant pairs under which McNemar's exact binomial test is used


@dataclass(frozen=True)
class PairedConfig:
    attributes: tuple[str, ...] = ("gender", "race", "age")
    intersections: bool = True             # also every pair of attributes
    min_support: int = 30                  # images a group needs to be compared
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0


def compute_mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of two runs' per-image correctness on the same images."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in length: {a.shape} and {b.shape}")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    only_a, only_b = int(table[0, 1]), int(table[1, 0])
    exact = only_a + only_b < EXACT_BELOW
    if only_a + only_b == 0:
        statistic, p_value = 0.0, 1.0
    else:
        result = mcnemar(table, exact=exact, correction=True)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    n = int(a.size)
    return {"n": n, "both_correct": int(table[0, 0]), "only_a": only_a, "only_b": only_b,
            "both_wrong": int(table[1, 1]), "accuracy_a": float(a.mean()) if n else float("nan"),
            "accuracy_b": float(b.mean()) if n else float("nan"),
            "method": "exact binomial" if exact else "chi-square, continuity corrected",
            "statistic": statistic, "p_value": p_value}


def _group_columns(frame: pd.DataFrame, config: PairedConfig) -> list[tuple[str, pd.Series]]:
    """(attribute name, group label per image, None where unlabelled) of every attribute and,
    with config.intersections, every pair of attributes ('gender×race', 'female | Asian')."""
    present = [a for a in config.attributes if a in frame.columns and frame[a].notna().any()]
    out = [(a, frame[a].where(frame[a].notna(), None)) for a in present]
    if config.intersections:
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                both = frame[a].notna() & frame[b].notna()
                label = (frame[a].astype(str) + GROUP_SEPARATOR + frame[b].astype(str)).where(both, None)
                out.append((f"{a}×{b}", label))
    return out


def compute_gap_changes(frame: pd.DataFrame, config: PairedConfig = PairedConfig()) -> pd.DataFrame:
    """The change of every accuracy gap from run A to run B, with paired bootstrap intervals.

    Columns: attribute, comparison ('vs-rest' | 'best-worst'), grp (the group; for best-worst
    'best / worst' of run A), n, gap_a, gap_b, change, ci_low, ci_high, resolved (the
    interval excludes 0).
    """
    # Long on purpose: every gap and its change come from the same paired resamples, drawn once here for all
    # attributes.
    from scipy.stats import bootstrap

    columns = ["attribute", "comparison", "grp", "n", "gap_a", "gap_b", "change", "ci_low", "ci_high", "resolved"]
    a = frame["correct_a"].to_numpy(dtype=float)
    b = frame["correct_b"].to_numpy(dtype=float)
    rows, members, spreads = [], [], []      # members: (2, n_images) 0/1 of group and rest, per vs-rest row
    member_rows: list[int] = []
    for attribute, labels in _group_columns(frame, config):
        counts = labels.value_counts()
        supported = sorted(counts[counts >= config.min_support].index)
        if len(supported) < 2:
            continue
        labelled = labels.notna().to_numpy()
        first = len(members)
        for grp in supported:
            in_group = (labels == grp).to_numpy()
            members.append(np.stack([in_group, labelled & ~in_group]).astype(float))
            member_rows.append(len(rows))
            rows.append({"attribute": attribute, "comparison": "vs-rest", "grp": grp, "n": int(counts[grp])})
        spreads.append((len(rows), list(range(first, len(members)))))
        rows.append({"attribute": attribute, "comparison": "best-worst", "grp": "", "n": int(labelled.sum())})
    if not rows:
        return pd.DataFrame(columns=columns)
    member = np.stack(members)             # (K, 2, n): group, rest of the labelled images

    def gaps(weights: np.ndarray) -> np.ndarray:
        """(..., rows) gap of run B - gap of run A for resampling weights (..., n)."""
        size = np.einsum("kgn,...n->...kg", member, weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_a = np.einsum("kgn,...n->...kg", member, weights * a) / size
            acc_b = np.einsum("kgn,...n->...kg", member, weights * b) / size
        gap_a, gap_b = acc_a[..., 1] - acc_a[..., 0], acc_b[..., 1] - acc_b[..., 0]
        out = np.full(weights.shape[:-1] + (len(rows), 2), np.nan)
        out[..., member_rows, 0], out[..., member_rows, 1] = gap_a, gap_b
        for row, ks in spreads:
            for col, acc in ((0, acc_a), (1, acc_b)):
                group_acc = acc[..., ks, 0]
                out[..., row, col] = group_acc.max(-1) - group_acc.min(-1)
        return out

    point = gaps(np.ones(len(a)))
    n = len(a)

    def statistic(index, axis=-1):
        index = np.asarray(index, dtype=np.int64)
        flat = index.reshape(-1, n)
        weights = np.stack([np.bincount(row, minlength=n) for row in flat]).astype(float)
        g = gaps(weights)
        change = (g[..., 1] - g[..., 0]).T                      # (rows, batch)
        return change.reshape((len(rows),) + index.shape[:-1])

    result = bootstrap((np.arange(n),), statistic, n_resamples=config.n_boot, paired=False, vectorized=True,
                       method="percentile", confidence_level=config.confidence, batch=200,
                       rng=np.random.default_rng(config.seed))
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    out = pd.DataFrame(rows)
    out["gap_a"], out["gap_b"] = point[:, 0], point[:, 1]
    out["change"] = point[:, 1] - point[:, 0]
    out["ci_low"], out["ci_high"] = low, high
    out["resolved"] = (out["ci_low"] > 0) | (out["ci_high"] < 0)
    for row, ks in spreads:        # name run A's best and worst groups
        acc = {rows[member_rows[k]]["grp"]: a[member[k, 0].astype(bool)].mean() for k in ks}
        out.loc[row, "grp"] = f"{max(acc, key=acc.get)} / {min(acc, key=acc.get)}"
    return out[columns]
