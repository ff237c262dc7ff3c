"""`python -m pipeline explain`: CAMs, region energies, failure tags and explanation checks for a run.

Examples:
  python -m pipeline explain --run latest
  python -m pipeline explain --run 20261122 --methods gradcam,gradcam++,layercam --limit 500
  python -m pipeline explain --run latest --target-layer block2 --faithfulness-samples 100

For every image of the run's split (default test) that has a stored prediction,
computes a CAM for the predicted class and, when it differs, for the true class,
with each method; stores it at --cam-size (uint8, 1 KB at 32x32) with its energy
share per facial region (heatmaps) and their mean per true emotion and outcome
(heatmap_summary: the mean map and mean energies the dashboard shows, computed
here from the maps being stored), tags the misclassified images (failure_tags),
and measures the explanations on a seeded sample (explanation_metrics):
faithfulness (ROAD, confidence change), the model-randomisation sanity check and,
on the synthetic set, localisation of the ground-truth action-unit regions against
uniform and shuffled baselines. A method's rows are replaced as a whole, in one
transaction. `run_explain(ExplainConfig(...))` is the same as a function (the
demo's explain stage).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any


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
    sanity_threshold: float = 0.5
    road_percentiles: tuple[int, ...] = (20, 40, 60, 80)
    background_threshold: float = 0.5
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"                   # CUDA when present, else CPU
    quiet: bool = False


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.paths import DEFAULT_DB

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--run", default="latest", help="run id, unique prefix or 'latest' (default)")
    parser.add_argument("--methods", default="gradcam",
                        help="comma-separated: gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, "
                             "scorecam (slow: one forward pass per channel). Default gradcam")
    parser.add_argument("--target-layer", default=None,
                        help="dotted module name, e.g. layer4.1 or block2 (default: layer4[-1] for ResNets, "
                             "the last block for the light CNN)")
    parser.add_argument("--split", default="test", help="split whose predictions are explained (default test)")
    parser.add_argument("--limit", type=int, default=None, help="explain a seeded sample of N images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cam-size", type=int, default=32, help="side of the stored map (default 32 = 1 KB)")
    parser.add_argument("--faithfulness-samples", type=int, default=200,
                        help="images for ROAD / confidence change (0 = skip; default 200)")
    parser.add_argument("--sanity-samples", type=int, default=100,
                        help="images for the randomisation sanity check (0 = skip; default 100)")
    parser.add_argument("--sanity-mode", choices=("cascading", "head", "full"), default="cascading",
                        help="which layers to re-initialise: the target layer and after (cascading, default), "
                             "only after it (head), or all (full)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cuda or cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--db", default=str(DEFAULT_DB), help=f"results store (default {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from pipeline.explain.cams import validate_methods

    try:
        methods = validate_methods(args.methods.split(","))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    config = ExplainConfig(
        db=args.db, run=args.run, methods=methods, target_layer=args.target_layer, split=args.split,
        limit=args.limit, batch_size=args.batch_size, cam_size=args.cam_size,
        faithfulness_samples=args.faithfulness_samples, sanity_samples=args.sanity_samples,
        sanity_mode=args.sanity_mode, n_boot=args.n_boot, seed=args.seed, device=args.device, quiet=args.quiet)
    summary = run_explain(config)
    print(render_summary(summary))
    return 0


# --------------------------------------------------------------------------- the stage

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


def run_explain(config: ExplainConfig) -> dict[str, Any]:
    """Compute and store a run's explanations; returns a summary dict."""
    from pathlib import Path

    import cv2
    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from pipeline.store import db as store
    from pipeline.train.augment import preprocess_batch
    from pipeline.constants import ALIGNED_SIZE, FACE_REGIONS
    from pipeline.data.loaders import load_dataset
    from pipeline.errors import UserError
    from pipeline.explain.cams import (compute_cams, compute_heatmap_summary, encode_cam, resolve_target_layer,
                                      validate_methods)
    from pipeline.explain.faithfulness import (compute_confidence_change, compute_gt_localisation,
                                       compute_map_similarity, compute_road_scores, create_randomized_model,
                                       summarise, summarise_gt_localisation)
    from pipeline.data.images import load_images_array
    from pipeline.train.models import load_model_from_checkpoint
    from pipeline.explain.regions import (ENERGY_COLUMNS, compute_failure_tags, compute_mean_landmarks,
                                  compute_peak_regions, compute_region_energies, compute_region_map)

    methods = validate_methods(config.methods)
    db = Path(config.db)
    if not db.is_file():
        raise UserError(f"results store {db} does not exist; run `python -m pipeline demo` or pass --db PATH")
    with store.open_store(db, read_only=True) as con:
        run = store.get_run(con, config.run)
        preds = store.load_frame(con, "predictions", ["image_id", "true_label", "pred_label", "correct"],
                                 run_id=run["run_id"], split=config.split)
    run_id = run["run_id"]
    if preds.empty:
        raise UserError(f"run {run_id} has no predictions on the {config.split} split; pass --split val|test")
    ckpt = run.get("checkpoint_path")
    if not ckpt or not Path(ckpt).is_file():
        raise UserError(f"checkpoint of run {run_id} not found ({ckpt or 'none recorded'}); "
                        "restore the run folder or re-train the run")
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_model_from_checkpoint(ckpt, device)
    classes = list(meta["classes"])
    try:
        layer, layer_name = resolve_target_layer(model, config.target_layer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ds_kwargs = (run.get("config") or {}).get("dataset")
    if not ds_kwargs:
        raise UserError(f"run {run_id} records no dataset settings (config['dataset']); cannot find its images")
    dataset = load_dataset(**ds_kwargs)

    # The images to explain: those with a prediction, in prediction order; a seeded sample with --limit.
    by_id = {r.image_id: r for r in dataset.records}
    missing = [i for i in preds["image_id"] if i not in by_id]
    if missing:
        raise UserError(f"{len(missing)} predicted images of run {run_id} are not in the dataset at "
                        f"{ds_kwargs.get('root')} (e.g. {missing[0]}); was it regenerated or moved?")
    cls_index = {c: i for i, c in enumerate(classes)}
    preds = preds[preds["pred_label"].isin(cls_index)].reset_index(drop=True)
    rng = np.random.default_rng(config.seed)
    if config.limit is not None and config.limit < len(preds):
        preds = preds.iloc[np.sort(rng.choice(len(preds), config.limit, replace=False))].reset_index(drop=True)
    records = [by_id[i] for i in preds["image_id"]]
    n = len(records)
    pred_idx = preds["pred_label"].map(cls_index).to_numpy(np.int64)
    true_known = preds["true_label"].isin(cls_index).to_numpy()
    true_idx = np.where(true_known, preds["true_label"].map(cls_index).fillna(-1).to_numpy(np.int64), pred_idx)
    wrong = true_known & (true_idx != pred_idx)

    # Facial regions on the analysis grid: landmarks where the dataset gives them, else a template.
    grid = ALIGNED_SIZE
    sizes = _image_sizes(records, dataset)
    have = [r.landmarks is not None for r in records]
    template_lm = compute_mean_landmarks([r.landmarks for r in dataset.records]) if dataset.image_size else None
    template_size = (dataset.image_size or ALIGNED_SIZE,) * 2
    template_map = compute_region_map(template_lm, template_size, grid)

    def region_maps(idx: np.ndarray) -> np.ndarray:
        return np.stack([compute_region_map(records[i].landmarks, sizes[i], grid) if have[i] else template_map
                         for i in idx])

    gt_masks = None
    if dataset.is_synthetic:
        from pipeline.synth.faces import load_au_masks

        gt_masks = load_au_masks(dataset.root)

    def gt_stack(idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), grid, grid), dtype=bool)
        for k, i in enumerate(idx):
            m = gt_masks.get(records[i].image_id)
            if m is not None:
                out[k] = m if m.shape == (grid, grid) else cv2.resize(
                    m.astype(np.uint8), (grid, grid), interpolation=cv2.INTER_NEAREST).astype(bool)
        return out

    heat_rows: dict[str, list[dict]] = {m: [] for m in methods}
    bg_share = {m: np.full(n, np.nan) for m in methods}
    gt_per_image: dict[str, list[pd.DataFrame]] = {m: [] for m in methods}
    bar = None if config.quiet else tqdm(total=n, desc=f"CAMs ({', '.join(methods)})", unit="img")
    for start in range(0, n, config.chunk):
        idx = np.arange(start, min(start + config.chunk, n))
        images = load_images_array([records[i] for i in idx], int(meta["image_size"]))
        maps = region_maps(idx)
        masks = gt_stack(idx) if gt_masks is not None else None
        chunk_cams = {m: np.empty((2, len(idx), grid, grid), np.float32) for m in methods}
        for b in range(0, len(idx), config.batch_size):
            sl = slice(b, b + config.batch_size)
            x = preprocess_batch(images[sl], meta, device)
            cams, _ = compute_cams(model, x, [pred_idx[idx[sl]], true_idx[idx[sl]]], methods, layer, (grid, grid))
            for m in methods:
                chunk_cams[m][:, sl] = cams[m]
            if bar is not None:
                bar.update(len(x))
        for m in methods:
            for t_i, target in enumerate(("pred", "true")):
                rows_here = np.ones(len(idx), bool) if target == "pred" else wrong[idx]
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
                    bg_share[m][idx] = energies[:, FACE_REGIONS.index("background")]
                labels = preds["pred_label"] if target == "pred" else preds["true_label"]
                for k, j in enumerate(sel):
                    i = idx[j]
                    row = {"run_id": run_id, "image_id": records[i].image_id, "method": m, "target": target,
                           "target_label": labels.iloc[i], "target_layer": layer_name,
                           "cam_size": config.cam_size, "cam": encode_cam(cams_t[k], config.cam_size),
                           "peak_region": peaks[k], "gt_energy": None, "gt_hit": None}
                    for c, v in zip(ENERGY_COLUMNS, energies[k]):
                        row[c] = float(v) if np.isfinite(v) else None
                    if gt is not None:
                        e, h = gt["gt_energy"].iloc[k], gt["gt_hit"].iloc[k]
                        row["gt_energy"] = float(e) if np.isfinite(e) else None
                        row["gt_hit"] = bool(h) if np.isfinite(h) else None
                    heat_rows[m].append(row)
            if masks is not None:
                # The localisation aggregates use the CAM of the true class (the expression drawn).
                true_cams = np.where(wrong[idx][:, None, None], chunk_cams[m][1], chunk_cams[m][0])
                g = compute_gt_localisation(true_cams, masks, seed=config.seed + start)
                g["emotion"] = preds["true_label"].iloc[idx].to_numpy()
                gt_per_image[m].append(g)
    if bar is not None:
        bar.close()

    tags = compute_failure_tags(list(preds["image_id"]), list(preds["true_label"]), list(preds["pred_label"]),
                                [r.occluder for r in records], bg_share, config.background_threshold)

    # Explanation metrics on a seeded sample.
    metric_rows: dict[str, list[dict]] = {m: [] for m in methods}
    for m in methods:
        if gt_per_image[m]:
            g = pd.concat(gt_per_image[m], ignore_index=True)
            metric_rows[m] += summarise_gt_localisation(g, g["emotion"].tolist(), m, n_boot=config.n_boot,
                                                        seed=config.seed)
    n_sample = min(n, max(config.faithfulness_samples, config.sanity_samples))
    if n_sample > 0:
        sample = np.sort(rng.choice(n, n_sample, replace=False))
        images = load_images_array([records[i] for i in sample], int(meta["image_size"]))
        x_all = preprocess_batch(images, meta, device)
        emotions = preds["true_label"].iloc[sample].tolist()
        random_model = None
        if config.sanity_samples > 0:
            random_model = create_randomized_model(model, layer, x_all[:1], config.sanity_mode, config.seed)
            random_layer, _ = resolve_target_layer(random_model, layer_name)
        torch.manual_seed(config.seed)  # ROAD's imputation noise
        fbar = None if config.quiet else tqdm(total=len(methods) * n_sample, desc="faithfulness + sanity",
                                               unit="img")
        for m in methods:
            per: dict[str, list[np.ndarray]] = {}
            for b in range(0, n_sample, config.batch_size):
                sl = slice(b, b + config.batch_size)
                x = x_all[sl]
                tgt = pred_idx[sample[sl]]
                cams, _ = compute_cams(model, x, [tgt], [m], layer)
                cam = cams[m][0]
                pos = np.arange(b, min(b + config.batch_size, n_sample))
                f_sel = pos < config.faithfulness_samples
                if f_sel.any():
                    xs, cs, ts = x[f_sel], cam[f_sel], tgt[f_sel]
                    for k, v in {**compute_road_scores(model, xs, cs, ts, config.road_percentiles),
                                 **compute_confidence_change(model, xs, cs, ts)}.items():
                        per.setdefault(k, []).append(v)
                    per.setdefault("_f_emotions", []).append(np.array(emotions[b:b + len(pos)], object)[f_sel])
                s_sel = pos < config.sanity_samples
                if random_model is not None and s_sel.any():
                    rcams, _ = compute_cams(random_model, x[s_sel], [tgt[s_sel]], [m], random_layer)
                    sim = compute_map_similarity(cam[s_sel], rcams[m][0])
                    per.setdefault("sanity_spearman", []).append(sim["spearman"])
                    per.setdefault("sanity_ssim", []).append(sim["ssim"])
                    per.setdefault("_s_emotions", []).append(np.array(emotions[b:b + len(pos)], object)[s_sel])
                if fbar is not None:
                    fbar.update(len(pos))
            for k, parts in per.items():
                if k.startswith("_"):
                    continue
                key = "_s_emotions" if k.startswith("sanity") else "_f_emotions"
                ems = np.concatenate(per[key]).tolist()
                rows = summarise(np.concatenate(parts), ems, m, k, n_boot=config.n_boot, seed=config.seed)
                if k == "sanity_spearman":
                    for r in rows:
                        r["passed"] = bool(r["value"] < config.sanity_threshold)
                metric_rows[m] += rows
        if fbar is not None:
            fbar.close()

    # Write everything in one transaction.
    heat_frames = {m: pd.DataFrame(rows) for m, rows in heat_rows.items()}
    summaries = {m: compute_heatmap_summary(heat_frames[m], preds, config.split) for m in methods}
    with store.open_store(db) as con, store.transaction(con):
        for m in methods:
            store.replace_rows(con, "heatmaps", heat_frames[m], run_id=run_id, method=m)
            store.replace_rows(con, "heatmap_summary", summaries[m], run_id=run_id, method=m)
            metrics_df = pd.DataFrame(metric_rows[m], columns=["method", "metric", "emotion", "value", "ci_low",
                                                               "ci_high", "n", "passed"])
            store.replace_rows(con, "explanation_metrics", metrics_df, run_id=run_id, method=m)
            store.replace_rows(con, "failure_tags", tags[tags["method"] == m], run_id=run_id, method=m)
        store.replace_rows(con, "failure_tags", tags[tags["method"] == ""], run_id=run_id, method="")

    return {
        "run_id": run_id, "methods": list(methods), "target_layer": layer_name, "n_images": n,
        "n_misclassified": int(wrong.sum()), "n_heatmaps": int(sum(len(f) for f in heat_frames.values())),
        "n_tags": int(len(tags)), "metrics": pd.DataFrame([r for rows in metric_rows.values() for r in rows]),
        "heatmaps": pd.concat(list(heat_frames.values()), ignore_index=True).drop(columns=["cam"]),
        "is_synthetic": bool(dataset.is_synthetic),
    }


def render_summary(summary: dict[str, Any]) -> str:
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
