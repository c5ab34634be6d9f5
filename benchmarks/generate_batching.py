"""`generate` with fixed groups of items (one U-Net batch each) against one item per batch, same model and steps.

    .venv/bin/python benchmarks/generate_batching.py --threads 2

Shipped compact base + an adapter trained 2 steps on procedural data (its quality does not matter here: the
cost per U-Net call is the same). Prints seconds per pair for each group size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from counterfactory.data import open_dataset
from counterfactory.data.splits import few_shot_split
from counterfactory.data.surfaces import synth_dataset
from counterfactory.models.compact import DEFAULT_WEIGHTS_DIR
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
from counterfactory.pipelines.generate import GenerateConfig, generate, split_masks
from counterfactory.training.inpaint import AdapterTrainConfig, train_adapter
from counterfactory.training.trainer import LoopConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=16, help="pairs per type (2 types)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    types = ["crack", "spot"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synth_dataset(tmp / "data", seed=0, size=128, n_train_good=8, n_test_good=4, n_per_type=4, types=types)
        ds = open_dataset(data)
        split = few_shot_split(ds, shots=2)
        masks = split_masks(ds, split, types, "held_out")
        acfg = AdapterTrainConfig(out=str(tmp / "adapter"), data=str(data), shots=2, types=tuple(types),
                                  batch_size=2, loop=LoopConfig(steps=2, warmup_steps=1, checkpoint_every=2))
        train_adapter(acfg, progress=False)
        pipe = DefectInpaintPipeline.from_compact(DEFAULT_WEIGHTS_DIR, tmp / "adapter")
        for group in args.groups:
            cfg = GenerateConfig(out=str(tmp / f"g{group}"), n_per_type=args.n, num_inference_steps=args.steps,
                                 batch_size=group, types=tuple(types))
            t = time.perf_counter()
            generate(pipe, ds.good(), masks, cfg, progress=False)
            dt = time.perf_counter() - t
            print(f"group={group:3d}  {dt:7.2f} s  {dt / (2 * args.n):.3f} s/pair  ({args.steps} steps, {args.threads} threads)")


if __name__ == "__main__":
    main()
