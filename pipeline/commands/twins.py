"""`python -m pipeline twins`: a synthetic run's predictions on counterfactual twins of its test faces.

Every test face is drawn again with each skin group's tone (`skin`), and with and without
the background cue (`cue`: the cue bias's subgroup, or every face when the set has no cue
bias); the run's predictions on every variant are stored in `twin_predictions` and shown
on the dashboard's Counterfactual twins page.

Examples:
  python -m pipeline twins --run latest
  python -m pipeline twins --run 20261202-1010 --kinds skin --n 500
"""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.fairness.twins import TwinsConfig
    from pipeline.paths import DEFAULT_DB

    defaults = TwinsConfig()
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--run", default="latest", help="run id, unique prefix or latest (default)")
    parser.add_argument("--kinds", default=",".join(defaults.kinds), help="skin, cue or both (default skin,cue)")
    parser.add_argument("--n", type=int, default=defaults.n_images, metavar="FACES",
                        help="test faces per kind, a seeded random subset (default: all)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--db", default=str(DEFAULT_DB), help=f"results store (default {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from pipeline.fairness.twins import TwinsConfig, create_stored_twins
    from pipeline.synth.twins import compute_twin_recall

    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    config = TwinsConfig(kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()), n_images=args.n,
                         seed=args.seed, device=args.device)
    out = create_stored_twins(args.db, args.run, config)
    for kind, frame in out["frames"].items():
        print(f"{kind} twins of run {out['run_id']}: recall per emotion by variant")
        print(compute_twin_recall(frame).round(3).to_string())
    print(f"stored in {args.db} (table twin_predictions)")
    return 0
