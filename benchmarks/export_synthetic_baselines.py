"""Write the procedural baselines (Perlin anomalies, copy-paste of real training defects) as generated folders,
so `counterfactory evaluate` scores them exactly like any generator's output.

    python benchmarks/export_synthetic_baselines.py --data ../shared/data/magnetic_tile --out runs/baselines \
        [--split split.json] [--n-per-type 100] [--seed 0]

writes <out>/perlin/ and <out>/copypaste/ (anomalib Folder layout + manifest.jsonl with source_image).
"""

from __future__ import annotations

import argparse
import time

from counterfactory.evaluation.anomalies import write_baseline_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--n-per-type", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for kind in ("perlin", "copypaste"):
        t0 = time.perf_counter()
        n = write_baseline_folder(a.data, f"{a.out}/{kind}", kind, split=a.split, n_per_type=a.n_per_type, seed=a.seed)
        print(f"{kind}: {n} pairs in {time.perf_counter() - t0:.1f} s -> {a.out}/{kind}")


if __name__ == "__main__":
    main()
