"""Options that several commands share, declared once.

A command module names the shared options it takes in `SHARED_OPTIONS` (and may
reword their help in `SHARED_HELP`); `pipeline.cli` adds them to its parser from
one parent parser built here, with the defaults of `SharedDefaults`. So `--db`,
`--run`, `--seed`, `--device` and `--quiet` mean the same, with the same default
and type, in every command.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.paths import DEFAULT_DB


@dataclass(frozen=True)
class SharedDefaults:
    db: Path = field(default_factory=lambda: DEFAULT_DB)  # FER_RESULTS_DB, else results.duckdb in the project
    run: str = "latest"
    seed: int = 0
    device: str = "auto"
    quiet: bool = False


_HELP = {
    "db": "results store (default {default}; the FER_RESULTS_DB variable also sets it)",
    "run": "run id, unique prefix or 'latest' (default {default})",
    "seed": "random seed (default {default})",
    "device": "auto (default: CUDA when present, else CPU), cpu, cuda, cuda:1 ...",
    "quiet": "no progress bars",
}


def create_parent_parser(names: Sequence[str], help_overrides: Mapping[str, str] | None = None
                         ) -> argparse.ArgumentParser:
    """A parser (add_help=False, for `parents=`) holding the shared options `names`."""
    unknown = set(names) - set(_HELP)
    if unknown:
        raise ValueError(f"unknown shared options {sorted(unknown)}; known: {', '.join(_HELP)}")
    defaults = SharedDefaults()
    helps = {**_HELP, **(help_overrides or {})}
    parent = argparse.ArgumentParser(add_help=False)
    for name in names:
        default = getattr(defaults, name)
        text = helps[name].format(default=default)
        if name == "quiet":
            parent.add_argument("--quiet", action="store_true", help=text)
        elif name == "db":
            parent.add_argument("--db", type=Path, default=default, metavar="PATH", help=text)
        elif name == "seed":
            parent.add_argument("--seed", type=int, default=default, help=text)
        else:
            parent.add_argument(f"--{name}", default=default, help=text)
    return parent


def add_shard_options(parser: argparse.ArgumentParser, command: str) -> None:
    """--shard K/N and --merge-shards, for the stages that split their images (evaluate, explain)."""
    group = parser.add_argument_group(
        "sharding (see README, 'Scaling out'; under torchrun each process takes its shard by itself)")
    group.add_argument("--shard", metavar="K/N",
                       help=f"{command} only the K-th of N equal blocks of the images (K counted from 1) and "
                            f"write them as Parquet beside the store, for job arrays on separate machines")
    group.add_argument("--merge-shards", action="store_true",
                       help="store the result from the N shards written before (names any that are missing)")


def parse_shard_options(args: argparse.Namespace):
    """(distributed.Shard or None, merge) from --shard/--merge-shards; UserError when both are given."""
    from pipeline.errors import UserError
    from pipeline.train.distributed import parse_shard

    if args.shard and args.merge_shards:
        raise UserError(f"give --shard {args.shard} (compute one shard) or --merge-shards (store them all), not both")
    return (parse_shard(args.shard) if args.shard else None), bool(args.merge_shards)
