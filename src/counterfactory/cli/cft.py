"""``counterfactory cft train|evaluate``: counterfactual fine-tuning (No-CFT / Reg-CFT / Seg-CFT) on Morpho-MNIST.

    counterfactory cft train    --data ../shared/data/morphomnist --out runs/cft/single --structures 1 --variant all --seeds 0,1,2
    counterfactory cft evaluate --data ../shared/data/morphomnist --run runs/cft/single --report runs/cft/single/report.html

``train`` runs whatever is missing of predictors → VAE(seed) → CFT(variant, seed) and resumes after a kill.
``evaluate`` needs finished checkpoints of every requested variant and seed. Bad input (missing data files,
a checkpoint of another variant, intervention scales outside the trained range) prints one line, exit 2.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from ..errors import input_error
from ._args import SEED_MAX, check_fits, check_out, float_range, positive_int, threads_type

DEFAULT_DATA = "../shared/data/morphomnist"


def _int_list(name: str):
    """Comma-separated seeds, each in [0, SEED_MAX]."""

    def parse(text: str) -> list[int]:
        try:
            vals = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            vals = []
        if not vals or min(vals) < 0 or max(vals) > SEED_MAX:
            raise argparse.ArgumentTypeError(f"{name}={text!r}: one or more integers in [0, {SEED_MAX}], e.g. 0,1,2")
        return vals

    parse.bounded = True
    return parse


def _float_list(name: str):
    """Comma-separated positive numbers (intervention scales: checked against the trained range later)."""

    def parse(text: str) -> list[float]:
        try:
            vals = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            vals = []
        if not vals or not all(math.isfinite(v) and 0 < v <= 1e6 for v in vals):
            raise argparse.ArgumentTypeError(f"{name}={text!r}: one or more positive finite numbers, e.g. 0.7,1.3")
        return vals

    parse.bounded = True
    return parse


def _variants(text: str) -> list[str]:
    from ..causal.checkpoint import VARIANTS

    vals = list(VARIANTS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [v for v in vals if v not in VARIANTS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"{text!r}: 'all' or a comma-separated subset of {','.join(VARIANTS)}")
    return vals


def register(sub) -> None:
    p = sub.add_parser("cft", help="counterfactual fine-tuning on Morpho-MNIST: train | evaluate")
    cmds = p.add_subparsers(dest="cft_command", metavar="<train|evaluate>", parser_class=type(p))
    cmds.required = True

    t = cmds.add_parser("train", help="train predictors, the VAE and the CFT variants (resumes after a kill)")
    t.add_argument("--data", default=DEFAULT_DATA, help="Morpho-MNIST folder (IDX + csv)")
    t.add_argument("--out", required=True, help="run folder, e.g. runs/cft/single")
    t.add_argument("--structures", type=int, default=1, choices=(1, 2), help="1: single digit; 2: two digits side by side")
    t.add_argument("--pairing", default="random", choices=("random", "correlated"),
                   help="two digits: random partners, or partners of similar area (areas correlated, r = 0.92)")
    t.add_argument("--counterfactual", default="noise", choices=("noise", "latent"),
                   help="noise: x* = mu(z, pa*) + abducted pixel noise; latent: x* = mu(z, pa*) from the model alone")
    t.add_argument("--variant", type=_variants, default=["none", "reg", "seg"], help="none | reg | seg | all | a list")
    t.add_argument("--seeds", type=_int_list("--seeds"), default=[0], help="e.g. 0,1,2")
    t.add_argument("--predictor-steps", type=positive_int("--predictor-steps"), default=None)
    t.add_argument("--vae-steps", type=positive_int("--vae-steps"), default=None)
    t.add_argument("--cft-steps", type=positive_int("--cft-steps"), default=None)
    t.add_argument("--cft-lr", type=float_range("--cft-lr", 0.0, 0.1, lo_open=True), default=None, help="fine-tuning learning rate (default 5e-4)")
    t.add_argument("--batch-size", type=positive_int("--batch-size", 1_000_000), default=None)
    t.add_argument("--threads", type=threads_type(), default=1, help="torch threads (default 1)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train)

    e = cmds.add_parser("evaluate", help="metrics on the test split, results.json and an HTML report")
    e.add_argument("--data", default=DEFAULT_DATA, help="Morpho-MNIST folder (IDX + csv)")
    e.add_argument("--run", help="run folder written by `cft train` (evaluates --variants x --seeds)")
    e.add_argument("--checkpoint", help="instead of --run: one checkpoint folder, checked to be of --variants' one variant")
    e.add_argument("--variants", type=_variants, default=["none", "reg", "seg"], help="none | reg | seg | all | a list")
    e.add_argument("--seeds", type=_int_list("--seeds"), default=[0, 1, 2])
    e.add_argument("--structures", type=int, default=None, choices=(1, 2), help="checked against the run (default: the run's)")
    e.add_argument("--pairing", default=None, choices=("random", "correlated"), help="checked against the run (default: the run's)")
    e.add_argument("--counterfactual", default=None, choices=("noise", "latent"),
                   help="default: the mode the CFT checkpoints were trained with (noise for No-CFT alone)")
    e.add_argument("--scales", type=_float_list("--scales"), default=None, help="intervention scales (default 0.6..1.4 without 1.0)")
    e.add_argument("--report", help="HTML report path (default <run>/report.html)")
    e.add_argument("--threads", type=threads_type(), default=1)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_evaluate)


def _command_line() -> str:
    return "counterfactory " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_train(args) -> int:
    import torch

    from ..causal.structures import build_variant, data_variant_name
    from ..causal.training import TrainConfig, train_all
    from ..data.morphomnist import load_morphomnist

    name = data_variant_name(args.structures, args.pairing)
    out = check_out(args.out, inputs={"--data": args.data})
    if args.batch_size:  # two structures side by side: 28 x 56 px; activations of a small conv VAE, a low estimate
        check_fits("--batch-size", args.batch_size, float(args.batch_size) * 28 * 28 * args.structures * 64 * 4 * 8,
                   f"a batch of {args.batch_size}")
    torch.set_num_threads(max(1, args.threads))
    overrides = {
        k: v
        for k, v in {
            "predictor_steps": args.predictor_steps,
            "vae_steps": args.vae_steps,
            "cft_steps": args.cft_steps,
            "batch_size": args.batch_size,
            "cft_lr": args.cft_lr,
            "counterfactual": args.counterfactual,
        }.items()
        if v is not None
    }
    cfg = TrainConfig(**overrides)
    data = load_morphomnist(args.data)
    train = build_variant(data, "train", name)
    for seed in args.seeds:
        for variant in args.variant:
            meta = train_all(out, train, variant, seed, cfg, progress=not args.no_progress, data_variant=name)
            print(f"{variant} seed {seed}: {out / variant / f'seed{seed}'} (step {meta.get('step')}, done={meta.get('done')})")
    return 0


def run_evaluate(args) -> int:
    import torch

    from ..causal.checkpoint import read_meta
    from ..causal.evaluate import evaluate_run, markdown_table, run_mode
    from ..causal.metrics import DEFAULT_SCALES, check_scales
    from ..causal.structures import build_variant, data_variant_name, run_data_variant
    from ..causal.training import TrainConfig
    from ..data.morphomnist import load_morphomnist

    if args.report:
        check_out(args.report, "--report", kind="file", inputs={"--data": args.data})
    torch.set_num_threads(max(1, args.threads))
    if (args.run is None) == (args.checkpoint is None):
        raise input_error("--run/--checkpoint", (args.run, args.checkpoint), "exactly one of them")
    if args.checkpoint is not None:
        if len(args.variants) != 1:
            raise input_error("--variants", ",".join(args.variants), "exactly one variant with --checkpoint")
        ckpt = Path(args.checkpoint)
        meta = read_meta(ckpt, "causal_model", args.variants[0])  # another variant's checkpoint: exit 2
        run, seeds, where = ckpt.parent.parent, [int(meta["settings"]["seed"])], ckpt
        if ckpt.resolve() != (run / args.variants[0] / f"seed{seeds[0]}").resolve():
            raise input_error("--checkpoint", str(ckpt), "a folder <run>/<variant>/seed<N> written by `cft train`")
    else:
        run, seeds = Path(args.run), args.seeds
        where = run
        if not run.is_dir():
            raise input_error("--run", str(run), "a run folder written by `cft train`")
    first = read_meta(run / args.variants[0] / f"seed{seeds[0]}", "causal_model", args.variants[0])
    lo, hi = TrainConfig.scale_min, TrainConfig.scale_max
    metas = [read_meta(run / v / f"seed{seeds[0]}", "causal_model", v) for v in args.variants]
    run_mode(metas, args.counterfactual)  # a mode other than the one CFT was trained with: exit 2 before any work
    for meta in metas:
        if meta["variant"] != "none":
            lo, hi = meta["settings"]["train"]["scale_min"], meta["settings"]["train"]["scale_max"]
    scales = check_scales(args.scales if args.scales is not None else DEFAULT_SCALES, lo, hi)
    name = run_data_variant(first)
    if args.structures is not None or args.pairing is not None:
        structures = args.structures or (2 if args.pairing == "correlated" or name != "single" else 1)
        asked = data_variant_name(structures, args.pairing or "random")
        if asked != name:
            raise input_error("--structures/--pairing", f"{args.structures},{args.pairing}", f"the run's data variant {name!r} (it was trained on that)")
    test = build_variant(load_morphomnist(args.data), "test", name)
    report = Path(args.report) if args.report else where / "report.html"
    if not args.report:
        check_out(report, "--run" if args.run else "--checkpoint", kind="file", inputs={"--data": args.data})
    check_out(where / "results.json", "--run" if args.run else "--checkpoint", kind="file", inputs={"--data": args.data})
    results = evaluate_run(run, test, args.variants, seeds, scales, report, _command_line(), not args.no_progress,
                           where / "results.json", args.counterfactual)
    left = results["variants"][args.variants[0]]["per_seed"][0]["left_out_out_of_range"]
    if left:
        print(
            f"warning: {left} interventions per model fell outside the training range of area and were left out",
            file=sys.stderr,
        )
    print(markdown_table(results, args.variants))
    print(f"results: {where / 'results.json'}\nreport: {report}")
    return 0
