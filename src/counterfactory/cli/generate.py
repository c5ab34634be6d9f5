"""``counterfactory generate``: N defect image + mask pairs per type from an adapter, resumable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..pipelines import GENERATE_PASTE_BACK_DILATION, MAX_DILATION
from ._args import (
    check_fits,
    check_out,
    check_weights_folder,
    float_range,
    int_range,
    is_main_process,
    positive_int,
    seed_arg,
    set_threads,
    threads_arg,
    unet_activation_bytes,
    zero_or_range,
)
from .shards import shard_args, shard_of
from .train import COMPACT_RESOLUTION, base_args, check_types_arg

MAX_GUIDANCE = 50.0  # classifier-free guidance beyond this only saturates (and overflows towards 1e300)


def _pipeline(args):
    from ..pipelines.defect_controlnet import DefectControlNetPipeline
    from ..pipelines.defect_inpaint import DefectInpaintPipeline

    cls = DefectControlNetPipeline if args.method == "controlnet" else DefectInpaintPipeline
    if args.base_kind == "sd":
        from ..errors import input_error

        if not args.base:
            what = "text-to-image" if args.method == "controlnet" else "inpainting"
            raise input_error("--base", None, f"a local SD-1.5 ({what}) diffusers folder with --base-kind sd")
        return cls.from_sd(args.base, args.adapter)
    return cls.from_compact(args.base, args.adapter)


def _trained_folder(args) -> tuple[Path, dict]:
    """The ``--adapter`` folder and its config: an adapter (``--method inpaint``) or a ControlNet (``controlnet``)."""
    from ..errors import input_error
    from ..models.controlnet import CONTROLNET_CONFIG
    from ..training.inpaint import ADAPTER_CONFIG

    folder = Path(args.adapter)
    name, command = (CONTROLNET_CONFIG, "train-controlnet") if args.method == "controlnet" else (ADAPTER_CONFIG, "train-adapter")
    if not (folder / name).is_file():
        other = ADAPTER_CONFIG if args.method == "controlnet" else CONTROLNET_CONFIG
        hint = f" (it holds {other}: use --method {'inpaint' if args.method == 'controlnet' else 'controlnet'})" \
            if (folder / other).is_file() else ""
        raise input_error("--adapter", args.adapter, f"a folder holding {name} (from {command}) with --method "
                                                     f"{args.method}{hint}")
    try:
        cfg = json.loads((folder / name).read_text())
    except ValueError:
        raise input_error("--adapter", args.adapter, f"a folder whose {name} is readable JSON") from None
    types = cfg.get("types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise input_error("--adapter", args.adapter, f"a folder whose {name} lists its defect types")
    return folder, cfg


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def device_of(text: str):
    """``--device``: ``auto`` is this process's GPU when there is one (under a launcher: GPU ``LOCAL_RANK``), else
    the CPU; any other string must be a device torch can use here."""
    import os

    import torch

    from ..errors import InputError
    from ..pipelines.base import parse_device

    local = os.environ.get("LOCAL_RANK", "0")
    local = int(local) if local.isdigit() else 0
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        text = f"cuda:{local % torch.cuda.device_count()}"
    try:
        return parse_device(text)
    except InputError as exc:
        raise InputError(f"--{exc}") from None


def cmd_generate(args) -> int:
    import torch

    from ..data import open_dataset
    from ..data.splits import load_split
    from ..errors import input_error
    from ..pipelines.generate import (
        GenerateConfig,
        check_resume,
        folder_masks,
        generate,
        run_provenance,
        split_masks,
    )
    adapter, adapter_cfg = _trained_folder(args)
    if args.method == "controlnet" and args.max_window_scale:
        raise input_error("--max-window-scale", args.max_window_scale, "0 with --method controlnet (its windows are "
                                                                       "generated whole, never tiled)")
    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (its defect-free images are the backgrounds)")
    masks_folder = args.masks if args.masks not in ("held-out", "train") else None
    check_out(args.out, inputs={"--adapter": args.adapter, "--data": args.data, "--base": args.base,
                                "--split": args.split, "--masks": masks_folder})
    check_fits("--batch-size", args.batch_size, unet_activation_bytes(args.batch_size, COMPACT_RESOLUTION) / 4,
               f"denoising {args.batch_size} items together")
    check_weights_folder(adapter, "--adapter")
    if args.base:
        check_weights_folder(args.base, "--base")
    shard = shard_of(args)
    if args.filter_iou and shard.count > 1:
        raise input_error("--filter-iou", args.filter_iou, "0 while generating in shards (filter the merged folder: "
                                                           "rerun generate on it with --filter-iou and no shards)")
    device = device_of(args.device)
    set_threads(args)
    types = check_types_arg(args.types) or adapter_cfg["types"]
    from ..data.sample import GOOD
    from ..io.names import check_path_name

    for t in adapter_cfg["types"]:  # names from a file become folder names under --out
        check_path_name(t, f"{args.adapter} type")
    for t in types:
        if t not in adapter_cfg["types"] and t != GOOD:
            raise input_error("--types", t, f"a type the {args.method} model was trained for: {adapter_cfg['types']}")
    ds = open_dataset(args.data, skip_broken=True, warn=_warn)
    split_file = Path(args.split) if args.split else adapter / "split.json"
    split = load_split(split_file)
    good_ids = set(split.train.get("good", [])) if args.backgrounds == "train" else set(
        split.held_out.get("good", []) + split.train.get("good", []))
    backgrounds = [s for s in ds.good() if s.source_id in good_ids]
    if args.masks in ("held-out", "train"):
        masks = split_masks(ds, split, types, args.masks.replace("-", "_"), with_images=True)
    else:
        masks = folder_masks(args.masks, types, warn=_warn)
        sizes = {tuple(m.shape[-2:]) for pool in masks.values() for _, m in pool}
        bg_sizes = {s.load_image().shape[-2:] for s in backgrounds[:1]}
        if bg_sizes and sizes and sizes != {tuple(b) for b in bg_sizes}:
            (bh, bw), = bg_sizes
            ms = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
            _warn(f"note: --masks {args.masks}: masks are {ms}, backgrounds {bw}x{bh}: each mask's defect is cut out, "
                  "augmented and placed on the product (positions are not kept)")
    provenance = run_provenance(
        adapter=adapter, base=args.base, base_kind=args.base_kind, data_root=ds.root, split=split,
        split_file=split_file, masks=args.masks, backgrounds=args.backgrounds,
    )
    cfg = GenerateConfig(out=args.out, n_per_type=args.n, types=tuple(types), num_inference_steps=args.num_inference_steps,
                         guidance_scale=args.guidance_scale, batch_size=args.batch_size, seed=args.seed,
                         crop_margin=args.crop_margin, grain_transfer=args.grain_transfer, placement=args.placement,
                         deform=not args.no_deform, strength=args.strength, paste=args.paste,
                         refine_dilate=args.refine_dilate, max_window_scale=args.max_window_scale or None,
                         method=args.method, paste_back_dilation=None if args.no_paste_back else args.paste_back_dilation)
    check_resume(cfg, types, provenance, shard)  # a folder of another run is refused before the model loads
    pipe = _pipeline(args)
    if pipe.device != device:
        pipe = pipe.to(device)
    with torch.inference_mode():
        summary = generate(pipe, backgrounds, masks, cfg, provenance=provenance, progress=not args.quiet, shard=shard)
    if args.filter_iou and shard.count == 1:
        from ..evaluation.downstream.filter import filter_by_iou

        kept = filter_by_iou(args.out, ds.root, split_file, args.filter_iou, seed=args.seed, progress=not args.quiet,
                             log=_warn)
        summary["filter"] = kept["per_type"]
    if shard.count > 1 or is_main_process():
        print(json.dumps(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate N defect image+mask pairs per type (anomalib Folder layout)",
                       description="Paint each damage type into defect-free images using masks from the split's held-out "
                                   "defects (augmented, placed on the product) or a mask folder. Writes "
                                   "<out>/<type>/<id>.png, <out>/ground_truth/<type>/<id>_mask.png and manifest.jsonl; "
                                   "a rerun resumes, and only with the same adapter, base, data and settings.")
    p.add_argument("--adapter", required=True,
                   help="the trained folder: from train-adapter (--method inpaint) or train-controlnet (--method controlnet)")
    p.add_argument("--method", default="inpaint", choices=["inpaint", "controlnet"],
                   help="inpaint (default): repaint the mask, every other pixel bit-identical; controlnet: a ControlNet "
                        "reads the mask and regenerates a window around it (the soft constraint, see docs/controlnet.md)")
    p.add_argument("--data", required=True, help="dataset folder whose defect-free images are the backgrounds")
    p.add_argument("--out", required=True, help="output folder (outside the adapter, data and mask folders)")
    base_args(p)
    p.add_argument("--split", default=None, help="split file (default: the adapter's split.json)")
    p.add_argument("--masks", default="train",
                   help="'train' (default: the split's few-shot masks, so a model trained on the pairs never sees the "
                        "held-out evaluation masks), 'held-out' (the split's held-out masks) or a folder of masks "
                        "(<dir>/<type>/*.png)")
    p.add_argument("--placement", default="learned", choices=["learned", "uniform"],
                   help="learned (default): each mask keeps its shot's distance and orientation to the product edge "
                        "(edge chips stay on the edge); uniform: anywhere on the product")
    p.add_argument("--no-deform", action="store_true",
                   help="use the shots' mask shapes as they are (default: new shapes by elastic + affine deformation)")
    p.add_argument("--strength", type=float_range("--strength", 0.0, 1.0), default=1.0,
                   help="1 (default): paint the defect from noise; below 1: paste the shot's own defect pixels at the "
                        "placement and refine them from this noise level (0: the paste as is); needs the split's masks")
    p.add_argument("--paste-mode", "--paste", dest="paste", default="plain", choices=["plain", "poisson"],
                   help="how --strength < 1 pastes the shot's pixels (default plain; the same option as insert's)")
    p.add_argument("--refine-dilate", type=int_range("--refine-dilate", 0, 64), default=3,
                   help="px the refined region reaches beyond the pasted defect, 0..64 (default 3)")
    p.add_argument("--max-window-scale", type=zero_or_range("--max-window-scale", 1.0, 64.0), default=0.0,
                   help="paint a region whose context window is wider than this many working resolutions in tiles "
                        "of at most that size, so thin defects keep their native pixel scale (0 = off, default)")
    p.add_argument("--paste-back-dilation", type=int_range("--paste-back-dilation", 0, MAX_DILATION),
                   default=GENERATE_PASTE_BACK_DILATION,
                   help=f"--method controlnet: keep every pixel farther than this many px from the mask, 0..{MAX_DILATION} "
                        f"(default {GENERATE_PASTE_BACK_DILATION})")
    p.add_argument("--no-paste-back", action="store_true",
                   help="--method controlnet: rewrite the whole context window around each mask (its border can show)")
    p.add_argument("--filter-iou", type=zero_or_range("--filter-iou", 0.01, 1.0), default=0.0,
                   help="keep a pair only if a segmenter trained on the real shots finds its mask with at least this "
                        "IoU; rejected pairs move to <out>/.rejected (0 = off, default)")
    p.add_argument("--backgrounds", default="train", choices=["train", "all"],
                   help="defect-free images to paint on: the split's train part (default) or all")
    p.add_argument("--n", type=positive_int("--n", 1_000_000), default=100, help="pairs per type (default 100)")
    p.add_argument("--types", nargs="+", default=None, help="only these types (default: all of the adapter)")
    p.add_argument("--num-inference-steps", type=positive_int("--num-inference-steps", 1000), default=25,
                   help="denoising steps, 1..1000 (default 25)")
    p.add_argument("--guidance-scale", type=float_range("--guidance-scale", 0.0, MAX_GUIDANCE), default=2.0,
                   help=f"classifier-free guidance, 0..{MAX_GUIDANCE:g} (default 2)")
    p.add_argument("--crop-margin", type=float_range("--crop-margin", 0.0, 10.0), default=0.5,
                   help="context around the mask's box as a fraction of its side, 0..10 (default 0.5)")
    p.add_argument("--batch-size", type=positive_int("--batch-size", 100_000), default=16,
                   help="items denoised together (default 16); a resumed folder keeps the batch it was started with")
    p.add_argument("--grain-transfer", type=float_range("--grain-transfer", 0.0, 2.0), default=0.0,
                   help="add this much (0..2) of the background's own grain to each fill (default 0: the model's fill "
                        "as is; 1 on Magnetic Tile: see docs/benchmarks.md)")
    p.add_argument("--seed", type=seed_arg(), default=0)
    shard_args(p)
    p.add_argument("--device", default="auto",
                   help="where to denoise: auto (default: this process's GPU if there is one, else the CPU), cpu, "
                        "cuda, cuda:1, mps, ...")
    threads_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)
