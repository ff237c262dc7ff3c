"""`python -m pipeline runs`: list the runs in a results store, delete one, check or salvage it.

Lists complete runs newest first (`--all` adds running, failed and interrupted
ones; a 'running' row whose process is gone shows as 'running (stale)');
`--seeds` prints the seed spread instead: for each recipe trained with two
or more seeds on the same dataset, the mean, sample SD and range of test
accuracy and macro-F1 (pipeline.train.seeds). `--delete RUN` removes a run
(full id or unique prefix), every row it owns and any orphan rows in one
transaction. `--check` reads every table back and
reports damage, orphan rows and stale runs; `--salvage NEW` copies what still
reads into a new store. Listing opens the store read-only and closes it at once.
"""
from __future__ import annotations

import argparse

COLUMNS = ("run_id", "status", "kind", "dataset", "recipe", "accuracy", "started")


SHARED_OPTIONS = ('db',)  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="include running, failed and interrupted runs (a running row whose process is gone "
                             "shows as stale)")
    parser.add_argument("--seeds", action="store_true",
                        help="print the seed spread: test accuracy and macro-F1 (mean, sample SD, range) of each "
                             "recipe trained with two or more seeds on one dataset")
    parser.add_argument("--delete", metavar="RUN",
                        help="delete this run (full id or unique prefix) and all its rows, and orphan rows of runs deleted earlier")
    parser.add_argument("--check", action="store_true",
                        help="read every table back; report damage, orphan rows (of deleted runs) and stale runs")
    parser.add_argument("--salvage", metavar="NEW",
                        help="copy every table (or run) that still reads into the new store NEW")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait while another process holds the store (default: 60)")


def _status(run: dict) -> str:
    from pipeline.store import db as store

    liveness = store.run_liveness(run)
    if liveness == "stale":
        return f"running (stale: pid {int(run['pid'])} on {run['host']} is gone)"
    if liveness == "unknown" and run.get("host"):
        return f"running (on {run['host']})"
    return run["status"]


def render_runs(runs) -> str:
    """The runs frame (from store.list_runs) as an aligned text table."""
    rows = [COLUMNS]
    for r in runs.to_dict("records"):
        accuracy = "" if r["test_accuracy"] is None or r["test_accuracy"] != r["test_accuracy"] \
            else f"{r['test_accuracy']:.4f}"
        started = "" if r["started_at"] is None else str(r["started_at"])[:19]
        rows.append((r["run_id"], _status(r), r["kind"], r["dataset"], r["recipe"], accuracy, started))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    from pipeline.store import db as store

    if args.salvage:
        report = store.salvage_store(args.db, args.salvage)
        print(f"copied what reads from {args.db} into {args.salvage}:")
        for table, outcome in report.items():
            print(f"  {table:<20} {outcome if isinstance(outcome, str) else f'{outcome} rows'}")
        if isinstance(report.get("runs"), str):
            print(f"warning: the runs table did not read back, so rows copied from other tables belong to runs "
                  f"{args.salvage} does not list (`runs --check` shows them as orphans)")
        return 0
    if args.check:
        return _check(args)
    if args.delete:
        with store.open_store(args.db, timeout_s=args.timeout) as con:
            full_id = store.resolve_run_id(con, args.delete, store.RUN_STATUSES)
            orphans = sum(store.find_orphans(con).values())
            deleted = store.delete_run(con, full_id)
        extra = f", including {orphans} orphan rows of runs deleted earlier" if orphans else ""
        print(f"deleted run {full_id} ({deleted} rows{extra}) from {args.db}")
        return 0

    with store.open_store(args.db, read_only=True, timeout_s=args.timeout) as con:
        runs = store.list_runs(con, include_incomplete=args.all)
    if args.seeds:
        print(render_seed_spread(runs, args.db))
        return 0
    if runs.empty:
        which = "runs" if args.all else "complete runs (use --all to include running and failed ones)"
        print(f"no {which} in {args.db}")
        return 0
    print(render_runs(runs))
    return 0


def render_seed_spread(runs, db) -> str:
    """The seed spread of the complete runs as text: one block per recipe and dataset."""
    import pandas as pd

    from pipeline.train.seeds import compute_seed_spread

    spread = compute_seed_spread(runs[runs["status"] == "complete"])  # `--all` lists the others too
    if spread.empty:
        return (f"no recipe in {db} was trained with two or more seeds on one dataset; train it again with "
                f"`--seed 1`, `--seed 2`, ... to see how much its figures move")
    lines = []
    for r in spread.to_dict("records"):
        lines += [f"{r['recipe']} ({r['model']}) on {r['dataset']}: {r['n_seeds']} seeds ({r['seeds']})"
                  + ("" if pd.isna(r["n_test"]) else f", {int(r['n_test']):,} test images"),
                  f"  accuracy  {r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f} (SD), "
                  f"range {r['accuracy_min']:.4f}–{r['accuracy_max']:.4f}",
                  f"  macro-F1  {r['macro_f1_mean']:.4f} ± {r['macro_f1_sd']:.4f} (SD), "
                  f"range {r['macro_f1_min']:.4f}–{r['macro_f1_max']:.4f}",
                  f"  runs      {r['run_ids']}"]
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    """`runs --check`: 0 when every table reads and nothing is orphaned or stale, else 1."""
    from pipeline.store import db as store

    with store.open_store(args.db, read_only=True, timeout_s=args.timeout, check=False) as con:
        damaged = store.find_damaged_tables(con)
        orphans = {} if damaged else store.find_orphans(con)
        runs = [] if "runs" in damaged else store.list_runs(con, include_incomplete=True).to_dict("records")
    stale = [r for r in runs if store.run_liveness(r) == "stale"]
    for table, error in damaged.items():
        print(f"damaged  {table}: {error}")
    if damaged:
        print(f"  save what still reads: python -m pipeline runs --db {args.db} --salvage NEW.duckdb")
    for table, n in orphans.items():
        print(f"orphans  {table}: {n} rows of runs that no longer exist "
              f"(removed by the next `runs --delete`, or re-run after deleting them)")
    for r in stale:
        print(f"stale    {r['run_id']}: 'running', but pid {int(r['pid'])} on {r['host']} is gone; "
              f"continue it with `python -m pipeline train --resume {r['run_id']} --db {args.db}` "
              f"or delete it with `runs --delete {r['run_id']}`")
    if not (damaged or orphans or stale):
        print(f"ok       {args.db}: every table reads back; no orphan rows, no stale runs ({len(runs)} runs)")
        return 0
    return 1
