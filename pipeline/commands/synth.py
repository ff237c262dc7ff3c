"""`python -m pipeline synth`: generate the built-in synthetic face dataset in RAF-DB basic's layout."""
from __future__ import annotations

import argparse
from pathlib import Path

BIAS_HELP = """\
inject a bias, recorded in the manifest: SUBGROUP:EFFECT.
SUBGROUP is attr=code terms joined by '&' (attr: gender 0 male/1 female/2 unsure,
race 0 Caucasian/1 African-American/2 Asian, age 0..4 = 0-3/4-19/20-39/40-69/70+).
EFFECT is one of:
  faint[=F]            the subgroup's expressions drawn at F times their intensity (default 0.5), both splits
  fewer=E1,E2[@F]      keep only F (default 0.1) of the subgroup's TRAINING images of those emotions
  cue=E[@P]            a background cue on the subgroup's TRAINING images of emotion E (probability P,
                       default 0.9); in test it appears on half the subgroup regardless of emotion
Examples: "race=1:faint", "gender=1&race=2:faint=0.5", "race=1:fewer=Anger,Disgust@0.1",
"race=2:cue=Happiness". Without --bias every group is treated alike."""


def _shares(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


SHARED_OPTIONS = ('seed', 'quiet')  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {'seed': 'random seed (default {default}); same arguments + seed = identical files', 'quiet': 'no progress bar'}


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.paths import DEFAULT_SYNTHETIC_DIR
    parser.formatter_class = argparse.RawTextHelpFormatter
    parser.add_argument("--out", type=Path, default=DEFAULT_SYNTHETIC_DIR,
                        help=f"output folder (default {DEFAULT_SYNTHETIC_DIR}); must be empty or absent unless --force")
    parser.add_argument("--n", type=int, default=7000, help="total number of images, train + test (default 7000)")
    parser.add_argument("--bias", default=None, metavar="SUBGROUP:EFFECT", help=BIAS_HELP)
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="also write a contact sheet by class (rows = emotions) to this PNG")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of images in the test split (default 0.2)")
    parser.add_argument("--balanced-demographics", action="store_true",
                        help="equal race shares and equal male/female shares (5%% unsure), for audits")
    parser.add_argument("--race-shares", type=_shares, default=None, metavar="C,A,S",
                        help="shares of race codes 0,1,2 (default 0.75,0.10,0.15)")
    parser.add_argument("--gender-shares", type=_shares, default=None, metavar="M,F,U",
                        help="shares of gender codes 0,1,2 (default 0.475,0.475,0.05)")
    parser.add_argument("--age-shares", type=_shares, default=None, metavar="A0,..,A4",
                        help="shares of age codes 0..4 (default 0.04,0.17,0.55,0.19,0.05)")
    parser.add_argument("--occluder-rate", type=float, default=0.12, help="share of faces with an occluder (default 0.12)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")


def config_from_args(args: argparse.Namespace):
    from pipeline.synth.faces import BALANCED, SynthConfig
    fields: dict = dict(n=args.n, seed=args.seed, bias=args.bias, test_fraction=args.test_fraction,
                        occluder_rate=args.occluder_rate, workers=args.workers)
    if args.balanced_demographics:
        fields.update(BALANCED)
    for name in ("race_shares", "gender_shares", "age_shares"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    config = SynthConfig(**fields)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    import time

    from pipeline.synth.faces import generate_dataset, write_preview
    config = config_from_args(args)
    start = time.perf_counter()
    manifest = generate_dataset(args.out, config, progress=not args.quiet, force=args.force)
    elapsed = time.perf_counter() - start
    counts = manifest["counts"]
    print(f"wrote {counts['total']} images to {args.out} in {elapsed:.1f} s "
          f"({sum(counts['train'].values())} train, {sum(counts['test'].values())} test)")
    print("train classes: " + ", ".join(f"{k} {v}" for k, v in counts["train"].items()))
    if manifest["bias"]:
        print(f"bias: {manifest['bias']['text']} ({counts['biased_images']} images affected)")
    if args.preview:
        print(f"preview: {write_preview(args.out, args.preview)}")
    return 0
