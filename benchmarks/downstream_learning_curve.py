"""Learning curve of the downstream segmenter: real-only pixel AP vs optimisation steps, several seeds.

Evaluates every ``--every`` steps up to ``--max-steps`` (one run per seed, extended from its checkpoint, so the
value at step k is exactly that of a k-step run), prints the curve (mean ± sample std over seeds per step), the
budget chosen from it (the smallest step within one standard error of the best mean) and the cost per run at
that budget; writes ``curve.json`` and ``curve.png`` into ``--out``. Resumes from ``--out/curve-seed<k>.jsonl``;
seeds may run as parallel processes into one ``--out`` (then run once more with all seeds to print the table).

    python benchmarks/downstream_learning_curve.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \
        --out runs/mt/curve --seeds 0,1,2 --every 100 --max-steps 1500 --max-minutes 60
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from counterfactory.evaluation.downstream import DownstreamConfig, choose_budget, learning_curve
from counterfactory.evaluation.stats import summarize
from counterfactory.io.manifest import atomic_write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=1500)
    p.add_argument("--max-minutes", type=float, default=None, help="stop starting new evaluations after this wall time")
    p.add_argument("--eval-good", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--per-type", action="store_true", help="also evaluate each defect type (about 3x the metric cost)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = DownstreamConfig(data=a.data, out=a.out, split=a.split, seeds=tuple(int(s) for s in a.seeds.split(",")),
                           settings=("real",), eval_good=a.eval_good)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = learning_curve(cfg, every=a.every, max_steps=a.max_steps, max_minutes=a.max_minutes,
                          per_type=a.per_type, log=log)
    # only steps every seed reached
    steps = [st for st in sorted({r["step"] for r in rows}) if sum(r["step"] == st for r in rows) == len(cfg.seeds)]
    rows = [r for r in rows if r["step"] in steps]
    if not rows:
        print("no complete step yet")
        return 1
    choice = choose_budget(rows)
    print(f"real-only learning curve, {len(cfg.seeds)} seeds {list(cfg.seeds)} (mean ± sample std over seeds)")
    print(f"{'step':>6} {'pixel AP':>17} {'pixel F1max':>17} {'pixel AUROC':>17} {'image AUROC':>17}  per-type pixel AP (Blowhole/Break/Crack...)")
    types = [k for k in rows[0]["metrics"] if k != "all"]
    for st in steps:
        rs = [r for r in rows if r["step"] == st]
        cells = []
        for m in ("pixel_AP", "pixel_F1max", "pixel_AUROC", "image_AUROC"):
            s = summarize([r["metrics"]["all"][m] for r in rs])
            cells.append(f"{s['mean']:.4f} ± {s['std']:.4f}")
        per_type = " / ".join(f"{summarize([r['metrics'][t]['pixel_AP'] for r in rs])['mean']:.3f}" for t in types) or "-"
        print(f"{st:>6} " + " ".join(f"{c:>17}" for c in cells) + f"  {per_type}")
    budget = choice["chosen_step"]
    print(f"chosen budget: {budget} steps (best mean {choice['best_mean']:.4f} at step {choice['best_step']}, "
          f"standard error {choice['best_se']:.4f}; still rising at the last step: {choice['still_rising']})")
    key = "train_cpu_seconds" if all("train_cpu_seconds" in r for r in rows) else "train_seconds"
    train_per_step = sum(r[key] for r in rows) / (a.every * len(rows))
    eval_s = summarize([r[key.replace("train", "eval")] for r in rows])["mean"]
    print(f"curve cost ({'CPU' if 'cpu' in key else 'wall'} s): {train_per_step:.3f} s per training step, {eval_s:.1f} s per "
          f"curve evaluation (see benchmarks/downstream_cost.py for the full table's cost)")
    out = Path(a.out)
    atomic_write_json(out / "curve.json", {"seeds": list(cfg.seeds), "every": a.every, "choice": choice,
                                           "train_seconds_per_step": train_per_step, "eval_seconds": eval_s,
                                           "rows": [{k: v for k, v in r.items() if k != "config"} for r in rows]})
    _plot(choice, rows, types, out / "curve.png")
    print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}")
    print(json.dumps({"chosen_step": budget, "still_rising": choice["still_rising"]}))
    return 0


def _plot(choice: dict, rows: list[dict], types: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    steps = [c["step"] for c in choice["curve"]]
    means = [c["mean"] for c in choice["curve"]]
    stds = [c["std"] for c in choice["curve"]]
    for seed in sorted({r["seed"] for r in rows}):
        rs = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["step"])
        ax.plot([r["step"] for r in rs], [r["metrics"]["all"]["pixel_AP"] for r in rs], color="0.75", lw=0.8)
    ax.errorbar(steps, means, yerr=stds, color="#4c72b0", lw=1.8, capsize=3, label="mean ± std over seeds")
    ax.axvline(choice["chosen_step"], color="#dd8452", ls="--", lw=1, label=f"chosen budget {choice['chosen_step']}")
    ax.set_xlabel("optimisation steps")
    ax.set_ylabel("pixel AP (real-only)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
