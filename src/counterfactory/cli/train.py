"""Training commands of the defect generator: ``train-base`` (the compact inpainting base) and ``train-adapter``
(few-shot LoRA + damage-type embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

from ._args import (
    bound_loop_flags,
    check_fits,
    check_out,
    check_weights_folder,
    float_range,
    is_main_process,
    loop_args,
    loop_config,
    lora_activation_bytes,
    positive_int,
    set_threads,
    unet_activation_bytes,
    zero_or_range,
)

COMPACT_RESOLUTION = 64  # the shipped compact base's working resolution (memory estimates for train-adapter)


def cmd_train_base(args) -> int:
    from ..errors import input_error
    from ..models.compact import CompactConfig
    from ..training.inpaint import BaseTrainConfig, train_base

    if args.data != "procedural" and not Path(args.data).is_dir():
        raise input_error("--data", args.data, "'procedural' or an existing dataset folder")
    if args.max_crop is not None and args.max_crop < args.resolution:
        raise input_error("--max-crop", args.max_crop, f"a crop side >= --resolution ({args.resolution} px): smaller "
                                                       "crops would be blown up to the working resolution")
    check_fits("--batch-size", args.batch_size, unet_activation_bytes(args.batch_size, args.resolution, args.channels),
               f"a batch of {args.batch_size} at {args.resolution} px")
    check_fits("--pool-size", args.pool_size, 3.0 * args.pool_size * args.resolution**2,
               f"a pool of {args.pool_size} surfaces")
    check_out(args.out, inputs={"--data": None if args.data == "procedural" else args.data, "--split": args.split,
                                "--init": args.init})
    if args.init:
        check_weights_folder(args.init, "--init")
    set_threads(args)
    model = CompactConfig(sample_size=args.resolution, block_out_channels=tuple(args.channels),
                          prediction_type=args.prediction_type, layout=args.layout)
    cfg = BaseTrainConfig(out=args.out, data=args.data, split=args.split, batch_size=args.batch_size,
                          pool_size=args.pool_size, max_crop=args.max_crop, model=model, init=args.init,
                          loop=loop_config(args, warmup=50))
    summary = train_base(cfg, progress=not args.quiet)
    if is_main_process():
        print(json.dumps(summary))
    return 0


def check_types_arg(types: list[str] | None, argument: str = "--types") -> list[str] | None:
    """``--types`` values: non-empty names that are safe as folder names (they become output folders)."""
    from ..io.names import check_path_name

    if types is None:
        return None
    if not types:
        from ..errors import input_error

        raise input_error(argument, "''", "one or more defect type names")
    return [check_path_name(t, argument) for t in types]


def cmd_train_adapter(args) -> int:
    from ..errors import input_error
    from ..training.inpaint import ATTENTION_TARGETS, CONV_TARGETS, AdapterTrainConfig, train_adapter

    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (MVTec or Magnetic Tile layout)")
    types = check_types_arg(args.types)
    res = COMPACT_RESOLUTION
    check_fits("--batch-size", args.batch_size, unet_activation_bytes(args.batch_size, res),
               f"a batch of {args.batch_size} at {res} px")
    check_fits("--rank", args.rank, lora_activation_bytes(args.rank, args.batch_size, res),
               f"LoRA rank {args.rank} at batch {args.batch_size}")
    check_out(args.out, inputs={"--data": args.data, "--base": args.base, "--split": args.split})
    if args.base:
        check_weights_folder(args.base, "--base")
    set_threads(args)
    targets = {"attn": ATTENTION_TARGETS, "attn+conv": ATTENTION_TARGETS + CONV_TARGETS}[args.lora_targets]
    cfg = AdapterTrainConfig(
        out=args.out, data=args.data, base=args.base, base_kind=args.base_kind, split=args.split, shots=args.shots,
        types=tuple(types) if types else None, lora_rank=args.rank, lora_targets=targets,
        batch_size=args.batch_size, outside_weight=args.outside_weight, hflip=not args.no_hflip,
        vflip=not args.no_vflip, rotate_degrees=args.rotate, max_window_scale=args.max_window_scale or None,
        loop=loop_config(args, warmup=20),
    )
    summary = train_adapter(cfg, progress=not args.quiet)
    if is_main_process():
        print(json.dumps(summary))
    return 0


def base_args(p):
    p.add_argument("--base", default=None,
                   help="compact base folder (default: the shipped weights/) or, with --base-kind sd, a local "
                        "SD-1.5-inpainting diffusers folder")
    p.add_argument("--base-kind", default="compact", choices=["compact", "sd"], help="which base (default compact)")


def register(sub) -> None:
    p = sub.add_parser("train-base", help="pre-train the compact inpainting base (self-supervised, random masks)",
                       description="Self-supervised inpainting on defect-free images with random stroke/blob/box masks "
                                   "(--layout inpaint, default), or plain denoising of whole crops (--layout full: a "
                                   "full-image base for ControlNets). Writes checkpoints (resumable) and "
                                   "compact_inpaint.safetensors + compact_inpaint.json (which records the layout) into --out.")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, final weights")
    p.add_argument("--data", default="procedural",
                   help="'procedural' (embedded surfaces, default) or a dataset folder (its training good images)")
    p.add_argument("--split", default=None, help="split file from `counterfactory data split` (dataset folders only)")
    p.add_argument("--init", default=None, metavar="BASE",
                   help="start from this compact base's weights (e.g. weights/ to fine-tune the shipped base on your "
                        "defect-free images); default: random initialisation")
    p.add_argument("--pool-size", type=positive_int("--pool-size", 1_000_000), default=1500,
                   help="procedural surfaces rendered once and cropped at random (default 1500)")
    p.add_argument("--max-crop", type=positive_int("--max-crop", 65536), default=None,
                   help="largest random crop side in pixels before resizing to --resolution, >= --resolution "
                        "(default: whole image side)")
    p.add_argument("--layout", default="inpaint", choices=["inpaint", "full"],
                   help="inpaint (default): noisy image + mask + masked image in, for inpainting and adapters; full: "
                        "the noisy image only, an unconditional whole-image generator for `train-controlnet --base`")
    p.add_argument("--resolution", type=positive_int("--resolution", 4096), default=64,
                   help="working resolution (default 64)")
    p.add_argument("--channels", type=positive_int("--channels", 4096), nargs="+", default=[32, 64, 128],
                   help="U-Net block widths (default 32 64 128)")
    p.add_argument("--prediction-type", default="sample", choices=["sample", "epsilon", "v_prediction"],
                   help="x0 ('sample', default), epsilon or v")
    loop_args(p, steps=3000, lr=1e-3, batch=16, ckpt=100)
    bound_loop_flags(p)
    p.set_defaults(func=cmd_train_base)

    p = sub.add_parser("train-adapter", help="few-shot adapter: LoRA + damage-type embeddings on a frozen base",
                       description="Train LoRA (peft) and a damage-type embedding table on the few real defects of each "
                                   "type (the split's train part), with mask-aware augmentation. Exports a diffusers-"
                                   "format LoRA + embeddings into --out; a rerun with the same --out resumes. Samples "
                                   "with problems (empty masks, unreadable files) are skipped with a warning.")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD category or Magnetic Tile layout)")
    p.add_argument("--out", required=True, help="adapter folder (checkpoints, logs, exported adapter)")
    base_args(p)
    p.add_argument("--split", default=None, help="split file (default: the field's first-third split)")
    p.add_argument("--shots", type=positive_int("--shots", 100_000), default=None, help="first k defects per type train")
    p.add_argument("--types", nargs="+", default=None, help="train only these defect types")
    p.add_argument("--rank", type=positive_int("--rank", 4096), default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-targets", default="attn+conv", choices=["attn", "attn+conv"],
                   help="LoRA on attention only, or attention + ResNet convs (default; compact base only)")
    p.add_argument("--outside-weight", type=float_range("--outside-weight", 0.0, 1.0), default=0.1,
                   help="loss weight outside the mask, in [0, 1] (inside = 1; default 0.1)")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal flips (orientation-sensitive products)")
    p.add_argument("--no-vflip", action="store_true", help="no vertical flips")
    p.add_argument("--rotate", type=float_range("--rotate", 0.0, 180.0), default=20.0,
                   help="max rotation in degrees, 0..180 (default 20)")
    p.add_argument("--max-window-scale", type=zero_or_range("--max-window-scale", 1.0, 64.0), default=0.0,
                   help="train on tiles of defects whose context window is wider than this many working resolutions, "
                        "at their pixel scale, as generate --max-window-scale paints them (0 = off, default)")
    loop_args(p, steps=400, lr=1e-3, batch=8, ckpt=50)
    bound_loop_flags(p)
    p.set_defaults(func=cmd_train_adapter)
