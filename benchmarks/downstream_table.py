"""Markdown tables of a finished ``benchmark downstream`` run (its ``downstream.json``): pixel AP per setting and
type (mean ± sample std over seeds), and the paired differences to real-only and copy-paste with 95 % intervals.

    python benchmarks/downstream_table.py runs/mt/down/downstream.json [--metric pixel_AP]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result")
    ap.add_argument("--metric", default="pixel_AP")
    args = ap.parse_args()
    res = json.load(open(args.result))
    types = res["data"]["types"]
    groups = ["all", *types]
    m = args.metric
    print(f"| setting | {m} all types | " + " | ".join(types) + " | pixel AUROC | image AUROC |")
    print("|---|---|" + "---|" * len(types) + "---|---|")
    for setting, s in res["summary"].items():
        cells = [f"{s[g][m]['mean']:.3f} ± {s[g][m]['std']:.3f}" for g in groups]
        cells += [f"{s['all'][k]['mean']:.3f} ± {s['all'][k]['std']:.3f}" for k in ("pixel_AUROC", "image_AUROC")]
        n = s["all"][m]["n"]
        print(f"| {setting} ({n} seeds) | " + " | ".join(cells) + " |")
    print()
    print(f"| paired difference in {m} | " + " | ".join(["all types", *types]) + " |")
    print("|---|" + "---|" * len(groups))
    rows = {}
    for r in res["paired"]:
        if r["metric"] == m:
            rows.setdefault((r["setting"], r["reference"]), {})[r["group"]] = r
    for (setting, ref), by_group in rows.items():
        cells = []
        for g in groups:
            r = by_group[g]
            mark = {"gain": " **gain**", "loss": " **loss**"}.get(r["verdict"], "")
            cells.append(f"{r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{mark}")
        print(f"| {setting} − {ref} (n={by_group['all']['n']}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
