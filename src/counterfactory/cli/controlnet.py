"""``counterfactory train-controlnet``: a ControlNet on segmentation masks (the soft-constraint defect method)."""

from __future__ import annotations

import json
from pathlib import Path

from ._args import (
    bound_loop_flags,
    check_out,
    check_weights_folder,
    float_range,
    loop_args,
    loop_config,
    positive_int,
    set_threads,
)


def cmd_train_controlnet(args) -> int:
    from ..errors import input_error
    from ..training.controlnet import ControlNetTrainConfig, train_controlnet

    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (MVTec or Magnetic Tile layout)")
    if args.base_kind == "sd" and not args.base:
        raise input_error("--base", None, "a local SD-1.5 diffusers folder (unet/, vae/) with --base-kind sd")
    if args.base is not None and not Path(args.base).is_dir():
        raise input_error("--base", args.base, "an existing base folder (compact weights or a local SD-1.5 diffusers folder)")
    check_out(args.out, inputs={"--data": args.data, "--base": args.base, "--split": args.split})
    if args.base and args.base_kind == "compact":
        check_weights_folder(args.base, "--base")
    set_threads(args)
    cfg = ControlNetTrainConfig(
        out=args.out, data=args.data, base=args.base, base_kind=args.base_kind, split=args.split, shots=args.shots,
        types=tuple(args.types) if args.types else None, batch_size=args.batch_size,
        outside_weight=args.outside_weight, hflip=not args.no_hflip, vflip=not args.no_vflip,
        rotate_degrees=args.rotate, mask_encoder_init=args.mask_encoder_init, loop=loop_config(args, warmup=20),
    )
    summary = train_controlnet(cfg, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train-controlnet", help="few-shot ControlNet on defect masks (soft constraint) on a frozen base",
                       description="Train a ControlNet (diffusers ControlNetModel.from_unet on the base) and a damage-type "
                                   "embedding table on the few real defects of each type, with mask-aware augmentation; "
                                   "the base stays frozen. Exports a ControlNet folder (diffusers ControlNet files + "
                                   "embeddings + controlnet_config.json) into --out; a rerun with the same --out resumes.")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD category or Magnetic Tile layout)")
    p.add_argument("--out", required=True, help="ControlNet folder (checkpoints, logs, exported ControlNet)")
    p.add_argument("--base", default=None,
                   help="compact base folder (default: the shipped weights/) or, with --base-kind sd, a local SD-1.5 "
                        "diffusers folder (text-to-image unet/ and vae/)")
    p.add_argument("--base-kind", default="compact", choices=["compact", "sd"], help="which base (default compact)")
    p.add_argument("--split", default=None, help="split file (default: the field's first-third split)")
    p.add_argument("--shots", type=positive_int("--shots"), default=None, help="first k defects per type train")
    p.add_argument("--types", nargs="+", default=None, help="train only these defect types")
    p.add_argument("--outside-weight", type=float_range("--outside-weight", 0.0, 1.0), default=0.5,
                   help="loss weight outside the mask, in [0, 1] (inside = 1; default 0.5)")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal flips (orientation-sensitive products)")
    p.add_argument("--no-vflip", action="store_true", help="no vertical flips")
    p.add_argument("--rotate", type=float_range("--rotate", 0.0, 180.0), default=20.0, help="max rotation in degrees (default 20)")
    p.add_argument("--mask-encoder-init", default="zero", choices=["zero", "random"],
                   help="last layer of the mask encoder: zero (default, diffusers' initialisation) or random (the mask "
                        "steers from the first step; not yet shown to train faster)")
    loop_args(p, steps=400, lr=5e-4, batch=8, ckpt=50)
    bound_loop_flags(p)
    p.set_defaults(func=cmd_train_controlnet)
