"""Reg-CFT vs Seg-CFT per regime, tuned fairly: each variant's CFT learning rate is chosen on the validation
split, then every variant is trained and tested on the same seeds; prints mean ± std and the paired
difference Seg − Reg with a 95 % Student-t interval.

    .venv/bin/python benchmarks/cft_regimes.py --data ../shared/data/morphomnist --root runs/cft/regimes \\
        --data-variant pair-corr --modes latent,noise --seeds 0,1,2,3,4 --lrs 5e-4,1.5e-3 --max-minutes 60

Stages, each resumed after a kill (finished units are skipped, results cached as JSON):

1. ``<root>/<data-variant>/base``: the frozen predictors and one VAE (No-CFT) per seed, shared by every
   counterfactual mode and learning rate (the CFT run folders link to them);
2. tuning on ``--tune-seed``: for every mode, variant and learning rate, CFT then the validation-split area
   MAPE (scales 0.6, 0.8, 1.2, 1.4); the learning rate with the lowest MAPE is kept per (mode, variant);
3. every seed: No-CFT, Reg-CFT and Seg-CFT (each at its chosen learning rate) on the test split (the same 4
   scales; ``--full-test``: all 8 and composition / reversibility).

``--max-minutes`` stops between units; rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from counterfactory.causal.checkpoint import VARIANT_NAMES
from counterfactory.causal.metrics import DEFAULT_SCALES, evaluate_model
from counterfactory.causal.predictors import predictor_accuracy
from counterfactory.causal.scm import ParentSCM
from counterfactory.causal.structures import DATA_VARIANTS, build_variant
from counterfactory.causal.training import (
    TrainConfig,
    load_causal_model,
    load_predictors,
    train_cft,
    train_predictors,
    train_vae,
)
from counterfactory.data.morphomnist import StructureData, load_morphomnist
from counterfactory.evaluation.stats import mean_std, paired_difference
from counterfactory.io.manifest import atomic_write_json

VAL_SCALES = (0.6, 0.8, 1.2, 1.4)
COMPARED = ("area_mape", "area_mae", "other_area_drift", "other_area_shift", "other_change", "far_change",
            "intensity_mae", "test_nelbo")  # fmt: skip
PIXEL_X100 = {"other_change", "far_change"}


class OutOfTime(Exception):
    pass


def lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def cft_folder(root: Path, mode: str, lr: float) -> Path:
    """A run folder for one (mode, lr) whose predictors and VAEs are links to the shared base."""
    f = root / f"{mode}-{lr_tag(lr)}"
    f.mkdir(parents=True, exist_ok=True)
    for name in ("predictors", "none"):
        link = f / name
        if not link.exists():
            link.symlink_to(Path("..") / "base" / name, target_is_directory=True)
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/morphomnist")
    ap.add_argument("--root", default="runs/cft/regimes")
    ap.add_argument("--data-variant", default="pair-corr", choices=tuple(DATA_VARIANTS))
    ap.add_argument("--modes", default="latent,noise")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--lrs", default="5e-4,1.5e-3")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--cft-steps", type=int, default=TrainConfig.cft_steps)
    ap.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    ap.add_argument("--predictor-steps", type=int, default=TrainConfig.predictor_steps)
    ap.add_argument("--vae-channels", type=int, default=TrainConfig.vae_channels, help="generator width (first conv)")
    ap.add_argument("--z-dim", type=int, default=TrainConfig.z_dim, help="generator latent size")
    ap.add_argument("--full-test", action="store_true",
                    help="test on every default scale (0.6..1.4) with composition and reversibility (default: the 4 scales of tuning)")
    ap.add_argument("--eval-images", type=int, default=0, help="evaluate on the first N images of val and test (0: all)")
    ap.add_argument("--max-minutes", type=float, default=1e9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_end = time.time() + 60 * args.max_minutes
    modes = [m for m in args.modes.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lrs = [float(v) for v in args.lrs.split(",") if v]
    root = Path(args.root) / args.data_variant
    base = root / "base"
    data = load_morphomnist(args.data)
    train, val, test = (build_variant(data, sp, args.data_variant) for sp in ("train", "val", "test"))
    if args.eval_images:
        val, test = (StructureData(*(t[: args.eval_images] for t in (d.images, d.area, d.intensity, d.digit, d.source,
                                                                     d.csv_intensity))) for d in (val, test))  # fmt: skip
    scm = ParentSCM.fit(train.area, train.intensity, train.digit)
    steps = dict(cft_steps=args.cft_steps, vae_steps=args.vae_steps, predictor_steps=args.predictor_steps,
                 vae_channels=args.vae_channels, z_dim=args.z_dim)  # fmt: skip
    cfg0 = TrainConfig(**steps)
    test_scales = DEFAULT_SCALES if args.full_test else VAL_SCALES

    def tick(what: str) -> None:
        if time.time() > t_end:
            raise OutOfTime(what)

    def cached(path: Path, compute):
        if path.is_file():
            return json.loads(path.read_text())
        tick(str(path))
        t0, c0 = time.time(), time.process_time()
        value = compute()
        value["seconds"] = round(time.time() - t0, 1)
        value["cpu_seconds"] = round(time.process_time() - c0, 1)
        atomic_write_json(path, value)
        print(f"  {path.relative_to(root)}: {value['seconds']} s wall, {value['cpu_seconds']} s CPU", flush=True)
        return value

    def fine_tune(mode: str, variant: str, lr: float, seed: int) -> Path:
        vae_for(seed)
        folder = cft_folder(root, mode, lr)
        if not (folder / variant / f"seed{seed}" / "config.json").is_file():
            tick(f"{folder.name}/{variant}/seed{seed}")
            t0, c0 = time.time(), time.process_time()
            train_cft(folder, train, variant, seed, TrainConfig(**steps, cft_lr=lr, counterfactual=mode), False)
            print(f"  trained {folder.name}/{variant}/seed{seed}: {time.time() - t0:.0f} s wall, "
                  f"{time.process_time() - c0:.0f} s CPU", flush=True)
        return folder / variant / f"seed{seed}"

    out_summary: dict = {"data_variant": args.data_variant, "seeds": seeds, "lrs": lrs, "steps": steps,
                         "eval_images": len(test), "test_scales": list(test_scales)}
    try:
        tick("predictors")
        train_predictors(base, train, scm, cfg0, False, args.data_variant)
        regressor, segmentor, _ = load_predictors(base / "predictors")
        out_summary["predictors"] = cached(
            root / "predictors_test.json",
            lambda: predictor_accuracy(regressor, segmentor, scm, test.images, test.area, test.intensity))
        corr = torch.corrcoef(train.area.T)[0, 1] if train.num_structures > 1 else torch.tensor(float("nan"))
        out_summary["train_area_correlation"] = float(corr)
        trained_vaes: set[int] = set()

        def vae_for(seed: int) -> None:  # trained when first needed, so that a stop leaves whole seeds done
            if seed not in trained_vaes:
                meta_file = base / "none" / f"seed{seed}" / "config.json"
                if not (meta_file.is_file() and "train_nelbo" in json.loads(meta_file.read_text())):
                    tick(f"vae seed{seed}")
                t0, c0 = time.time(), time.process_time()
                train_vae(base, train, scm, cfg0, seed, False, args.data_variant)  # a finished one is returned as is
                print(f"  base/none/seed{seed}: {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU",
                      flush=True)
                trained_vaes.add(seed)

        def val_eval(mode, variant, lr, seed):
            def run():
                vae, scm_v, _ = load_causal_model(fine_tune(mode, variant, lr, seed) if variant != "none"
                                                  else base / "none" / f"seed{seed}")  # fmt: skip
                return evaluate_model(vae, scm_v, regressor, segmentor, val, VAL_SCALES, mode=mode, reverse=False)
            return cached(root / "val" / f"{mode}-{variant}-{lr_tag(lr)}-seed{seed}.json", run)

        chosen: dict = {}
        for mode in modes:
            for variant in ("reg", "seg"):
                if len(lrs) == 1:  # nothing to choose
                    chosen[f"{mode}/{variant}"] = lrs[0]
                    continue
                scores = {lr: val_eval(mode, variant, lr, args.tune_seed)["area_mape"] for lr in lrs}
                chosen[f"{mode}/{variant}"] = best = min(lrs, key=lambda lr: scores[lr])
                print(f"tuning {mode}/{variant}: val area MAPE " + ", ".join(f"lr {lr:g}: {v:.2f} %" for lr, v in scores.items())
                      + f" -> lr {best:g}", flush=True)  # fmt: skip
        out_summary["chosen_lr"] = chosen

        def test_eval(mode, variant, seed):
            def run():
                vae_for(seed)
                folder = (base / "none" / f"seed{seed}" if variant == "none"
                          else fine_tune(mode, variant, chosen[f"{mode}/{variant}"], seed))  # fmt: skip
                vae, scm_v, _ = load_causal_model(folder)
                return evaluate_model(vae, scm_v, regressor, segmentor, test, test_scales, mode=mode, reverse=args.full_test)
            tag = "none" if variant == "none" else f"{variant}-{lr_tag(chosen[f'{mode}/{variant}'])}"
            tag += "-full" if args.full_test else ""
            return cached(root / "test" / f"{mode}-{tag}-seed{seed}.json", run)

        results = {m: {v: {} for v in ("none", "reg", "seg")} for m in modes}
        done = []
        try:
            for s in seeds:  # seeds outer: a stop leaves whole seeds done in every mode
                for mode in modes:
                    for v in ("none", "reg", "seg"):
                        results[mode][v][s] = test_eval(mode, v, s)
                done.append(s)
        except OutOfTime as exc:
            print(f"stopped at --max-minutes before {exc}; rerun the same command to continue", file=sys.stderr)
        if len(done) < len(seeds):
            print(f"partial: the tables below cover the finished seeds {done} of {seeds}", flush=True)
        seeds = done
        if not seeds:
            return
    except OutOfTime as exc:
        print(f"stopped at --max-minutes before {exc}; rerun the same command to continue", file=sys.stderr)
        return
    out_summary["seeds"] = seeds
    out_summary["modes"] = {}
    print(f"\n{args.data_variant}: train area correlation r = {out_summary['train_area_correlation']:.3f}; "
          f"predictors on test: {json.dumps({k: round(v, 3) for k, v in out_summary['predictors'].items() if k not in ('seconds', 'cpu_seconds')})}")
    for mode in modes:
        print(f"\n### {args.data_variant}, counterfactual = {mode}; seeds {seeds}; lr reg {chosen[f'{mode}/reg']:g}, "
              f"seg {chosen[f'{mode}/seg']:g}, {args.cft_steps} CFT steps")
        print("| metric | No-CFT | Reg-CFT | Seg-CFT | Seg − Reg [95 % CI] |")
        print("|---|---|---|---|---|")
        table = {}
        for name in COMPARED:
            scale = 100.0 if name in PIXEL_X100 else 1.0
            per = {v: [results[mode][v][s].get(name) for s in seeds] for v in ("none", "reg", "seg")}
            if any(x is None for x in per["reg"]):
                continue
            per = {v: [float(x) * scale for x in xs] for v, xs in per.items()}
            ms = {v: mean_std(xs) for v, xs in per.items()}
            d = paired_difference(per["seg"], per["reg"])
            table[name] = {"per_seed": per, "seg_minus_reg": d}
            star = " *" if d["excludes_zero"] else ""
            print(f"| {name}{' (x100)' if scale != 1 else ''} | " + " | ".join(f"{ms[v][0]:.3f} ± {ms[v][1]:.3f}" for v in ("none", "reg", "seg"))
                  + f" | {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{star} |")  # fmt: skip
        secs = sum(results[mode][v][s]["seconds"] for v in ("none", "reg", "seg") for s in seeds)
        print(f"(* interval excludes 0; evaluation {secs / 60:.1f} min for this mode)")
        out_summary["modes"][mode] = table
    out_summary["cpu_minutes_this_run"] = round(time.process_time() / 60, 1)
    atomic_write_json(root / "summary.json", out_summary)
    print(f"\nthis invocation: {time.process_time() / 60:.1f} CPU-minutes (finished units are cached, not recounted)")
    print(f"\nsummary: {root / 'summary.json'}  ({', '.join(VARIANT_NAMES.values())})")


if __name__ == "__main__":
    main()
