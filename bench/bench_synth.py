"""Benchmark: generation rate of the default synthetic set (prints images/s and total time).

Usage: python bench/bench_synth.py [--n 7000] [--workers 2]
Writes into a temporary folder and deletes it afterwards. Not a test: it only prints figures.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.synth.faces import SynthConfig, generate_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=SynthConfig.n)
    parser.add_argument("--workers", type=int, default=SynthConfig.workers)
    args = parser.parse_args()
    config = SynthConfig(n=args.n, workers=args.workers)
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        start = time.perf_counter()
        generate_dataset(tmp / "ds", config, progress=False)
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"synthetic faces: {config.n} images, {config.workers} workers: "
          f"{elapsed:.1f} s total, {config.n / elapsed:.1f} images/s")


if __name__ == "__main__":
    main()
