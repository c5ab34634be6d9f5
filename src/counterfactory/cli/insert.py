"""Reference-guided insertion commands: ``insert`` (one image, or a benchmark over a dataset) and ``train-reference``.

``counterfactory insert --image T.png --box x0,y0,x1,y1 --reference R.png --out O.png --adapter DIR`` paints the
reference into the box (pixels outside the box unchanged). ``counterfactory insert --data DIR --out RUN`` runs
the three AnydoorMed tasks (reinsertion, replacement, insertion) on the split's held-out images with the model
and the copy-paste / Poisson baselines, and writes metrics.json + report.html; with ``--num-shards K --shard i``
(or the ranks of ``accelerate launch``) each process runs its share of the cases, and the one that finds every
result saved writes the metrics (docs/scaling.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from ._args import (
    bound_loop_flags,
    check_fits,
    check_out,
    check_weights_folder,
    float_range,
    int_range,
    loop_args,
    loop_config,
    lora_activation_bytes,
    positive_int,
    seed_arg,
    set_threads,
    threads_arg,
    unet_activation_bytes,
)
from .shards import shard_args, shard_of
from .train import check_types_arg


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` → four integers (validated against the image later)."""
    from ..errors import input_error

    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise input_error("--box", text, "four integers x0,y0,x1,y1 (pixels, end exclusive), e.g. 10,20,50,60") from None
    if len(vals) != 4:
        raise input_error("--box", text, "four integers x0,y0,x1,y1 (pixels, end exclusive), e.g. 10,20,50,60")
    return vals


def read_image_file(path: str, argument: str, reject_alpha: bool):
    """A file → ((C,H,W) tensor in [0,1] with the file's own channel count (1 gray / 3 colour), channels).

    With ``reject_alpha`` any alpha channel is an error (a cut-out reference is not supported); otherwise an
    opaque alpha is dropped and real transparency is an error (io.images' rule)."""
    from PIL import Image, UnidentifiedImageError

    from ..errors import input_error
    from ..io.images import load_image

    p = Path(path)
    if not p.is_file():
        raise input_error(argument, path, "an existing image file")
    try:
        with Image.open(p) as im:
            mode, bands, info = im.mode, im.getbands(), dict(im.info)
    except (UnidentifiedImageError, OSError) as exc:
        raise input_error(argument, path, f"a readable image file ({exc})") from None
    has_alpha = "A" in bands or "a" in bands or (mode == "P" and "transparency" in info)
    if reject_alpha and has_alpha:
        raise input_error(argument, path, f"an image without an alpha channel (this one is {mode}; cut-outs are not "
                                          "supported: flatten it onto its background first)")
    gray = mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F", "LA", "La")
    return load_image(p, mode="L" if gray else "RGB"), (1 if gray else 3)


def _check_single(args, image, img_c, reference, ref_c, max_box_side: int):
    """Every bad-input rule of the single-image mode, before anything is loaded or written."""
    from ..data.dataset import MIN_IMAGE_SIDE
    from ..errors import input_error
    from ..io.masks import check_box
    from ..models.reference import MAX_REFERENCE_UPSCALE, MIN_REFERENCE_SIDE

    h, w = image.shape[-2:]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise input_error("--image", f"{args.image} ({w}x{h} px)", f"an image at least {MIN_IMAGE_SIDE} px on each side")
    box = check_box(parse_box(args.box), (h, w), name="--box")
    rh, rw = reference.shape[-2:]
    if min(rh, rw) < MIN_REFERENCE_SIDE:
        raise input_error("--reference", f"{args.reference} ({rw}x{rh} px)", f"a reference at least {MIN_REFERENCE_SIDE} px on each side")
    side = max(box[2] - box[0], box[3] - box[1])
    if side > max_box_side:
        raise input_error("--box", args.box, f"a box at most {max_box_side} px on its longer side (4 x the working "
                                             "resolution): downscale the image first")
    if (box[2] - box[0]) * (box[3] - box[1]) == h * w:
        raise input_error("--box", args.box, "a box smaller than the image (context is needed around it)")
    bw, bh = box[2] - box[0], box[3] - box[1]
    if bw > MAX_REFERENCE_UPSCALE * rw or bh > MAX_REFERENCE_UPSCALE * rh:
        raise input_error("--reference", f"{args.reference} ({rw}x{rh} px)",
                          f"a reference at least 1/{MAX_REFERENCE_UPSCALE:g} of the box's side (the box is {bw}x{bh} px; "
                          f"upscaling a reference more than {MAX_REFERENCE_UPSCALE:g}x only blurs it): use a smaller box "
                          "or a larger reference")
    strength, steps = getattr(args, "strength", 1.0), args.num_inference_steps
    if 0 < strength < 1 and int(steps * strength) < 1:
        raise input_error("--strength", strength, f"a value with strength x --num-inference-steps >= 1 (or 0): with "
                                                  f"{steps} steps, at least {1 / steps:g}")
    return box


def _out_file(args):
    from ..errors import input_error
    from ..io.images import IMAGE_EXTENSIONS

    p = Path(args.out)
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise input_error("--out", args.out, f"an image file name ending in one of {', '.join(IMAGE_EXTENSIONS)}")
    check_out(p, kind="file", inputs={"--adapter": args.adapter, "--base": args.base,
                                      "--encoder-weights": args.encoder_weights})
    for flag, f in (("--image", args.image), ("--reference", args.reference)):
        if Path(f).exists() and p.resolve() == Path(f).resolve():
            raise input_error("--out", args.out, f"a file other than {flag} (outputs never overwrite their inputs)")
    return p


def _check_model_folders(args) -> None:
    for flag in ("--adapter", "--base", "--encoder-weights"):
        folder = getattr(args, flag[2:].replace("-", "_"), None)
        if folder:
            check_weights_folder(folder, flag)


def _pipeline(args):
    from ..errors import input_error
    from ..pipelines.reference_inpaint import ReferenceInpaintPipeline

    if not args.adapter:
        raise input_error("--adapter", None, "a reference adapter folder from `counterfactory train-reference` "
                                             "(or --method copy_paste / poisson)")
    if args.base_kind == "sd":
        if not args.base:
            raise input_error("--base", None, "a local SD-1.5-inpainting diffusers folder with --base-kind sd")
        pipe = ReferenceInpaintPipeline.from_sd(args.base, args.adapter, encoder_weights=args.encoder_weights)
    else:
        pipe = ReferenceInpaintPipeline.from_compact(args.adapter, base=args.base, encoder_weights=args.encoder_weights)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _adapter_resolution(args) -> int:
    """Working resolution from the adapter's config without loading any weights (64 for the baselines)."""
    from ..models.reference import REFERENCE_ADAPTER_CONFIG

    if args.method != "model" or not args.adapter:
        return 64
    f = Path(args.adapter) / REFERENCE_ADAPTER_CONFIG
    try:
        return int(json.loads(f.read_text()).get("resolution", 64))
    except (OSError, ValueError, TypeError):
        return 64


def cmd_insert(args) -> int:
    if args.data:
        return cmd_benchmark(args)
    from ..errors import input_error

    missing = [n for n, v in (("--image", args.image), ("--box", args.box), ("--reference", args.reference),
                              ("--out", args.out)) if not v]
    if missing:
        raise input_error(missing[0], None, "--image, --box, --reference and --out for one image (or --data for the benchmark)")
    if args.num_shards is not None or args.shard is not None:
        flag, value = ("--num-shards", args.num_shards) if args.num_shards is not None else ("--shard", args.shard)
        raise input_error(flag, value, "used with --data (the benchmark's cases split over processes or machines)")
    import torch

    from ..io.images import save_image, to_gray, to_rgb

    out = _out_file(args)
    _check_model_folders(args)
    set_threads(args)
    image, img_c = read_image_file(args.image, "--image", reject_alpha=False)
    reference, ref_c = read_image_file(args.reference, "--reference", reject_alpha=True)
    res = _adapter_resolution(args)
    box = _check_single(args, image, img_c, reference, ref_c, max_box_side=4 * res)
    if ref_c != img_c:  # converted, not refused: gray → RGB repeats the channel, RGB → gray takes the channel mean
        kinds = {1: "gray", 3: "RGB"}
        _log(f"note: --reference is {kinds[ref_c]} and --image is {kinds[img_c]}; the reference was converted to "
             f"{kinds[img_c]}")
        reference = to_rgb(reference) if img_c == 3 else reference.mean(0, keepdim=True)
        ref_c = img_c
    if args.method == "model":
        pipe = _pipeline(args)
        g = torch.Generator().manual_seed(args.seed)
        result = pipe(image, reference, box=box, num_inference_steps=args.num_inference_steps,
                      guidance_scale=args.guidance_scale, generator=g, crop_margin=args.crop_margin,
                      strength=args.strength, paste_mode=args.paste_mode, refine_band=args.refine_band,
                      grain_transfer=args.grain_transfer).images[0]
    else:
        from ..evaluation.insertion import baseline_method

        rgb, ref = to_rgb(image), to_rgb(reference)
        result = baseline_method(args.method)(rgb, box, ref)
    if img_c == 1:  # back to gray: the region gets the channel mean, every other pixel its own value
        from ..io.masks import box_mask

        m = box_mask(box, tuple(image.shape[-2:])) > 0.5
        result = torch.where(m, to_gray(result), image)
    save_image(result, out)
    print(json.dumps({"out": str(out), "box": list(box), "method": args.method, "seed": args.seed}))
    return 0


def _log(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


def _get_extractor(args, out: Path, images_for_training, log=_log):
    import hashlib

    import torch

    from ..evaluation.features import (
        CompactExtractorConfig,
        load_compact_extractor,
        load_extractor,
        save_compact_extractor,
        train_compact_extractor,
    )

    if args.extractor != "compact" or args.extractor_weights:
        return load_extractor(args.extractor, args.extractor_weights)
    ccfg = CompactExtractorConfig(steps=args.extractor_steps, seed=args.seed)
    h = hashlib.sha256(json.dumps([str(p) for p in images_for_training] + [args.extractor_steps, args.seed]).encode())
    fp = h.hexdigest()[:16]
    cache = out / "compact_extractor"
    if (cache / "config.json").is_file():
        try:
            if json.loads((cache / "config.json").read_text()).get("fingerprint") == fp:
                return load_compact_extractor(cache)
        except (OSError, ValueError):
            pass
    from ..io.images import load_image

    log(f"compact extractor: training {ccfg.steps} steps on {len(images_for_training)} real images (self-supervised)")
    model, tlog = train_compact_extractor([load_image(p) for p in images_for_training], ccfg)
    save_compact_extractor(model, cache, {"fingerprint": fp, "images": len(images_for_training),
                                          "torch_threads": torch.get_num_threads()})
    return model


def cmd_benchmark(args) -> int:
    import torch

    from ..data import open_dataset
    from ..data.splits import few_shot_split, load_split
    from ..errors import input_error
    from ..evaluation.insertion import (
        BASELINES,
        TASKS,
        InsertionEvalConfig,
        _identity_check,
        baseline_method,
        build_cases,
        evaluate_insertion,
        real_defect_crops,
    )

    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (MVTec or Magnetic Tile layout)")
    check_out(args.out, inputs={"--data": args.data, "--adapter": args.adapter, "--base": args.base,
                                "--split": args.split, "--extractor-weights": args.extractor_weights,
                                "--encoder-weights": args.encoder_weights})
    _check_model_folders(args)
    shard = shard_of(args)
    set_threads(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise input_error("--tasks", args.tasks, f"a comma list of {', '.join(TASKS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in ("model", *BASELINES):
            raise input_error("--methods", args.methods, f"a comma list of model, {', '.join(BASELINES)}")
    if not methods or not tasks:
        raise input_error("--tasks/--methods", (args.tasks, args.methods), "at least one task and one method")
    out = Path(args.out)
    ds = open_dataset(args.data, skip_broken=True, warn=_log)
    split_file = args.split or (str(Path(args.adapter) / "split.json") if args.adapter and (Path(args.adapter) / "split.json").is_file() else None)
    split = load_split(split_file) if split_file else few_shot_split(ds)
    fns = {}
    identity = {"data": str(Path(args.data).resolve()), "seed": args.seed, "split": split_file}
    if "model" in methods:
        pipe = _pipeline(args)
        from ..io.manifest import sha256_file

        identity.update(adapter=str(Path(args.adapter).resolve()), base=args.base, steps=args.num_inference_steps,
                        guidance=args.guidance_scale, strength=args.strength, paste_mode=args.paste_mode,
                        refine_band=args.refine_band, grain_transfer=args.grain_transfer,
                        adapter_steps=pipe.info["adapter_config"].get("steps"),
                        adapter_files_sha256={f.name: sha256_file(f)
                                              for f in sorted(Path(args.adapter).glob("*.safetensors"))},
                        crop_margin=args.crop_margin, max_box_side=args.max_box_side)

        def model_fn(target, box, reference, case):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + int(case.case_id.rsplit("-", 1)[1]))
            if bool((target == target[:1]).all()) and bool((reference == reference[:1]).all()):
                target, reference = target[:1], reference[:1]  # gray data stored as RGB: keep the result gray
            return pipe(target, reference, box=box, num_inference_steps=args.num_inference_steps,
                        guidance_scale=args.guidance_scale, generator=g, crop_margin=args.crop_margin,
                        max_box_side=args.max_box_side or 10**9, strength=args.strength,
                        paste_mode=args.paste_mode, refine_band=args.refine_band,
                        grain_transfer=args.grain_transfer).images[0]

        fns["model"] = model_fn
    for m in methods:
        if m != "model":
            fns[m] = baseline_method(m)
    cases = []
    for t in tasks:
        cases += build_cases(ds, split, t, n=args.n, seed=args.seed)
    if not cases:
        raise input_error("--data", args.data, "a dataset with held-out defects (no case could be built)")
    # refuse a folder of another run now, before the feature extractor is trained into it
    run_identity = {"cases": [c.to_dict() for c in cases], "methods": sorted(fns), **identity}
    if shard.count > 1:  # the shards share the case list and the settings: refuse one started otherwise
        import hashlib

        from ..io.manifest import claim_shards

        cases_sha256 = hashlib.sha256(json.dumps(run_identity["cases"], sort_keys=True).encode()).hexdigest()
        settings = {"writer": "insert", "num_shards": shard.count, "tasks": tasks, "n": args.n,
                    "cases_sha256": cases_sha256, "methods": sorted(fns), **identity}
        claim_shards(out, settings, argument="--out", write=False)
    _identity_check(out, run_identity)
    timings = None
    if shard.count > 1:
        claim_shards(out, settings, argument="--out")
        timings = _run_shard(cases, fns, out, shard, progress=not args.quiet)
        if timings is None:
            return 0
    index = ds.by_id()
    held = [index[i] for t in split.held_out if t != "good" for i in split.held_out[t] if i in index]
    train_imgs = [index[i].image_path for t in split.train for i in split.train[t] if i in index]
    ext = _get_extractor(args, out, train_imgs)
    real = real_defect_crops(held, ext.input_size)
    cfg = InsertionEvalConfig(out=str(out), seed=args.seed)
    with torch.inference_mode():
        summary = evaluate_insertion(cases, fns, ext, real, cfg, identity=identity, progress=not args.quiet,
                                     log=lambda s: None, timings=timings)
    for r in summary["rows"]:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    return 0


def _run_shard(cases, fns, out: Path, shard, progress: bool):
    """This shard's cases (``k % count == index``): each method's result saved as a one-process run saves it, and a
    line in ``manifest-shard<i>-of<K>.jsonl`` with its seconds. When every case of every shard has its results:
    the seconds per case of all shards by ``(task, method)`` (the metrics are computed next, as a one-process run
    computes them), else None after a one-line summary."""
    import time

    from tqdm.auto import tqdm

    from ..evaluation.insertion import result_path, run_methods
    from ..io.manifest import Manifest, read_all

    manifest = Manifest(shard.manifest_path(out))
    listed = manifest.done()
    mine = [c for k, c in enumerate(cases) if shard.takes(k)]
    made = 0
    t0 = time.time()
    for case in tqdm(mine, desc=f"insertion cases (shard {shard})", disable=not progress):
        present = all(result_path(out, case, m).is_file() for m in fns)
        if present and case.case_id in listed:
            continue
        seconds: dict = {}
        run_methods(case, fns, out, timings=seconds)
        made += not present
        if case.case_id not in listed:
            manifest.append({"id": case.case_id, "task": case.task,
                             "seconds": {m: round(v[0], 4) for (_, m), v in sorted(seconds.items())}})
    finished = all(result_path(out, c, m).is_file() for c in cases for m in fns)
    if not finished:
        print(json.dumps({"shard": str(shard), "cases": len(mine), "computed": made, "merged": False,
                          "seconds": round(time.time() - t0, 1)}))
        return None
    timings: dict = {}
    for r in read_all(out):
        for m, v in r.get("seconds", {}).items():
            timings.setdefault((r["task"], m), []).append(float(v))
    return timings


def cmd_train_reference(args) -> int:
    from ..errors import input_error
    from ..training.inpaint import ATTENTION_TARGETS, CONV_TARGETS
    from ..training.reference import ReferenceTrainConfig, train_reference

    if not Path(args.data).is_dir():
        raise input_error("--data", args.data, "an existing dataset folder (MVTec or Magnetic Tile layout)")
    types = check_types_arg(args.types)
    res = 64
    check_fits("--batch-size", args.batch_size, unet_activation_bytes(args.batch_size, res),
               f"a batch of {args.batch_size} at {res} px")
    check_fits("--rank", args.rank, lora_activation_bytes(args.rank, args.batch_size, res),
               f"LoRA rank {args.rank} at batch {args.batch_size}")
    check_out(args.out, inputs={"--data": args.data, "--base": args.base, "--split": args.split,
                                "--encoder-weights": args.encoder_weights})
    for flag, folder in (("--base", args.base), ("--encoder-weights", args.encoder_weights)):
        if folder:
            check_weights_folder(folder, flag)
    set_threads(args)
    targets = {"attn": ATTENTION_TARGETS, "attn+conv": ATTENTION_TARGETS + CONV_TARGETS}[args.lora_targets]
    loop = loop_config(args, warmup=20)
    cfg = ReferenceTrainConfig(
        out=args.out, data=args.data, base=args.base, base_kind=args.base_kind, encoder=args.encoder,
        encoder_weights=args.encoder_weights, token_mode=args.token_mode, reference_size=args.reference_size,
        split=args.split, types=tuple(types) if types else None, lora_rank=args.rank, lora_targets=targets,
        batch_size=args.batch_size, reference_dropout=args.reference_dropout, background_prob=args.background_prob,
        hint=args.hint, mask_perturb=args.mask_perturb == "on", loop=loop,
    )
    summary = train_reference(cfg, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--adapter", default=None, help="reference adapter folder from `counterfactory train-reference`")
    g.add_argument("--base", default=None, help="compact base folder (default: the shipped weights/) or, with "
                                                "--base-kind sd, a local SD-1.5-inpainting diffusers folder")
    g.add_argument("--base-kind", default="compact", choices=["compact", "sd"], help="which base (default compact)")
    g.add_argument("--encoder-weights", default=None,
                   help="local CLIP/DINOv2 folder for an adapter with a pretrained encoder (default: the one it was trained with)")
    g.add_argument("--num-inference-steps", type=positive_int("--num-inference-steps", 1000), default=25,
                   help="denoising steps, 1..1000 (default 25)")
    g.add_argument("--guidance-scale", type=float_range("--guidance-scale", 0.0, 50.0), default=3.0,
                   help="reference guidance: classifier-free guidance towards the reference (tokens and hint) "
                        "against the null reference, 0..50 (1 = none; default 3)")
    g.add_argument("--strength", type=float_range("--strength", 0.0, 1.0), default=1.0,
                   help="paste-and-refine: below 1 the reference is pasted into the box and refined from this noise "
                        "level, 0..1 (default 1 = generate from noise)")
    g.add_argument("--paste-mode", default="plain", choices=["plain", "poisson"],
                   help="how the reference is pasted for --strength < 1 or --refine-band (default plain)")
    g.add_argument("--refine-band", type=float_range("--refine-band", 0.0, 0.5, lo_open=True), default=None,
                   help="paste-and-harmonise: paste the reference and denoise only a band along the box's edge, this "
                        "fraction of the box's shorter side wide (at least 2 px), 0..0.5; the interior keeps the "
                        "reference's pixels (default: refine the whole box)")
    g.add_argument("--grain-transfer", type=float_range("--grain-transfer", 0.0, 2.0), default=0.0,
                   help="add this much of the image's own high-frequency grain to the denoised pixels, 0..2 "
                        "(default 0)")
    g.add_argument("--crop-margin", type=float_range("--crop-margin", 0.0, 10.0), default=0.5,
                   help="context around the box as a fraction of its side, 0..10 (default 0.5)")
    g.add_argument("--seed", type=seed_arg(), default=0)
    threads_arg(g)
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    p = sub.add_parser(
        "insert", help="paint a reference crop into a box (one image, or the 3-task benchmark over a dataset)",
        description="One image: --image --box x0,y0,x1,y1 --reference --out (pixels outside the box unchanged). "
                    "Benchmark: --data DIR --out RUN runs reinsertion / replacement / insertion on the split's held-out "
                    "images with the model and the copy-paste / Poisson baselines; writes metrics.json, report.html "
                    "and the results; a rerun with the same settings reuses finished results.")
    p.add_argument("--image", default=None, help="target image file")
    p.add_argument("--box", default=None, help="x0,y0,x1,y1 in pixels (end exclusive)")
    p.add_argument("--reference", default=None, help="reference image file (a crop of one defect/object; no alpha)")
    p.add_argument("--out", default=None, help="output image file (one image) or run folder (--data)")
    p.add_argument("--method", default="model", choices=["model", "copy_paste", "poisson", "unchanged"],
                   help="one image: the model (default) or a baseline")
    b = p.add_argument_group("benchmark (--data)")
    b.add_argument("--data", default=None, help="dataset folder: run the benchmark instead of one image")
    b.add_argument("--split", default=None, help="split file (default: the adapter's split.json, else the first-third split)")
    b.add_argument("--tasks", default="reinsertion,replacement,insertion", help="comma list of tasks")
    b.add_argument("--methods", default="model,copy_paste,poisson,unchanged",
                   help="comma list of model, copy_paste, poisson, unchanged (the target as is: a calibration row)")
    b.add_argument("--n", type=positive_int("--n", 100_000), default=20, help="cases per task (default 20)")
    b.add_argument("--extractor", default="compact", choices=["compact", "inception", "clip", "dinov2"],
                   help="feature extractor for FD/KID and reference fidelity (default compact, trained here if no weights)")
    b.add_argument("--extractor-weights", default=None, help="local weights of the extractor")
    b.add_argument("--extractor-steps", type=positive_int("--extractor-steps", 100_000), default=300,
                   help="training steps of the compact extractor when it is trained here (default 300)")
    b.add_argument("--max-box-side", type=int_range("--max-box-side", 8, 65536), default=None,
                   help="largest box side the model accepts in the benchmark, >= 8 px (default: no limit, every real "
                        "box is evaluated even when much larger than the working resolution)")
    shard_args(b, merged="metrics.json and report.html")
    _model_args(p)
    p.set_defaults(func=cmd_insert)

    p = sub.add_parser(
        "train-reference", help="reference adapter: LoRA + reference encoder, self-reference training (PbE)",
        description="Train LoRA on a frozen inpainting base and a reference encoder on the split's training defects: "
                    "the reference is the (augmented) defect crop from the same image, the region the randomly "
                    "extended box with a Bezier outline half of the time. A rerun with the same --out resumes.")
    p.add_argument("--data", required=True, help="dataset folder (MVTec-AD category or Magnetic Tile layout)")
    p.add_argument("--out", required=True, help="adapter folder (checkpoints, logs, exported adapter)")
    p.add_argument("--base", default=None, help="compact base folder (default weights/) or SD-1.5-inpainting folder")
    p.add_argument("--base-kind", default="compact", choices=["compact", "sd"])
    p.add_argument("--encoder", default="compact", choices=["compact", "clip", "dinov2"], help="reference encoder kind")
    p.add_argument("--encoder-weights", default=None, help="local CLIP/DINOv2 transformers folder (--encoder clip/dinov2)")
    p.add_argument("--token-mode", default="pooled", choices=["pooled", "patches"],
                   help="pretrained encoders: one pooled token mapped to several (PbE) or every hidden state (AnyDoor)")
    p.add_argument("--reference-size", type=int_range("--reference-size", 8, 1024), default=48,
                   help="compact encoder input side in pixels (default 48)")
    p.add_argument("--split", default=None, help="split file (default: the field's first-third split)")
    p.add_argument("--types", nargs="+", default=None, help="train only on these defect types")
    p.add_argument("--rank", type=positive_int("--rank", 4096), default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-targets", default="attn+conv", choices=["attn", "attn+conv"])
    p.add_argument("--reference-dropout", type=float_range("--reference-dropout", 0.0, 1.0), default=0.2, help="null-reference rate for CFG (default 0.2)")
    p.add_argument("--background-prob", type=float_range("--background-prob", 0.0, 1.0), default=0.2,
                   help="rows on defect-free training images with the null reference (default 0.2; 0 = none)")
    p.add_argument("--hint", default="hf", choices=["hf", "none"],
                   help="hf (default): the reference's high-frequency map warped into the box as extra input "
                        "channels (AnyDoor); none: tokens only (Paint-by-Example)")
    p.add_argument("--mask-perturb", default="on", choices=["on", "off"],
                   help="on (default): the inpainted region is the box extended at random, with a Bezier outline "
                        "half of the time; off: the defect's box itself")
    loop_args(p, steps=600, lr=1e-3, batch=8, ckpt=50)
    bound_loop_flags(p)
    p.set_defaults(func=cmd_train_reference)
