"""``counterfactory masks sample``: new defect masks on defect-free images, placed as the few shots are."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import check_out, positive_int, seed_arg


def cmd_sample(args) -> int:
    from ..data import open_dataset
    from ..data.splits import load_split
    from ..errors import input_error
    from ..io.images import save_image
    from ..io.manifest import Manifest
    from ..io.names import check_path_name
    from ..pipelines.generate import MaskSource, draw_item, split_masks

    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder")
    out = check_out(args.out, inputs={"--data": args.data, "--split": args.split})
    ds = open_dataset(args.data, skip_broken=True)
    split = load_split(args.split)
    types = args.types or split.defect_types
    for t in types:
        check_path_name(t, "--types")
        if t not in split.defect_types:
            raise input_error("--types", t, f"defect types of the split: {split.defect_types}")
    good_ids = set(split.train.get("good", []))
    backgrounds = [s for s in ds.good() if s.source_id in good_ids]
    if not backgrounds:
        raise input_error("--split", args.split, "a split with defect-free training images (the backgrounds)")
    # the same shots, placement and per-item draw as `generate --masks train` (default overlap 0.9)
    mask_source = MaskSource(split_masks(ds, split, types, "train", with_images=True), 0.9, args.placement,
                             deform=not args.no_deform)
    manifest = Manifest(out / "manifest.jsonl")
    done = {r["id"] for r in manifest.read() if "id" in r}
    cache: dict = {}
    from tqdm.auto import tqdm

    items = [(t, i) for t in types for i in range(args.n)]
    for t, i in tqdm(items, desc="sampling masks", disable=args.quiet):
        mid = f"{t}_{i:05d}"
        if mid in done:
            continue
        _, bg, _, mask, _, meta = draw_item(args.seed, t, i, backgrounds, mask_source, cache)
        path = out / "ground_truth" / t / f"{mid}_mask.png"
        save_image(mask, path)
        manifest.append({"id": mid, "type": t, "index": i, "mask": str(path.relative_to(out)),
                         "source_image": str(bg.image_path), "source_id": bg.source_id, **meta})
    print(json.dumps({"out": str(out), "masks": len(items), "types": types, "placement": args.placement}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="defect masks: sample new ones placed as the few shots are")
    msub = p.add_subparsers(dest="masks_command", metavar="<masks command>", required=True)
    s = msub.add_parser("sample", help="new masks on defect-free images, with the shots' placement and shapes",
                        description="Deforms the split's training masks (elastic + affine) and places them on "
                                    "defect-free training images at the same distance and orientation to the product "
                                    "edge as the shots (--placement learned), or anywhere on the product (uniform). "
                                    "Writes OUT/ground_truth/<type>/<id>_mask.png and OUT/manifest.jsonl (source "
                                    "image per mask) -- the masks `generate --masks train` would place with the same --seed; reruns resume.")
    s.add_argument("--data", required=True, metavar="DATASET", help="dataset folder (MVTec-AD or Magnetic Tile layout)")
    s.add_argument("--split", required=True, metavar="FILE", help="split file from `counterfactory data split`")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--n", type=positive_int("--n"), default=20, help="masks per type (default 20)")
    s.add_argument("--types", nargs="+", default=None, help="defect types (default: every type of the split)")
    s.add_argument("--placement", choices=["learned", "uniform"], default="learned",
                   help="learned: keep each shot's distance and orientation to the product edge (default); "
                        "uniform: anywhere on the product")
    s.add_argument("--no-deform", action="store_true", help="place the shot masks as they are (no elastic/affine change)")
    s.add_argument("--seed", type=seed_arg(), default=0, help="seed (default 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

