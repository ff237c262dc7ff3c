"""`python -m pipeline export`: a run's results as tables for a paper (CSV, LaTeX booktabs, Markdown), or the paper kit.

Examples:
  python -m pipeline export --run latest --kit paper/
  python -m pipeline export --run latest --table audit --format latex --attribute race
  python -m pipeline export --run latest --table gaps --format markdown --metric accuracy
  python -m pipeline export --run latest --table confusion --format csv --out confusion.csv

Tables: audit (metrics per demographic group with CIs and n), gaps
(best-worst or vs-rest gaps with CIs and corrected p-values), class-metrics,
confusion, proxy (agreement of inferred with annotated demographics).
LaTeX output is one captioned, labelled table per attribute or intersection
(a longtable when long), ready to \\input; CSV and Markdown are one table of
the same cells (--raw: the stored rows, unformatted).

--kit DIR writes every table (LaTeX, CSV, Markdown), the main figures (PDF,
SVG), settings.json (how every number was made) and a main.tex that inputs
them all and compiles with pdflatex as it is.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TABLE_NAMES = ("audit", "gaps", "class-metrics", "confusion", "proxy")  # keep in step with export.TABLES


SHARED_OPTIONS = ('db', 'run')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", choices=TABLE_NAMES, help="the table to export")
    what.add_argument("--kit", type=Path, default=None, metavar="DIR",
                      help="write the paper kit of the run into DIR (tables, figures, settings.json, main.tex)")
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
    from pipeline.export.tables import TABLES, sort_audit_rows, sort_proxy_rows
    from pipeline.store.db import get_run, load_frame

    run = get_run(con, args.run)
    stored = TABLES[args.table][0]
    if stored == "proxy_agreement":
        keys = {"dataset_fingerprint": run["dataset_fingerprint"]}
    else:
        keys = {"run_id": run["run_id"], "split": args.split}
    if stored in ("audit_cells", "audit_gaps", "proxy_agreement"):
        keys["source"] = _pick_source(con, stored, dict(keys), args.source)
    rows = load_frame(con, stored, **keys)
    if stored in ("audit_cells", "audit_gaps"):
        return sort_audit_rows(rows)
    return sort_proxy_rows(rows) if stored == "proxy_agreement" else rows


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


def load_latex_tables(con, args: argparse.Namespace) -> list:
    """The requested table as the paper kit's LaTeX tables (one per attribute or intersection)."""
    from pipeline.errors import UserError
    from pipeline.export import kit

    inputs = kit.load_kit_inputs(con, args.run, args.split)
    if args.table in ("class-metrics", "confusion"):
        if args.normalize:
            raise UserError("--normalize is for CSV and Markdown; the LaTeX confusion table holds counts")
        found = [t for t in kit.create_run_tables(inputs) if t.name == args.table]
        if not found:
            raise UserError(f"run {inputs.run['run_id']} has no {args.table} on the {args.split} split")
        return found
    if args.table == "proxy":
        found = [t for t in kit.create_proxy_tables(inputs)
                 if args.source is None or t.name == f"proxy-{kit.slug(args.source)}"]
        if not found:
            raise UserError("no proxy check stored for this run's dataset" + (f" from {args.source!r}"
                            if args.source else "") + "; store annotations and an inferred source with "
                            "`python -m pipeline demographics`, then audit")
        return found
    stored = "audit_cells" if args.table == "audit" else "audit_gaps"
    source = _pick_source(con, stored, {"run_id": inputs.run["run_id"], "split": args.split}, args.source)
    audit = next(a for a in inputs.audits if a.source == source)
    attributes = [args.attribute] if args.attribute else None
    if args.table == "audit":
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        found = kit.create_audit_tables(inputs, audit, metrics=metrics, attributes=attributes)
    else:
        found = kit.create_gap_tables(inputs, audit, attributes=attributes,
                                      comparison=None if args.comparison == "all" else args.comparison,
                                      metric=args.metric, significant_only=args.significant_only)
    if not found:
        raise UserError(f"no {args.table} rows match (source {source}"
                        + (f", attribute {args.attribute!r}" if args.attribute else "") + ")")
    return found


def run_kit(args: argparse.Namespace) -> int:
    from pipeline.export import kit
    from pipeline.store.db import open_store

    with open_store(args.db, read_only=True) as con:
        inputs = kit.load_kit_inputs(con, args.run, args.split)
    files = kit.create_kit(inputs)
    out = kit.write_kit(files, args.kit)
    n_tables = sum(p.endswith(".tex") and p.startswith("tables/") for p in files)
    n_figures = sum(p.endswith(".pdf") for p in files)
    print(f"wrote the paper kit of run {inputs.run['run_id']} to {out}: {n_tables} tables (LaTeX, CSV, Markdown), "
          f"{n_figures} figures (PDF, SVG), settings.json, main.tex (compile: cd {out} && pdflatex main.tex)")
    return 0


def run(args: argparse.Namespace) -> int:
    from pipeline.export.tables import render_table
    from pipeline.store.db import open_store

    if args.kit is not None:
        return run_kit(args)
    with open_store(args.db, read_only=True) as con:
        if args.format == "latex" and not args.raw:
            found = load_latex_tables(con, args)
            labels = [args.label if len(found) == 1 else f"{args.label}-{t.name}" for t in found] \
                if args.label else [None] * len(found)
            text = "\n".join(t.render("latex", caption=args.caption, label=label) for t, label in zip(found, labels))
            rows = sum(len(t.display) for t in found)
        else:
            table, _ = load_table(con, args)
            text = render_table(table, args.format, caption=args.caption, label=args.label)
            rows = len(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {rows} rows to {args.out}")
    else:
        print(text, end="")
    return 0
