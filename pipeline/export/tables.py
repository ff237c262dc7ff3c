"""Tables for papers: results frames to CSV, LaTeX (booktabs) and Markdown text.

Pure: data frames in, strings (or data frames) out; no DuckDB, no files, no
Streamlit, so the dashboard's Export page and `python -m pipeline export` share it.

- `to_csv`, `to_latex`, `to_markdown` render any frame. LaTeX escapes every
  cell and header (`_`, `%`, `&`, `#`, `$`, `{`, `}`, `~`, `^`, `\\`; `×` and `–`
  become `$\\times$` and `--`), uses
  booktabs rules (`\\toprule`, `\\midrule`, `\\bottomrule`; needs
  `\\usepackage{booktabs}`), right-aligns numeric columns, and wraps the
  tabular in a `table` float when a caption or label is given. Markdown
  escapes `|` in cells.
- `format_estimate(value, lo, hi, n)` is the one way an estimate is written
  in a cell: "0.823 [0.801, 0.843] (n=1200)".
- `compute_*_table` turn stored rows (audit_cells, audit_gaps, class_metrics,
  confusion, proxy_agreement) into the frames the tables show. `TABLES`
  names them for the command line and the dashboard.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

FORMATS = ("csv", "latex", "markdown")
MISSING = "–"

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}",
    # Non-ASCII characters our tables produce, as commands any LaTeX engine knows.
    "×": r"$\times$", "–": "--", "≥": r"$\geq$", "≤": r"$\leq$",
}


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
    return f"{float(value):.{digits}f}"


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


# ---------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------

def to_csv(df: pd.DataFrame) -> str:
    """CSV text (header row, no index, '\\n' line ends); missing values are empty."""
    return df.to_csv(index=False, lineterminator="\n")


def escape_latex(text) -> str:
    """`text` with LaTeX's special characters escaped, to typeset as written."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


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
             digits: int = 3) -> str:
    """A booktabs tabular of `df` (escaped), in a table float when caption or label is given."""
    align = "".join("r" if _is_numeric(df[c]) else "l" for c in df.columns)
    header = " & ".join(escape_latex(c) for c in df.columns) + r" \\"
    body = [" & ".join(escape_latex(_cell_text(v, digits)) for v in row) + r" \\"
            for row in df.itertuples(index=False, name=None)]
    tabular = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", header, r"\midrule", *body,
               r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(tabular) + "\n"
    lines = [r"\begin{table}[htbp]", r"\centering"]
    if caption is not None:
        lines.append(rf"\caption{{{escape_latex(caption)}}}")
    if label is not None:
        # Labels are identifiers, not typeset text: keep only characters LaTeX accepts there.
        safe = "".join(ch for ch in str(label) if ch.isalnum() or ch in ":-_.")
        lines.append(rf"\label{{{safe}}}")
    lines += tabular + [r"\end{table}"]
    return "\n".join(lines) + "\n"


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

def compute_audit_table(cells: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "macro_f1"),
                        attribute: str | None = None, digits: int = 3) -> pd.DataFrame:
    """Audit cells by attribute: one row per (attribute, group), one column per metric.

    Each metric cell reads 'value [lo, hi] (n=..)'; groups under the minimum
    support are marked with a dagger in a `note` column rather than dropped.
    """
    part = cells if attribute is None else cells[cells["attribute"] == attribute]
    part = part[part["metric"].isin(metrics)]
    rows: dict[tuple[str, str], dict] = {}
    for r in part.itertuples(index=False):
        row = rows.setdefault((r.attribute, r.grp), {"attribute": r.attribute, "group": r.grp,
                                                     "n": int(r.n), "note": ""})
        row[r.metric] = format_estimate(r.value, r.ci_low, r.ci_high, None, digits)
        if r.metric == "accuracy":
            row["n"] = int(r.n)
        if bool(r.low_support):
            row["note"] = "low support"
    columns = ["attribute", "group", "n", *[m for m in metrics if m in set(part["metric"])], "note"]
    return pd.DataFrame(list(rows.values()), columns=columns).fillna(MISSING)


def compute_gaps_table(gaps: pd.DataFrame, comparison: str | None = "best-worst",
                       metric: str | None = None, significant_only: bool = False,
                       digits: int = 3, alpha: float = 0.05) -> pd.DataFrame:
    """Gaps: attribute, metric, compared group, gap [CI], p, adjusted p, significance, and the
    correction family ('primary' / 'exploratory', 'all' for audits stored before families); largest first.

    `alpha` is the audit's: the intervals were made at that level, and the header says so."""
    from pipeline.fairness.audit import family_of

    part = gaps
    if comparison:
        part = part[part["comparison"].str.startswith(comparison)]
    if metric:
        part = part[part["metric"] == metric]
    if significant_only:
        part = part[part["significant"].fillna(False).astype(bool)]
    part = part.sort_values(["attribute", "metric", "gap"], ascending=[True, True, False])
    return pd.DataFrame({
        "attribute": part["attribute"].to_numpy(),
        "metric": part["metric"].to_numpy(),
        "comparison": part["comparison"].to_numpy(),
        "group": part["grp"].to_numpy(),
        f"gap [{format_level(alpha)} CI]": [format_estimate(g, lo, hi, None, digits)
                         for g, lo, hi in zip(part["gap"], part["ci_low"], part["ci_high"])],
        "p": [format_p_value(p) for p in part["p_value"]],
        "p adj.": [format_p_value(p) for p in part["p_adjusted"]],
        "significant": ["yes" if bool(s) else "no" for s in part["significant"].fillna(False)],
        "family": [family_of(c) for c in part["correction"]],
        "correction": [str(c).split(" ")[0] for c in part["correction"]],
    })


def compute_class_metrics_table(class_metrics: pd.DataFrame, split: str = "test",
                                classes: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """scikit-learn's classification report as a table: per class, then the averages."""
    part = class_metrics[class_metrics["split"] == split] if "split" in class_metrics else class_metrics
    order = list(classes or []) + ["accuracy", "macro avg", "weighted avg"]
    rank = {label: i for i, label in enumerate(order)}
    part = part.assign(_rank=part["label"].map(lambda x: rank.get(x, len(order)))).sort_values("_rank")
    out = part[["label", "precision", "recall", "f1", "support"]].rename(columns={"label": "class"})
    out = out.reset_index(drop=True)
    for col in ("precision", "recall", "f1"):
        out[col] = out[col].astype(float).round(digits)
    out["support"] = out["support"].astype("Int64")
    return out


def compute_confusion_table(confusion: pd.DataFrame, classes: Sequence[str], split: str = "test",
                            normalize: bool = False, digits: int = 3) -> pd.DataFrame:
    """The confusion matrix: rows true, columns predicted, in class order (row-normalised on request)."""
    part = confusion[confusion["split"] == split] if "split" in confusion else confusion
    matrix = (part.pivot_table(index="true_label", columns="pred_label", values="n", aggfunc="sum")
              .reindex(index=list(classes), columns=list(classes)).fillna(0).astype(int))
    if normalize:
        sums = matrix.sum(axis=1).replace(0, np.nan)
        matrix = matrix.div(sums, axis=0).round(digits)
    out = matrix.reset_index().rename(columns={"true_label": "true / predicted"})
    out.columns.name = None
    return out


def compute_proxy_table(agreement: pd.DataFrame, alpha: float = 0.05, digits: int = 3) -> pd.DataFrame:
    """Per attribute and annotated group: the inferrer's accuracy [CI] (n) and its most frequent error."""
    from pipeline.fairness.audit import compute_proxy_accuracy

    acc = compute_proxy_accuracy(agreement, alpha)
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


# name -> (stored table it reads, one-line description)
TABLES: dict[str, tuple[str, str]] = {
    "audit": ("audit_cells", "accuracy and macro-F1 per demographic group, with CIs (at the audit's level) and n"),
    "gaps": ("audit_gaps", "best-worst (or vs-rest) gaps with bootstrap CIs and corrected p-values"),
    "class-metrics": ("class_metrics", "precision, recall, F1 and support per emotion"),
    "confusion": ("confusion", "confusion matrix, rows true, columns predicted"),
    "proxy": ("proxy_agreement", "agreement of inferred with annotated demographics per group"),
}
