"""Mask agreement, locality and cost of generated defect folders, side by side (ControlNet vs inpainting).

For every folder given as NAME=PATH (a `generate` output: anomalib Folder layout + manifest.jsonl), per type:

- **mask IoU**: IoU between the pair's mask and what an independent judge finds in the image. The judge is the
  downstream benchmark's real-only segmenter (trained on the split's real training shots only; the finished run of
  ``benchmark downstream`` is reused when ``--judge-out`` points at it). The same judge on the held-out *real*
  defects gives the reference row: what "finds the defect" means for real images.
- **window IoU**: the same IoU within the mask's context window (its box widened by half its larger side, at least
  32 px each way): does the judge put the defect where the mask says, leaving aside what it finds elsewhere on the tile.
- **pixel AP in the image**: average precision of the judge's map against the mask, within each image (threshold-free).
- **outside change**: mean |output − background| over pixels outside the mask (0 for inpainting by construction),
  and the same beyond 16 px of the mask (the far field).
- **s / pair**: the folder's ``generate_seconds.json`` when present.

    python benchmarks/mask_agreement.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \\
        --judge-out runs/mt/down inpaint=runs/mt/gen_inpaint controlnet=runs/mt/gen_cn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from counterfactory.evaluation.downstream.config import DEFAULT_STEPS, DownstreamConfig
from counterfactory.evaluation.downstream.data import load_downstream_data
from counterfactory.evaluation.downstream.filter import mask_iou
from counterfactory.evaluation.downstream.metrics import binary_metrics, predict
from counterfactory.evaluation.downstream.training import train_segmenter
from counterfactory.evaluation.stats import summarize
from counterfactory.io.images import load_image
from counterfactory.io.masks import dilate, read_mask

FAR_PX = 16


def _window(mask: torch.Tensor) -> tuple[slice, slice]:
    ys, xs = torch.nonzero(mask.reshape(mask.shape[-2:]) > 0.5, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    pad = max(32, max(y1 - y0, x1 - x0) // 2)
    return slice(max(0, y0 - pad), y1 + pad), slice(max(0, x0 - pad), x1 + pad)


def _scores(judge, image: torch.Tensor, mask: torch.Tensor) -> dict:
    score = predict(judge, [image])[0]
    m = mask.reshape(score.shape)
    ap = binary_metrics(score, m > 0.5)["AP"]
    ys, xs = _window(m)
    return {"iou": mask_iou(score, m), "window_iou": mask_iou(score[..., ys, xs], m[..., ys, xs]), "ap": ap}


def judge_of(args):
    cfg = DownstreamConfig(data=args.data, out=args.judge_out, split=args.split, settings=("real",),
                           seeds=(args.judge_seed,), steps=args.judge_steps)
    data = load_downstream_data(cfg, log=lambda *_: None)
    judge, _ = train_segmenter(data, "real", args.judge_seed, cfg,
                               Path(cfg.out) / "runs" / cfg.run_folder_name("real", args.judge_seed))
    return judge, data


def real_rows(judge, data) -> dict:
    per: dict[str, list[dict]] = {}
    for img, m, t in zip(data.eval_images, data.eval_masks, data.eval_types):
        if m.any():
            per.setdefault(t, []).append(_scores(judge, img, m.float()))
    return per


def folder_rows(judge, root: Path, limit: int | None) -> tuple[dict, dict]:
    recs = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    per: dict[str, list[dict]] = {}
    for r in recs:
        if limit and len(per.get(r["type"], [])) >= limit:
            continue
        img = load_image(root / r["image"])
        m = torch.from_numpy(read_mask(root / r["mask"]))[None].float()
        src = load_image(r["source_image"])
        row = _scores(judge, img, m)
        diff = (img - src).abs().mean(0)
        out = m[0] < 0.5
        far = dilate(m[None], FAR_PX)[0, 0] < 0.5
        row["outside"] = float(diff[out].mean())
        row["far"] = float(diff[far].mean()) if far.any() else float("nan")
        row["inside"] = float(diff[~out].mean())
        per.setdefault(r["type"], []).append(row)
    cost_file = root.parent / "generate_seconds.json"
    cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
    return per, cost


def _cell(values) -> str:
    v = [x for x in values if not np.isnan(x)]
    if not v:
        return "–"
    s = summarize(v)
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="NAME=PATH of generated folders")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--judge-out", required=True, help="downstream out folder holding (or to hold) the real-only run")
    ap.add_argument("--judge-seed", type=int, default=0)
    ap.add_argument("--judge-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--limit", type=int, default=None, help="at most this many pairs per type and folder")
    ap.add_argument("--json", default=None, help="also write every number here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    judge, data = judge_of(args)
    table = {"real held-out defects": (real_rows(judge, data), {})}
    for spec in args.folders:
        name, _, path = spec.partition("=")
        table[name] = folder_rows(judge, Path(path), args.limit)
    types = sorted({t for per, _ in table.values() for t in per})
    print("| source | " + " | ".join(f"mask IoU {t}" for t in types) + " | mask IoU all | window IoU all | pixel AP in image | "
          "outside change | far-field change | n |")
    print("|---|" + "---|" * (len(types) + 6))
    result = {}
    for name, (per, cost) in table.items():
        rows = [r for t in types for r in per.get(t, [])]
        cells = [_cell([r["iou"] for r in per.get(t, [])]) for t in types]
        cells += [_cell([r["iou"] for r in rows]), _cell([r["window_iou"] for r in rows]), _cell([r["ap"] for r in rows]),
                  _cell([r.get("outside", float("nan")) for r in rows]), _cell([r.get("far", float("nan")) for r in rows])]
        print(f"| {name} | " + " | ".join(cells) + f" | {len(rows)} |")
        result[name] = {"per_type": per, "cost": cost}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
