"""Reference-insertion ablation: settings of the reference pipeline (adapter × guidance × strength) against copy-paste
and Poisson blending on the AnydoorMed tasks, over paired sampling seeds; prints a markdown table.

Every seed runs :func:`counterfactory.evaluation.insertion.evaluate_insertion` into ``<out>/seed<k>`` (results are
saved per case, so a killed run resumes where it stopped); the same cases and, per case, the same noise for every
setting of one seed. Statistics (:mod:`counterfactory.evaluation.stats`): per-case metrics (``ref_cos``, ``struct``,
``seam``) as mean ± std over seeds of the per-seed case means; paired differences over cases (each case averaged
over seeds) with 95 % Student-t intervals; KID per seed, paired over seeds.

    python benchmarks/reference_ablation.py --data ../shared/data/magnetic_tile --out runs/ref_ablation \\
        --adapters full=runs/ref_full,no_hint=runs/ref_no_hint --settings ours=full:3:1,no_hint=no_hint:3:1 \\
        --tasks insertion --n 40 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch


def parse_settings(text: str, adapters: dict[str, str]) -> dict[str, tuple]:
    """``name=adapter:guidance:strength[:band[:paste[:grain]]],...`` → {name: (adapter, guidance, strength, band,
    paste, grain)}; band: the pipeline's ``refine_band`` (``-`` or absent: the whole box), paste: ``plain``
    (default) or ``poisson``, grain: ``grain_transfer`` (default 0)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, spec = item.split("=")
        key, g, st, *rest = spec.split(":")
        if key not in adapters:
            raise SystemExit(f"--settings: {name} uses adapter {key!r}, not one of {sorted(adapters)}")
        band = None if not rest or rest[0] in ("", "-") else float(rest[0])
        paste = rest[1] if len(rest) > 1 and rest[1] else "plain"
        grain = float(rest[2]) if len(rest) > 2 else 0.0
        out[name] = (key, float(g), float(st), band, paste, grain)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--adapters", required=True, help="key=folder,... (reference adapters)")
    ap.add_argument("--settings", required=True, help="name=adapter:guidance:strength[:band[:paste[:grain]]],...")
    ap.add_argument("--tasks", default="insertion",
                    help="task[=setting+setting],... : the tasks, each with all settings or only the named ones")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    ap.add_argument("--extractor-weights", default="weights/compact_extractor_mt")
    ap.add_argument("--reference", default="ours", help="the setting the paired differences start from")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--aggregate-only", action="store_true",
                    help="no sampling: read the finished seed folders (metrics.json) and print the tables")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)


    adapters = dict(item.split("=") for item in args.adapters.split(","))
    settings = parse_settings(args.settings, adapters)
    seeds = [int(s) for s in args.seeds.split(",")]
    task_settings = {}
    for item in filter(None, args.tasks.split(",")):
        t, _, names = item.partition("=")
        task_settings[t] = [n for n in names.split("+") if n] if names else list(settings)
    tasks = list(task_settings)
    if args.aggregate_only:
        per_seed = {(t, s): json.loads((Path(args.out) / t / f"seed{s}" / "metrics.json").read_text())
                    for t in tasks for s in seeds}
        report(args, per_seed, tasks, seeds, task_settings, settings, per_seed[(tasks[0], seeds[0])]["extractor"])
        return

    from counterfactory.data import open_dataset
    from counterfactory.data.splits import few_shot_split, load_split
    from counterfactory.evaluation.features import load_compact_extractor
    from counterfactory.evaluation.insertion import (
        InsertionEvalConfig,
        baseline_method,
        build_cases,
        evaluate_insertion,
        real_defect_crops,
    )
    from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline

    ds = open_dataset(args.data, skip_broken=True)
    first = next(iter(adapters.values()))
    split = load_split(Path(first) / "split.json") if (Path(first) / "split.json").is_file() else few_shot_split(ds)
    cases = [c for t in tasks for c in build_cases(ds, split, t, n=args.n, seed=0)]
    index = ds.by_id()
    held = [index[i] for t in split.held_out if t != "good" for i in split.held_out[t] if i in index]
    ext = load_compact_extractor(args.extractor_weights)
    real = real_defect_crops(held, ext.input_size)
    pipes = {}
    for key, folder in adapters.items():
        if any(s[0] == key for s in settings.values()):
            pipes[key] = ReferenceInpaintPipeline.from_compact(folder)
            pipes[key].set_progress_bar_config(disable=True)

    def model_fn(key, guidance, strength, band, paste, grain, seed):
        pipe = pipes[key]

        def fn(target, box, reference, case):
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(case.case_id.rsplit("-", 1)[1]))
            if bool((target == target[:1]).all()) and bool((reference == reference[:1]).all()):
                target, reference = target[:1], reference[:1]  # gray data stored as RGB: keep the result gray
            return pipe(target, reference, box=box, num_inference_steps=args.steps, guidance_scale=guidance,
                        generator=g, strength=strength, max_box_side=10**9, refine_band=band,
                        paste_mode=paste, grain_transfer=grain).images[0]
        return fn

    per_seed = {}  # (task, seed) -> evaluate_insertion summary; tasks in order, so the first finishes first
    for task in tasks:
        task_cases = [c for c in cases if c.task == task]
        for seed in seeds:
            methods = {name: model_fn(*settings[name], seed) for name in task_settings[task]}
            methods.update({m: baseline_method(m) for m in ("copy_paste", "poisson")})
            identity = {"adapters": {k: str(Path(v).resolve()) for k, v in adapters.items()},
                        "settings": {k: list(settings[k]) for k in task_settings[task]}, "steps": args.steps,
                        "seed": seed}
            with torch.inference_mode():
                per_seed[(task, seed)] = evaluate_insertion(
                    task_cases, methods, ext, real,
                    InsertionEvalConfig(out=str(Path(args.out) / task / f"seed{seed}"), seed=seed),
                    identity=identity, progress=True, log=lambda s: None)

    report(args, per_seed, tasks, seeds, task_settings, settings, ext.name)


def report(args, per_seed, tasks, seeds, task_settings, settings, name) -> None:
    from counterfactory.evaluation.stats import paired_difference, summarize

    keys = [f"ref_cos_{name}", f"ref_cos_{name}_shuffled", "struct", "struct_shuffled", "seam"]
    kid = f"KID_{name}_crop"
    n_cases = {t: len({r["case_id"] for r in per_seed[(t, seeds[0])]["per_case"]}) for t in tasks}
    summary = {"tasks": {}, "seeds": seeds, "n_cases": n_cases,
               "steps": args.steps, "settings": {k: list(v) for k, v in settings.items()}}
    for task in tasks:
        methods = [*task_settings[task], "copy_paste", "poisson"]
        table = {}
        case_vals = {}  # (method, key) -> {case_id: [per seed]}
        for seed in seeds:
            for rec in per_seed[(task, seed)]["per_case"]:
                if rec["task"] != task:
                    continue
                for k in keys:
                    case_vals.setdefault((rec["method"], k), {}).setdefault(rec["case_id"], []).append(rec[k])
        for m in methods:
            row = {}
            for k in keys:
                by_case = case_vals.get((m, k), {})
                per_seed_means = [float(np.nanmean([v[i] for v in by_case.values()])) for i in range(len(seeds))]
                row[k] = summarize(per_seed_means)
            row["KID"] = summarize([next(r.get(kid) for r in per_seed[(task, s)]["rows"] if r["task"] == task and r["method"] == m)
                                    for s in seeds])
            table[m] = row
        diffs = {}
        if args.reference not in methods:
            summary["tasks"][task] = {"table": table}
            continue
        ids = sorted(case_vals.get((args.reference, keys[0]), {}))
        for m in methods:
            if m == args.reference:
                continue
            d = {}
            for k in keys:
                a = [float(np.nanmean(case_vals[(args.reference, k)][c])) for c in ids]
                b = [float(np.nanmean(case_vals[(m, k)][c])) for c in ids]
                d[k] = paired_difference(a, b)
            d["KID"] = paired_difference(
                [next(r.get(kid) for r in per_seed[(task, s)]["rows"] if r["task"] == task and r["method"] == args.reference) for s in seeds],
                [next(r.get(kid) for r in per_seed[(task, s)]["rows"] if r["task"] == task and r["method"] == m) for s in seeds])
            diffs[m] = d
        summary["tasks"][task] = {"table": table, "paired_vs_" + args.reference: diffs}

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=float))

    def ms(s, digits=3):
        return "–" if s["n"] == 0 or math.isnan(s["mean"]) else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    def ci(d, digits=3):
        if d["n"] < 2:
            return "–"
        star = "*" if d["excludes_zero"] else ""
        return f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]{star}"

    for task in tasks:
        t = summary["tasks"][task]
        print(f"\n{task} ({summary['n_cases'][task]} cases x {len(seeds)} seeds, {args.steps} steps)")
        print("| method | ref_cos | ref_cos shuffled | struct | struct shuffled | seam | KID |")
        print("|---|---|---|---|---|---|---|")
        for m in t["table"]:
            r = t["table"][m]
            print(f"| {m} | {ms(r[keys[0]])} | {ms(r[keys[1]])} | {ms(r['struct'])} | {ms(r['struct_shuffled'])} | "
                  f"{ms(r['seam'], 2)} | {ms(r['KID'], 4)} |")
        if "paired_vs_" + args.reference not in t:
            continue
        print(f"\npaired differences {args.reference} − method (95 % t-interval; * excludes 0)")
        print("| method | Δ ref_cos | Δ struct | Δ seam | Δ KID |")
        print("|---|---|---|---|---|")
        for m, d in t["paired_vs_" + args.reference].items():
            print(f"| {m} | {ci(d[keys[0]])} | {ci(d['struct'])} | {ci(d['seam'], 2)} | {ci(d['KID'], 4)} |")


if __name__ == "__main__":
    main()
