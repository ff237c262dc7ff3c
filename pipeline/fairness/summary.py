"""Plain-text summaries of the fairness stages' results, for the commands and the demo to print.

Pure functions over the summary dicts `stage.run_demographics` and `stage.run_audit`
return; nothing here reads the store or prints.
"""
from __future__ import annotations

from pipeline.constants import value_rank

from pipeline.export.tables import format_estimate, format_p_value
from pipeline.fairness.audit import (FAMILIES, compute_gap_comparison, compute_proxy_accuracy,
                                     compute_strongest_findings, compute_worst_groups, family_of)


def format_demographics_summary(summary: dict) -> str:
    kind = "annotated" if summary["source"] == "annotations" else "perceived (inferred)"
    lines = [f"{summary['source']}: {summary['n_stored']} of {summary['n_images']} {summary['split']} images "
             f"labelled, {kind}; dataset {summary['fingerprint']}"]
    if summary["no_face"]:
        shown = ", ".join(summary["no_face"][:5]) + (" ..." if len(summary["no_face"]) > 5 else "")
        lines.append(f"  no face detected in {len(summary['no_face'])} images (nothing stored for them): {shown}")
    for attr, counts in summary["counts"].items():
        text = ", ".join(f"{'(none)' if k is None or k != k else k} {v}" for k, v in counts.items())
        lines.append(f"  {attr:<7} {text}")
    return "\n".join(lines)


def _family_counts(gaps) -> str:
    parts = []
    for family in FAMILIES:
        part = gaps[[family_of(c) == family for c in gaps["correction"]]]
        if len(part):
            method = str(part["correction"].iloc[0]).split(" ")[0]
            parts.append(f"{family} {len(part)} gaps ({method}), {int(part['significant'].sum())} significant")
    return "; ".join(parts) or "no gaps"


def format_audit_summary(summary: dict, alpha: float = 0.05) -> str:
    """Per source: family counts, the strongest significant finding per attribute set, and the
    worst group per attribute set; then the proxy check and the sources side by side."""
    lines = [f"audit of run {summary['run_id']} on {summary['n_predictions']} {summary['split']} predictions"]
    for source, result in summary["results"].items():
        gaps = result.gaps
        lines.append("")
        lines.append(f"[{source}] {summary['coverage'][source]} images labelled; {len(result.cells)} cells; "
                     + _family_counts(gaps))
        lines.append("  strongest significant finding per attribute set (comparison, gap [CI], adjusted p, family):")
        strongest = compute_strongest_findings(gaps).set_index("attribute") if len(gaps) else None
        for attribute in dict.fromkeys(gaps["attribute"]):
            if strongest is None or attribute not in strongest.index:
                lines.append(f"    {attribute:<12} no significant gap")
                continue
            r = strongest.loc[attribute]
            lines.append(f"    {attribute:<12} {r['metric']} {r['comparison']}: gap "
                         f"{format_estimate(r['gap'], r['ci_low'], r['ci_high'])}  p_adj "
                         f"{format_p_value(r['p_adjusted'])} ({family_of(r['correction'])})")
        lines.append("  worst group per attribute set (accuracy, best − worst among groups with enough support):")
        for r in compute_worst_groups(gaps).itertuples(index=False):
            flag = " *" if r.significant else ""
            lines.append(f"    {r.attribute:<12} worst {r.grp:<28} gap "
                         f"{format_estimate(r.gap, r.ci_low, r.ci_high)}  p_adj {format_p_value(r.p_adjusted)}{flag}")
        found = summary.get("slices", {}).get(source)
        if found is not None:
            lines.extend(_slice_lines(found))
        calibration = summary.get("calibration", {}).get(source)
        if calibration is not None:
            lines.extend(_calibration_lines(calibration))
    for source, agreement in summary["proxies"].items():
        lines.append("")
        lines.append(f"proxy check: {source} against annotations (agreement per annotated group)")
        proxy = compute_proxy_accuracy(agreement, alpha)
        proxy = proxy.iloc[sorted(range(len(proxy)), key=lambda i: (
            list(dict.fromkeys(proxy["attribute"])).index(proxy["attribute"].iloc[i]),
            value_rank(proxy["attribute"].iloc[i], proxy["annotated"].iloc[i])))]  # natural order, not text
        for r in proxy.itertuples(index=False):
            lines.append(f"  {r.attribute:<7} {r.annotated:<18} {format_estimate(r.accuracy, r.ci_low, r.ci_high, r.n)}")
    if len(summary["results"]) > 1:
        side = compute_gap_comparison({s: r.gaps for s, r in summary["results"].items()})
        lines.append("")
        lines.append("accuracy best-worst gap by source (worst group)")
        for _, row in side[side["metric"] == "accuracy"].iterrows():
            cells = []
            for s in summary["results"]:
                gap = row.get(f"gap [{s}]")
                cells.append(f"{s} " + ("–" if gap is None or gap != gap else f"{gap:.3f} ({row[f'grp [{s}]']})"))
            lines.append(f"  {row['attribute']:<12} " + "; ".join(cells))
    lines.append("")
    lines.append("* significant after correction within its family (primary: Holm over each attribute's accuracy "
                 "and declared intersections; exploratory: Benjamini–Hochberg over the rest). Gaps: how much "
                 "worse the named group does; groups under the minimum support are not ranked.")
    return "\n".join(lines)


def _slice_lines(found) -> list[str]:
    kept = found[found["significant"].fillna(False).astype(bool)]
    lines = [f"  slices: {len(found)} candidates confirmed on held-out images, {len(kept)} significant (Holm)"]
    for r in kept.head(5).itertuples(index=False):
        lines.append(f"    #{r.rank} {r.definition}: error {format_estimate(r.error_rate, r.ci_low, r.ci_high, r.n)} "
                     f"against {r.rest_error_rate:.3f} for the rest (same emotions), p_adj {format_p_value(r.p_adjusted)}")
    return lines


def _calibration_lines(calibration) -> list[str]:
    groups = calibration.groups
    lines = []
    for scaling in dict.fromkeys(groups["scaling"]):
        part = groups[groups["scaling"] == scaling]
        overall = part[part["attribute"] == "all"].iloc[0]
        label = "before scaling" if scaling == "none" else f"after temperature scaling (T = {overall['temperature']:.2f})"
        sig = part[part["significant"].fillna(False).astype(bool)]
        lines.append(f"  calibration {label}: ECE {format_estimate(overall['ece'], overall['ece_low'], overall['ece_high'])}, "
                     f"confidence − accuracy {overall['gap']:+.3f}; {len(sig)} groups differ from the rest")
        for r in sig.sort_values("p_adjusted").head(3).itertuples(index=False):
            lines.append(f"    {r.attribute} {r.grp}: gap {r.gap:+.3f}, vs rest "
                         f"{format_estimate(r.gap_vs_rest, r.gap_low, r.gap_high)} p_adj {format_p_value(r.p_adjusted)}")
    return lines
