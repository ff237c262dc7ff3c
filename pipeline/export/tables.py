"""Tables for papers: results frames to CSV, LaTeX (booktabs) and Markdown text.

Pure: data frames in, strings (or data frames) out; no DuckDB, no files, no
Streamlit, so the dashboard's Export page, `python -m pipeline export` and the
paper kit share it.

- `to_csv`, `to_latex`, `to_markdown` render any frame. LaTeX comes from
  `pipeline.export.latex` (escaping, real minus signs, `longtable` for long
  tables); Markdown escapes `|` in cells.
- `format_estimate(value, lo, hi, n)` is the one way an estimate is written
  in a cell: "0.823 [0.801, 0.843] (n=1200)"; paper tables use PAPER_DIGITS.
- Natural order: every table lists attributes, groups, emotions and metrics in
  `pipeline.constants` order (code order of each attribute, class order of
  emotions), intersections by each part in turn, never as text
  (`sort_audit_rows`).
- `compute_*_table` turn stored rows (audit_cells, audit_gaps, class_metrics,
  confusion, proxy_agreement) into the frames the tables show. Given one
  attribute, audit and gaps tables have one column per part of it (gender,
  race, emotion), so an intersection never needs a separator in a cell.
  `TABLES` names them for the command line and the dashboard.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.constants import (EMOTIONS, GROUP_SEPARATOR, attribute_rank, group_rank, metric_rank,
                                value_rank)
from pipeline.export.latex import escape_latex  # noqa: F401  (re-exported; the LaTeX rules live there)
from pipeline.export.latex import to_latex as _latex_table

FORMATS = ("csv", "latex", "markdown")
MISSING = "–"
PAPER_DIGITS = 2         # decimals of estimates in paper tables: '0.87 [0.83, 0.90]'
LOW_SUPPORT_MARK = "†"   # after n, for groups under the audit's minimum support
SIGNIFICANT_MARK = "*"   # after the adjusted p-value of a gap significant after the correction
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


# ---------------------------------------------------------------------------
# Cell formatting
# ---------------------------------------------------------------------------

def _is_missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(isinstance(value, (float, np.floating)) and math.isnan(value))
    except TypeError:
        return False


def format_number(value, digits: int = 3) -> str:
    """A number with `digits` decimals (integers as integers); '–' when missing."""
    if _is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = f"{float(value):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no '-0.00'



def format_level(alpha: float) -> str:
    """The confidence level of intervals made at significance `alpha`: 0.05 -> '95%', 0.025 -> '97.5%'."""
    return f"{100 * (1 - float(alpha)):.10g}%"


def format_estimate(value, lo=None, hi=None, n=None, digits: int = 3) -> str:
    """An estimate with its interval and sample size: '0.823 [0.801, 0.843] (n=1200)'.

    The interval is left out when either bound is missing, the n when n is None.
    """
    text = format_number(value, digits)
    if not _is_missing(lo) and not _is_missing(hi):
        text += f" [{format_number(lo, digits)}, {format_number(hi, digits)}]"
    if n is not None and not _is_missing(n):
        text += f" (n={int(n)})"
    return text


def format_p_value(p) -> str:
    """p-values: three decimals, or '<0.001'."""
    if _is_missing(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_metric(metric: str) -> str:
    """A stored metric name as a table shows it: 'macro_f1' -> 'macro-F1', 'recall:Anger' -> 'recall (Anger)'."""
    if metric.startswith("recall:"):
        return f"recall ({metric.split(':', 1)[1]})"
    return METRIC_NAMES.get(metric, metric)


# ---------------------------------------------------------------------------
# Natural order
# ---------------------------------------------------------------------------

def split_attribute(attribute: str) -> list[str]:
    """The parts of an attribute set: 'gender×race×emotion' -> ['gender', 'race', 'emotion']."""
    return str(attribute).split("×")


def split_group(grp: str) -> list[str]:
    """The values of an intersection's group: 'female | Asian | Anger' -> ['female', 'Asian', 'Anger']."""
    return str(grp).split(GROUP_SEPARATOR)


def _comparison_rank(comparison: str) -> tuple:
    return (0, "") if comparison == "best-worst" else (1, comparison)


def sort_audit_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored audit rows (cells or gaps) in natural order: attribute, then group, metric and comparison.

    Gaps sort by metric before group (one block per metric), cells by group before metric.
    """
    if rows.empty:
        return rows.reset_index(drop=True)
    keys = []
    for r in rows.to_dict("records"):
        attribute = r.get("attribute", "")
        group = group_rank(attribute, r["grp"]) if "grp" in r else ()
        metric = metric_rank(r["metric"]) if "metric" in r else ()
        if "comparison" in r:
            keys.append((attribute_rank(attribute), metric, _comparison_rank(r["comparison"]), group))
        else:
            keys.append((attribute_rank(attribute), group, metric))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return rows.iloc[order].reset_index(drop=True)


def sort_proxy_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored proxy_agreement rows in natural order: attribute, annotated value, inferred value."""
    keys = [(attribute_rank(a), value_rank(a, v), value_rank(a, w))
            for a, v, w in zip(rows["attribute"], rows["annotated"], rows["inferred"])]
    return rows.iloc[sorted(range(len(rows)), key=keys.__getitem__)].reset_index(drop=True)


def sort_attributes(attributes) -> list[str]:
    """Attribute sets in natural order (gender, race, age, gender×race, ...), duplicates dropped."""
    return sorted(dict.fromkeys(attributes), key=attribute_rank)


# ---------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------

def to_csv(df: pd.DataFrame) -> str:
    """CSV text (header row, no index, '\\n' line ends); missing values are empty."""
    return df.to_csv(index=False, lineterminator="\n")


def _cell_text(value, digits: int) -> str:
    if isinstance(value, str):
        return value
    if _is_missing(value):
        return MISSING
    if isinstance(value, (int, float, np.integer, np.floating, bool, np.bool_)):
        return format_number(value, digits)
    return str(value)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None,
             digits: int = 3, *, long: bool | None = None) -> str:
    """A booktabs table of `df` (escaped): see `pipeline.export.latex.to_latex`."""
    return _latex_table(df, caption, label, cell=lambda v: _cell_text(v, digits), long=long)


def _escape_markdown(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown pipe table; numeric columns right-aligned."""
    header = "| " + " | ".join(_escape_markdown(str(c)) for c in df.columns) + " |"
    rule = "| " + " | ".join("---:" if _is_numeric(df[c]) else "---" for c in df.columns) + " |"
    body = ["| " + " | ".join(_escape_markdown(_cell_text(v, digits)) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body]) + "\n"


def render_table(df: pd.DataFrame, fmt: str, caption: str | None = None, label: str | None = None) -> str:
    """`df` as text in format `fmt` ('csv' | 'latex' | 'markdown')."""
    if fmt == "csv":
        return to_csv(df)
    if fmt == "latex":
        return to_latex(df, caption=caption, label=label)
    if fmt == "markdown":
        return to_markdown(df)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


# ---------------------------------------------------------------------------
# Tables built from stored rows
# ---------------------------------------------------------------------------

def group_columns(attribute: str | None, grps: Sequence[str],
                   attributes: Sequence[str] | None = None) -> dict[str, list[str]]:
    """One column per part of `attribute` (the values of `grps` split), or, without one, a 'group'
    column with each intersection's values joined by ' × ' (`attributes`: each row's attribute)."""
    if attribute is not None:
        parts = split_attribute(attribute)
        split = [[g] if len(parts) == 1 else split_group(g) for g in grps]
        if all(len(s) == len(parts) for s in split):
            return {p: [s[i] for s in split] for i, p in enumerate(parts)}
        return {"group": list(grps)}
    joined = []
    for g, a in zip(grps, attributes or [""] * len(grps)):
        values = split_group(g)
        joined.append(" × ".join(values) if len(values) == len(split_attribute(a)) > 1 else g)
    return {"group": joined}


def compute_audit_table(cells: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "macro_f1"),
                        attribute: str | None = None, digits: int = PAPER_DIGITS) -> pd.DataFrame:
    """Audit cells in natural order, one column per metric, each cell 'value [lo, hi]'.

    Given `attribute`: one row per group, one column per part of the attribute
    ('gender', 'race', 'emotion'), then n. Without: an 'attribute' column and
    the group's values joined with ' × '. Groups under the audit's minimum
    support are kept, with LOW_SUPPORT_MARK after their n.
    """
    part = cells if attribute is None else cells[cells["attribute"] == attribute]
    part = sort_audit_rows(part[part["metric"].isin(metrics)])
    shown = sorted(set(part["metric"]), key=metric_rank)
    rows: dict[tuple[str, str], dict] = {}
    for r in part.itertuples(index=False):
        row = rows.setdefault((r.attribute, r.grp), {"attribute": r.attribute, "grp": r.grp, "n": int(r.n),
                                                     "low": False})
        row[format_metric(r.metric)] = format_estimate(r.value, r.ci_low, r.ci_high, None, digits)
        if r.metric == "accuracy":
            row["n"] = int(r.n)
        row["low"] = row["low"] or bool(r.low_support)
    records = list(rows.values())
    groups = group_columns(attribute, [r["grp"] for r in records], [r["attribute"] for r in records])
    out = pd.DataFrame({
        **({} if attribute is not None else {"attribute": [r["attribute"] for r in records]}),
        **groups,
        "n": [f"{r['n']}{LOW_SUPPORT_MARK if r['low'] else ''}" for r in records],
        **{format_metric(m): [r.get(format_metric(m), MISSING) for r in records] for m in shown},
    })
    return out


def compute_gaps_table(gaps: pd.DataFrame, comparison: str | None = "best-worst",
                       metric: str | None = None, significant_only: bool = False,
                       digits: int = PAPER_DIGITS, alpha: float = 0.05,
                       attribute: str | None = None) -> pd.DataFrame:
    """Gaps in natural order (attribute, metric, comparison, group): gap [CI], p, adjusted p, family.

    Column 'vs' says what the group is compared with: 'best' (the group is the
    worst one; gap = best - worst) or 'rest' (gap = rest - group). A significant
    gap's adjusted p carries SIGNIFICANT_MARK; 'family' says which correction
    family it belongs to ('primary': Holm, 'exploratory': BH). `alpha` is the
    audit's: the intervals were made at that level, and the header says so. Given
    `attribute`, only its gaps, the group in one column per part of it; without,
    an 'attribute' column and the group joined with ' × '.
    """
    from pipeline.fairness.audit import family_of

    part = gaps if attribute is None else gaps[gaps["attribute"] == attribute]
    if comparison:
        part = part[part["comparison"].str.startswith(comparison)]
    if metric:
        part = part[part["metric"] == metric]
    if significant_only:
        part = part[part["significant"].fillna(False).astype(bool)]
    part = sort_audit_rows(part)
    groups = group_columns(attribute, list(part["grp"]), list(part["attribute"]))
    return pd.DataFrame({
        **({} if attribute is not None else {"attribute": part["attribute"].to_list()}),
        "metric": [format_metric(m) for m in part["metric"]],
        "vs": ["best" if c == "best-worst" else "rest" for c in part["comparison"]],
        **groups,
        f"gap [{format_level(alpha)} CI]": [format_estimate(g, lo, hi, None, digits)
                                            for g, lo, hi in zip(part["gap"], part["ci_low"], part["ci_high"])],
        "p": [format_p_value(p) for p in part["p_value"]],
        "p adj.": [format_p_value(p) + (SIGNIFICANT_MARK if bool(s) else "")
                   for p, s in zip(part["p_adjusted"], part["significant"].fillna(False))],
        "family": [family_of(c) for c in part["correction"]],
    })


def compute_class_metrics_table(class_metrics: pd.DataFrame, split: str = "test",
                                classes: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """scikit-learn's classification report as a table: per class in class order, then the averages."""
    part = class_metrics[class_metrics["split"] == split] if "split" in class_metrics else class_metrics
    order = list(classes or EMOTIONS) + ["accuracy", "macro avg", "weighted avg"]
    rank = {label: i for i, label in enumerate(order)}
    part = part.assign(_rank=part["label"].map(lambda x: rank.get(x, len(order)))).sort_values(["_rank", "label"])
    out = part[["label", "precision", "recall", "f1", "support"]].rename(columns={"label": "class"})
    out = out.reset_index(drop=True)
    for col in ("precision", "recall", "f1"):
        out[col] = out[col].astype(float).round(digits)
    out["support"] = out["support"].astype("Int64")
    return out


def compute_confusion_table(confusion: pd.DataFrame, classes: Sequence[str], split: str = "test",
                            normalize: bool = False, digits: int = 3,
                            abbreviate: bool = False) -> pd.DataFrame:
    """The confusion matrix: rows true, columns predicted, in class order (row-normalised on request).

    `abbreviate` heads the predicted columns with the first three letters of
    each class ('Sur', 'Fea'), so seven columns fit a page's width.
    """
    part = confusion[confusion["split"] == split] if "split" in confusion else confusion
    matrix = (part.pivot_table(index="true_label", columns="pred_label", values="n", aggfunc="sum")
              .reindex(index=list(classes), columns=list(classes)).fillna(0).astype(int))
    if normalize:
        sums = matrix.sum(axis=1).replace(0, np.nan)
        matrix = matrix.div(sums, axis=0).round(digits)
    if abbreviate:
        matrix.columns = abbreviate_classes(classes)
    out = matrix.reset_index().rename(columns={"true_label": "true / predicted"})
    out.columns.name = None
    return out


def abbreviate_classes(classes: Sequence[str]) -> list[str]:
    """Three-letter heads of the class names (longer when three letters would clash)."""
    for width in range(3, max(map(len, classes), default=3) + 1):
        heads = [c[:width] for c in classes]
        if len(set(heads)) == len(heads):
            return heads
    return list(classes)


def compute_proxy_table(agreement: pd.DataFrame, alpha: float = 0.05, digits: int = PAPER_DIGITS) -> pd.DataFrame:
    """Per attribute and annotated group (natural order): the inferrer's accuracy [CI] (n) and its top error."""
    from pipeline.fairness.audit import compute_proxy_accuracy

    acc = compute_proxy_accuracy(agreement, alpha)
    keys = [(attribute_rank(a), value_rank(a, v)) for a, v in zip(acc["attribute"], acc["annotated"])]
    acc = acc.iloc[sorted(range(len(acc)), key=keys.__getitem__)]
    agreement_col = f"agreement [{format_level(alpha)} CI]"
    rows = []
    for r in acc.itertuples(index=False):
        wrong = agreement[(agreement["attribute"] == r.attribute) & (agreement["annotated"] == r.annotated)
                          & (agreement["inferred"] != r.annotated)]
        top = wrong.sort_values("n", ascending=False).head(1)
        error = f"{top['inferred'].iloc[0]} ({int(top['n'].iloc[0])})" if len(top) else MISSING
        rows.append({"source": agreement["source"].iloc[0] if "source" in agreement else "",
                     "attribute": r.attribute, "annotated": r.annotated,
                     agreement_col: format_estimate(r.accuracy, r.ci_low, r.ci_high, r.n, digits),
                     "most frequent other label": error})
    out = pd.DataFrame(rows, columns=["source", "attribute", "annotated", agreement_col,
                                      "most frequent other label"])
    return out if "source" in agreement else out.drop(columns="source")


def format_spread(mean, sd, lo, hi, digits: int = 3) -> str:
    """A figure across seeds: '0.887 ± 0.005 (0.882–0.893)', mean ± sample SD (range)."""
    return (f"{format_number(mean, digits)} ± {format_number(sd, digits)} "
            f"({format_number(lo, digits)}–{format_number(hi, digits)})")


def compute_seed_spread_table(spread: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`pipeline.train.seeds.compute_seed_spread` for a paper: per recipe and dataset, the seeds and test
    accuracy and macro-F1 as mean ± SD (range). Three decimals, since seed spreads are often under 0.01."""
    columns = ["recipe", "dataset", "seeds", "accuracy", "macro-F1"]
    rows = [{"recipe": r.recipe, "dataset": r.dataset, "seeds": int(r.n_seeds),
             "accuracy": format_spread(r.accuracy_mean, r.accuracy_sd, r.accuracy_min, r.accuracy_max, digits),
             "macro-F1": format_spread(r.macro_f1_mean, r.macro_f1_sd, r.macro_f1_min, r.macro_f1_max, digits)}
            for r in spread.itertuples(index=False)]
    return pd.DataFrame(rows, columns=columns)


# name -> (stored table it reads, one-line description)
TABLES: dict[str, tuple[str, str]] = {
    "audit": ("audit_cells", "accuracy and macro-F1 per demographic group, with CIs (at the audit's level) and n"),
    "gaps": ("audit_gaps", "best-worst (or vs-rest) gaps with CIs and corrected p-values"),
    "class-metrics": ("class_metrics", "precision, recall, F1 and support per emotion"),
    "confusion": ("confusion", "confusion matrix, rows true, columns predicted"),
    "proxy": ("proxy_agreement", "agreement of inferred with annotated demographics per group"),
}
