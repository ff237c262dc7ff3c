"""`python -m pipeline explain`: heatmaps, region energies, failure tags and explanation checks for a run.

Examples:
  python -m pipeline explain --run latest
  python -m pipeline explain --run 20261122 --methods gradcam,gradcam++,layercam --limit 500
  python -m pipeline explain --run latest --methods gradcam,occlusion,rise --limit 200
  python -m pipeline explain --run latest --target-layer block2 --faithfulness-samples 100
  torchrun --nproc_per_node=2 -m pipeline -- explain --run latest
  python -m pipeline explain --run latest --shard 1/4   # one job of four; then --merge-shards

What is computed and stored is described in pipeline/explain/stage.py.
"""
from __future__ import annotations

import argparse
from dataclasses import replace


SHARED_OPTIONS = ('db', 'run', 'seed', 'device', 'quiet')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.options import add_shard_options
    from pipeline.explain.stage import ExplainConfig as C

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--methods", default=None,
                        help="comma-separated: gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, "
                             "scorecam (slow: one forward pass per channel), and the gradient-free occlusion, "
                             "rise (one forward pass per window or mask; any model, ONNX included). Default: "
                             "gradcam, or occlusion,rise for ONNX models")
    parser.add_argument("--target-layer", default=C.target_layer,
                        help="dotted module name, e.g. layer4.1 or block2 (default: layer4[-1] for ResNets, "
                             "the last block for the light CNN)")
    parser.add_argument("--split", default=C.split, help=f"split whose predictions are explained (default {C.split})")
    parser.add_argument("--limit", type=int, default=C.limit, help="explain a seeded sample of N images")
    parser.add_argument("--batch-size", type=int, default=C.batch_size, help=f"default {C.batch_size}")
    parser.add_argument("--cam-size", type=int, default=C.cam_size,
                        help=f"side of the stored map (default {C.cam_size}: 1 KB at 32)")
    parser.add_argument("--faithfulness-samples", type=int, default=C.faithfulness_samples,
                        help=f"images for ROAD / confidence change (0 = skip; default {C.faithfulness_samples})")
    parser.add_argument("--sanity-samples", type=int, default=C.sanity_samples,
                        help=f"images for the randomisation sanity check (0 = skip; default {C.sanity_samples})")
    parser.add_argument("--sanity-mode", choices=("cascading", "head", "full"), default=C.sanity_mode,
                        help="which layers to re-initialise: the target layer and after (cascading, default), "
                             "only after it (head), or all (full)")
    parser.add_argument("--rise-masks", type=int, default=C.rise_masks,
                        help=f"RISE's random masks per image (default {C.rise_masks})")
    parser.add_argument("--perturbation-batch-size", type=int, default=C.perturbation_batch_size,
                        help=f"perturbed images per forward pass for occlusion and RISE "
                             f"(default {C.perturbation_batch_size})")
    parser.add_argument("--n-boot", type=int, default=C.n_boot, help=f"bootstrap resamples for CIs (default {C.n_boot})")
    add_shard_options(parser, "explain")


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.options import parse_shard_options
    from pipeline.errors import UserError
    from pipeline.explain.stage import ExplainConfig, format_summary, run_explain, validate_explain_methods
    from pipeline.train.distributed import launched_group

    try:
        methods = validate_explain_methods(args.methods.split(",")) if args.methods else None
    except ValueError as exc:
        raise UserError(f"--methods: {exc}") from None
    config = ExplainConfig(
        db=args.db, run=args.run, methods=methods, target_layer=args.target_layer, split=args.split,
        limit=args.limit, batch_size=args.batch_size, cam_size=args.cam_size,
        faithfulness_samples=args.faithfulness_samples, sanity_samples=args.sanity_samples,
        sanity_mode=args.sanity_mode, rise_masks=args.rise_masks,
        perturbation_batch_size=args.perturbation_batch_size, n_boot=args.n_boot, seed=args.seed,
        device=args.device, quiet=args.quiet)
    shard, merge = parse_shard_options(args)
    with launched_group(args.device) as (world, device):
        if world.size > 1:  # one progress bar per process would interleave
            config = replace(config, device=device, quiet=True)
        summary = run_explain(config, shard=shard, merge_shards=merge)
    if "shard" in summary:
        if shard is not None:
            print(f"shard {summary['shard']}: {summary['n_images']} images explained, written to {summary['path']}; "
                  f"once every shard is, store them with the same command and --merge-shards instead of --shard")
        return 0
    print(format_summary(summary))
    return 0
