"""The whole downstream benchmark (every setting × seed, paired statistics, JSON + HTML) and its learning curve."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ...errors import input_error
from ...io.images import load_image, save_image
from ...io.manifest import Manifest, atomic_write_json
from ..stats import paired_difference, summarize
from ..suite import _clean
from .config import METRICS, DownstreamConfig
from .data import DownstreamData, load_downstream_data
from .metrics import evaluate_maps, predict
from .report import build_downstream_report
from .training import train_segmenter

PROTOCOL = """A small U-Net segmenter is trained on crops under the same budget in every setting (same steps, batch of
real and defect-free crops, crop size, learning-rate schedule) and evaluated on the held-out real defects plus
held-out defect-free images. Settings (what comes on top of the real few-shot defect crops): real = nothing;
ours = generated defects; perlin = DRAEM-style Perlin anomalies on defect-free crops (anomaly source: the
dataset's own defect-free images or procedural textures); copypaste = real training defects pasted onto
defect-free crops. Paired: for one seed, every setting starts from the same initial weights and sees the same
real and defect-free crops at every step (three independent random streams per step). Evaluation on whole
images at native resolution: pixel AP, pixel F1-max, pixel AUROC over every pixel of the held-out defect images
and the evaluated defect-free images, and image AUROC (score = max of the average-pooled map), overall and per
type (that type's images + the same defect-free images). Across seeds: mean ± sample std (ddof = 1); between
settings: the mean paired difference over seeds with a Student-t 95 % interval. A gain is claimed only where
that interval lies above 0."""

COMPARE_TO = ("real", "copypaste")


def run_downstream(cfg: DownstreamConfig, log=print) -> dict:
    """Train and evaluate every setting × seed (resuming finished runs and interrupted trainings from ``cfg.out``),
    then write ``downstream.json`` and ``report.html``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise input_error("out", cfg.out, "a folder (or a path that does not exist yet)")
    data = load_downstream_data(cfg, log=log)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out / "runs.jsonl")
    done = {r["id"]: r for r in manifest.read() if r.get("config") == cfg.result_key(r.get("setting", ""))}
    runs, examples = [], {}
    for setting in cfg.active_settings():
        for seed in cfg.seeds:
            rid = f"{setting}/seed{seed}"
            if rid in done:
                log(f"{rid}: done earlier (runs.jsonl), reusing")
                runs.append(done[rid])
                if seed == cfg.seeds[0]:
                    ex = _load_examples(out / "maps" / setting, data)
                    if ex is not None:
                        examples[setting] = ex
                continue
            t1, c1 = time.perf_counter(), time.process_time()
            model, summary = train_segmenter(data, setting, seed, cfg, out / "runs" / cfg.run_folder_name(setting, seed))
            t_train, c_train = time.perf_counter() - t1, time.process_time() - c1
            maps = predict(model, data.eval_images)
            res = evaluate_maps(maps, data.eval_masks, data.eval_types, data.types, cfg.image_pool)
            rec = {"id": rid, "setting": setting, "seed": seed, "metrics": res, "config": cfg.result_key(setting),
                   "final_loss": summary["final_loss"], "resumed_from": summary["resumed_from"],
                   "train_seconds": round(t_train, 1), "train_cpu_seconds": round(c_train, 1),
                   "seconds": round(time.perf_counter() - t1, 1), "cpu_seconds": round(time.process_time() - c1, 1)}
            manifest.append(rec)
            runs.append(rec)
            a = res["all"]
            log(f"{rid}: pixel AP {a['pixel_AP']:.3f}  F1max {a['pixel_F1max']:.3f}  pixel AUROC {a['pixel_AUROC']:.3f}  "
                f"image AUROC {a['image_AUROC']:.3f}  ({rec['seconds']} s wall, {rec['cpu_seconds']} s CPU)")
            if seed == cfg.seeds[0]:
                examples[setting] = _example_maps(maps, data)
                _save_examples(examples[setting], out / "maps" / setting)
    result = {
        "format": "counterfactory.downstream/2",
        "config": asdict(cfg),
        "data": data.info,
        "protocol": PROTOCOL.replace("\n", " "),
        "summary": summarize_runs(runs, data.types),
        "paired": paired_table(runs, data.types, cfg.seeds),
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in runs],
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(out / "downstream.json", _clean(result))
    build_downstream_report(result, data, cfg, examples).save(out / "report.html")
    log(f"wrote {out / 'downstream.json'} and {out / 'report.html'} ({result['seconds']} s)")
    return result


def summarize_runs(runs: list[dict], types: list[str]) -> dict:
    """setting → group ("all" or a type) → metric → {"mean", "std" (sample, ddof = 1), "n"}."""
    out: dict = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        rs = [r for r in runs if r["setting"] == setting]
        out[setting] = {}
        for group in ["all", *types]:
            out[setting][group] = {}
            for m in METRICS:
                s = summarize([r["metrics"].get(group, {}).get(m, math.nan) for r in rs])
                out[setting][group][m] = {"mean": s["mean"], "std": s["std"], "n": s["n"]}
    return out


def paired_table(runs: list[dict], types: list[str], seeds: tuple[int, ...] | list[int]) -> list[dict]:
    """Paired differences (same seed) of every setting to real-only and to copy-paste, per group and metric.

    One row per (setting, reference, group, metric): mean difference, sample std, 95 % Student-t interval,
    ``excludes_zero`` and ``verdict`` ("gain" / "loss" only where the interval excludes 0, else "no clear difference").
    """
    by = {(r["setting"], r["seed"]): r["metrics"] for r in runs}
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    rows = []
    for ref in COMPARE_TO:
        if ref not in settings:
            continue
        for setting in settings:
            if setting in COMPARE_TO[: COMPARE_TO.index(ref) + 1]:
                continue  # no self-comparison; copy-paste is compared to real-only once
            common = [s for s in seeds if (setting, s) in by and (ref, s) in by]
            for group in ["all", *types]:
                for m in METRICS:
                    a = [by[(setting, s)].get(group, {}).get(m, math.nan) for s in common]
                    b = [by[(ref, s)].get(group, {}).get(m, math.nan) for s in common]
                    d = paired_difference(a, b)
                    verdict = "no clear difference"
                    if d["excludes_zero"]:
                        verdict = "gain" if d["mean"] > 0 else "loss"
                    rows.append({"setting": setting, "reference": ref, "group": group, "metric": m, **d,
                                 "verdict": verdict})
    return rows


def learning_curve(cfg: DownstreamConfig, every: int, max_steps: int, setting: str = "real",
                   max_minutes: float | None = None, per_type: bool = True, log=print) -> list[dict]:
    """Evaluate one setting at steps ``every, 2·every, …, max_steps`` for each seed of ``cfg``.

    The budget grows in the outer loop and the seeds in the inner one, so a time limit leaves every seed at the
    same step. Rows go to ``<out>/curve-seed<k>.jsonl`` as they are measured (a rerun resumes there; one file per
    seed, so seeds may also run in parallel processes), each with the step, the seed, the metrics and the seconds
    spent training and evaluating. ``per_type=False`` evaluates the "all" group only (a third of the metric cost).
    Returns all rows for ``cfg.seeds``.
    """
    if not isinstance(every, int) or every < 1:
        raise input_error("every", every, "an integer >= 1")
    if not isinstance(max_steps, int) or max_steps < every:
        raise input_error("max_steps", max_steps, f"an integer >= every ({every})")
    out = Path(cfg.out)
    data = load_downstream_data(cfg, log=log)
    manifests = {seed: Manifest(out / f"curve-seed{seed}.jsonl") for seed in cfg.seeds}
    key = cfg.run_key(setting)
    rows = [r for seed, m in manifests.items() for r in m.read() if r.get("config") == key and r.get("seed") == seed
            and r.get("eval_good") == cfg.eval_good and r.get("per_type") == per_type]
    done = {(r["seed"], r["step"]) for r in rows}
    t0 = time.perf_counter()
    for step in range(every, max_steps + 1, every):
        for seed in cfg.seeds:
            if (seed, step) in done:
                continue
            if max_minutes is not None and time.perf_counter() - t0 > max_minutes * 60:
                log(f"time limit of {max_minutes} min reached before step {step}")
                return sorted(rows, key=lambda r: (r["step"], r["seed"]))
            t1, c1 = time.perf_counter(), time.process_time()
            model, _ = train_segmenter(data, setting, seed, replace(cfg, steps=step),
                                       out / "runs" / cfg.run_folder_name(setting, seed), steps=step,
                                       checkpoint_every=every)
            t2, c2 = time.perf_counter(), time.process_time()
            res = evaluate_maps(predict(model, data.eval_images), data.eval_masks, data.eval_types,
                                data.types if per_type else [], cfg.image_pool)
            rec = {"id": f"{setting}/seed{seed}/step{step}", "setting": setting, "seed": seed, "step": step,
                   "metrics": res, "config": key, "eval_good": cfg.eval_good, "per_type": per_type,
                   "train_seconds": round(t2 - t1, 1), "eval_seconds": round(time.perf_counter() - t2, 1),
                   "train_cpu_seconds": round(c2 - c1, 1), "eval_cpu_seconds": round(time.process_time() - c2, 1)}
            manifests[seed].append(rec)
            rows.append(rec)
            log(f"{setting}/seed{seed} step {step}: pixel AP {res['all']['pixel_AP']:.4f} "
                f"({rec['train_seconds']} s training, {rec['eval_seconds']} s evaluation)")
    return sorted(rows, key=lambda r: (r["step"], r["seed"]))


def choose_budget(rows: list[dict], metric: str = "pixel_AP", group: str = "all") -> dict:
    """The smallest evaluated step whose mean over seeds is within one standard error of the best mean.

    Also says whether the curve was still rising (best mean at the last step measured).
    """
    steps = sorted({r["step"] for r in rows})
    if not steps:
        raise input_error("rows", rows, "learning-curve rows with at least one step")
    curve = []
    for st in steps:
        s = summarize([r["metrics"][group][metric] for r in rows if r["step"] == st])
        curve.append({"step": st, **s})
    best = max(curve, key=lambda c: c["mean"])
    se = best["std"] / math.sqrt(best["n"]) if best["n"] > 1 else 0.0
    chosen = next(c for c in curve if c["mean"] >= best["mean"] - se)
    return {"chosen_step": chosen["step"], "best_step": best["step"], "best_mean": best["mean"], "best_se": se,
            "still_rising": best["step"] == steps[-1], "curve": curve}


def _example_maps(maps, data: DownstreamData, per_type: int = 2) -> list[tuple[str, int, torch.Tensor | None]]:
    """A few evaluation images to show (the first of each type + one defect-free): (id, index, map)."""
    from ...data import GOOD

    picks = []
    for t in [*data.types, GOOD]:
        ids = [i for i, tt in enumerate(data.eval_types) if tt == t][: (per_type if t != GOOD else 1)]
        picks += [(data.eval_ids[i], i) for i in ids]
    return [(sid, i, maps[i]) for sid, i in picks]


def _save_examples(examples, folder: Path) -> None:
    for _sid, i, m in examples:
        save_image(m, folder / f"{i}.png")


def _load_examples(folder: Path, data: DownstreamData):
    """The first seed's example maps saved by an earlier (resumed) run, or None."""
    picks = _example_maps([None] * len(data.eval_images), data)
    out = []
    for sid, i, _ in picks:
        f = folder / f"{i}.png"
        if not f.is_file():
            return None
        out.append((sid, i, load_image(f, mode="L")))
    return out
