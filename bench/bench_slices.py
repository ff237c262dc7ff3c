"""Benchmark: does the slice search find a cohort injected on purpose, and nothing without one?
Prints figures; not a test.

Scenarios (bench_audit.py trains and audits them; the audit stage runs the slice search):
  faint-female-40-69  female × 40-69 drawn faint (an intersection of two attributes): the
                      injected cohort should be among the top three slices, significant;
  none                no bias, on several seeds: no slice should survive the correction.
Balanced demographics, 14,000 images, 60% test (about 8,400 test images, half of them held
out for confirmation). Several minutes per scenario and seed on 2 cores.

  python bench/bench_slices.py                            # faint-female-40-69 seed 0, none seeds 0 1 2
  python bench/bench_slices.py --scenario none --seed 3
  python bench/bench_slices.py --epochs 6 --keep /tmp/bench_slices
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_audit import SCENARIOS, run_scenario  # noqa: E402  (the bench folder is not a package)

INJECTED = {"faint-female-40-69": {("gender", "female"), ("age", "40-69")}}


def render(result: dict) -> str:
    from pipeline.export.tables import format_estimate, format_p_value
    from pipeline.fairness.slices import load_slice_conditions

    found = result["summary"]["slices"]["annotations"]
    o = result["outcome"]
    lines = [f"== scenario {result['name']} (bias {result['bias']}, seed {result['seed']}), run {result['run_id']}",
             f"   test accuracy {o.get('test_accuracy', float('nan')):.4f}, n_test {o.get('n_test')}; "
             + ", ".join(f"{k} {v:.0f}s" for k, v in result["times"].items()),
             f"   {len(found)} candidates confirmed on held-out images, "
             f"{int(found['significant'].sum())} significant after Holm"]
    injected = INJECTED.get(result["name"])
    hit_rank = None
    for r in found.head(8).itertuples(index=False):
        conditions = set(load_slice_conditions(r.conditions))
        is_cohort = injected is not None and conditions == injected
        hit_rank = r.rank if is_cohort and hit_rank is None else hit_rank
        lines.append(f"   #{r.rank} {r.definition}{'  <- injected cohort' if is_cohort else ''}: error "
                     f"{format_estimate(r.error_rate, r.ci_low, r.ci_high, r.n)} against {r.rest_error_rate:.3f}, "
                     f"p_adj {format_p_value(r.p_adjusted)}{' *' if r.significant else ''}")
    if injected is not None:
        if hit_rank is None:
            exact = found[[set(load_slice_conditions(c)) == injected for c in found["conditions"]]]
            hit_rank = int(exact["rank"].iloc[0]) if len(exact) else None
        significant = hit_rank is not None and bool(found.loc[found["rank"] == hit_rank, "significant"].iloc[0])
        lines.append(f"   injected cohort rank: {hit_rank if hit_rank else 'not among the candidates'}; "
                     f"in the top three: {'YES' if hit_rank and hit_rank <= 3 else 'NO'}; significant: "
                     f"{'YES' if significant else 'NO'}")
    else:
        lines.append(f"   slices surviving the correction: {int(found['significant'].sum())} "
                     f"({'PASS' if not found['significant'].any() else 'FAIL'}: expected none)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=("faint-female-40-69", "none"), default=None)
    parser.add_argument("--seed", action="append", type=int, default=None,
                        help="seeds (default: 0 for the bias, 0 1 2 for none); repeat")
    parser.add_argument("--n", type=int, default=14000)
    parser.add_argument("--test-fraction", type=float, default=0.6)
    parser.add_argument("--epochs", type=int, default=None, help="override the demo preset's epochs")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()

    plan = [(s, seed) for s in (args.scenario or ["faint-female-40-69", "none"])
            for seed in (args.seed or ([0] if s != "none" else [0, 1, 2]))]
    assert all(s in SCENARIOS for s, _ in plan)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, seed in plan:
            result = run_scenario(name, work, args.n, args.test_fraction, seed, args.epochs,
                                  args.n_boot, args.n_boot)
            print(render(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
