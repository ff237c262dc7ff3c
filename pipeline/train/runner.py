"""Wires the stages for `train` and `evaluate`: load -> train -> predict -> evaluate -> store.

Each stage is called with plain data: the loader gives a FaceDataset, images are
decoded once per split into uint8 arrays, `training.fit` returns a history and
best weights, `evaluation` turns arrays into frames, and only at the end
`store.save_run` writes the run and all its rows in one transaction. A run is
first recorded as 'running' (`store.start_run`, with this process's pid and
host, so a row whose process is gone can be shown as stale); any exception
marks it 'failed' (Ctrl-C and SIGTERM: 'interrupted') and is re-raised, and
every such failure of `train` says how `--resume RUN` continues it, so earlier
runs stay intact and no half run looks complete. Checkpoints go to
runs/<run_id>/{best,last}.pt beside the store; the SHA-256 of best.pt is stored
with the run and checked whenever the model is loaded again
(`models.load_run_model`).

Under torchrun (pipeline.train.distributed) `train` runs DDP with rank 0 alone
touching the store and the checkpoints, and `evaluate` is sharded: each rank
writes its images' probabilities as a Parquet shard (pipeline.store.shards) and
rank 0 stores the one run from all of them; `--shard K/N` and `--merge-shards`
do the same across jobs that share no process group.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

import pipeline
from pipeline.errors import UserError
from pipeline.paths import PROJECT_ROOT, runs_dir_for
from pipeline.train.recipes import Recipe

CHECKPOINT_BEST = "best.pt"
CHECKPOINT_LAST = "last.pt"


@dataclass(frozen=True)
class DatasetSpec:
    """The load_dataset keyword arguments, stored as config["dataset"]."""
    name: str
    root: str
    num_classes: int = 7
    variant: str = "aligned"
    val_fraction: float = 0.1
    seed: int = 0
    label_source: str = "hard"             # which wins where soft and hard labels disagree (RAF-DB layouts)

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainRunConfig:
    dataset: DatasetSpec
    recipe: Recipe
    weights: str = "none"
    device: str = "auto"
    db: str = ""
    resume: str | None = None              # run id (prefix) or run folder to continue
    stop_after: int | None = None          # stop after this epoch (resumable), for time-boxed sessions and tests
    quiet: bool = False


@dataclass(frozen=True)
class EvaluateRunConfig:
    run: str                               # the trained run (id, prefix or 'latest')
    dataset: DatasetSpec
    splits: tuple[str, ...] = ("test",)
    device: str = "auto"
    db: str = ""
    batch_size: int = 256
    quiet: bool = False
    checkpoint: str | None = None          # a checkpoint file the user passed, instead of the run's own
    shard: Any = None                      # distributed.Shard: predict only this block, write it as Parquet
    merge_shards: bool = False             # store the run from the shards already written


@dataclass
class RunOutcome:
    run_id: str
    status: str                            # 'complete' | 'stopped'
    summary: dict[str, Any]


# --------------------------------------------------------------------------- helpers

def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return device


def code_version() -> str:
    """pipeline.__version__ plus the git short hash when the source is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return f"{pipeline.__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return pipeline.__version__


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is marked interrupted and can be resumed."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_hint(db, run_id: str, run_dir: Path | None = None) -> str:
    """How to continue run `run_id`: `--resume` from its last checkpoint, or a re-run when none exists yet."""
    command = f"python -m pipeline train --resume {run_id} --db {db}"
    if run_dir is None or (Path(run_dir) / CHECKPOINT_LAST).is_file():
        return f"continue it with `{command}`"
    return (f"no epoch finished, so `{command}` has nothing to continue from yet: re-run the same train "
            f"command (the failed row is replaced by a new run)")


@contextmanager
def marking_failed(db, run_id: str, log: Callable[[str], None], *, run_dir: Path | None = None,
                   resumable: bool = True) -> Iterator[None]:
    """Any error inside marks the stored run failed (Ctrl-C or SIGTERM: interrupted) with the error and
    how to continue (`resume_hint` for a training run, else a re-run), then propagates; a UserError
    comes out with that hint appended, any other error after a line saying it."""
    from pipeline.store import db as store

    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        hint = resume_hint(db, run_id, run_dir) if resumable else "re-run the same command"
        why = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
        try:
            store.mark_failed(db, run_id, f"{why}; {hint}", status="interrupted" if interrupted else "failed")
        except Exception as inner:  # the original error matters more
            log(f"warning: could not mark run {run_id} failed: {inner}")
        if isinstance(exc, UserError) and "--resume" not in str(exc):
            raise type(exc)(f"{exc}\nrun {run_id} is marked failed; {hint}") from None
        print(f"run {run_id} is marked {'interrupted' if interrupted else 'failed'}; {hint}",
              file=sys.stderr, flush=True)
        raise


MAX_CONFLICTS_SHOWN = 5


def report_label_conflicts(dataset, log: Callable[[str], None]) -> None:
    """Log how many soft labels contradict their hard label, and the first few, with file:line."""
    conflicts = dataset.label_conflicts
    if not conflicts:
        return
    log(f"warning: {len(conflicts)} soft labels disagree with the label file (their most likely class is "
        f"another); --label-source chooses which wins:")
    for where, what in conflicts[:MAX_CONFLICTS_SHOWN]:
        log(f"  {where}: {what}")
    if len(conflicts) > MAX_CONFLICTS_SHOWN:
        log(f"  ... and {len(conflicts) - MAX_CONFLICTS_SHOWN} more")


def report_small_images(small: list[tuple[str, str]], log: Callable[[str], None]) -> None:
    """Log the images too small to hold a face ((path, 'WxH') from `load_split_arrays`); they are still used."""
    from pipeline.data.images import MIN_IMAGE_SIDE

    if small:
        log(f"warning: {len(small)} images are smaller than {MIN_IMAGE_SIDE} px on a side (used as they are), e.g. "
            + "; ".join(f"{path} ({size})" for path, size in small[:3]))


def process_identity() -> dict[str, Any]:
    """The pid and host recorded with a run (a 'running' row whose process is gone is stale)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def recipe_from_config(config: dict[str, Any]) -> Recipe:
    """Rebuild the Recipe stored in a run's config["recipe"]."""
    from pipeline.train.augment import AugmentConfig
    from pipeline.train.loop import TrainConfig

    r = dict(config["recipe"])
    t = dict(r.pop("train"))
    a = dict(t.pop("augment"))
    a = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
    t["frozen_modules"] = tuple(t["frozen_modules"])
    if "group_attributes" in t:
        t["group_attributes"] = tuple(t["group_attributes"])
    r["mean"], r["std"] = tuple(r["mean"]), tuple(r["std"])
    return Recipe(**r, train=TrainConfig(**t, augment=AugmentConfig(**a)))


def load_split_arrays(dataset, image_size: int, splits: tuple[str, ...], progress: bool,
                      small: list[tuple[str, str]] | None = None):
    """Decode each split once, at the model's input size or the dataset's native size
    when smaller (batches are resized on the fly). `small`, when given, receives the
    decoded files with a side under `images.MIN_IMAGE_SIDE` (path, 'WxH'), read from the
    headers in the same pass."""
    from pipeline.data.images import decode_images, list_small_images

    size = min(image_size, dataset.image_size) if dataset.image_size else image_size
    out = {}
    for split in splits:
        records = dataset.split(split)
        images, sizes = decode_images(records, size, progress=progress, desc=f"decoding {split}")
        out[split] = (records, images)
        if small is not None:
            small.extend(list_small_images(records, sizes))
    return out


def _soft_tensor(records, num_classes: int):
    import torch

    if not records or any(r.soft_label is None for r in records):
        return None
    return torch.tensor([r.soft_label for r in records], dtype=torch.float32).reshape(-1, num_classes)


def _split_tensors(records, images: np.ndarray, num_classes: int, groups: np.ndarray | None = None):
    import torch

    from pipeline.train.loop import SplitTensors

    return SplitTensors(images=torch.from_numpy(images),
                        labels=torch.tensor([r.label for r in records], dtype=torch.int64),
                        soft=_soft_tensor(records, num_classes),
                        groups=torch.from_numpy(groups) if groups is not None else None)


GROUP_ATTRIBUTES = ("gender", "race", "age")


def compute_group_codes(records, attributes: tuple[str, ...], *, where: str) -> tuple[np.ndarray, list[str]]:
    """Each record's demographic group over `attributes` as a code 0..G-1, and the group
    names ("race=1&gender=0"), for the group mitigations. Images without a value form the
    group "unknown". Raises UserError when no record has the attributes (`where` names the
    dataset in the message)."""
    bad = [a for a in attributes if a not in GROUP_ATTRIBUTES]
    if not attributes or bad:
        raise UserError(f"group attributes must be among {', '.join(GROUP_ATTRIBUTES)}, got {', '.join(attributes)}")
    keys = []
    for r in records:
        values = [getattr(r, a) for a in attributes]
        keys.append("unknown" if any(v is None for v in values)
                    else "&".join(f"{a}={v}" for a, v in zip(attributes, values)))
    if keys and all(k == "unknown" for k in keys):
        raise UserError(f"{where} has no {'/'.join(attributes)} annotations, which the group mitigations need; "
                        f"train without --group-balance/--group-dro, or use a dataset with demographics")
    names = sorted(set(keys))
    index = {k: i for i, k in enumerate(names)}
    return np.array([index[k] for k in keys], dtype=np.int64), names


def resolve_paths(paths: list[Path | str | None]) -> list[str | None]:
    """`str(Path(p).resolve())` of each path (None kept), resolving each folder once: a file
    that is not itself a symlink resolves to its resolved folder joined with its name. A
    dataset's 7,000 resolves cost 0.5 s one by one."""
    folders: dict[str, str] = {}
    out: list[str | None] = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        folder, name = os.path.split(os.fspath(p))
        if not name or name in (".", "..") or os.path.islink(p):
            out.append(os.path.realpath(p))
            continue
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        out.append(os.path.join(folders[folder], name))
    return out


def create_images_frame(records, classes) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [r.image_id for r in records],
        "split": [r.split for r in records],
        "path": resolve_paths([r.path for r in records]),
        "true_label": [classes[r.label] for r in records],
        "soft_label": [list(r.soft_label) if r.soft_label is not None else None for r in records],
    })


def create_epochs_frame(history: list[dict[str, float]]) -> pd.DataFrame:
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    frame = pd.DataFrame(history, columns=cols)
    return frame.astype({"epoch": "int64"}).replace({np.nan: None})


def compute_split_results(split: str, image_ids, y_true: np.ndarray, probs: np.ndarray, classes):
    """predictions, class_metrics and confusion frames of one split."""
    from pipeline.train.evaluation import compute_class_report, compute_confusion, create_prediction_frame

    y_pred = probs.argmax(1)
    return (create_prediction_frame(image_ids, split, y_true, probs, classes),
            compute_class_report(y_true, y_pred, classes, split),
            compute_confusion(y_true, y_pred, classes, split))


def _headline(class_metrics: pd.DataFrame, split: str) -> tuple[float | None, float | None, int | None]:
    rows = class_metrics[class_metrics["split"] == split].set_index("label")
    if rows.empty:
        return None, None, None
    return (float(rows.loc["accuracy", "f1"]), float(rows.loc["macro avg", "f1"]),
            int(rows.loc["accuracy", "support"]))


def find_run_dir(db: Path, run_or_dir: str) -> Path:
    """A run's checkpoint folder from a folder path or a run id (prefix)."""
    path = Path(run_or_dir)
    if path.is_dir() and (path / CHECKPOINT_LAST).is_file():
        return path
    runs = runs_dir_for(db)
    matches = sorted(p for p in runs.glob(f"{run_or_dir}*") if (p / CHECKPOINT_LAST).is_file()) \
        if runs.is_dir() else []
    exact = [p for p in matches if p.name == run_or_dir]
    matches = exact or matches
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"nothing to resume for {run_or_dir!r}: no folder with {CHECKPOINT_LAST} there or "
                        f"under {runs}; pass a run folder or a run id")
    raise UserError(f"{run_or_dir!r} matches several runs under {runs}: "
                    f"{', '.join(p.name for p in matches[:5])}; give more characters")


# --------------------------------------------------------------------------- train

def _silent(message: str) -> None:
    """The log of a torchrun rank other than 0."""


def _checkpoint_meta(recipe: Recipe, classes: list[str], run_id: str, run_config: dict[str, Any]) -> dict[str, Any]:
    """The meta saved in a checkpoint: the model's input contract and the run's settings."""
    return {
        "arch": recipe.arch, "classes": classes, "num_classes": len(classes), "image_size": recipe.image_size,
        "mean": list(recipe.mean), "std": list(recipe.std), "recipe": recipe.name, "preset": recipe.preset,
        "head_dropout": recipe.head_dropout, "run_id": run_id, "config": run_config,
    }


def _train_worker(*, recipe: Recipe, spec: DatasetSpec, dataset, groups, model, device: str, resume_state,
                  config: TrainRunConfig, run_id: str) -> RunOutcome:
    """A torchrun rank other than 0: decode, train its share of each batch, and leave the rest to rank 0."""
    from pipeline.train.loop import fit

    classes = list(dataset.classes)
    arrays = load_split_arrays(dataset, recipe.image_size, ("train", "val"), False)
    train = _split_tensors(*arrays["train"], len(classes), groups)
    val = _split_tensors(*arrays["val"], len(classes))
    result = fit(model, train, val, _checkpoint_meta(recipe, classes, run_id, {}), recipe.train, device,
                 resume=resume_state, stop_after=config.stop_after, progress=False, log=_silent)
    return RunOutcome(run_id, "worker", {"epochs": len(result.history)})


def run_train(config: TrainRunConfig, log: Callable[[str], None] = print) -> RunOutcome:
    """Train a recipe on a dataset, evaluate on val and test, store the run.

    Under torchrun (an initialised process group) every rank trains its share of each
    batch with DDP (see pipeline.train.loop); rank 0 alone records the run, writes
    the checkpoints and the log, evaluates and stores; the other ranks return a
    RunOutcome with status 'worker' once training is done. `--resume` reads the
    rank-0 checkpoint, so a run continues in any number of processes.
    """
    # Long on purpose: the train stage's sequence (resume or start, record the run, train, evaluate, store in
    # one transaction) inside one failure guard that must cover all of it.
    import torch

    from pipeline.store import db as store
    from pipeline.data.loaders import load_dataset
    from pipeline.train.models import create_model, hash_checkpoint, load_checkpoint, save_checkpoint
    from pipeline.train.distributed import barrier, broadcast_object, current_world
    from pipeline.train.loop import check_progressive_resizing, fit, predict_probabilities, seed_everything

    db = Path(config.db)
    device = resolve_device(config.device)
    world = current_world()
    if not world.is_main:
        log = _silent  # rank 0 speaks for the group
    progress = False if config.quiet else None
    resume_state = None
    if config.resume:
        run_dir = find_run_dir(db, config.resume)
        if db.is_file() and world.is_main:
            with store.open_store(db, read_only=True) as con:
                runs = store.list_runs(con, include_incomplete=True)
            done = runs[(runs["run_id"] == run_dir.name) & (runs["status"] == "complete")]
            if len(done):
                raise UserError(f"run {run_dir.name} in {db} is already complete; nothing to resume")
        last = load_checkpoint(run_dir / CHECKPOINT_LAST)
        saved = last["meta"]["config"]
        recipe = recipe_from_config(saved)
        spec = DatasetSpec(**saved["dataset"])
        weights = saved["weights"]
        run_id = run_dir.name
        started_at = dt.datetime.fromisoformat(saved["started_at"])
        resume_state = last["train_state"]
        if (run_dir / CHECKPOINT_BEST).is_file():
            resume_state["best_state_dict"] = load_checkpoint(run_dir / CHECKPOINT_BEST)["state_dict"]
        log(f"resuming run {run_id} after epoch {resume_state['epoch']}")
    else:
        recipe, spec, weights = config.recipe, config.dataset, config.weights
        check_progressive_resizing(recipe.train, recipe.image_size)   # before any file is written
        spec = dataclasses.replace(spec, root=str(Path(spec.root).resolve()))
        run_id, started_at = broadcast_object((store.new_run_id(recipe.name), _utcnow()) if world.is_main else None)
        run_dir = runs_dir_for(db) / run_id

    run_config = {
        "dataset": spec.as_kwargs(), "recipe": _jsonable(recipe), "preset": recipe.preset, "weights": weights,
        "device": device, "seed": recipe.train.seed, "started_at": started_at.isoformat(),
        "torch_version": str(torch.__version__),
    }
    if world.size > 1:
        run_config["distributed"] = {"world_size": world.size,
                                     "backend": "nccl" if device.startswith("cuda") else "gloo"}
    run_row = {
        "run_id": run_id, "kind": "train", "parent_run_id": None, "dataset": spec.name,
        "dataset_root": str(Path(spec.root).resolve()), "dataset_fingerprint": "", "is_synthetic": False,
        "recipe": recipe.name, "model": recipe.arch, "classes": [], "config": run_config,
        "code_version": code_version(), "seed": recipe.train.seed, "device": device, "started_at": started_at,
        **process_identity(),
    }

    dataset = load_dataset(**spec.as_kwargs())
    classes = list(dataset.classes)
    run_row.update(dataset_fingerprint=dataset.fingerprint, is_synthetic=dataset.is_synthetic, classes=classes)
    # Group codes, the model and its pretrained weights before the run is recorded: missing
    # annotations or a missing weights file are user errors, not a failed run.
    groups = None
    if recipe.train.group_balance != "none" or recipe.train.group_dro:
        groups, group_names = compute_group_codes(dataset.split("train"), recipe.train.group_attributes,
                                                  where=f"dataset {spec.name} at {spec.root}")
        run_config["groups"] = {"attributes": list(recipe.train.group_attributes), "names": group_names,
                                "train_counts": np.bincount(groups, minlength=len(group_names)).tolist()}
    seed_everything(recipe.train.seed, device)
    model = create_model(recipe.arch, len(classes), weights="none" if resume_state else weights,
                         head_dropout=recipe.head_dropout)
    report_label_conflicts(dataset, log)
    if dataset.skipped:
        log(f"skipped {len(dataset.skipped)} dataset entries (see `python -m pipeline inspect` for all): "
            + "; ".join(f"{path}: {reason}" for path, reason in dataset.skipped[:3])
            + (" ..." if len(dataset.skipped) > 3 else ""))
    barrier()  # every rank has read the store (the command's check, a resume's look-up) before rank 0 writes it
    if not world.is_main:
        return _train_worker(recipe=recipe, spec=spec, dataset=dataset, groups=groups, model=model, device=device,
                             resume_state=resume_state, config=config, run_id=run_id)
    if config.resume:
        store.reopen_run(db, run_row)
    else:
        store.start_run(db, run_row)
    with terminate_as_interrupt(), marking_failed(db, run_id, log, run_dir=run_dir):
        t0 = time.perf_counter()
        small: list[tuple[str, str]] = []
        arrays = load_split_arrays(dataset, recipe.image_size, ("train", "val", "test"),
                                   progress is None and sys.stderr.isatty(), small=small)
        log(f"decoded {', '.join(f'{len(a[0])} {s}' for s, a in arrays.items())} images "
            f"in {time.perf_counter() - t0:.1f}s")
        report_small_images(small, log)
        if not arrays["train"][0]:
            raise UserError(f"dataset {spec.name} at {spec.root} has no training images")
        meta = _checkpoint_meta(recipe, classes, run_id, run_config)

        def on_checkpoint(state: dict, is_best: bool) -> None:
            if is_best:
                save_checkpoint(run_dir / CHECKPOINT_BEST,
                                {"meta": meta, "state_dict": state["model"], "epoch": state["epoch"]})
            save_checkpoint(run_dir / CHECKPOINT_LAST,
                            {"meta": meta, "state_dict": state["model"], "train_state": state})

        train = _split_tensors(*arrays["train"], len(classes), groups)
        val = _split_tensors(*arrays["val"], len(classes))
        result = fit(model, train, val, meta, recipe.train, device, on_checkpoint=on_checkpoint,
                     resume=resume_state, stop_after=config.stop_after, progress=progress, log=log)
        if not result.finished:
            store.mark_failed(db, run_id, f"stopped after epoch {result.history[-1]['epoch']}; "
                                          f"{resume_hint(db, run_id)}")
            return RunOutcome(run_id, "stopped", {"epochs": len(result.history), "run_dir": str(run_dir)})

        model.load_state_dict(result.best_state_dict)
        t1 = time.perf_counter()
        preds, metrics, confusion = [], [], []
        for split in ("val", "test"):
            records, images = arrays[split]
            if not records:
                continue
            probs = predict_probabilities(model, images, meta, device)
            y_true = np.array([r.label for r in records], dtype=np.int64)
            p, m, c = compute_split_results(split, [r.image_id for r in records], y_true, probs, classes)
            preds.append(p), metrics.append(m), confusion.append(c)
        eval_seconds = time.perf_counter() - t1
        class_metrics = pd.concat(metrics, ignore_index=True)
        acc, f1, n_test = _headline(class_metrics, "test")
        all_records = [r for s in ("train", "val", "test") for r in arrays[s][0]]
        run_row.update(
            finished_at=_utcnow(), train_seconds=result.train_seconds, eval_seconds=eval_seconds,
            checkpoint_path=str((run_dir / CHECKPOINT_BEST).resolve()),
            checkpoint_sha256=hash_checkpoint(run_dir / CHECKPOINT_BEST),
            test_accuracy=acc, test_macro_f1=f1, n_test=n_test,
        )
        run_config.update(best_epoch=result.best_epoch, stopped_early=result.stopped_early,
                          epochs_run=len(result.history), skipped_images=len(dataset.skipped))
        store.save_run(db, run_row, {
            "epochs": create_epochs_frame(result.history),
            "images": create_images_frame(all_records, classes),
            "predictions": pd.concat(preds, ignore_index=True),
            "class_metrics": class_metrics,
            "confusion": pd.concat(confusion, ignore_index=True),
        })
    return RunOutcome(run_id, "complete", {
        "test_accuracy": acc, "test_macro_f1": f1, "n_test": n_test, "best_epoch": result.best_epoch,
        "epochs": len(result.history), "train_seconds": result.train_seconds, "run_dir": str(run_dir),
        "classes": classes,
    })


# --------------------------------------------------------------------------- evaluate

def run_evaluate(config: EvaluateRunConfig, log: Callable[[str], None] = print) -> RunOutcome:
    """Evaluate a trained run's best model on (another) dataset; stored as kind 'evaluate'.

    Sharded (`config.shard`, or every rank under torchrun): each shard predicts its
    contiguous block of the images and writes it as Parquet beside the store
    (pipeline.store.shards); the merge (`config.merge_shards`, or rank 0 after a
    barrier under torchrun) builds the run's tables from all shards' probabilities,
    exactly as one process would from its own, and stores one run in one transaction.
    """
    # Long on purpose: the evaluate stage's sequence inside one failure guard that must cover all of it.
    import torch

    from pipeline.store import db as store
    from pipeline.data.loaders import load_dataset
    from pipeline.train.distributed import current_world
    from pipeline.train.evaluation import compute_class_mapping
    from pipeline.train.models import hash_checkpoint, load_run_model, resolve_run_checkpoint
    from pipeline.train.loop import predict_probabilities

    db = Path(config.db)
    device = resolve_device(config.device)
    world = current_world()
    if (config.shard is not None or config.merge_shards) and world.size > 1:
        raise UserError(f"--shard/--merge-shards are for separate jobs; under torchrun each of the {world.size} "
                        f"processes takes its own shard and rank 0 merges: drop them")
    with store.open_store(db, read_only=True) as con:
        parent = store.get_run(con, config.run)
    if parent["kind"] != "train" or not parent.get("checkpoint_path"):
        raise UserError(f"run {parent['run_id']} is not a training run with a checkpoint; pass a train run")
    model, meta = load_run_model(db, parent, device, checkpoint=config.checkpoint)
    checkpoint = resolve_run_checkpoint(db, parent, config.checkpoint)
    checkpoint_sha = hash_checkpoint(checkpoint) if config.checkpoint else parent.get("checkpoint_sha256")
    spec = dataclasses.replace(config.dataset, root=str(Path(config.dataset.root).resolve()))
    dataset = load_dataset(**spec.as_kwargs())
    try:
        mapping = compute_class_mapping(meta["classes"], dataset.classes)
    except ValueError as exc:
        raise UserError(f"cannot evaluate run {parent['run_id']} on {spec.name} at {spec.root}: {exc}") from None
    predict = lambda images: predict_probabilities(model, images, meta, device, config.batch_size)  # noqa: E731
    sharded = config.shard is not None or config.merge_shards or world.size > 1
    if sharded:
        settings = {"stage": "evaluate", "parent_run_id": parent["run_id"], "checkpoint_sha256": checkpoint_sha,
                    "dataset": spec.as_kwargs(), "fingerprint": dataset.fingerprint, "splits": list(config.splits)}
        probs_of = _evaluate_shards(config, db=db, settings=settings, dataset=dataset, meta=meta,
                                    predict=predict, world=world, log=log)
        if probs_of is None:
            return RunOutcome("", "shard", {"shard": (config.shard or world.shard).label})
    run_id = store.new_run_id(f"eval-{parent['recipe']}")
    started_at = _utcnow()
    run_row = {
        "run_id": run_id, "kind": "evaluate", "parent_run_id": parent["run_id"], "dataset": spec.name,
        "dataset_root": str(Path(spec.root).resolve()), "dataset_fingerprint": dataset.fingerprint,
        "is_synthetic": dataset.is_synthetic, "recipe": parent["recipe"], "model": parent["model"],
        "classes": list(mapping.classes), "code_version": code_version(), "seed": parent["seed"],
        "device": device, "started_at": started_at, "checkpoint_path": str(checkpoint),
        "checkpoint_sha256": checkpoint_sha, **process_identity(),
        "config": {"dataset": spec.as_kwargs(), "parent_run_id": parent["run_id"], "splits": list(config.splits),
                   "model_classes": list(meta["classes"]), "dataset_classes": list(dataset.classes),
                   "evaluated_classes": list(mapping.classes), "unmappable_classes": list(mapping.unmappable),
                   "device": device, "torch_version": str(torch.__version__)},
    }
    if sharded:
        run_row["config"]["shards"] = probs_of.shards
    store.start_run(db, run_row)
    with terminate_as_interrupt(), marking_failed(db, run_id, log, resumable=False):
        t0 = time.perf_counter()
        if sharded:
            arrays, predict = probs_of.arrays, probs_of.lookup
        else:
            arrays = load_split_arrays(dataset, int(meta["image_size"]), config.splits,
                                       not config.quiet and sys.stderr.isatty())
        result = evaluate_mapped_splits(predict, arrays, mapping, dataset.classes, config.splits)
        if result is None:
            raise UserError(f"no image of {spec.name} at {spec.root} (splits {', '.join(config.splits)}) "
                            f"has a class the model knows ({', '.join(meta['classes'])})")
        tables, headline_split, unmappable = result
        acc, f1, n = _headline(tables["class_metrics"], headline_split)
        n_unmappable = sum(unmappable.values())
        run_row["config"].update(unmappable={"count": n_unmappable, "by_class": unmappable},
                                 headline_split=headline_split)
        run_row.update(finished_at=_utcnow(), test_accuracy=acc, test_macro_f1=f1, n_test=n,
                       eval_seconds=probs_of.seconds if sharded else time.perf_counter() - t0)
        store.save_run(db, run_row, tables)
    if sharded:
        from pipeline.store.shards import remove_shards

        remove_shards(probs_of.folder)
    return RunOutcome(run_id, "complete", {
        "parent_run_id": parent["run_id"], "accuracy": acc, "macro_f1": f1, "n": n, "split": headline_split,
        "classes": list(mapping.classes), "unmappable": n_unmappable, "unmappable_by_class": unmappable,
    })


@dataclass
class ShardedProbabilities:
    """All shards' probabilities, merged: `arrays` as from load_split_arrays but holding row numbers
    into `probs` instead of images, so `lookup(rows)` stands in for the model."""
    arrays: dict[str, tuple[list, np.ndarray]]
    probs: np.ndarray
    folder: Path
    shards: dict[str, Any]
    seconds: float

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        return self.probs[rows]


def _evaluate_shards(config: EvaluateRunConfig, *, db: Path, settings: dict[str, Any], dataset, meta,
                     predict: Callable[[np.ndarray], np.ndarray], world, log: Callable[[str], None]
                     ) -> ShardedProbabilities | None:
    """Predict this process's shard and write it; then, on the merging process, load all shards.
    Returns None on a process that does not merge (a --shard job, or a rank other than 0)."""
    from pipeline.data.images import load_images_array
    from pipeline.store.shards import load_shards, shard_folder, write_shard
    from pipeline.train.distributed import barrier, shard_slice

    folder = shard_folder(db, settings["parent_run_id"], "evaluate", settings)
    records = [r for split in config.splits for r in dataset.split(split)]
    if not config.merge_shards:
        shard = config.shard or world.shard
        part = records[shard_slice(len(records), shard)]
        t0 = time.perf_counter()
        size = min(int(meta["image_size"]), dataset.image_size) if dataset.image_size else int(meta["image_size"])
        images = load_images_array(part, size, progress=not config.quiet and sys.stderr.isatty())
        probs = predict(images) if len(part) else np.zeros((0, len(meta["classes"])), np.float32)
        frame = pd.DataFrame({"split": [r.split for r in part], "image_id": [r.image_id for r in part],
                              "probs": [p.astype(np.float32) for p in probs]})
        path = write_shard(folder, shard.index, shard.count, {"probabilities": frame},
                           {**settings, "seconds": time.perf_counter() - t0, "n_images": len(records)})
        log(f"shard {shard.label}: {len(part)} of {len(records)} images predicted, written to {path}")
        if world.size > 1:
            barrier()
        if not world.is_main or world.size == 1:
            return None
    hint = "the same evaluate command with --shard {shard}"
    metas, tables = load_shards(folder, rerun_hint=hint, expected_count=world.size if world.size > 1 else None)
    frame = tables["probabilities"]
    expected = [(r.split, r.image_id) for r in records]
    got = list(zip(frame["split"], frame["image_id"]))
    if got != expected:
        raise UserError(f"the shards under {folder} cover {len(got)} images, the dataset's splits "
                        f"{', '.join(config.splits)} {len(expected)} (or in another order): was the dataset "
                        f"changed since they ran? Delete {folder} and run the shards again")
    probs = np.stack(frame["probs"].to_numpy()) if len(frame) else np.zeros((0, len(meta["classes"])), np.float32)
    arrays, start = {}, 0
    for split in config.splits:
        split_records = dataset.split(split)
        arrays[split] = (split_records, np.arange(start, start + len(split_records)))
        start += len(split_records)
    return ShardedProbabilities(arrays=arrays, probs=probs.astype(np.float32), folder=folder,
                                shards={"count": len(metas), "folder": str(folder)},
                                seconds=float(sum(m.get("seconds", 0.0) for m in metas)))


def evaluate_mapped_splits(predict: Callable[[np.ndarray], np.ndarray], arrays, mapping, dataset_classes,
                           splits: tuple[str, ...]):
    """Predict each split's images whose class the model knows and build the run's tables.

    predict: uint8 NHWC images -> probabilities over the model's classes; arrays: as from
    load_split_arrays; mapping: compute_class_mapping(model classes, dataset classes).
    Returns ({images, predictions, class_metrics, confusion}, headline split, images excluded
    per unmappable class), or None when no image has a class the model knows.
    """
    from pipeline.train.evaluation import compute_mapped_probabilities

    images_rows, preds, metrics, confusion = [], [], [], []
    unmappable: dict[str, int] = {}
    for split in splits:
        records, images = arrays[split]
        keep = np.array([mapping.dataset_to_eval[r.label] >= 0 for r in records], dtype=bool)
        for r, k in zip(records, keep):
            if not k:
                name = dataset_classes[r.label]
                unmappable[name] = unmappable.get(name, 0) + 1
        kept = [r for r, k in zip(records, keep) if k]
        if not kept:
            continue
        probs = compute_mapped_probabilities(predict(images[keep]), mapping)
        y_true = np.array([mapping.dataset_to_eval[r.label] for r in kept], dtype=np.int64)
        p, m, c = compute_split_results(split, [r.image_id for r in kept], y_true, probs, mapping.classes)
        preds.append(p), metrics.append(m), confusion.append(c)
        images_rows.append(create_images_frame([_remap_record(r, mapping) for r in kept], list(mapping.classes)))
    if not preds:
        return None
    tables = {"images": pd.concat(images_rows, ignore_index=True), "predictions": pd.concat(preds, ignore_index=True),
              "class_metrics": pd.concat(metrics, ignore_index=True),
              "confusion": pd.concat(confusion, ignore_index=True)}
    return tables, ("test" if "test" in splits else splits[0]), unmappable


def _remap_record(record, mapping):
    """The record with its label (and soft label) over the evaluated classes."""
    label = mapping.dataset_to_eval[record.label]
    soft = None
    if record.soft_label is not None:
        sub = [record.soft_label[i] for i, j in enumerate(mapping.dataset_to_eval) if j >= 0]
        total = sum(sub)
        soft = tuple(v / total for v in sub) if total > 0 else None
    return dataclasses.replace(record, label=label, soft_label=soft)
