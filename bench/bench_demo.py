"""Benchmark: run `python -m pipeline demo` into a temporary folder; print time and accuracy.

Targets (issue 15): the whole demo in <= 120 s on a 2-core CPU (stretch 90 s) with
test accuracy >= 0.88 and macro-F1 >= 0.77 on the default synthetic test set (issue 3's
were 300 s and 0.75). Not a test: it prints.

  python bench/bench_demo.py [--keep DIR] [--n 7000] [--epochs N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    parser.add_argument("--n", type=int, default=7000)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()

    from pipeline.store import db as store
    from pipeline.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        db, data = work / "results.duckdb", work / "synthetic"
        argv = ["demo", "--db", str(db), "--data", str(data), "--n", str(args.n), "--quiet"]
        if args.epochs:
            argv += ["--epochs", str(args.epochs)]
        t0 = time.perf_counter()
        rc = cli_main(argv)
        total = time.perf_counter() - t0
        with store.open_store(db, read_only=True) as con:
            run = store.get_run(con, "latest")
            epochs = store.load_frame(con, "epochs", run_id=run["run_id"])
        print(f"\nbench_demo: exit {rc}; total {total:.1f} s (target <= 120, stretch 90); "
              f"train {run['train_seconds']:.1f} s over {len(epochs)} epochs; "
              f"test accuracy {run['test_accuracy']:.4f} (target >= 0.88), macro-F1 {run['test_macro_f1']:.4f} "
              f"(target >= 0.77), "
              f"n_test {run['n_test']}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
