"""Two CPU processes (accelerate launch --multi_gpu on a CPU-only machine: gloo) against one: training wall time per step, generation per pair.

    .venv/bin/python benchmarks/scaling.py --repeats 3

Training: `train-base` on procedural surfaces (compact U-Net 16/32 channels at 32 px), the same global batch both
ways: 2 processes x per-rank batch B against 1 process with 2 micro-batches of B (gradient accumulation), so each
step sees the same samples; seconds per step from the training loop's own clock (process start-up excluded) and
the largest loss difference between the two at the same seed. Generation: the shipped compact base + an adapter
trained 2 steps on procedural data (the cost per U-Net call does not depend on its quality); seconds per pair of
the whole command (start-up, model load and merge included), and whether the 2-rank folder is byte-identical to
the 1-process one. Repeat r uses seed r on both sides (paired); prints mean ± sample std and the paired
difference (2 processes - 1) with its 95 % interval.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from counterfactory.evaluation.stats import paired_difference, summarize

PY = sys.executable


def _cli(args: list[str], procs: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [PY, "-m", "counterfactory", *args]
    else:
        # accelerate starts one process per rank through torchrun only with --multi_gpu (gloo on a CPU-only machine)
        cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "counterfactory", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _history(out: Path) -> list[float]:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return [h[1] for h in json.loads((out / "checkpoints" / latest / "state.json").read_text())["history"]]


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*.png")):
        h.update(p.relative_to(out).as_posix().encode() + p.read_bytes())
    h.update((out / "manifest.jsonl").read_bytes())
    return h.hexdigest()


def _report(name: str, unit: str, one: list[float], two: list[float]) -> None:
    a, b = summarize(one), summarize(two)
    d = paired_difference(two, one)
    print(f"{name}: 1 process {a['mean']:.4f} ± {a['std']:.4f} {unit}, 2 processes {b['mean']:.4f} ± {b['std']:.4f} "
          f"{unit}; 2 - 1 = {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] (95 %, n={len(one)}); "
          f"ratio 1/2 = {a['mean'] / b['mean']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--steps", type=int, default=30, help="training steps")
    ap.add_argument("--batch", type=int, default=4, help="per-rank batch (training)")
    ap.add_argument("--n", type=int, default=8, help="pairs per type (generation, 2 types)")
    ap.add_argument("--inference-steps", type=int, default=10)
    ap.add_argument("--parts", nargs="+", choices=["train", "generate"], default=["train", "generate"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = ["--pool-size", "16", "--resolution", "32", "--channels", "16", "32", "--quiet", "--steps",
                str(args.steps), "--batch-size", str(args.batch), "--checkpoint-every", str(args.steps),
                "--threads", str(args.threads)]
        step1, step2, gap = [], [], []
        for r in range(args.repeats if "train" in args.parts else 0):
            o1, o2 = tmp / f"t1-{r}", tmp / f"t2-{r}"
            _cli(["train-base", "--out", str(o1), "--seed", str(r), "--gradient-accumulation-steps", "2", *tiny], 1,
                 args.threads)
            _cli(["train-base", "--out", str(o2), "--seed", str(r), *tiny], 2, args.threads)
            step1.append(json.loads((o1 / "train_summary.json").read_text())["wall_seconds"] / args.steps)
            step2.append(json.loads((o2 / "train_summary.json").read_text())["wall_seconds"] / args.steps)
            h1, h2 = _history(o1), _history(o2)
            gap.append(max(abs(a - b) / abs(a) for a, b in zip(h1, h2)))
        if step1:
            _report(f"train-base, global batch {2 * args.batch}, seconds per step", "s", step1, step2)
            print(f"train-base: largest relative loss difference 2 vs 1 process over {args.steps} steps: "
                  f"{max(gap):.2e} (per repeat: {', '.join(f'{g:.1e}' for g in gap)})", flush=True)
        if "generate" not in args.parts:
            return

        # generation
        _cli(["data", "synth", "--out", str(tmp / "data"), "--seed", "0", "--size", "128", "--types", "crack,spot",
              "--n-train-good", "8", "--n-per-type", "6"], 1, args.threads)
        data = tmp / "data" / "surface"
        adapter = tmp / "adapter"
        _cli(["train-adapter", "--data", str(data), "--out", str(adapter), "--steps", "2", "--batch-size", "2",
              "--quiet"], 1, args.threads)
        pair1, pair2, same = [], [], []
        total = 2 * args.n
        for r in range(args.repeats):
            gen = ["generate", "--adapter", str(adapter), "--data", str(data), "--n", str(args.n), "--seed", str(r),
                   "--num-inference-steps", str(args.inference_steps), "--batch-size", "4", "--quiet",
                   "--threads", str(args.threads)]
            o1, o2 = tmp / f"g1-{r}", tmp / f"g2-{r}"
            pair1.append(_cli([*gen, "--out", str(o1)], 1, args.threads) / total)
            pair2.append(_cli([*gen, "--out", str(o2)], 2, args.threads) / total)
            same.append(_digest(o1) == _digest(o2))
        _report(f"generate, {total} pairs, {args.inference_steps} steps, seconds per pair (whole command)", "s",
                pair1, pair2)
        print(f"generate: 2-rank folder byte-identical to the 1-process one: {sum(same)}/{len(same)} repeats")


if __name__ == "__main__":
    main()
