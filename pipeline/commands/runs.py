"""`python -m pipeline runs`: list the runs in a results store, or delete one.

Lists complete runs newest first (`--all` adds running and failed ones);
`--delete RUN` removes a run (full id or unique prefix) and every row it owns
in one transaction. Listing opens the store read-only and closes it at once.
"""
from __future__ import annotations

import argparse

COLUMNS = ("run_id", "status", "kind", "dataset", "recipe", "accuracy", "started")


SHARED_OPTIONS = ('db',)  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="include running and failed runs")
    parser.add_argument("--delete", metavar="RUN",
                        help="delete this run (full id or unique prefix) and all its rows")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait while another process holds the store (default: 60)")


def render_runs(runs) -> str:
    """The runs frame (from store.list_runs) as an aligned text table."""
    rows = [COLUMNS]
    for r in runs.itertuples(index=False):
        accuracy = "" if r.test_accuracy is None or r.test_accuracy != r.test_accuracy else f"{r.test_accuracy:.4f}"
        started = "" if r.started_at is None else str(r.started_at)[:19]
        rows.append((r.run_id, r.status, r.kind, r.dataset, r.recipe, accuracy, started))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    from pipeline.store import db as store

    if args.delete:
        with store.open_store(args.db, timeout_s=args.timeout) as con:
            full_id = store.resolve_run_id(con, args.delete, store.RUN_STATUSES)
            deleted = store.delete_run(con, full_id)
        print(f"deleted run {full_id} ({deleted} rows) from {args.db}")
        return 0

    with store.open_store(args.db, read_only=True, timeout_s=args.timeout) as con:
        runs = store.list_runs(con, include_incomplete=args.all)
    if runs.empty:
        which = "runs" if args.all else "complete runs (use --all to include running and failed ones)"
        print(f"no {which} in {args.db}")
        return 0
    print(render_runs(runs))
    return 0
