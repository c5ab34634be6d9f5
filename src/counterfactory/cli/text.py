"""Text counterfactual commands: train-text2image, edit, triplets."""

from __future__ import annotations

import json
from pathlib import Path

from ._args import (
    bound_loop_flags,
    check_out,
    float_range,
    loop_args,
    loop_config,
    nonneg_float,
    positive_int,
    seed_arg,
    set_threads,
    threads_arg,
)
from .shards import shard_args


def _filter_list(text: str) -> list[str]:
    import argparse

    from ..pipelines.triplets import FILTERS

    names = [] if text.strip() == "none" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FILTERS]
    if bad or (not names and text.strip() != "none"):
        raise argparse.ArgumentTypeError(f"--filters={text!r}: comma-separated names among {','.join(FILTERS)}, "
                                         "or none")
    return names


def cmd_train_text2image(args) -> int:
    from ..models.text2image import Text2ImageConfig
    from ..training.text2image import Text2ImageTrainConfig, check_data, train_text2image

    check_out(args.out, inputs={"--data": args.data})
    set_threads(args)
    check_data(args.data)
    model = Text2ImageConfig(block_out_channels=tuple(args.channels))
    cfg = Text2ImageTrainConfig(out=args.out, data=args.data, batch_size=args.batch_size,
                                caption_dropout=args.caption_dropout, limit=args.limit, model=model,
                                loop=loop_config(args, warmup=100))
    summary = train_text2image(cfg, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _edit_args(p) -> None:
    p.add_argument("--model", default=None, help="text-to-image folder (default: the shipped weights/text2image)")
    p.add_argument("--method", default="direct", choices=["direct", "fixed-point", "negative-prompt", "null-text", "ddim"],
                   help="inversion method (default direct)")
    p.add_argument("--num-inference-steps", type=positive_int("--num-inference-steps"), default=10,
                   help="DDIM steps of inversion and editing (default 10)")
    p.add_argument("--guidance-scale", type=nonneg_float("--guidance-scale"), default=3.0,
                   help="classifier-free guidance (default 3.0)")
    p.add_argument("--cross-replace-steps", type=nonneg_float("--cross-replace-steps"), default=0.8,
                   help="fraction of steps the target reads the source's cross-attention (default 0.8)")
    p.add_argument("--self-replace-steps", type=nonneg_float("--self-replace-steps"), default=0.4,
                   help="fraction of steps the target reads the source's self-attention (default 0.4)")
    p.add_argument("--blend-threshold", type=nonneg_float("--blend-threshold"), default=0.3,
                   help="local blend: attention threshold of the changed words' region (default 0.3)")
    threads_arg(p)


def _fraction(name, value):
    from ..errors import input_error

    if not 0 <= value <= 1:
        raise input_error(name, value, "a fraction in [0, 1]")
    return value


def cmd_edit(args) -> int:
    import torch

    from ..errors import input_error
    from ..io.images import load_image, save_image
    from ..pipelines.text_edit import TextEditPipeline

    set_threads(args)
    _fraction("--cross-replace-steps", args.cross_replace_steps)
    _fraction("--self-replace-steps", args.self_replace_steps)
    if args.guidance_scale < 1:
        raise input_error("--guidance-scale", args.guidance_scale, "a number >= 1")
    out = check_out(args.out, inputs={"--image": args.image, "--model": args.model})
    pipe = TextEditPipeline.from_pretrained(args.model)
    from PIL import Image, UnidentifiedImageError

    if not Path(args.image).is_file():
        raise input_error("--image", args.image, "an existing image file")
    try:
        with Image.open(args.image) as im:
            file_mode, size = im.mode, im.size
    except (UnidentifiedImageError, OSError):
        raise input_error("--image", args.image, "a readable image file (PNG, JPEG, ...)") from None
    s, c = pipe.model.cfg.sample_size, pipe.model.cfg.in_channels
    channels = {"L": 1, "1": 1, "RGB": 3}.get(file_mode, len(file_mode))
    if size != (s, s) or channels != c:
        raise input_error("--image", f"{args.image} ({size[0]}x{size[1]}, {file_mode}, {channels} channel(s))",
                          f"a {s}x{s} image with {c} channel(s) ({'grayscale' if c == 1 else 'RGB'}), the model's size")
    image = load_image(args.image, mode="L" if c == 1 else "RGB")
    image = image[None] if image.ndim == 3 else image[None, None]
    for name, text in (("--source", args.source), ("--target", args.target)):
        pipe.model.tokenizer.encode(text, argument=name)
    with torch.inference_mode(False), torch.no_grad():
        result = pipe(image, args.source, args.target, method=args.method, edit_type=args.edit_type,
                      num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                      cross_replace_steps=args.cross_replace_steps, self_replace_steps=args.self_replace_steps,
                      reweight=args.reweight, blend_threshold=args.blend_threshold, local_blend=not args.no_blend)
    out.mkdir(parents=True, exist_ok=True)
    save_image(result.images[0], out / "edited.png")
    save_image(result.attention_maps[0], out / "attention.png")
    if result.blend_masks is not None:
        save_image(result.blend_masks[0], out / "blend_mask.png")
    from ..io.manifest import atomic_write_json, atomic_write_text
    from ..pipelines.text_edit import EditRow, edit_report_html

    removed, added = result.changed_words[0]
    info = {"image": str(args.image), "source": args.source, "target": args.target, "removed_words": removed,
            "added_words": added, "edit_type": result.edit_types[0], "method": args.method,
            "num_inference_steps": args.num_inference_steps, "unet_calls": result.unet_calls}
    atomic_write_json(out / "edit.json", info)
    row = EditRow(reference=image[0], edited=result.images[0], source=args.source, target=args.target,
                  attention=result.attention_maps[0],
                  note=f"{result.edit_types[0]} edit, {args.method} inversion, {args.num_inference_steps} steps, "
                       f"{result.unet_calls:g} UNet calls")
    atomic_write_text(out / "report.html", edit_report_html(
        [row], title="Text counterfactual edit",
        intro=f"Attention of {' '.join(added) or 'the changed word'!r} in the edited branch, averaged over layers "
              "and steps, upsampled and drawn over the edited digit.", note_title="settings"))
    print(json.dumps(info))
    return 0


def cmd_triplets(args) -> int:
    from ..errors import input_error
    from ..pipelines.triplets import TripletConfig, write_triplets

    set_threads(args)
    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "a Morpho-MNIST folder (e.g. ../shared/data/morphomnist)")
    check_out(args.out, inputs={"--data": args.data, "--model": getattr(args, "model", None),
                                "--classifier": args.classifier, "--encoder": args.encoder})
    _fraction("--cross-replace-steps", args.cross_replace_steps)
    _fraction("--self-replace-steps", args.self_replace_steps)
    from ..pipelines.triplets import format_summary
    from .shards import shard_of

    shard = shard_of(args)
    cfg = TripletConfig(out=args.out, data=args.data, n=args.n, split=args.split, seed=args.seed,
                        batch_size=args.batch_size, max_candidates=args.max_candidates, method=args.method,
                        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                        cross_replace_steps=args.cross_replace_steps, self_replace_steps=args.self_replace_steps,
                        blend_threshold=args.blend_threshold, outside_tolerance=args.outside_tolerance,
                        model=args.model, filters=tuple(args.filters), classifier=args.classifier,
                        encoder=args.encoder, similarity_threshold=args.similarity_threshold,
                        restore_intensity=not args.no_restore_intensity)
    summary = write_triplets(cfg, progress=not args.quiet, shard=shard)
    if "kept" in summary:  # a shard that did not finish the run has no counts yet
        print(format_summary(summary))
    print(json.dumps(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train-text2image", help="train the compact text-to-image model on captioned Morpho-MNIST digits",
                       description="Caption the Morpho-MNIST train split from measured attributes, then train the word "
                                   "tokenizer's text encoder and a pixel-space U-Net with cross-attention (epsilon "
                                   "loss, caption dropout for guidance). Writes checkpoints (a rerun with the same "
                                   "--out resumes) and the model folder <out>/model.")
    p.add_argument("--data", required=True, help="Morpho-MNIST folder (e.g. ../shared/data/morphomnist)")
    p.add_argument("--out", required=True, help="run folder: captions, checkpoints, logs, <out>/model")
    p.add_argument("--channels", type=positive_int("--channels"), nargs="+", default=[16, 32, 32],
                   help="U-Net block widths, at least 3 (default 16 32 32)")
    p.add_argument("--caption-dropout", type=nonneg_float("--caption-dropout"), default=0.1,
                   help="fraction of empty captions, for classifier-free guidance (default 0.1)")
    p.add_argument("--limit", type=positive_int("--limit"), default=None, help="only the first N train images")
    loop_args(p, steps=4000, lr=1e-3, batch=32, ckpt=100)
    bound_loop_flags(p)
    p.set_defaults(func=cmd_train_text2image)

    p = sub.add_parser("edit", help="edit one digit from a source caption to a target caption (inversion + prompt-to-prompt)",
                       description="Invert --image under --source, then sample --source and --target together with "
                                   "prompt-to-prompt attention control and local blend. Writes <out>/edited.png, "
                                   "<out>/attention.png (the changed target word's cross-attention), blend_mask.png, "
                                   "edit.json and report.html (reference | edited | caption diff | attention map).")
    p.add_argument("--image", required=True, help="the digit (the model's size: 28x28 grayscale)")
    p.add_argument("--source", required=True, help='its caption, e.g. "a thin, upright, dim seven"')
    p.add_argument("--target", required=True, help='the counterfactual caption, e.g. "a thick, upright, dim seven"')
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--edit-type", default="replace", choices=["replace", "refine"],
                   help="word swap (default; falls back to refine when word counts differ) or refine")
    p.add_argument("--reweight", type=nonneg_float("--reweight"), default=1.0,
                   help="factor on the added words' cross-attention (default 1.0)")
    p.add_argument("--no-blend", action="store_true", help="no local blend (the whole image may change)")
    _edit_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("triplets", help="write CIRR-format composed-retrieval triplets from measured text edits",
                       description="Caption real Morpho-MNIST digits, perturb one attribute word, edit the digit "
                                   "accordingly and keep the edit when the measured attribute moved the asked way "
                                   "and the rest stayed. Writes images, cap.rc2.<split>.json, split.rc2.<split>.json, "
                                   "manifest.jsonl and summary.json; a rerun with the same --out resumes.")
    p.add_argument("--data", required=True, help="Morpho-MNIST folder (e.g. ../shared/data/morphomnist)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=positive_int("--n"), default=1000, help="kept triplets wanted (default 1000)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="the fixed split supplying reference digits (default train)")
    p.add_argument("--seed", type=seed_arg(), default=0, help="seed (default 0); same seed, same files")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=32, help="edits per batch (default 32)")
    p.add_argument("--max-candidates", type=positive_int("--max-candidates"), default=None,
                   help="stop after this many candidates (default 10 x --n)")
    p.add_argument("--outside-tolerance", type=nonneg_float("--outside-tolerance"), default=0.02,
                   help="largest mean pixel change outside the local-blend region (default 0.02)")
    p.add_argument("--filters", type=_filter_list, default="attribute,others,class,local,similarity",
                   help="filters that decide what is kept, comma-separated, or none (default "
                        "attribute,others,class,local,similarity)")
    p.add_argument("--classifier", default=None,
                   help="digit-classifier folder for the class filter (default: the shipped weights/digit_classifier)")
    p.add_argument("--encoder", default=None,
                   help="dual-encoder folder for the similarity filter (default: the shipped weights/cir_encoder)")
    p.add_argument("--similarity-threshold", type=float_range("--similarity-threshold", 0.0, 1.0), default=0.2,
                   help="least directional similarity cos(E(edit) - E(ref), T(new caption) - T(caption)) (default 0.2)")
    p.add_argument("--no-restore-intensity", action="store_true",
                   help="keep the edited stroke's intensity as the model drew it (default: edits that do not name "
                        "intensity get the reference's stroke intensity back inside the blend region)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    shard_args(p, merged="manifest.jsonl, the caption, split and summary files")
    _edit_args(p)
    p.set_defaults(func=cmd_triplets)
