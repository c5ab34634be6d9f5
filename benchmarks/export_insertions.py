"""Inserted defects as a generated folder, for the downstream benchmark: the few-shot training defects placed on
defect-free training images exactly as ``counterfactory generate`` places them (same seed → the same backgrounds,
masks and moved shot pixels: :func:`counterfactory.pipelines.generate.draw_item`), then blended by one method:

- ``band``: the reference pipeline's paste-and-harmonise — the shot's pixels pasted, the mask grown by
  ``--refine-dilate`` px is the region, and only its edge band is denoised with the reference adapter (the
  reference = the pasted crop over the region's box). The band is ``--refine-dilate`` px wide (the ring around the
  defect: its own pixels stay exact), or ``--refine-band`` × the region box's shorter side;
- ``poisson`` / ``plain``: the shot's pixels pasted by Poisson cloning / plainly, nothing refined.

The label is the placed mask. Writes ``<out>/<type>/<id>.png``, ``<out>/ground_truth/<type>/<id>_mask.png`` and
``manifest.jsonl`` (with ``source_image``), the layout ``counterfactory benchmark downstream --generated`` reads.

    python benchmarks/export_insertions.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \\
        --adapter runs/ref/hint400 --method band --n-per-type 30 --out runs/ref/gen_band
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", choices=["band", "poisson", "plain"], default="band")
    ap.add_argument("--adapter", default=None, help="reference adapter folder (method band)")
    ap.add_argument("--n-per-type", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0, help="generate's seed: the same placements as `generate --seed`")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--refine-band", type=float, default=None,
                    help="band width as a fraction of the region box's shorter side (default: --refine-dilate px)")
    ap.add_argument("--refine-dilate", type=int, default=3)
    ap.add_argument("--grain-transfer", type=float, default=0.0, help="the pipeline's grain_transfer (method band)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.method == "band" and not args.adapter:
        raise SystemExit("--adapter: a reference adapter folder is needed for --method band")
    torch.set_num_threads(args.threads)

    from counterfactory.data import GOOD, load_split, open_dataset
    from counterfactory.io.images import save_image
    from counterfactory.io.manifest import atomic_write_text
    from counterfactory.io.masks import bbox
    from counterfactory.models.reference import MIN_REFERENCE_SIDE
    from counterfactory.pipelines.generate import MaskSource, draw_item, paste_and_dilate, split_masks

    ds = open_dataset(args.data, skip_broken=True)
    split = load_split(args.split)
    types = [t for t in ds.defect_types if split.train.get(t)]
    backgrounds = split.samples(ds, "train", GOOD)
    source = MaskSource(split_masks(ds, split, types, "train", with_images=True), 0.9, "learned", True)
    pipe = None
    if args.method == "band":
        from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline, band_width

        pipe = ReferenceInpaintPipeline.from_compact(args.adapter)
        pipe.set_progress_bar_config(disable=True)
    final = Path(args.out)
    if final.exists():
        raise SystemExit(f"--out: {final} exists; give a new folder (the set is written whole or not at all)")
    out, cache, lines = final.with_name(f".{final.name}.tmp"), {}, []  # renamed to --out when complete
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    jobs = [(t, i) for t in types for i in range(args.n_per_type)]
    for t, i in tqdm(jobs, desc=f"insert ({args.method})"):
        s, bg, img, m, pixels, meta = draw_item(args.seed, t, i, backgrounds, source, cache)
        if args.method in ("poisson", "plain"):
            result, _ = paste_and_dilate(img, pixels, m, args.method, 0)
        else:
            grow = args.refine_dilate  # a region under 8 px on a side (a tiny shot) grows until the reference fits
            while True:
                pasted, region = paste_and_dilate(img, pixels, m, "plain", grow)
                x0, y0, x1, y1 = bbox(region[0])
                if min(x1 - x0, y1 - y0) >= MIN_REFERENCE_SIDE:
                    break
                grow += 1
            # the pipeline's band is a fraction of the region's shorter side; this one is the `grow`-px ring
            band = args.refine_band or min(0.5, (grow + 0.49) / min(x1 - x0, y1 - y0))
            assert args.refine_band or band_width((x0, y0, x1, y1), band) == max(grow, 2)
            gray = bool((img == img[:1]).all())
            target, ref = (img[:1], pasted[:1, y0:y1, x0:x1]) if gray else (img, pasted[:, y0:y1, x0:x1])
            with torch.inference_mode():
                result = pipe(target, ref, mask_image=region[None], num_inference_steps=args.steps,
                              guidance_scale=args.guidance, generator=torch.Generator().manual_seed(s),
                              refine_band=band, grain_transfer=args.grain_transfer, max_box_side=10**9).images[0]
        gid = f"{t}_{i:05d}"
        save_image(result, out / t / f"{gid}.png")
        save_image(m[0], out / "ground_truth" / t / f"{gid}_mask.png")
        lines.append(json.dumps({"id": gid, "type": t, "source_image": str(bg.image_path), "method": args.method,
                                 "grain_transfer": args.grain_transfer, "item_seed": s, "index": i,
                                 **{k: v for k, v in meta.items() if k != "offset"}},
                                sort_keys=True, default=str))
    atomic_write_text(out / "manifest.jsonl", "\n".join(lines) + "\n")
    out.rename(final)
    print(json.dumps({"method": args.method, "pairs": len(lines), "seconds": round(time.perf_counter() - t0, 1),
                      "out": str(final)}))


if __name__ == "__main__":
    main()
