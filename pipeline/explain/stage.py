"""The explain stage: heatmaps, region energies, failure tags and explanation checks for a stored run.

Any run with a model: a trained run (its checkpoint) or an external one (the model
card `evaluate --model` recorded); `load_explain_model` loads it and says which
methods apply. The CAM family (pytorch-grad-cam's formulas, pipeline.explain.cams)
needs gradients at a target layer: trained runs, PyTorch and TorchScript cards.
The gradient-free methods (occlusion, RISE: pipeline.explain.perturbation) only
need predictions, so they explain ONNX models too. Runs of imported predictions
have no model and are refused.

For every image of the run's split (default test) that has a stored prediction,
computes a map for the predicted class and, when it differs, for the true class,
with each method; stores it at `cam_size` (uint8, 1 KB at 32x32, see
pipeline.explain.codec) with its energy share per facial region (heatmaps) and
their mean per true emotion and outcome (heatmap_summary: the mean map and mean
energies the dashboard shows, computed here from the maps being stored), tags the
misclassified images (failure_tags), and measures the explanations on a seeded
sample (explanation_metrics): faithfulness (ROAD, confidence change: any map), the
model-randomisation sanity check (CAM methods on models whose weights are a
PyTorch module; where it is skipped, pipeline.explain.checks.describe_sanity_skip
says why) and, on the synthetic set, localisation of the ground-truth action-unit
regions against uniform and shuffled baselines. When Grad-CAM and a gradient-free
method are computed together, their agreement (rank correlation of region
energies per image, 'agree_gradcam_spearman') is stored under the gradient-free method.

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
from pipeline.explain.checks import AGREEMENT_REFERENCE, SANITY_THRESHOLD
from pipeline.errors import UserError


@dataclass(frozen=True)
class ExplainConfig:
    db: str
    run: str = "latest"
    methods: tuple[str, ...] | None = None  # None: what fits the model (see default_methods)
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
    rise_masks: int = 500                  # RISE's random masks per image
    perturbation_batch_size: int = 64      # perturbed images per forward pass (occlusion, RISE)
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


def list_methods() -> tuple[str, ...]:
    """Every method `explain` knows: the CAM family, then the gradient-free ones."""
    from pipeline.explain.cams import METHODS
    from pipeline.explain.perturbation import PERTURBATION_METHODS

    return (*METHODS, *PERTURBATION_METHODS)


def validate_explain_methods(methods) -> tuple[str, ...]:
    """The method names, lower-cased and de-duplicated (ValueError naming a bad one)."""
    from pipeline.explain.cams import validate_methods

    return validate_methods(methods, list_methods(), "explanation method")


def default_methods(has_gradients: bool) -> tuple[str, ...]:
    """Grad-CAM for models with gradients (trained runs, PyTorch and TorchScript cards); occlusion and
    RISE for the others (ONNX)."""
    from pipeline.explain.cams import DEFAULT_METHODS
    from pipeline.explain.perturbation import PERTURBATION_METHODS

    return DEFAULT_METHODS if has_gradients else tuple(PERTURBATION_METHODS)


@dataclass
class ExplainModel:
    """A stored run's model as the explain stage uses it, and what applies to it.

    model: a pipeline.external.models.RunModel (a trained run's checkpoint or an external run's card):
      `explain(images, ...)` makes every method's maps from uint8 images, `prepare(images)` is the input
      of `model.module` (what ROAD and the confidence change perturb).
    methods: the methods to compute, in the order asked.
    layer_name: the CAM methods' target layer (None when only gradient-free methods are computed).
    sanity_skipped: {method: why the randomisation sanity check is not run on it}.
    """
    model: Any
    methods: tuple[str, ...]
    layer_name: str | None
    sanity_skipped: dict[str, str]

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def is_gradient_free(self, method: str) -> bool:
        from pipeline.explain.perturbation import PERTURBATION_METHODS

        return method in PERTURBATION_METHODS

    def layer_of(self, method: str) -> str:
        """heatmaps.target_layer of `method`'s maps."""
        from pipeline.explain.codec import INPUT_LAYER

        return INPUT_LAYER if self.is_gradient_free(method) else str(self.layer_name)


def load_explain_model(db: str | Path, run: dict, device: str, *, methods: tuple[str, ...] | None,
                       target_layer: str | None) -> ExplainModel:
    """The run's model (any kind: trained, or external through its card) with the methods that apply.

    `methods` None gives default_methods. UserError, naming the run and its card, for runs without a
    model (imported predictions), for gradient methods on an ONNX model, for CAM methods a TorchScript
    model cannot run, and for an unknown target layer (listing the candidates).
    """
    from pipeline.explain.cams import CLASS_AGNOSTIC_METHODS, GRADIENT_METHODS
    from pipeline.explain.checks import describe_sanity_skip
    from pipeline.explain.perturbation import PERTURBATION_METHODS
    from pipeline.external.models import load_run_model

    model = load_run_model(db, run, device)  # checkpoint: runs folder, SHA-256, weights-only; card: file SHA-256
    methods = validate_explain_methods(methods) if methods is not None else default_methods(model.has_gradients)
    cam_methods = [m for m in methods if m not in PERTURBATION_METHODS]
    where = f"run {run['run_id']}" + (f" (model card {model.card.path})" if model.card is not None else "")
    if cam_methods and not model.has_gradients:
        raise UserError(f"{', '.join(cam_methods)} need the model's gradients, and the model of {where} is an "
                        f"{model.source} file without them; use --methods {','.join(PERTURBATION_METHODS)} "
                        "(the default for it)")
    if model.source == "torchscript":
        unsupported = [m for m in cam_methods if m not in GRADIENT_METHODS | CLASS_AGNOSTIC_METHODS]
        if unsupported:
            raise UserError(f"{', '.join(unsupported)} cannot run on the TorchScript model of {where}; use "
                            f"{', '.join(sorted(GRADIENT_METHODS | CLASS_AGNOSTIC_METHODS))} or "
                            f"{', '.join(PERTURBATION_METHODS)}")
    layer_name = model.resolve_layer(target_layer)[1] if cam_methods else None
    skipped = {m: why for m in methods
               if (why := describe_sanity_skip(model_source=model.source,
                                               gradient_free=m in PERTURBATION_METHODS)) is not None}
    return ExplainModel(model=model, methods=tuple(methods), layer_name=layer_name, sanity_skipped=skipped)


def _perturbation_settings(config: ExplainConfig):
    """The occlusion and RISE settings of an explain run (RISE's masks seeded by config.seed)."""
    from pipeline.explain.perturbation import OcclusionConfig, RiseConfig

    return (OcclusionConfig(batch_size=config.perturbation_batch_size),
            RiseConfig(n_masks=config.rise_masks, batch_size=config.perturbation_batch_size, seed=config.seed))


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

            self.gt_masks = load_au_masks(dataset.root, [r.image_id for r in records])

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


def compute_heatmap_rows(targets: ExplainTargets, *, methods: tuple[str, ...], model: ExplainModel,
                         regions: RegionContext, config: ExplainConfig,
                         progress: Callable[[int], None] | None = None) -> HeatmapResults:
    """Every image's maps (predicted class; true class when misclassified) with region energies.

    Any method of `model.methods`: the CAM family at the model's target layer, the gradient-free
    ones (occlusion, RISE) from one perturbation sweep per batch serving both targets. Images are
    decoded `config.chunk` at a time and explained in batches of `config.batch_size`; `progress(n)`
    is called after each batch.
    """
    # Long on purpose: one pass per decoded chunk serves every method and target (the images,
    # region maps and ground-truth masks are decoded once); splitting it would decode them per method.
    from pipeline.data.images import load_images_array
    from pipeline.explain.faithfulness import compute_gt_localisation
    from pipeline.explain.regions import compute_peak_regions, compute_region_energies

    n, grid, preds, records = len(targets), regions.grid, targets.preds, targets.records
    occlusion, rise = _perturbation_settings(config)
    out = HeatmapResults({m: [] for m in methods}, {m: np.full(n, np.nan) for m in methods},
                         {m: [] for m in methods})
    for start in range(0, n, config.chunk):
        idx = np.arange(start, min(start + config.chunk, n))
        images = load_images_array([records[i] for i in idx], model.image_size)
        maps = regions.region_maps(idx)
        masks = regions.gt_stack(idx)
        chunk_cams = {m: np.empty((2, len(idx), grid, grid), np.float32) for m in methods}
        for b in range(0, len(idx), config.batch_size):
            sl = slice(b, b + config.batch_size)
            cams = model.model.explain(images[sl], [targets.pred_idx[idx[sl]], targets.true_idx[idx[sl]]], methods,
                                       layer_name=model.layer_name, out_size=(grid, grid), occlusion=occlusion,
                                       rise=rise)
            for m in methods:
                chunk_cams[m][:, sl] = cams[m]
            if progress is not None:
                progress(len(images[sl]))
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
                common = {"run_id": targets.run_id, "method": m, "target": target, "target_layer": model.layer_of(m),
                          "cam_size": config.cam_size}
                out.rows[m] += [_heatmap_row(common, image_id=records[idx[j]].image_id,
                                             target_label=labels.iloc[idx[j]], cam=cams_t[k], energies=energies[k],
                                             peak=peaks[k], gt=None if gt is None else gt.iloc[k])
                                for k, j in enumerate(sel)]
            if masks is not None:
                # The localisation aggregates use the map of the true class (the expression drawn).
                true_cams = np.where(targets.wrong[idx][:, None, None], chunk_cams[m][1], chunk_cams[m][0])
                g = compute_gt_localisation(true_cams, masks, seed=config.seed + start)
                g["emotion"] = preds["true_label"].iloc[idx].to_numpy()
                out.localisation[m].append(g)
    return out


def compute_check_rows(targets: ExplainTargets, *, methods: tuple[str, ...], model: ExplainModel,
                       config: ExplainConfig, rng: np.random.Generator,
                       progress: Callable[[int], None] | None = None) -> dict[str, list[dict]]:
    """Faithfulness (ROAD, confidence change) and the randomisation sanity check on a seeded sample.

    One explanation_metrics row per method, metric and emotion ('all' included),
    each with a bootstrap interval. ROAD and the confidence change apply to any map; the sanity
    check runs only for the methods not in `model.sanity_skipped` (it re-initialises the weights).
    """
    # Long on purpose: each batch's map feeds both checks, so splitting the loop would compute
    # the maps twice.
    import torch

    from pipeline.data.images import load_images_array
    from pipeline.explain.faithfulness import (compute_confidence_change, compute_map_similarity,
                                               compute_road_scores, create_randomized_model, summarise)

    rows: dict[str, list[dict]] = {m: [] for m in methods}
    n = len(targets)
    n_sample = min(n, max(config.faithfulness_samples, config.sanity_samples))
    if n_sample <= 0:
        return rows
    run_model = model.model
    occlusion, rise = _perturbation_settings(config)
    sample = np.sort(rng.choice(n, n_sample, replace=False))
    images = load_images_array([targets.records[i] for i in sample], model.image_size)
    x_all = run_model.prepare(images)
    emotions = targets.preds["true_label"].iloc[sample].tolist()
    random_module = None
    if config.sanity_samples > 0 and any(m not in model.sanity_skipped for m in methods):
        layer, _ = run_model.resolve_layer(model.layer_name)
        random_module = create_randomized_model(run_model.module, layer, x_all[:1], config.sanity_mode, config.seed)
    torch.manual_seed(config.seed)  # ROAD's imputation noise
    for m in methods:
        per: dict[str, list[np.ndarray]] = {}
        for b in range(0, n_sample, config.batch_size):
            sl = slice(b, b + config.batch_size)
            x = x_all[sl]
            tgt = targets.pred_idx[sample[sl]]
            cam = run_model.explain(images[sl], [tgt], [m], layer_name=model.layer_name, occlusion=occlusion,
                                    rise=rise)[m][0]
            pos = np.arange(b, min(b + config.batch_size, n_sample))
            batch_emotions = np.array(emotions[b:b + len(pos)], object)
            f_sel = pos < config.faithfulness_samples
            if f_sel.any():
                xs, cs, ts = x[f_sel], cam[f_sel], tgt[f_sel]
                for k, v in {**compute_road_scores(run_model.module, xs, cs, ts, config.road_percentiles),
                             **compute_confidence_change(run_model.module, xs, cs, ts)}.items():
                    per.setdefault(k, []).append(v)
                per.setdefault("_f_emotions", []).append(batch_emotions[f_sel])
            s_sel = pos < config.sanity_samples
            if random_module is not None and m not in model.sanity_skipped and s_sel.any():
                rcams = run_model.compute_cams(x[s_sel], [tgt[s_sel]], [m], model.layer_name, module=random_module)
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


def compute_agreement_rows(heat_frames: dict[str, pd.DataFrame], preds: pd.DataFrame, *,
                           gradient_free: tuple[str, ...], n_boot: int, seed: int) -> dict[str, list[dict]]:
    """How far each gradient-free method's maps agree with Grad-CAM's on the same images:
    explanation_metrics rows 'agree_gradcam_spearman' (the per-image Spearman correlation of the
    predicted-class maps' region energies, mean over images, per true emotion and 'all', bootstrap CI),
    {method: rows} for the gradient-free methods, when Grad-CAM was computed in the same run. Pure."""
    from pipeline.explain.perturbation import summarise_agreement

    out: dict[str, list[dict]] = {}
    ref = heat_frames.get(AGREEMENT_REFERENCE)
    if ref is None or ref.empty:
        return out
    energy = list(ENERGY_COLUMNS)
    key = ["image_id", *energy]
    ref = ref.loc[ref["target"] == "pred", key]
    for m in gradient_free:
        if m not in heat_frames or heat_frames[m].empty:
            continue
        own = heat_frames[m].loc[heat_frames[m]["target"] == "pred", key]
        both = own.merge(ref, on="image_id", suffixes=("", "_ref"), validate="1:1").merge(
            preds[["image_id", "true_label"]], on="image_id", validate="1:1")
        if both.empty:
            continue
        energies = {m: both[energy].to_numpy(np.float64),
                    AGREEMENT_REFERENCE: both[[f"{c}_ref" for c in energy]].to_numpy(np.float64)}
        out[m] = summarise_agreement(energies, both["true_label"].tolist(), AGREEMENT_REFERENCE, n_boot=n_boot,
                                     seed=seed)
    return out


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
    from pipeline.explain.cams import compute_heatmap_summary
    from pipeline.explain.faithfulness import summarise_gt_localisation
    from pipeline.explain.regions import compute_failure_tags
    from pipeline.train.distributed import current_world
    from pipeline.train.runner import resolve_device

    from pipeline.store import db as store

    if config.methods is not None:
        try:
            validate_explain_methods(config.methods)
        except ValueError as exc:
            raise UserError(f"--methods: {exc}") from None
    for name, value in (("--rise-masks", config.rise_masks), ("--perturbation-batch-size",
                                                               config.perturbation_batch_size)):
        if value < 1:
            raise UserError(f"{name} {value}: give a positive number")
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
    # Any run kind: a trained run's checkpoint or an external run's card; the methods that apply to it.
    model = load_explain_model(db, run, device, methods=config.methods, target_layer=config.target_layer)
    methods = model.methods
    dataset = load_run_dataset_for(run)
    rng = np.random.default_rng(config.seed)
    targets = select_targets(run["run_id"], preds, dataset, model.classes, limit=config.limit, rng=rng)
    common = dict(methods=methods, model=model, config=config)
    sharded = shard is not None or merge_shards or world.size > 1
    if sharded:
        from pipeline.store.shards import load_shards, shard_folder, write_shard
        from pipeline.train.distributed import barrier, shard_slice

        settings = {"stage": "explain", "run_id": run["run_id"], "checkpoint_sha256": run.get("checkpoint_sha256"),
                    "layer": model.layer_name, **{k: v for k, v in vars(config).items()
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
        update, close = _progress_bar(config, len(part), f"maps ({', '.join(methods)})")
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
        # Tags again over the whole run: the background rule is relative to the run's usual share.
        background = ENERGY_COLUMNS[FACE_REGIONS.index("background")]
        shares = {m: f[f["target"] == "pred"].set_index("image_id")[background].reindex(targets.preds["image_id"])
                  .astype(float).to_numpy() for m, f in heat_frames.items()}
        tags = compute_failure_tags(list(targets.preds["image_id"]), list(targets.preds["true_label"]),
                                    list(targets.preds["pred_label"]), [r.occluder for r in targets.records],
                                    shares, config.background_threshold)
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
    free = tuple(m for m in methods if model.is_gradient_free(m))
    for m, rows in compute_agreement_rows(heat_frames, preds, gradient_free=free, n_boot=config.n_boot,
                                          seed=config.seed).items():
        metric_rows[m] += rows
    summaries = {m: compute_heatmap_summary(heat_frames[m], preds, config.split) for m in methods}
    with store.open_store(db) as con:
        save_explanations(con, targets.run_id, heat_frames=heat_frames, summaries=summaries,
                          metric_rows=metric_rows, tags=tags)
    if sharded:
        from pipeline.store.shards import remove_shards

        remove_shards(folder)
    return {
        "run_id": targets.run_id, "methods": list(methods), "target_layer": model.layer_name,
        "model_source": model.model.source, "sanity_skipped": dict(model.sanity_skipped),
        "n_images": len(targets),
        "n_misclassified": int(targets.wrong.sum()), "n_heatmaps": int(sum(len(f) for f in heat_frames.values())),
        "n_tags": int(len(tags)), "metrics": pd.DataFrame([r for rows in metric_rows.values() for r in rows]),
        "heatmaps": pd.concat(list(heat_frames.values()), ignore_index=True).drop(columns=["cam"]),
        "is_synthetic": bool(dataset.is_synthetic),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: counts, then the headline metrics per method, then the checks not run."""
    layer = f"layer {summary['target_layer']}" if summary.get("target_layer") else "gradient-free only"
    lines = [f"explained run {summary['run_id']}: {summary['n_images']} images "
             f"({summary['n_misclassified']} misclassified), {layer}, "
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
    for method, why in (summary.get("sanity_skipped") or {}).items():
        lines.append(f"  {method}: no randomisation sanity check: {why}")
    return "\n".join(lines)
