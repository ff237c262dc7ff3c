"""`python -m pipeline export-model`: a trained run's model as TorchScript or ONNX, with its model card.

The card written beside the model (`<run>-<format>.toml`) lets `evaluate
--model CARD` (here or on another machine) audit exactly this model; the
export is checked against the checkpoint before the command returns.

Examples:
  python -m pipeline export-model --run latest --format onnx --out exported/
  python -m pipeline export-model --run 20261122 --format torchscript --out exported/
"""
from __future__ import annotations

import argparse

SHARED_OPTIONS = ("db", "run")  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {"run": "trained run: id, unique prefix or 'latest' (default {default})"}


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.external.export import EXPORT_FORMATS

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--format", choices=tuple(EXPORT_FORMATS), required=True)
    parser.add_argument("--out", required=True, help="folder for the model file and its card")


def run(args: argparse.Namespace) -> int:
    from pipeline.external.export import export_run_model

    out = export_run_model(args.db, args.run, args.format, args.out)
    print(f"exported run {out['run_id']} as {out['format']}: {out['file']} (max |Δ logit| against the "
          f"checkpoint {out['max_abs_diff']:.1e})")
    print(f"model card: {out['card']}  (audit it with: python -m pipeline evaluate --model {out['card']} "
          "--dataset D --root DIR)")
    return 0
