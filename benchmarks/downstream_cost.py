"""Cost of the downstream benchmark: CPU seconds per training step and per full evaluation, and the projection.

Trains one setting for ``--steps`` steps and runs the benchmark's full evaluation (every held-out defect image,
``--eval-good`` defect-free images, overall and per type) once, timing both in process CPU seconds (what a core
spends, whatever else runs on the machine). Prints the seconds per setting × seed at each ``--budgets`` value and
the projected time of the full table (4 settings × ``--seeds`` seeds; every run covers all defect types) on
``--cores`` cores running one single-threaded run each.

    python benchmarks/downstream_cost.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \
        --out runs/mt/cost --setting copypaste --steps 40 --budgets 300,600,900
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from counterfactory.evaluation.downstream import (
    DownstreamConfig,
    evaluate_maps,
    load_downstream_data,
    predict,
    train_segmenter,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--setting", default="copypaste", choices=["real", "perlin", "copypaste"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-good", type=int, default=150)
    p.add_argument("--budgets", default="300,600,900")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cores", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = DownstreamConfig(data=a.data, out=a.out, split=a.split, eval_good=a.eval_good, steps=a.steps)
    c0 = time.process_time()
    data = load_downstream_data(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    load_cpu = time.process_time() - c0
    # the first run pays one-off imports (torch's optimizer machinery): warm them up with a 1-step run
    train_segmenter(data, a.setting, 99, cfg, f"{a.out}/warmup", steps=1)
    c1 = time.process_time()
    model, _ = train_segmenter(data, a.setting, 0, cfg, f"{a.out}/run", steps=a.steps)
    train_cpu = time.process_time() - c1
    c2 = time.process_time()
    evaluate_maps(predict(model, data.eval_images), data.eval_masks, data.eval_types, data.types, cfg.image_pool)
    eval_cpu = time.process_time() - c2
    per_step = train_cpu / a.steps
    print(f"data loading {load_cpu:.0f} CPU s (once per benchmark); training ({a.setting}, batch {cfg.batch_size}"
          f"{' + synthetic' if a.setting != 'real' else ''}): {per_step:.3f} CPU s/step; full evaluation "
          f"({len(data.eval_images)} images, overall + per type): {eval_cpu:.0f} CPU s")
    runs = 4 * a.seeds
    rows = []
    for b in (int(x) for x in a.budgets.split(",")):
        per_run = b * per_step + eval_cpu
        total_min = (runs * per_run / a.cores + load_cpu) / 60
        rows.append({"budget": b, "seconds_per_run": round(per_run), "full_table_minutes": round(total_min)})
        print(f"budget {b:>5} steps: {per_run:.0f} CPU s per setting x seed; full table ({runs} runs) on {a.cores} "
              f"cores: {total_min:.0f} min")
    print(json.dumps({"cpu_seconds_per_step": per_step, "eval_cpu_seconds": eval_cpu, "load_cpu_seconds": load_cpu,
                      "projection": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
