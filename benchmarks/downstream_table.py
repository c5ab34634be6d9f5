"""Markdown tables of a finished ``benchmark downstream`` run (its ``downstream.json``): pixel AP per setting and
type (mean ± sample std over seeds), and the paired differences to real-only and copy-paste with 95 % intervals.

    python benchmarks/downstream_table.py runs/mt/down/downstream.json [--metric pixel_AP]

``--arm LABEL=FILE`` (repeatable) adds the "ours" runs of another ``downstream.json`` as a setting of its own, e.g. a
run on another generated folder made with the same seeds and reusing the same real-only and copy-paste runs (their
metrics must be identical seed by seed, else the arms are not paired and the script refuses). Each arm is then also
compared with the main file's "ours" (``--ours-label`` names it in the tables):

    python benchmarks/downstream_table.py runs/mt/down/downstream.json --ours-label "ours, strength 0.5" \\
        --arm "ours, strength 0=runs/mt/down_s0/downstream.json"
"""

from __future__ import annotations

import argparse
import json
import sys

from counterfactory.evaluation.stats import paired_difference, summarize

REFERENCES = ("real", "copypaste")


def _by_seed(runs: list[dict], setting: str) -> dict[int, dict]:
    return {r["seed"]: r["metrics"] for r in runs if r["setting"] == setting}


def load_settings(main: dict, arms: list[tuple[str, dict]], ours_label: str) -> dict[str, dict[int, dict]]:
    """setting label → seed → metrics, the main file's settings first, then each arm's "ours" runs."""
    settings = {}
    for r in main["runs"]:
        label = ours_label if r["setting"] == "ours" else r["setting"]
        settings.setdefault(label, {})[r["seed"]] = r["metrics"]
    for label, res in arms:
        for ref in REFERENCES:
            mine, theirs = _by_seed(main["runs"], ref), _by_seed(res["runs"], ref)
            common = sorted(set(mine) & set(theirs))
            if ref in {r["setting"] for r in res["runs"]} and any(mine[s] != theirs[s] for s in common):
                sys.exit(f"--arm {label!r}: its {ref} runs differ from the main file's seed by seed (the settings "
                         "are not paired; run the arm with the same seeds and reuse the same runs)")
        ours = _by_seed(res["runs"], "ours")
        if not ours:
            sys.exit(f"--arm {label!r}: its downstream.json has no 'ours' runs")
        if label in settings:
            sys.exit(f"--arm {label!r}: a setting of that name exists already")
        settings[label] = ours
    return settings


def _cell(d: dict) -> str:
    mark = ""
    if d["n"] > 1 and not (d["ci_low"] <= 0 <= d["ci_high"]):
        mark = " **gain**" if d["mean"] > 0 else " **loss**"
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{mark}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result")
    ap.add_argument("--metric", default="pixel_AP")
    ap.add_argument("--arm", action="append", default=[], metavar="LABEL=FILE",
                    help="the 'ours' runs of another downstream.json as a setting LABEL (repeatable)")
    ap.add_argument("--ours-label", default="ours", help="name of the main file's 'ours' setting in the tables")
    args = ap.parse_args()
    res = json.load(open(args.result))
    arms = []
    for spec in args.arm:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            sys.exit(f"--arm {spec!r}: LABEL=FILE")
        arms.append((label, json.load(open(path))))
    types = res["data"]["types"]
    groups = ["all", *types]
    m = args.metric
    settings = load_settings(res, arms, args.ours_label)

    print(f"| setting | {m} all types | " + " | ".join(types) + " | pixel AUROC | image AUROC |")
    print("|---|---|" + "---|" * len(types) + "---|---|")
    for label, runs in settings.items():
        cells = []
        for g, metric in [*((g, m) for g in groups), ("all", "pixel_AUROC"), ("all", "image_AUROC")]:
            s = summarize([runs[seed].get(g, {}).get(metric) for seed in sorted(runs)])
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}")
        print(f"| {label} ({len(runs)} seeds) | " + " | ".join(cells) + " |")

    print()
    print(f"| paired difference in {m}, mean [95 % interval] | " + " | ".join(["all types", *types]) + " |")
    print("|---|" + "---|" * len(groups))
    refs = [r for r in REFERENCES if r in settings]
    if arms and args.ours_label in settings:
        refs.append(args.ours_label)
    for ref in refs:
        for label, runs in settings.items():
            if label == ref or label in REFERENCES[: REFERENCES.index(ref) + 1 if ref in REFERENCES else 2]:
                continue  # no self-comparison; copy-paste is compared to real-only once
            if ref == args.ours_label and label not in dict(arms):
                continue  # the main file's other settings are compared with ours the other way round
            common = sorted(set(runs) & set(settings[ref]))
            cells = []
            for g in groups:
                d = paired_difference([runs[s].get(g, {}).get(m) for s in common],
                                      [settings[ref][s].get(g, {}).get(m) for s in common])
                cells.append(_cell(d))
            print(f"| {label} − {ref} (n={len(common)}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
