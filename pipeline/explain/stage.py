"""The explain stage: CAMs, region energies, failure tags and explanation checks for a stored run.

For every image of the run's split (default test) that has a stored prediction,
computes a CAM for the predicted class and, when it differs, for the true class,
with each method; stores it at `cam_size` (uint8, 1 KB at 32x32, see
pipeline.explain.codec) with its energy share per facial region (heatmaps) and
their mean per true emotion and outcome (heatmap_summary: the mean map and mean
energies the dashboard shows, computed here from the maps being stored), tags the
misclassified images (failure_tags), and measures the explanations on a seeded
sample (explanation_metrics): faithfulness (ROAD, confidence change), the
model-randomisation sanity check and, on the synthetic set, localisation of the
ground-truth action-unit regions against uniform and shuffled baselines.

Rules: each function below does one job and only `save_explanations` writes the
store (a sharded run's Parquet shards: see `run_explain`); a
method's rows are replaced as a whole, every method in one transaction, so a
crash leaves the store as it was. `run_explain(ExplainConfig(...))` is what the
command, the demo and the benches call.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.constants import ALIGNED_SIZE, ENERGY_COLUMNS, FACE_REGIONS
from pipeline.explain.checks import SANITY_THRESHOLD
from pipeline.errors import UserError


@dataclass(frozen=True)
class ExplainConfig:
    db: str
    run: str = "latest"
    methods: tuple[str, ...] = ("gradcam",)
    target_layer: str | None = None
    split: str = "test"
    limit: int | None = None               # explain a seeded sample of this many images
    batch_size: int = 32
    cam_size: int = 32
    chunk: int = 512                       # images decoded at a time
    faithfulness_samples: int = 200
    sanity_samples: int = 100
    sanity_mode: str = "cascading"
    sanity_threshold: float = SANITY_THRESHOLD
    road_percentiles: tuple[int, ...] = (20, 40, 60, 80)
    background_threshold: float = 0.5
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"                   # CUDA when present, else CPU
    quiet: bool = False


@dataclass
class ExplainTargets:
    """The images one explain run covers, in prediction order, with their class indices."""
    run_id: str
    preds: pd.DataFrame                    # image_id, true_label, pred_label, correct
    records: list                          # dataset records, aligned with preds
    pred_idx: np.ndarray
    true_idx: np.ndarray                   # the true class index, or the predicted one when unknown
    wrong: np.ndarray                      # true class known and not predicted

    def __len__(self) -> int:
        return len(self.records)


def load_stored_predictions(con, run: str, split: str) -> tuple[dict, pd.DataFrame]:
    """(run row, its predictions on `split`); UserError when there is nothing to explain."""
    from pipeline.store import db as store

    row = store.get_run(con, run)
    preds = store.load_frame(con, "predictions", ["image_id", "true_label", "pred_label", "correct"],
                             run_id=row["run_id"], split=split)
    if preds.empty:
        raise UserError(f"run {row['run_id']} has no predictions on the {split} split; pass --split val|test")
    return row, preds


def load_run_dataset_for(run: dict):
    """The dataset a run's predictions refer to, from the settings recorded with it."""
    from pipeline.data.loaders import load_dataset

    ds_kwargs = (run.get("config") or {}).get("dataset")
    if not ds_kwargs:
        raise UserError(f"run {run['run_id']} records no dataset settings (config['dataset']); cannot find its images")
    return load_dataset(**ds_kwargs)


def select_targets(run_id: str, preds: pd.DataFrame, dataset, classes: list[str], *,
                   limit: int | None, rng: np.random.Generator) -> ExplainTargets:
    """The predictions to explain (a seeded sample of `limit` when given) matched to dataset records."""
    by_id = {r.image_id: r for r in dataset.records}
    missing = [i for i in preds["image_id"] if i not in by_id]
    if missing:
        raise UserError(f"{len(missing)} predicted images of run {run_id} are not in the dataset at "
                        f"{dataset.root} (e.g. {missing[0]}); was it regenerated or moved?")
    cls_index = {c: i for i, c in enumerate(classes)}
    preds = preds[preds["pred_label"].isin(cls_index)].reset_index(drop=True)
    if limit is not None and limit < len(preds):
        preds = preds.iloc[np.sort(rng.choice(len(preds), limit, replace=False))].reset_index(drop=True)
    pred_idx = preds["pred_label"].map(cls_index).to_numpy(np.int64)
    true_known = preds["true_label"].isin(cls_index).to_numpy()
    true_idx = np.where(true_known, preds["true_label"].map(cls_index).fillna(-1).to_numpy(np.int64), pred_idx)
    return ExplainTargets(run_id=run_id, preds=preds, records=[by_id[i] for i in preds["image_id"]],
                          pred_idx=pred_idx, true_idx=true_idx, wrong=true_known & (true_idx != pred_idx))


def _image_sizes(records, dataset) -> list[tuple[float, float]]:
    """(width, height) of each record's image, the frame its landmarks refer to."""
    from PIL import Image

    sizes = []
    for r in records:
        if r.landmarks is None:
            sizes.append((0.0, 0.0))
        elif dataset.image_size:
            sizes.append((float(dataset.image_size), float(dataset.image_size)))
        elif r.pixels is not None:
            sizes.append((float(r.pixels.shape[1]), float(r.pixels.shape[0])))
        else:
            with Image.open(r.path) as im:
                sizes.append((float(im.size[0]), float(im.size[1])))
    return sizes


class RegionContext:
    """Facial-region maps on the analysis grid (landmarks where the dataset gives them,
    else a template) and, on the synthetic set, the ground-truth action-unit masks."""

    def __init__(self, records, dataset, grid: int = ALIGNED_SIZE):
        from pipeline.explain.regions import compute_mean_landmarks, compute_region_map

        self.records, self.grid = records, grid
        self._sizes = _image_sizes(records, dataset)
        template_lm = compute_mean_landmarks([r.landmarks for r in dataset.records]) if dataset.image_size else None
        self._template = compute_region_map(template_lm, (dataset.image_size or ALIGNED_SIZE,) * 2, grid)
        self.gt_masks = None
        if dataset.is_synthetic:
            from pipeline.synth.faces import load_au_masks

            self.gt_masks = load_au_masks(dataset.root)

    def region_maps(self, idx: np.ndarray) -> np.ndarray:
        from pipeline.explain.regions import compute_region_map

        return np.stack([compute_region_map(self.records[i].landmarks, self._sizes[i], self.grid)
                         if self.records[i].landmarks is not None else self._template for i in idx])

    def gt_stack(self, idx: np.ndarray) -> np.ndarray | None:
        """The ground-truth masks of images `idx` (all False where an image has none), or None off the synthetic set."""
        import cv2

        if self.gt_masks is None:
            return None
        grid = self.grid
        out = np.zeros((len(idx), grid, grid), dtype=bool)
        for k, i in enumerate(idx):
            m = self.gt_masks.get(self.records[i].image_id)
            if m is not None:
                out[k] = m if m.shape == (grid, grid) else cv2.resize(
                    m.astype(np.uint8), (grid, grid), interpolation=cv2.INTER_NEAREST).astype(bool)
        return out


@dataclass
class HeatmapResults:
    rows: dict[str, list[dict]]            # heatmaps rows per method
    background_share: dict[str, np.ndarray]  # per image, of the predicted-class map
    localisation: dict[str, list[pd.DataFrame]]  # per-image ground-truth localisation of the true-class map


def _heatmap_row(common: dict, *, image_id: str, target_label: str, cam: np.ndarray, energies: np.ndarray,
                 peak: str, gt: pd.Series | None) -> dict:
    """One heatmaps row: the encoded map, its energy per region (NULL where undefined) and localisation."""
    from pipeline.explain.codec import encode_cam

    row = {**common, "image_id": image_id, "target_label": target_label,
           "cam": encode_cam(cam, common["cam_size"]), "peak_region": peak, "gt_energy": None, "gt_hit": None}
    for c, v in zip(ENERGY_COLUMNS, energies):
        row[c] = float(v) if np.isfinite(v) else None
    if gt is not None:
        e, h = gt["gt_energy"], gt["gt_hit"]
        row["gt_energy"] = float(e) if np.isfinite(e) else None
        row["gt_hit"] = bool(h) if np.isfinite(h) else None
    return row


def compute_heatmap_rows(targets: ExplainTargets, *, methods: tuple[str, ...], model, layer, layer_name: str,
                         meta: dict, regions: RegionContext, config: ExplainConfig, device: str,
                         progress: Callable[[int], None] | None = None) -> HeatmapResults:
    """Every image's maps (predicted class; true class when misclassified) with region energies.

    Images are decoded `config.chunk` at a time and explained in batches of
    `config.batch_size`; `progress(n)` is called after each batch.
    """
    from pipeline.data.images import load_images_array
    from pipeline.explain.cams import compute_cams
    from pipeline.explain.faithfulness import compute_gt_localisation
    from pipeline.explain.regions import compute_peak_regions, compute_region_energies
    from pipeline.train.augment import preprocess_batch

    n, grid, preds, records = len(targets), regions.grid, targets.preds, targets.records
    out = HeatmapResults({m: [] for m in methods}, {m: np.full(n, np.nan) for m in methods},
                         {m: [] for m in methods})
    for start in range(0, n, config.chunk):
        idx = np.arange(start, min(start + config.chunk, n))
        images = load_images_array([records[i] for i in idx], int(meta["image_size"]))
        maps = regions.region_maps(idx)
        masks = regions.gt_stack(idx)
        chunk_cams = {m: np.empty((2, len(idx), grid, grid), np.float32) for m in methods}
        for b in range(0, len(idx), config.batch_size):
            sl = slice(b, b + config.batch_size)
            x = preprocess_batch(images[sl], meta, device)
            cams, _ = compute_cams(model, x, [targets.pred_idx[idx[sl]], targets.true_idx[idx[sl]]], methods,
                                   layer, (grid, grid))
            for m in methods:
                chunk_cams[m][:, sl] = cams[m]
            if progress is not None:
                progress(len(x))
        for m in methods:
            for t_i, target in enumerate(("pred", "true")):
                rows_here = np.ones(len(idx), bool) if target == "pred" else targets.wrong[idx]
                if not rows_here.any():
                    continue
                sel = np.flatnonzero(rows_here)
                cams_t = chunk_cams[m][t_i, sel]
                energies = compute_region_energies(cams_t, maps[sel])
                peaks = compute_peak_regions(cams_t, maps[sel])
                gt = None
                if masks is not None:
                    gt = compute_gt_localisation(cams_t, masks[sel], seed=config.seed + start)
                if target == "pred":
                    out.background_share[m][idx] = energies[:, FACE_REGIONS.index("background")]
                labels = preds["pred_label"] if target == "pred" else preds["true_label"]
                common = {"run_id": targets.run_id, "method": m, "target": target, "target_layer": layer_name,
                          "cam_size": config.cam_size}
                out.rows[m] += [_heatmap_row(common, image_id=records[idx[j]].image_id,
                                             target_label=labels.iloc[idx[j]], cam=cams_t[k], energies=energies[k],
                                             peak=peaks[k], gt=None if gt is None else gt.iloc[k])
                                for k, j in enumerate(sel)]
            if masks is not None:
                # The localisation aggregates use the CAM of the true class (the expression drawn).
                true_cams = np.where(targets.wrong[idx][:, None, None], chunk_cams[m][1], chunk_cams[m][0])
                g = compute_gt_localisation(true_cams, masks, seed=config.seed + start)
                g["emotion"] = preds["true_label"].iloc[idx].to_numpy()
                out.localisation[m].append(g)
    return out


def compute_check_rows(targets: ExplainTargets, *, methods: tuple[str, ...], model, layer, layer_name: str,
                       meta: dict, config: ExplainConfig, device: str, rng: np.random.Generator,
                       progress: Callable[[int], None] | None = None) -> dict[str, list[dict]]:
    """Faithfulness (ROAD, confidence change) and the randomisation sanity check on a seeded sample.

    One explanation_metrics row per method, metric and emotion ('all' included),
    each with a bootstrap interval. Kept as one loop (over 60 lines): each batch's
    CAM feeds both checks, so splitting it would compute the maps twice.
    """
    import torch

    from pipeline.data.images import load_images_array
    from pipeline.explain.cams import compute_cams, resolve_target_layer
    from pipeline.explain.faithfulness import (compute_confidence_change, compute_map_similarity,
                                               compute_road_scores, create_randomized_model, summarise)
    from pipeline.train.augment import preprocess_batch

    rows: dict[str, list[dict]] = {m: [] for m in methods}
    n = len(targets)
    n_sample = min(n, max(config.faithfulness_samples, config.sanity_samples))
    if n_sample <= 0:
        return rows
    sample = np.sort(rng.choice(n, n_sample, replace=False))
    images = load_images_array([targets.records[i] for i in sample], int(meta["image_size"]))
    x_all = preprocess_batch(images, meta, device)
    emotions = targets.preds["true_label"].iloc[sample].tolist()
    random_model = random_layer = None
    if config.sanity_samples > 0:
        random_model = create_randomized_model(model, layer, x_all[:1], config.sanity_mode, config.seed)
        random_layer, _ = resolve_target_layer(random_model, layer_name)
    torch.manual_seed(config.seed)  # ROAD's imputation noise
    for m in methods:
        per: dict[str, list[np.ndarray]] = {}
        for b in range(0, n_sample, config.batch_size):
            sl = slice(b, b + config.batch_size)
            x = x_all[sl]
            tgt = targets.pred_idx[sample[sl]]
            cams, _ = compute_cams(model, x, [tgt], [m], layer)
            cam = cams[m][0]
            pos = np.arange(b, min(b + config.batch_size, n_sample))
            batch_emotions = np.array(emotions[b:b + len(pos)], object)
            f_sel = pos < config.faithfulness_samples
            if f_sel.any():
                xs, cs, ts = x[f_sel], cam[f_sel], tgt[f_sel]
                for k, v in {**compute_road_scores(model, xs, cs, ts, config.road_percentiles),
                             **compute_confidence_change(model, xs, cs, ts)}.items():
                    per.setdefault(k, []).append(v)
                per.setdefault("_f_emotions", []).append(batch_emotions[f_sel])
            s_sel = pos < config.sanity_samples
            if random_model is not None and s_sel.any():
                rcams, _ = compute_cams(random_model, x[s_sel], [tgt[s_sel]], [m], random_layer)
                sim = compute_map_similarity(cam[s_sel], rcams[m][0])
                per.setdefault("sanity_spearman", []).append(sim["spearman"])
                per.setdefault("sanity_ssim", []).append(sim["ssim"])
                per.setdefault("_s_emotions", []).append(batch_emotions[s_sel])
            if progress is not None:
                progress(len(pos))
        for k, parts in per.items():
            if k.startswith("_"):
                continue
            ems = np.concatenate(per["_s_emotions" if k.startswith("sanity") else "_f_emotions"]).tolist()
            metric = summarise(np.concatenate(parts), ems, m, k, n_boot=config.n_boot, seed=config.seed)
            if k == "sanity_spearman":
                for r in metric:
                    r["passed"] = bool(r["value"] < config.sanity_threshold)
            rows[m] += metric
    return rows


METRIC_COLUMNS = ["method", "metric", "emotion", "value", "ci_low", "ci_high", "n", "passed"]


def save_explanations(con, run_id: str, *, heat_frames: dict[str, pd.DataFrame],
                      summaries: dict[str, pd.DataFrame], metric_rows: dict[str, list[dict]],
                      tags: pd.DataFrame) -> None:
    """Replace the run's rows of every explained method, all in one transaction on `con`."""
    from pipeline.store import db as store

    with store.transaction(con):
        for m, heat in heat_frames.items():
            store.replace_rows(con, "heatmaps", heat, run_id=run_id, method=m)
            store.replace_rows(con, "heatmap_summary", summaries[m], run_id=run_id, method=m)
            store.replace_rows(con, "explanation_metrics", pd.DataFrame(metric_rows[m], columns=METRIC_COLUMNS),
                               run_id=run_id, method=m)
            store.replace_rows(con, "failure_tags", tags[tags["method"] == m], run_id=run_id, method=m)
        store.replace_rows(con, "failure_tags", tags[tags["method"] == ""], run_id=run_id, method="")


def _progress_bar(config: ExplainConfig, total: int, desc: str):
    """A tqdm bar's update function and its close, or (None, no-op) with --quiet."""
    if config.quiet or total == 0:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img")
    return bar.update, bar.close


def run_explain(config: ExplainConfig, *, shard=None, merge_shards: bool = False) -> dict[str, Any]:
    """Compute and store a run's explanations; returns a summary dict (see `format_summary`).

    Sharded (`shard`, a pipeline.train.distributed.Shard, or every rank under torchrun):
    the shard explains its contiguous block of the selected images and writes its
    heatmaps, failure tags and per-image localisation as Parquet beside the store
    (pipeline.store.shards); shard 1 alone also runs the checks (faithfulness and
    sanity) on the same seeded sample of all images that one process would draw.
    The merge (`merge_shards`, or rank 0 after a barrier under torchrun) computes the
    aggregates from the merged rows: heatmap_summary from the merged heatmaps and
    the localisation metrics from the merged per-image frames, then stores it all
    with `save_explanations` in one transaction. So every row equals one process's
    except the shuffled-map localisation baselines (gt_energy_shuffled,
    pointing_shuffled), whose derangement is drawn within each shard's images, and
    the pass flag of 'pointing', which compares with pointing_shuffled.
    A process that only wrote its shard returns {"shard": "K/N", ...}.
    """
    # Long on purpose: the stage's wiring: each step is a function above, called in order; what is left is the
    # sequence itself.
    from pipeline.explain.cams import compute_heatmap_summary, resolve_target_layer, validate_methods
    from pipeline.explain.faithfulness import summarise_gt_localisation
    from pipeline.explain.regions import compute_failure_tags
    from pipeline.train.distributed import current_world
    from pipeline.train.models import load_run_model
    from pipeline.train.runner import resolve_device

    from pipeline.store import db as store

    methods = validate_methods(config.methods)
    db = Path(config.db)
    if not db.is_file():
        raise UserError(f"results store {db} does not exist; run `python -m pipeline demo` or pass --db PATH")
    world = current_world()
    if (shard is not None or merge_shards) and world.size > 1:
        raise UserError(f"--shard/--merge-shards are for separate jobs; under torchrun each of the {world.size} "
                        f"processes takes its own shard and rank 0 merges: drop them")
    with store.open_store(db, read_only=True) as con:
        run, preds = load_stored_predictions(con, config.run, config.split)
    device = resolve_device(config.device)
    model, meta = load_run_model(db, run, device)  # models.load_run_model: runs folder, SHA-256, weights-only
    classes = list(meta["classes"])
    try:
        layer, layer_name = resolve_target_layer(model, config.target_layer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    dataset = load_run_dataset_for(run)
    rng = np.random.default_rng(config.seed)
    targets = select_targets(run["run_id"], preds, dataset, classes, limit=config.limit, rng=rng)
    common = dict(methods=methods, model=model, layer=layer, layer_name=layer_name, meta=meta, config=config,
                  device=device)
    sharded = shard is not None or merge_shards or world.size > 1
    if sharded:
        from pipeline.store.shards import load_shards, shard_folder, write_shard
        from pipeline.train.distributed import barrier, shard_slice

        settings = {"stage": "explain", "run_id": run["run_id"], "checkpoint_sha256": run.get("checkpoint_sha256"),
                    "layer": layer_name, **{k: v for k, v in vars(config).items()
                                            if k not in ("db", "run", "device", "quiet")}}
        folder = shard_folder(db, run["run_id"], "explain", settings)
        mine = shard or world.shard
    if sharded and not merge_shards:
        block = shard_slice(len(targets), mine)
        part = ExplainTargets(run_id=targets.run_id, preds=targets.preds.iloc[block].reset_index(drop=True),
                              records=targets.records[block], pred_idx=targets.pred_idx[block],
                              true_idx=targets.true_idx[block], wrong=targets.wrong[block])
    else:
        part = targets
    if not merge_shards:
        update, close = _progress_bar(config, len(part), f"CAMs ({', '.join(methods)})")
        heat = compute_heatmap_rows(part, regions=RegionContext(part.records, dataset), progress=update, **common)
        close()
        tags = compute_failure_tags(list(part.preds["image_id"]), list(part.preds["true_label"]),
                                    list(part.preds["pred_label"]), [r.occluder for r in part.records],
                                    heat.background_share, config.background_threshold)
        localisation = {m: pd.concat(heat.localisation[m], ignore_index=True) for m in methods
                        if heat.localisation[m]}
        check_rows: dict[str, list[dict]] = {m: [] for m in methods}
        if not sharded or mine.index == 0:
            n_checked = min(len(targets), max(config.faithfulness_samples, config.sanity_samples))
            update, close = _progress_bar(config, len(methods) * n_checked, "faithfulness + sanity")
            check_rows = compute_check_rows(targets, rng=rng, progress=update, **common)
            close()
        heat_frames = {m: pd.DataFrame(rows) for m, rows in heat.rows.items()}
    if sharded and not merge_shards:
        path = write_shard(folder, mine.index, mine.count, {
            "heatmaps": pd.concat(list(heat_frames.values()), ignore_index=True),
            "failure_tags": tags,
            "localisation": pd.concat([g.assign(method=m) for m, g in localisation.items()], ignore_index=True)
            if localisation else pd.DataFrame({"method": pd.Series(dtype=str)}),
            "checks": pd.DataFrame([r for rows in check_rows.values() for r in rows], columns=METRIC_COLUMNS),
        }, {**settings, "n_images": len(targets)})
        if world.size > 1:
            barrier()
        if world.size == 1 or not world.is_main:
            return {"shard": mine.label, "run_id": targets.run_id, "n_images": len(part), "path": str(path)}
    if sharded:
        _, merged = load_shards(folder, rerun_hint="the same explain command with --shard {shard}",
                                expected_count=world.size if world.size > 1 else None)
        heat_all = merged["heatmaps"]
        got = set(heat_all.loc[heat_all["target"] == "pred", "image_id"]) if len(heat_all) else set()
        if got != set(targets.preds["image_id"]):
            raise UserError(f"the shards under {folder} explain {len(got)} images, the run's selection "
                            f"{len(targets)}: were its predictions replaced since they ran? Delete {folder} "
                            f"and run the shards again")
        heat_frames = {m: heat_all[heat_all["method"] == m].reset_index(drop=True) for m in methods}
        tags = merged["failure_tags"]
        loc = merged["localisation"]
        localisation = {m: loc[loc["method"] == m].reset_index(drop=True) for m in methods
                        if len(loc) and (loc["method"] == m).any()}
        checks = merged["checks"].assign(passed=lambda f: f["passed"].astype(object).where(f["passed"].notna(), None))
        check_rows = {m: checks[checks["method"] == m].to_dict("records") for m in methods}
    metric_rows: dict[str, list[dict]] = {m: [] for m in methods}
    for m, g in localisation.items():
        metric_rows[m] += summarise_gt_localisation(g, g["emotion"].tolist(), m, n_boot=config.n_boot,
                                                    seed=config.seed)
    for m, rows in check_rows.items():
        metric_rows[m] += rows

    preds = targets.preds
    summaries = {m: compute_heatmap_summary(heat_frames[m], preds, config.split) for m in methods}
    with store.open_store(db) as con:
        save_explanations(con, targets.run_id, heat_frames=heat_frames, summaries=summaries,
                          metric_rows=metric_rows, tags=tags)
    if sharded:
        from pipeline.store.shards import remove_shards

        remove_shards(folder)
    return {
        "run_id": targets.run_id, "methods": list(methods), "target_layer": layer_name, "n_images": len(targets),
        "n_misclassified": int(targets.wrong.sum()), "n_heatmaps": int(sum(len(f) for f in heat_frames.values())),
        "n_tags": int(len(tags)), "metrics": pd.DataFrame([r for rows in metric_rows.values() for r in rows]),
        "heatmaps": pd.concat(list(heat_frames.values()), ignore_index=True).drop(columns=["cam"]),
        "is_synthetic": bool(dataset.is_synthetic),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: counts, then the headline metrics per method."""
    lines = [f"explained run {summary['run_id']}: {summary['n_images']} images "
             f"({summary['n_misclassified']} misclassified), layer {summary['target_layer']}, "
             f"{summary['n_heatmaps']} heatmaps, {summary['n_tags']} failure tags"]
    metrics = summary["metrics"]
    if len(metrics):
        main = metrics[metrics["emotion"] == "all"]
        for method, rows in main.groupby("method", sort=False):
            parts = []
            for _, r in rows.iterrows():
                flag = "" if r["passed"] is None or r["passed"] != r["passed"] else (" ok" if r["passed"] else " FAIL")
                parts.append(f"{r['metric']}={r['value']:.3f}{flag}")
            lines.append(f"  {method}: " + ", ".join(parts))
    return "\n".join(lines)
