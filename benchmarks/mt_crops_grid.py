"""Defect crops side by side, to look at: real held-out defects beside the generated ones of several folders.

One row per (source, type): crops of ``--size`` px centred on each defect's mask (no outline: thin defects stay visible).

    python benchmarks/mt_crops_grid.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \\
        --generated "s=0.5:runs/mt/sweep/adapter_a-w0-s0.5/gen" --out docs/img/mt_defect_crops.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image, ImageDraw

from counterfactory.data import open_dataset
from counterfactory.evaluation.folders import read_image_folder
from counterfactory.io.images import read_array
from counterfactory.io.masks import bbox, read_mask


def crop(img: np.ndarray, mask: np.ndarray, size: int) -> Image.Image:
    x0, y0, x1, y1 = bbox(mask)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    h, w = mask.shape
    side = max(size, x1 - x0 + 8, y1 - y0 + 8)
    ox, oy = min(max(cx - side // 2, 0), max(w - side, 0)), min(max(cy - side // 2, 0), max(h - side, 0))
    patch = img[oy : oy + side, ox : ox + side]
    patch = (patch * 255).round().astype(np.uint8) if patch.dtype != np.uint8 else patch
    im = Image.fromarray(patch).convert("RGB")
    return im.resize((size, size), Image.NEAREST if side <= size else Image.BILINEAR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--generated", action="append", default=[], help="LABEL:FOLDER (repeatable)")
    ap.add_argument("--per-row", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ds = open_dataset(args.data)
    split = json.loads(open(args.split).read())
    held = split.get("held_out", {})
    by_id = {s.source_id: s for s in ds.samples}
    rows: list[tuple[str, list[Image.Image]]] = []
    types = [t for t in ds.defect_types if t in held]
    for t in types:
        cells = []
        for sid in held[t][: args.per_row]:
            s = by_id[sid]
            cells.append(crop(read_array(s.image_path, mode="RGB"), read_mask(s.mask_path), args.size))
        rows.append((f"real {t}", cells))
        for spec in args.generated:
            label, _, folder = spec.partition(":")
            f = read_image_folder(folder, name="generated")
            items = [it for gt in f.types if gt == t for it in f.of_type(gt)][: args.per_row]
            rows.append((f"{label} {t}", [crop(read_array(it.image_path, mode="RGB"), read_mask(it.mask_path), args.size)
                                          for it in items]))
    label_w, pad = 150, 4
    W = label_w + args.per_row * (args.size + pad)
    H = len(rows) * (args.size + pad)
    sheet = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, cells) in enumerate(rows):
        y = r * (args.size + pad)
        draw.text((4, y + args.size // 2 - 6), label, fill="black")
        for c, cell in enumerate(cells):
            sheet.paste(cell, (label_w + c * (args.size + pad), y))
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
