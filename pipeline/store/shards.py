"""Parquet shards of a sharded stage, beside the store, and their checked merge.

A sharded `evaluate` or `explain` (under torchrun, or `--shard K/N` on machines that
share no process group) writes each shard's rows here instead of into DuckDB, which
admits one writer at a time:

    <store folder>/shards/<run_id>/<stage>-<digest>/<K>-of-<N>/<table>.parquet + shard.json

`digest` is a hash of the job's settings, so the shards of one job and its merge
find the same folder and a changed job never mixes with an old one. A shard is
written to a temporary folder and renamed into place, so a crashed shard leaves
either its complete folder or none. `load_shards` checks that all N shards are
there (naming the missing ones) and agree on the job, and returns each table's
rows concatenated in shard order; the caller writes them into the store in one
transaction and then calls `remove_shards`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import UserError

META_FILE = "shard.json"
PER_SHARD_KEYS = frozenset({"shard", "seconds"})  # meta that may differ between the shards of one job
_SHARD_DIR = re.compile(r"(\d+)-of-(\d+)")


def job_digest(settings: dict[str, Any]) -> str:
    """A short, stable hash of a job's settings (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def shard_folder(db: str | Path, run_id: str, stage: str, settings: dict[str, Any]) -> Path:
    """The folder of one job's shards: <store folder>/shards/<run_id>/<stage>-<digest>."""
    return Path(db).expanduser().absolute().parent / "shards" / run_id / f"{stage}-{job_digest(settings)}"


def write_shard(folder: Path, index: int, count: int, tables: dict[str, pd.DataFrame],
                meta: dict[str, Any]) -> Path:
    """Write shard `index` (0-based) of `count`: one Parquet file per table and shard.json,
    atomically (a temporary folder renamed into place, replacing an earlier attempt)."""
    final = Path(folder) / f"{index + 1}-of-{count}"
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, frame in tables.items():
            frame.reset_index(drop=True).to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / META_FILE).write_text(json.dumps({**meta, "shard": index + 1, "count": count,
                                                 "tables": sorted(tables)}, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _found_shards(folder: Path) -> dict[tuple[int, int], Path]:
    found = {}
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _SHARD_DIR.fullmatch(p.name)
        if m and (p / META_FILE).is_file():
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def load_shards(folder: Path, *, rerun_hint: str, expected_count: int | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """(each shard's meta, each table's rows concatenated in shard order) of the job in `folder`.

    UserError when no shard is there, shards of different counts are mixed, one
    or more are missing (named, with `rerun_hint` formatted with {shard}=K/N), or
    their metas disagree on anything but PER_SHARD_KEYS.
    """
    found = _found_shards(Path(folder))
    if not found:
        raise UserError(f"no shards to merge under {folder}: run the shards first ({rerun_hint.format(shard='K/N')})")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise UserError(f"{folder} mixes shards of {' and '.join(map(str, counts))}-way splits; delete the stale "
                        f"ones ({', '.join(p.name for p in found.values())}) and re-run")
    count = counts[0]
    if expected_count is not None and count != expected_count:
        raise UserError(f"{folder} holds shards of a {count}-way split, not {expected_count}")
    missing = [f"{k}/{count}" for k in range(1, count + 1) if (k, count) not in found]
    if missing:
        raise UserError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} of {folder} "
                        f"{'are' if len(missing) > 1 else 'is'} missing (crashed or not run): re-run "
                        + "; ".join(rerun_hint.format(shard=s) for s in missing) + ", then merge again")
    metas, parts = [], {}
    for k in range(1, count + 1):
        path = found[(k, count)]
        meta = json.loads((path / META_FILE).read_text())
        metas.append(meta)
        for name in meta["tables"]:
            parts.setdefault(name, []).append(pd.read_parquet(path / f"{name}.parquet"))
    job = {k: v for k, v in metas[0].items() if k not in PER_SHARD_KEYS}
    for meta in metas[1:]:
        other = {k: v for k, v in meta.items() if k not in PER_SHARD_KEYS}
        if other != job:
            differ = sorted(k for k in set(job) | set(other) if job.get(k) != other.get(k))
            raise UserError(f"shard {meta['shard']}/{count} under {folder} disagrees with shard 1/{count} on "
                            f"{', '.join(differ)}; re-run it with the same options")
    return metas, {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def remove_shards(folder: Path) -> None:
    """Delete a merged job's shard folder (and its run's folder when that is left empty)."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass
