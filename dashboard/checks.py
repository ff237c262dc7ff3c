"""The explanation checks of a run as one table and a verdict per method: pure functions, no Streamlit.

`explain` stores, per method and emotion ('all' and each class), a value with
a bootstrap CI and n for every metric, and a pass flag on three of them (the
checks). Each check is judged against a baseline stored beside it; the rules,
`CHECKS`, live in pipeline/explain/checks.py, where `explain` takes its
thresholds from; tests/dashboard/test_checks.py recomputes every stored flag
from the values with them.
"""
from __future__ import annotations

import pandas as pd

from pipeline.explain.checks import CHECKS

SMALL_N = 30  # below this many images a check's result is an anecdote (the audit's minimum support too)


def _ci(low: float, high: float) -> str:
    if pd.isna(low) or pd.isna(high):
        return "—"
    return f"[{low:.3f}, {high:.3f}]"


def compute_check_table(metrics: pd.DataFrame, *, per_emotion: bool = False) -> pd.DataFrame:
    """One row per method × check × emotion ('all' only unless `per_emotion`).

    Columns: method, check, emotion, result ('passed' / 'failed', with ', small n' below SMALL_N images),
    value, baseline, ci (of the value), n, rule.
    """
    by_key = metrics.set_index(["method", "metric", "emotion"])
    rows = []
    for r in metrics.itertuples(index=False):
        check = next((c for c in CHECKS if c.metric == r.metric), None)
        if check is None or pd.isna(r.passed) or (r.emotion != "all" and not per_emotion):
            continue
        base = by_key["value"].get((r.method, check.baseline, r.emotion)) if check.baseline else None
        result = "passed" if bool(r.passed) else "failed"
        if int(r.n) < SMALL_N:
            result += f", small n (< {SMALL_N})"
        rows.append({"method": r.method, "check": check.name, "emotion": r.emotion, "value": float(r.value),
                     "baseline": float(base) if base is not None else float("nan"),
                     "ci": _ci(r.ci_low, r.ci_high), "n": int(r.n), "rule": check.rule, "result": result})
    columns = ["method", "check", "emotion", "result", "value", "baseline", "ci", "n", "rule"]
    return pd.DataFrame(rows, columns=columns)


def compute_verdicts(metrics: pd.DataFrame) -> dict[str, str]:
    """{method: one line} from the checks over all emotions: how many passed, and which failed."""
    table = compute_check_table(metrics)
    out = {}
    for method, part in table.groupby("method", sort=False):
        passed = part["result"].str.startswith("passed")
        failed = ", ".join(part.loc[~passed, "check"])
        small = part["n"].lt(SMALL_N).any()
        line = f"passes {int(passed.sum())} of {len(part)} checks"
        line += f"; failed: {failed}" if failed else ""
        line += f" (n < {SMALL_N} for some: read as anecdotes)" if small else ""
        out[method] = line
    return out
