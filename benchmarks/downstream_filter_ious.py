"""IoU distribution of a ``generate --filter-iou`` run (its ``filter.json``), to choose the threshold: per type the
quantiles of the judge's IoU with each pair's mask, and how many pairs each candidate threshold keeps.

    python benchmarks/downstream_filter_ious.py runs/mt/filter_probe/gen/filter.json [--thresholds 0.05,0.1,0.2]

Every pair's IoU is recorded whatever the threshold, so one filtering run with ``--filter-iou 1`` (which keeps
nothing) on a copy of a folder gives the whole distribution.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("filter_json")
    ap.add_argument("--thresholds", default="0.05,0.1,0.15,0.2,0.3,0.5")
    args = ap.parse_args()
    pairs = json.load(open(args.filter_json))["pairs"]
    by: dict[str, list[float]] = {}
    for key, rec in pairs.items():
        by.setdefault(key.split("/")[0], []).append(rec["iou"])
    groups = {**{t: np.array(v) for t, v in sorted(by.items())}, "all": np.array([x for v in by.values() for x in v])}
    thresholds = [float(x) for x in args.thresholds.split(",")]
    print("| type | pairs | IoU quantiles " + " / ".join(f"{q:g}" for q in QUANTILES) + " | mean |")
    print("|---|---|---|---|")
    for name, v in groups.items():
        qs = " / ".join(f"{x:.3f}" for x in np.quantile(v, QUANTILES))
        print(f"| {name} | {len(v)} | {qs} | {v.mean():.3f} |")
    print()
    print("| threshold | " + " | ".join(f"kept {name}" for name in groups) + " | pass rate |")
    print("|---|" + "---|" * (len(groups) + 1))
    for t in thresholds:
        kept = {name: int((v >= t).sum()) for name, v in groups.items()}
        cells = " | ".join(f"{kept[name]}/{len(v)}" for name, v in groups.items())
        print(f"| {t:g} | {cells} | {kept['all'] / len(groups['all']):.0%} |")


if __name__ == "__main__":
    main()
