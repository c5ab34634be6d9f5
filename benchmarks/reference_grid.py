"""The insertion report grid: reference | input (box outlined) | methods..., one row per case, from a run folder of
``benchmarks/reference_ablation.py`` (or ``counterfactory insert --data``); writes one PNG.

    python benchmarks/reference_grid.py --run runs/ref_ablation/insertion/seed0 --methods ours,poisson,copy_paste \\
        --rows 6 --out docs/img/reference_insertion_grid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a folder with cases.jsonl and <task>/<method>/<case>.png")
    ap.add_argument("--methods", default="ours,poisson,copy_paste")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--cell", type=int, default=112, help="cell side in pixels")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from counterfactory.evaluation.features import resize_square
    from counterfactory.evaluation.insertion import InsertionCase, context_crop, load_case
    from counterfactory.io.images import load_image

    run = Path(args.run)
    cases = [json.loads(line) for line in (run / "cases.jsonl").read_text().splitlines() if line.strip()]
    methods = [m for m in args.methods.split(",") if m]
    # one case per defect type first, then the rest in order
    seen, order = set(), []
    for c in cases:
        if c["defect_type"] not in seen:
            seen.add(c["defect_type"])
            order.append(c)
    order += [c for c in cases if c not in order]
    cell = args.cell

    def tile(x: torch.Tensor) -> np.ndarray:
        x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
        y = resize_square(x[None], cell)[0].clamp(0, 1)
        return (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    head = 18
    cols = ["reference", "input", *methods]
    canvas = Image.new("RGB", (cell * len(cols), head + cell * args.rows), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(cols):
        draw.text((j * cell + 4, 3), name.replace("_", "-"), fill="black")
    for i, c in enumerate(order[: args.rows]):
        case = InsertionCase(**{**c, "box": tuple(c["box"]), "reference_box": tuple(c["reference_box"])})
        target, reference = load_case(case)
        x0, y0, x1, y1 = case.box
        outlined = target.clone()
        outlined[:, y0, x0:x1] = outlined[:, y1 - 1, x0:x1] = 0
        outlined[:, y0:y1, x0] = outlined[:, y0:y1, x1 - 1] = 0
        outlined[0, y0, x0:x1] = outlined[0, y1 - 1, x0:x1] = outlined[0, y0:y1, x0] = outlined[0, y0:y1, x1 - 1] = 1
        row = [reference, context_crop(outlined, case.box)]
        for m in methods:
            row.append(context_crop(load_image(run / case.task / m / f"{case.case_id}.png"), case.box))
        for j, x in enumerate(row):
            canvas.paste(Image.fromarray(tile(x)), (j * cell, head + i * cell))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(json.dumps({"out": args.out, "rows": min(args.rows, len(order)), "columns": cols}))


if __name__ == "__main__":
    main()
