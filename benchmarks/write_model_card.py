"""Write weights/MODEL_CARD.md from a finished `counterfactory train-base` run folder (numbers read, not typed).

    python benchmarks/write_model_card.py --run runs/base --weights weights --command "<the exact command>"
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from counterfactory.io.manifest import atomic_write_text, sha256_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="train-base output folder")
    ap.add_argument("--weights", default="weights", help="folder holding the shipped compact_inpaint.* files")
    ap.add_argument("--command", required=True, action="append",
                    help="the exact command that trained it; repeat once per resumed run")
    ap.add_argument("--machine", default="2 CPU cores (shared with other jobs while it ran), no GPU")
    ap.add_argument("--quality", default=None,
                    help="a file with the output of benchmarks/base_quality.py to quote in the card")
    args = ap.parse_args()
    run, weights = Path(args.run), Path(args.weights)
    summary = json.loads((run / "train_summary.json").read_text())
    cfg = json.loads((weights / "compact_inpaint.json").read_text())
    rows = list(csv.DictReader((run / "log.csv").open()))
    marks = [rows[i] for i in sorted({0, len(rows) // 4, len(rows) // 2, 3 * len(rows) // 4, len(rows) - 1})]
    curve = "\n".join(f"| {r['step']} | {float(r['loss']):.4f} | {r['seconds']} |" for r in marks)
    # the seconds column restarts at every resume: wall time is the sum over the runs
    sessions, wall, last = 1, 0.0, 0.0
    for r in rows:
        t = float(r["seconds"])
        if t < last:
            sessions, wall = sessions + 1, wall + last
        last = t
    wall += last
    run_cfg = json.loads((run / "run_config.json").read_text())
    planned = int(run_cfg["loop"]["steps"])
    n = len(rows)
    early = [float(r["loss"]) for r in rows[max(0, n - 2 * (n // 5)) : n - n // 5]]
    late = [float(r["loss"]) for r in rows[n - n // 5 :]]
    trend = (sum(late) / len(late)) / (sum(early) / len(early)) if early and late else float("nan")
    commands = "\n".join(f"  - `{c}`" for c in args.command)
    stop = (f"Stopped by `--max-minutes` at {summary['steps']} of {planned} planned steps" if summary["steps"] < planned
            else f"Finished all {planned} planned steps")
    quality = Path(args.quality).read_text().strip() if args.quality else ""
    fence = "```"
    quality_block = (f"\n## Fill quality on held-out surfaces (benchmarks/base_quality.py)\n{fence}\n{quality}\n{fence}\n"
                     if quality else "")
    size_mb = (weights / "compact_inpaint.safetensors").stat().st_size / 1e6
    text = f"""# Compact inpainting base (the embedded default)

`compact_inpaint.safetensors` ({size_mb:.1f} MB, fp32) + `compact_inpaint.json` (its config).
sha256: `{sha256_file(weights / "compact_inpaint.safetensors")}`

## What it is
A pixel-space diffusers `UNet2DConditionModel` in the SD-inpainting input layout: noisy image (3) + mask (1) +
masked image (3) = 7 input channels, 3 output channels, widths {cfg["block_out_channels"]}, {cfg["layers_per_block"]} layer
per block, cross-attention ({cfg["num_tokens"]} tokens × {cfg["cross_attention_dim"]}) at the lowest resolution only,
working resolution {cfg["sample_size"]} px, **{cfg["prediction_type"]} (x0) prediction**, `{cfg["beta_schedule"]}` schedule with
{cfg["num_train_timesteps"]} steps; plus {cfg["num_tokens"]} learned unconditional tokens. 3.86M parameters.

## Data
Procedural defect-free surfaces from `counterfactory.data.surfaces.render_surface` (brushed metal, cast grain,
ceramic; varying tone, grain and illumination; dark background bands at some tile edges): a pool of 1500 surfaces
of 128 px rendered once from the seed, random square crops of 64–128 px resized to 64 px, random horizontal flips.
Masks: random strokes (thin and thick), blobs and boxes, 0.5–50 % of the crop. No defect images and no real data
were used: the base learns to fill a region from its context; damage types come from an adapter.

## Training
- Command{"s (each after the first resumed the run from its checkpoints)" if len(args.command) > 1 else ""}:
{commands}
- Steps: {summary["steps"]} (batch 16, AdamW lr 1e-3, 50 warm-up steps, grad-clip 1.0, EMA 0.995 — the shipped
  weights are the EMA); seed {cfg.get("extra", {}).get("seed", 0)}; loss weighted 1 inside the mask, 0.1 outside.
- {stop}, after {wall / 60:.0f} min of wall time in {sessions} run(s) on {args.machine}.
  The same command with a larger `--steps` and the same `--out` resumes the run from its checkpoints.
- Final loss (mean of the last 50 steps): {summary["final_loss"]:.4f}. Trend: the mean logged loss of the last
  fifth of the run is {trend:.3f}× that of the fifth before it{" (still falling)" if trend < 0.97 else " (flat)"}.

| step | loss (mean of last 10) | seconds |
|---|---|---|
{curve}
{quality_block}
## What it is for, and not for
- For: the demo and the tests' real-weights path; a starting point for `counterfactory train-adapter` on
  small grayscale/colour surface-inspection crops; fast CPU sampling (64 px windows via crop-to-mask).
- Not for: photorealistic texture synthesis — at this training budget its fills carry less grain than the
  surface around them (see the fill-quality numbers above when given; `grain_transfer` in the pipeline adds the
  background's own grain back); it knows no real product; it has never seen a
  defect (adapters teach those from the few shots). For real products pre-train on your own defect-free images
  (`train-base --data DATASET`) or use SD-1.5-inpainting (`--base-kind sd`) on a GPU.
"""
    atomic_write_text(weights / "MODEL_CARD.md", text)
    print(weights / "MODEL_CARD.md")


if __name__ == "__main__":
    main()
