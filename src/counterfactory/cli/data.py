"""``counterfactory data synth | inspect | split``: make, check and split datasets."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import check_fits, check_out, int_range, positive_int, seed_arg

MAX_SYNTH_SIZE = 8192


def register(sub) -> None:
    data = sub.add_parser(
        "data",
        help="datasets: generate the procedural one, inspect a folder, write the few-shot split",
        description="Datasets: generate the procedural surfaces dataset, inspect a dataset folder, write a few-shot split.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="<subcommand>")
    dsub.required = True

    p = dsub.add_parser(
        "synth",
        help="write the procedural surfaces-with-defects dataset (MVTec-AD layout)",
        description=(
            "Write textured surfaces with crack / scratch / spot / chip defects and exact masks in MVTec-AD layout "
            "under OUT/<category>. Same seed and arguments: byte-identical files."
        ),
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="parent folder; the dataset goes to DIR/<category>"
    )
    p.add_argument("--seed", type=seed_arg(), default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int_range("--size", 16, MAX_SYNTH_SIZE), default=128,
                   help=f"image side in pixels, 16..{MAX_SYNTH_SIZE} (default 128)")
    p.add_argument("--n-train-good", type=int_range("--n-train-good", 0, 100_000), default=32,
                   help="defect-free training images (default 32)")
    p.add_argument("--n-test-good", type=int_range("--n-test-good", 0, 100_000), default=16,
                   help="defect-free test images (default 16)")
    p.add_argument("--n-per-type", type=int_range("--n-per-type", 0, 100_000), default=16,
                   help="test images per defect type (default 16)")
    p.add_argument(
        "--types", default=None, help="comma-separated defect types (default: crack,scratch,spot,chip)"
    )
    p.add_argument("--category", default="surface", help="category folder name (default surface)")
    p.set_defaults(func=_synth)

    p = dsub.add_parser(
        "inspect",
        help="report a dataset's layout, counts per type and problems",
        description=(
            "Detect the layout of DIR (MVTec-AD category or Magnetic Tile), count images and masks per type and list "
            "problems (missing / mismatched / empty masks, unreadable or non-image files). Exits 0 when the folder "
            "could be read, even with problems; 2 when DIR is missing or of an unknown layout."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quick", action="store_true", help="read image headers only (skips full decoding)")
    _min_side_arg(p)
    p.set_defaults(func=_inspect)

    p = dsub.add_parser(
        "split",
        help="write the few-shot split file (first third, or --shots k, per type trains)",
        description=(
            "Per defect type, sorted by id: the first third (or the first k with --shots k) trains, the rest is held "
            "out; defect-free images split by thirds. Written to a JSON file every later step reads. The dataset is checked "
            "first (every image decoded): a file with a problem `data inspect` would list is skipped with a warning "
            "and counted; only a type left with no usable sample stops it with exit status 2."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--out", required=True, metavar="FILE", help="split file to write (JSON)")
    p.add_argument(
        "--shots", type=positive_int("--shots", 100_000), default=None,
        help="training images per defect type (default: the first third)"
    )
    p.add_argument(
        "--quick", action="store_true", help="read image headers only (skips decoding every image first)"
    )
    _min_side_arg(p)
    p.set_defaults(func=_split)


def _min_side_arg(p) -> None:
    from ..data.dataset import MIN_IMAGE_SIDE

    p.add_argument("--min-side", type=int_range("--min-side", MIN_IMAGE_SIDE, 8192), default=MIN_IMAGE_SIDE,
                   help=f"flag images smaller than this on a side, e.g. the working resolution (default {MIN_IMAGE_SIDE})")


def _synth(args: argparse.Namespace) -> int:
    from ..data.surfaces import DEFECT_TYPES, synth_dataset
    from ..errors import input_error
    from ..io.names import check_path_name

    types = (
        DEFECT_TYPES if args.types is None else tuple(t.strip() for t in args.types.split(",") if t.strip())
    )
    if not types:
        raise input_error("--types", repr(args.types), f"a comma-separated list among {', '.join(DEFECT_TYPES)}")
    check_path_name(args.category, "--category")
    # a few float64 layers per pixel while one image is rendered (a low estimate)
    check_fits("--size", args.size, 8.0 * 8 * args.size**2, f"rendering one {args.size}x{args.size} image")
    check_out(args.out)
    root = synth_dataset(
        args.out,
        seed=args.seed,
        size=args.size,
        n_train_good=args.n_train_good,
        n_test_good=args.n_test_good,
        n_per_type=args.n_per_type,
        types=types,
        category=args.category,
    )
    n_def = args.n_per_type * len(types)
    print(
        f"wrote {root}: {args.n_train_good} train/good, {args.n_test_good} test/good, "
        f"{n_def} defect images ({', '.join(types)}) at {args.size}px, seed {args.seed}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ..data.dataset import open_dataset

    ds = open_dataset(args.dir, strict=False, verify=not args.quick, min_side=args.min_side)
    summary = ds.summary()
    if args.json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
        return 0
    print(f"layout: {summary['layout']}")
    print(f"root:   {summary['root']}")
    width = max([len(t) for t in summary["types"]] + [4])
    for t, c in summary["types"].items():
        print(f"  {t:<{width}}  images {c['images']:>5}  masks {c['masks']:>5}")
    print(f"  {'good':<{width}}  images {summary['good']:>5}")
    probs = summary["problems"]
    print(f"problems: {len(probs)}" + ("" if probs else " (none)"))
    for pr in probs:
        print(f"  [{pr['kind']}] {pr['message']}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from ..data.dataset import open_dataset
    from ..data.splits import few_shot_split, save_split

    check_out(args.out, kind="file", inputs={"DIR": args.dir})
    # every file checked now, not mid-training: problems are skipped with a warning each and a count
    ds = open_dataset(args.dir, verify=not args.quick, skip_broken=True, min_side=args.min_side)
    split = few_shot_split(ds, shots=args.shots)
    path = save_split(split, args.out)
    parts = ", ".join(f"{t} {len(split.train[t])}/{len(split.held_out[t])}" for t in split.types)
    print(f"wrote {path} ({split.protocol['rule']}; train/held-out per type: {parts})")
    return 0
