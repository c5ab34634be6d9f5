"""``counterfactory evaluate`` and ``counterfactory benchmark downstream``."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import (
    SEED_MAX,
    check_fits,
    check_out,
    float_range,
    int_range,
    positive_int,
    seed_arg,
    threads_type,
)


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="realism, diversity and locality of generated images vs real ones → metrics.json + report.html",
        description=(
            "Compare a folder of generated images (+ masks, + pre-edit sources) with real ones: FD / KID / k-NN "
            "precision-recall named after the feature extractor (whole image and defect crop), intra-cluster "
            "diversity, and locality of the edit (change outside the mask, mask changed, change/mask IoU). "
            "Works on any folders: our generator's output, other tools' output, MVTec-AD or Magnetic Tile datasets."
        ),
    )
    p.add_argument("--real", required=True, metavar="DIR", help="real images: a dataset folder or <type>/<id>.png folder")
    p.add_argument("--generated", required=True, metavar="DIR", help="generated images: <type>/<id>.png + ground_truth/<type>/<id>_mask.png")
    p.add_argument("--source", default=None, metavar="DIR", help="pre-edit images <type>/<id>.* (default: manifest source_image)")
    p.add_argument("--split", default=None, metavar="FILE", help="few-shot split of --real: held-out = reference, train = clusters")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for metrics.json and report.html")
    p.add_argument("--extractor", default="compact", choices=["compact", "inception", "clip", "dinov2"],
                   help="feature extractor (default compact: trained here on the real images when no weights are given)")
    p.add_argument("--extractor-weights", default=None, metavar="PATH",
                   help="compact: checkpoint folder; inception: TorchScript inception-2015-12-05.pt; clip/dinov2: local "
                        "transformers folder (safetensors). Never downloaded.")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="inception only: load the TorchScript file, a pickle-based container that can run code; "
                        "only for a file whose origin you trust")
    p.add_argument("--kid-subsets", type=positive_int("--kid-subsets", 10_000), default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int_range("--kid-subset-size", 2, 100_000), default=32, help="images per KID subset (default 32)")
    p.add_argument("--pr-k", type=positive_int("--pr-k", 1000), default=3, help="k of k-NN precision/recall (default 3)")
    p.add_argument("--change-threshold", type=float_range("--change-threshold", 0.0, 1.0, lo_open=True), default=0.05, help="|Δ| that counts as changed, on [0,1] (default 0.05)")
    p.add_argument("--max-per-type", type=positive_int("--max-per-type"), default=None, help="use at most N generated images per type")
    p.add_argument("--compact-steps", type=positive_int("--compact-steps", 100_000), default=500, help="training steps of the compact extractor (default 500)")
    p.add_argument("--seed", type=seed_arg(), default=0, help="seed for the extractor training and KID subsets (default 0)")
    p.add_argument("--threads", type=threads_type(), default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=_evaluate)

    b = sub.add_parser("benchmark", help="benchmarks of generated data", description="Benchmarks of generated data.")
    bsub = b.add_subparsers(dest="benchmark_command", metavar="<benchmark>")
    bsub.required = True
    d = bsub.add_parser(
        "downstream",
        help="does synthetic data help a segmenter? real-only vs real+ours vs Perlin vs copy-paste",
        description=(
            "Train a small segmentation U-Net on crops under the same budget with (i) the real few-shot defects only, "
            "(ii) real + generated, (iii) real + Perlin-noise synthetic anomalies, (iv) real + copy-paste of real defects; "
            "evaluate on held-out real defects and held-out defect-free images (pixel AP, pixel F1-max, pixel AUROC, "
            "image AUROC). Seeds are paired across settings (same initial weights, same real crops): mean ± sample std "
            "per setting and the paired difference to real-only and to copy-paste with a 95 % interval; a gain is "
            "claimed only where the interval excludes 0. Without --generated, (ii) is skipped. Interrupted runs resume."
        ),
    )
    d.add_argument("--data", required=True, metavar="DIR", help="dataset folder (MVTec-AD category or Magnetic Tile)")
    d.add_argument("--split", default=None, metavar="FILE", help="few-shot split file (default: the first-third split)")
    d.add_argument("--generated", default=None, metavar="DIR", help="our generated defects (anomalib Folder layout)")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder for downstream.json and report.html")
    d.add_argument("--settings", default=None,
                   help="comma-separated subset of real,ours,perlin,copypaste (default: all that apply)")
    d.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds, paired across settings (default 0,1,2,3,4)")
    d.add_argument("--steps", type=positive_int("--steps", 1_000_000), default=None,
                   help="optimisation steps per run (default 900, chosen from the real-only learning curve in docs/downstream.md)")
    d.add_argument("--crop", type=int_range("--crop", 8, 4096), default=None, help="training crop size in px (default 64)")
    d.add_argument("--batch-size", type=positive_int("--batch-size", 100_000), default=None, help="crops per step (default 16)")
    d.add_argument("--eval-good", type=positive_int("--eval-good"), default=None, help="held-out defect-free images evaluated (default 150)")
    d.add_argument("--mix", default="add", choices=["replace", "add"],
                   help="add (default): synthetic crops come on top of the real-only batch, so every setting sees the "
                        "same real crops (larger batches, same steps); replace: they take half of the defect slots")
    d.add_argument("--threads", type=threads_type(), default=None, help="torch CPU threads (default 1)")
    d.set_defaults(func=_downstream)


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    from ..errors import input_error

    if n < 1:
        raise input_error("--threads", n, "an integer >= 1")
    import torch

    torch.set_num_threads(n)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    check_out(args.out, inputs={"--real": args.real, "--generated": args.generated, "--source": args.source,
                                "--split": args.split, "--extractor-weights": args.extractor_weights})
    _set_threads(args.threads)
    from ..evaluation.suite import EvalConfig, evaluate_folders

    cfg = EvalConfig(
        real=args.real, generated=args.generated, out=args.out, source=args.source, split=args.split,
        extractor=args.extractor, extractor_weights=args.extractor_weights, allow_torchscript=args.allow_torchscript,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, pr_k=args.pr_k, change_threshold=args.change_threshold,
        max_per_type=args.max_per_type, compact_steps=args.compact_steps, seed=args.seed,
    )
    metrics = evaluate_folders(cfg, log=_log)
    from ..evaluation.suite import _clean

    print(json.dumps(_clean(metrics["per_type"]), indent=2, sort_keys=True))
    return 0


def _downstream(args: argparse.Namespace) -> int:
    from ..errors import input_error

    _set_threads(args.threads if args.threads is not None else 1)
    from ..evaluation.downstream import DownstreamConfig, run_downstream

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or max(seeds) > SEED_MAX:
        raise input_error("--seeds", args.seeds, f"comma-separated integers in [0, {SEED_MAX}] such as 0,1,2")
    check_out(args.out, inputs={"--data": args.data, "--split": args.split, "--generated": args.generated})
    crop, batch = args.crop or 64, args.batch_size or 16
    check_fits("--batch-size", batch, float(batch) * crop * crop * 32 * 3 * 4 * 4,
               f"a batch of {batch} crops of {crop} px")
    settings = None if args.settings is None else tuple(s.strip() for s in args.settings.split(",") if s.strip())
    overrides = {k: v for k, v in {"steps": args.steps, "crop": args.crop, "batch_size": args.batch_size,
                                   "eval_good": args.eval_good}.items() if v is not None}
    cfg = DownstreamConfig(data=args.data, out=args.out, split=args.split, generated=args.generated,
                           settings=settings, seeds=seeds, mix=args.mix, **overrides)
    result = run_downstream(cfg, log=_log)
    from ..evaluation.downstream import METRICS

    print("setting    " + "  ".join(f"{m:>17}" for m in METRICS))
    for s, groups in result["summary"].items():
        print(f"{s:<10} " + "  ".join(f"{groups['all'][m]['mean']:>8.4f} ± {groups['all'][m]['std']:.4f}" for m in METRICS))
    print("paired difference, pixel_AP (mean [95 % interval]; gain/loss only where the interval excludes 0)")
    for row in result["paired"]:
        if row["metric"] == "pixel_AP":
            lo, hi = row["ci_low"], row["ci_high"]
            ci = "[undefined]" if lo is None or lo != lo else f"[{lo:+.4f}, {hi:+.4f}]"
            verdict = "" if row["verdict"] == "no clear difference" else row["verdict"]
            print(f"{row['setting']:<10} - {row['reference']:<10} {row['group']:<10} {row['mean']:+.4f} {ci} {verdict}")
    return 0
