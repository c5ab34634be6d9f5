"""Defect synthesis commands: train-base, train-adapter, generate, demo."""

from __future__ import annotations

import json
from pathlib import Path

from ._args import loop_args, loop_config, nonneg_float, positive_int, set_threads, threads_arg


def cmd_train_base(args) -> int:
    from ..errors import input_error
    from ..models.compact import CompactConfig
    from ..training.inpaint import BaseTrainConfig, train_base

    set_threads(args)
    if args.data != "procedural" and not Path(args.data).is_dir():
        raise input_error("--data", args.data, "'procedural' or an existing dataset folder")
    model = CompactConfig(sample_size=args.resolution, block_out_channels=tuple(args.channels),
                          prediction_type=args.prediction_type)
    cfg = BaseTrainConfig(out=args.out, data=args.data, split=args.split, batch_size=args.batch_size,
                          pool_size=args.pool_size, max_crop=args.max_crop, model=model, init=args.init,
                          loop=loop_config(args, warmup=50))
    summary = train_base(cfg, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def cmd_train_adapter(args) -> int:
    from ..errors import input_error
    from ..training.inpaint import ATTENTION_TARGETS, CONV_TARGETS, AdapterTrainConfig, train_adapter

    set_threads(args)
    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (MVTec or Magnetic Tile layout)")
    targets = {"attn": ATTENTION_TARGETS, "attn+conv": ATTENTION_TARGETS + CONV_TARGETS}[args.lora_targets]
    cfg = AdapterTrainConfig(
        out=args.out, data=args.data, base=args.base, base_kind=args.base_kind, split=args.split, shots=args.shots,
        types=tuple(args.types) if args.types else None, lora_rank=args.rank, lora_targets=targets,
        batch_size=args.batch_size, outside_weight=args.outside_weight, hflip=not args.no_hflip,
        vflip=not args.no_vflip, rotate_degrees=args.rotate, loop=loop_config(args, warmup=20),
    )
    summary = train_adapter(cfg, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _pipeline(args):
    from ..pipelines.defect_inpaint import DefectInpaintPipeline

    if args.base_kind == "sd":
        from ..errors import input_error

        if not args.base:
            raise input_error("--base", None, "a local SD-1.5-inpainting diffusers folder with --base-kind sd")
        return DefectInpaintPipeline.from_sd(args.base, args.adapter)
    return DefectInpaintPipeline.from_compact(args.base, args.adapter)


def cmd_generate(args) -> int:
    import torch

    from ..data import open_dataset
    from ..data.splits import load_split
    from ..errors import input_error
    from ..io.manifest import sha256_file
    from ..pipelines.generate import GenerateConfig, folder_masks, generate, split_masks
    from ..training.inpaint import ADAPTER_CONFIG, check_adapter_types

    set_threads(args)
    adapter = Path(args.adapter)
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise input_error("--adapter", args.adapter, f"an adapter folder holding {ADAPTER_CONFIG} (from train-adapter)")
    adapter_cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    types = args.types or adapter_cfg["types"]
    check_adapter_types(adapter, types)
    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (its defect-free images are the backgrounds)")
    ds = open_dataset(args.data)
    split_file = Path(args.split) if args.split else adapter / "split.json"
    split = load_split(split_file)
    good_ids = set(split.train.get("good", [])) if args.backgrounds == "train" else set(
        split.held_out.get("good", []) + split.train.get("good", []))
    backgrounds = [s for s in ds.good() if s.source_id in good_ids]
    if args.masks in ("held-out", "train"):
        masks = split_masks(ds, split, types, args.masks.replace("-", "_"))
    else:
        masks = folder_masks(args.masks, types)
    pipe = _pipeline(args)
    from ..models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE

    base_file = Path(args.base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE if args.base_kind == "compact" else None
    provenance = {
        "base_sha256": sha256_file(base_file) if base_file and base_file.is_file() else adapter_cfg.get("base_sha256"),
        "adapter_sha256": sha256_file(adapter / "pytorch_lora_weights.safetensors"),
    }
    cfg = GenerateConfig(out=args.out, n_per_type=args.n, types=tuple(types), num_inference_steps=args.num_inference_steps,
                         guidance_scale=args.guidance_scale, batch_size=args.batch_size, seed=args.seed,
                         crop_margin=args.crop_margin, grain_transfer=args.grain_transfer)
    with torch.inference_mode():
        summary = generate(pipe, backgrounds, masks, cfg, provenance=provenance, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _base_args(p):
    p.add_argument("--base", default=None,
                   help="compact base folder (default: the shipped weights/) or, with --base-kind sd, a local "
                        "SD-1.5-inpainting diffusers folder")
    p.add_argument("--base-kind", default="compact", choices=["compact", "sd"], help="which base (default compact)")


def register(sub) -> None:
    p = sub.add_parser("train-base", help="pre-train the compact inpainting base (self-supervised, random masks)",
                       description="Self-supervised inpainting on defect-free images with random stroke/blob/box masks. "
                                   "Writes checkpoints (resumable) and compact_inpaint.safetensors into --out.")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, final weights")
    p.add_argument("--data", default="procedural",
                   help="'procedural' (embedded surfaces, default) or a dataset folder (its training good images)")
    p.add_argument("--split", default=None, help="split file from `counterfactory data split` (dataset folders only)")
    p.add_argument("--init", default=None, metavar="BASE",
                   help="start from this compact base's weights (e.g. weights/ to fine-tune the shipped base on your "
                        "defect-free images); default: random initialisation")
    p.add_argument("--pool-size", type=positive_int("--pool-size"), default=1500,
                   help="procedural surfaces rendered once and cropped at random (default 1500)")
    p.add_argument("--max-crop", type=positive_int("--max-crop"), default=None,
                   help="largest random crop side in pixels before resizing to --resolution (default: whole image side)")
    p.add_argument("--resolution", type=positive_int("--resolution"), default=64, help="working resolution (default 64)")
    p.add_argument("--channels", type=positive_int("--channels"), nargs="+", default=[32, 64, 128],
                   help="U-Net block widths (default 32 64 128)")
    p.add_argument("--prediction-type", default="sample", choices=["sample", "epsilon", "v_prediction"],
                   help="x0 ('sample', default), epsilon or v")
    loop_args(p, steps=3000, lr=1e-3, batch=16, ckpt=100)
    p.set_defaults(func=cmd_train_base)

    p = sub.add_parser("train-adapter", help="few-shot adapter: LoRA + damage-type embeddings on a frozen base",
                       description="Train LoRA (peft) and a damage-type embedding table on the few real defects of each "
                                   "type (the split's train part), with mask-aware augmentation. Exports a diffusers-"
                                   "format LoRA + embeddings into --out; a rerun with the same --out resumes.")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD category or Magnetic Tile layout)")
    p.add_argument("--out", required=True, help="adapter folder (checkpoints, logs, exported adapter)")
    _base_args(p)
    p.add_argument("--split", default=None, help="split file (default: the field's first-third split)")
    p.add_argument("--shots", type=positive_int("--shots"), default=None, help="first k defects per type train")
    p.add_argument("--types", nargs="+", default=None, help="train only these defect types")
    p.add_argument("--rank", type=positive_int("--rank"), default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-targets", default="attn+conv", choices=["attn", "attn+conv"],
                   help="LoRA on attention only, or attention + ResNet convs (default; compact base only)")
    p.add_argument("--outside-weight", type=float, default=0.1, help="loss weight outside the mask (inside = 1)")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal flips (orientation-sensitive products)")
    p.add_argument("--no-vflip", action="store_true", help="no vertical flips")
    p.add_argument("--rotate", type=nonneg_float("--rotate"), default=20.0, help="max rotation in degrees (default 20)")
    loop_args(p, steps=400, lr=1e-3, batch=8, ckpt=50)
    p.set_defaults(func=cmd_train_adapter)

    p = sub.add_parser("generate", help="generate N defect image+mask pairs per type (anomalib Folder layout)",
                       description="Paint each damage type into defect-free images using masks from the split's held-out "
                                   "defects (augmented, placed on the product) or a mask folder. Writes "
                                   "<out>/<type>/<id>.png, <out>/ground_truth/<type>/<id>_mask.png and manifest.jsonl; "
                                   "a rerun resumes.")
    p.add_argument("--adapter", required=True, help="adapter folder from train-adapter")
    p.add_argument("--data", required=True, help="dataset folder whose defect-free images are the backgrounds")
    p.add_argument("--out", required=True, help="output folder")
    _base_args(p)
    p.add_argument("--split", default=None, help="split file (default: the adapter's split.json)")
    p.add_argument("--masks", default="held-out", help="'held-out' (default: the split's held-out real masks, augmented), 'train' (the few-shot masks: "
                        "use it when the pairs train a model evaluated on the held-out defects) or a folder of masks "
                        "(<dir>/<type>/*.png)")
    p.add_argument("--backgrounds", default="train", choices=["train", "all"],
                   help="defect-free images to paint on: the split's train part (default) or all")
    p.add_argument("--n", type=positive_int("--n"), default=100, help="pairs per type (default 100)")
    p.add_argument("--types", nargs="+", default=None, help="only these types (default: all of the adapter)")
    p.add_argument("--num-inference-steps", type=positive_int("--num-inference-steps"), default=25)
    p.add_argument("--guidance-scale", type=nonneg_float("--guidance-scale"), default=2.0)
    p.add_argument("--crop-margin", type=nonneg_float("--crop-margin"), default=0.5)
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=16,
                   help="items denoised together (default 16); a resumed folder keeps the batch it was started with")
    p.add_argument("--grain-transfer", type=nonneg_float("--grain-transfer"), default=0.0,
                   help="add this much (0..2) of the background's own grain to each fill (default 0: the model's fill "
                        "as is; 1 on Magnetic Tile: see docs/benchmarks.md)")
    p.add_argument("--seed", type=int, default=0)
    threads_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)
