"""`python -m pipeline export`: a run's results as a table for a paper (CSV, LaTeX booktabs, Markdown).

Examples:
  python -m pipeline export --run latest --table audit --format latex --attribute race
  python -m pipeline export --run latest --table gaps --format markdown --metric accuracy
  python -m pipeline export --run latest --table confusion --format csv --out confusion.csv

Tables: audit (metrics per demographic group with CIs and n), gaps
(best-worst or vs-rest gaps with CIs and corrected p-values), class-metrics,
confusion, proxy (agreement of inferred with annotated demographics).
"""
from __future__ import annotations

import argparse
from pathlib import Path

TABLE_NAMES = ("audit", "gaps", "class-metrics", "confusion", "proxy")  # keep in step with export.TABLES


SHARED_OPTIONS = ('db', 'run')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--table", choices=TABLE_NAMES, required=True)
    parser.add_argument("--format", choices=("csv", "latex", "markdown"), default="markdown")
    parser.add_argument("--split", default="test", help="split (default test)")
    parser.add_argument("--source", default=None,
                        help="demographics source of audit/gaps/proxy tables (default: annotations when stored, "
                             "else the first stored)")
    parser.add_argument("--attribute", default=None, help="audit/gaps: only this attribute, e.g. race or gender×race")
    parser.add_argument("--metrics", default="accuracy,macro_f1",
                        help="audit: comma-separated metrics (default accuracy,macro_f1; e.g. recall:Anger)")
    parser.add_argument("--metric", default=None, help="gaps: only this metric, e.g. accuracy")
    parser.add_argument("--comparison", choices=("best-worst", "vs-rest", "all"), default="best-worst",
                        help="gaps: which comparisons (default best-worst)")
    parser.add_argument("--significant-only", action="store_true", help="gaps: only significant ones")
    parser.add_argument("--normalize", action="store_true", help="confusion: row-normalised")
    parser.add_argument("--raw", action="store_true",
                        help="the stored rows as they are (numbers unformatted), e.g. for --format csv")
    parser.add_argument("--caption", default=None, help="LaTeX caption (wraps the tabular in a table float)")
    parser.add_argument("--label", default=None, help="LaTeX label")
    parser.add_argument("--out", type=Path, default=None, help="write to this file (default: print)")


def _pick_source(con, table: str, available_keys: dict, wanted: str | None) -> str:
    from pipeline.errors import UserError
    from pipeline.store.db import load_frame

    sources = list(dict.fromkeys(load_frame(con, table, ["source"], **available_keys)["source"]))
    if not sources:
        hint = ("run `python -m pipeline audit --run ...` first" if table != "proxy_agreement" else
                "store annotations and an inferred source with `python -m pipeline demographics`, then audit")
        raise UserError(f"nothing in {table} for this run; {hint}")
    if wanted:
        if wanted not in sources:
            raise UserError(f"no {table} rows from source {wanted!r}; stored: {', '.join(sources)}")
        return wanted
    return "annotations" if "annotations" in sources else sources[0]


def _audit_alpha(con, run_id: str, source: str, split: str) -> float:
    """The alpha an audit was computed with (0.05, the audit's default, for stores that predate `audits`)."""
    import json

    from pipeline.store.db import load_frame, missing_added_tables

    if "audits" in missing_added_tables(con):
        return 0.05
    rows = load_frame(con, "audits", ["config"], run_id=run_id, source=source, split=split)
    if rows.empty:
        return 0.05
    config = rows["config"].iloc[0]
    return float((json.loads(config) if isinstance(config, str) else config).get("alpha", 0.05))


def load_raw_table(con, args: argparse.Namespace):
    """The stored rows behind the requested table, unformatted."""
    from pipeline.export.tables import TABLES
    from pipeline.store.db import get_run, load_frame

    run = get_run(con, args.run)
    stored = TABLES[args.table][0]
    if stored == "proxy_agreement":
        keys = {"dataset_fingerprint": run["dataset_fingerprint"]}
    else:
        keys = {"run_id": run["run_id"], "split": args.split}
    if stored in ("audit_cells", "audit_gaps", "proxy_agreement"):
        keys["source"] = _pick_source(con, stored, dict(keys), args.source)
    return load_frame(con, stored, **keys)


def load_table(con, args: argparse.Namespace):
    """The frame of the requested table for the requested run."""
    from pipeline.export import tables as export
    from pipeline.errors import UserError
    from pipeline.store.db import get_run, load_frame

    if args.raw:
        return load_raw_table(con, args), ""
    run = get_run(con, args.run)
    rid = run["run_id"]
    if args.table == "audit":
        source = _pick_source(con, "audit_cells", {"run_id": rid, "split": args.split}, args.source)
        cells = load_frame(con, "audit_cells", run_id=rid, source=source, split=args.split)
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        return export.compute_audit_table(cells, metrics, args.attribute), f"{rid}, {source}"
    if args.table == "gaps":
        source = _pick_source(con, "audit_gaps", {"run_id": rid, "split": args.split}, args.source)
        gaps = load_frame(con, "audit_gaps", run_id=rid, source=source, split=args.split)
        if args.attribute:
            gaps = gaps[gaps["attribute"] == args.attribute]
        comparison = None if args.comparison == "all" else args.comparison
        alpha = _audit_alpha(con, rid, source, args.split)
        return (export.compute_gaps_table(gaps, comparison, args.metric, args.significant_only, alpha=alpha),
                f"{rid}, {source}")
    if args.table == "class-metrics":
        rows = load_frame(con, "class_metrics", run_id=rid, split=args.split)
        if rows.empty:
            raise UserError(f"run {rid} has no class metrics on the {args.split} split")
        return export.compute_class_metrics_table(rows, args.split, run["classes"]), rid
    if args.table == "confusion":
        rows = load_frame(con, "confusion", run_id=rid, split=args.split)
        if rows.empty:
            raise UserError(f"run {rid} has no confusion matrix on the {args.split} split")
        return export.compute_confusion_table(rows, run["classes"], args.split, args.normalize), rid
    fingerprint = run["dataset_fingerprint"]
    source = _pick_source(con, "proxy_agreement", {"dataset_fingerprint": fingerprint}, args.source)
    rows = load_frame(con, "proxy_agreement", dataset_fingerprint=fingerprint, source=source)
    return export.compute_proxy_table(rows), f"{source} vs annotations"


def run(args: argparse.Namespace) -> int:
    from pipeline.export.tables import render_table
    from pipeline.store.db import open_store

    with open_store(args.db, read_only=True) as con:
        table, _ = load_table(con, args)
    text = render_table(table, args.format, caption=args.caption, label=args.label)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(table)} rows to {args.out}")
    else:
        print(text, end="")
    return 0
