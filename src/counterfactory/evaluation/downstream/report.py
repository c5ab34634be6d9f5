"""The ``report.html`` of ``benchmark downstream``."""

from __future__ import annotations

import math

from ..report import HtmlReport
from .config import METRICS, SETTING_TITLES
from .data import CropSampler


def _fmt(d: dict) -> str:
    if d is None or d.get("mean") is None or (isinstance(d["mean"], float) and math.isnan(d["mean"])):
        return "–"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def _title(s: str) -> str:
    return SETTING_TITLES.get(s, s)


def verdicts(paired: list[dict], metric: str = "pixel_AP", group: str = "all") -> list[str]:
    """Plain sentences from the paired differences: a gain (or loss) only where the 95 % interval excludes 0."""
    out = []
    for row in paired:
        if row["metric"] != metric or row["group"] != group or row["n"] == 0:
            continue
        lo, hi = row["ci_low"], row["ci_high"]
        interval = "undefined (one seed)" if lo is None or math.isnan(lo) else f"[{lo:+.3f}, {hi:+.3f}]"
        word = {"gain": "GAIN over", "loss": "is below"}.get(row["verdict"], "no clear difference to")
        out.append(f"{_title(row['setting'])} {word} {_title(row['reference'])} on {metric} ({group}): "
                   f"Δ {row['mean']:+.3f}, 95 % interval {interval}, n={row['n']} paired seeds.")
    return out


def _diff_cell(row: dict | None) -> str:
    if row is None or row["n"] == 0 or row["mean"] is None or math.isnan(row["mean"]):
        return "–"
    lo, hi = row["ci_low"], row["ci_high"]
    if lo is None or math.isnan(lo):
        return f"{row['mean']:+.3f}"
    flag = {"gain": " gain", "loss": " loss"}.get(row["verdict"], "")
    return f"{row['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]{flag}"


def paired_rows(paired: list[dict], groups: list[str]) -> list[dict]:
    """Table rows: one per (setting, reference, group), a Δ [95 % interval] cell per metric."""
    index = {(r["setting"], r["reference"], r["group"], r["metric"]): r for r in paired}
    keys = list(dict.fromkeys((r["setting"], r["reference"]) for r in paired))
    rows = []
    for group in groups:
        for setting, ref in keys:
            rows.append({"group": group, "setting": _title(setting), "minus": _title(ref),
                         **{m: _diff_cell(index.get((setting, ref, group, m))) for m in METRICS}})
    return rows


def build_downstream_report(result: dict, data, cfg, examples: dict) -> HtmlReport:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = result["summary"]
    info = result["data"]
    r = HtmlReport(title="Counterfactory downstream benchmark")
    r.paragraph(
        f"Dataset {info['dataset']} ({info['layout']}), split: {info['split']}. Training: real defects per type "
        f"{ {t: n for t, n in info['train'].items()} }. Evaluation: held-out defects per type and defect-free images "
        f"{ {t: n for t, n in info['eval'].items()} }. Budget per run: {cfg.steps} steps × {cfg.batch_size} crops of "
        f"{cfg.crop} px ({cfg.defect_fraction:.0%} real defect crops; settings ii–iv: synthetic crops "
        f"{cfg.synthetic_fraction:.0%} of those, mix '{cfg.mix}'), U-Net {list(cfg.channels)}, AdamW lr {cfg.lr} after "
        f"{cfg.warmup_steps} warm-up steps, EMA {cfg.ema_decay} evaluated; seeds {list(cfg.seeds)} (paired); "
        f"{result['torch_threads']} CPU thread(s); total {result['seconds']} s wall, {result.get('cpu_seconds')} s CPU."
    )
    r.heading("Result")
    for metric in ("pixel_AP", "image_AUROC"):
        for v in verdicts(result.get("paired", []), metric):
            r.paragraph(v)
    rows = []
    for s, groups in summary.items():
        rows.append({"setting": SETTING_TITLES.get(s, s), **{m: _fmt(groups["all"][m]) for m in METRICS}})
    r.table(rows, columns=["setting", *METRICS])
    r.paragraph("mean ± sample std (ddof = 1) over seeds. Pixel metrics pool every pixel of the held-out defect images and the evaluated "
                "defect-free images; image AUROC uses the max of the average-pooled anomaly map.")

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.0))
    settings = list(summary)
    colors = ["#4c72b0", "#55a868", "#dd8452", "#8172b2"]
    for ax, m in zip(axes, METRICS):
        means = [summary[s]["all"][m]["mean"] for s in settings]
        stds = [summary[s]["all"][m]["std"] for s in settings]
        ax.bar(range(len(settings)), means, yerr=stds, capsize=4, color=colors[: len(settings)])
        for i, s in enumerate(settings):
            pts = [run["metrics"]["all"][m] for run in result["runs"] if run["setting"] == s]
            ax.scatter([i] * len(pts), pts, s=10, color="k", zorder=3)
        ax.set_xticks(range(len(settings)), settings, rotation=20)
        ax.set_title(m)
        lo = min([v for v in means if v == v] or [0])
        ax.set_ylim(max(0.0, lo - 0.15), min(1.0, max([v for v in means if v == v] or [1]) + 0.1))
    fig.tight_layout()
    r.figure(fig, caption="Bars: mean over seeds ± std; dots: single seeds.")

    r.heading("Paired differences (same seed: same initial weights, same real crops)")
    r.paragraph("Δ = setting − reference, mean over seeds, with the Student-t 95 % interval; 'gain' / 'loss' only "
                "where the interval excludes 0.")
    r.table(paired_rows(result.get("paired", []), ["all", *info["types"]]),
            columns=["group", "setting", "minus", *METRICS])

    r.heading("Per defect type")
    rows = []
    for t in info["types"]:
        for s, groups in summary.items():
            rows.append({"type": t, "setting": SETTING_TITLES.get(s, s), **{m: _fmt(groups[t][m]) for m in METRICS}})
    r.table(rows, columns=["type", "setting", *METRICS])

    r.heading("What each setting trains on")
    r.paragraph("One training batch's defect crops per setting (first seed): image, then mask. Rows after the real "
                "few-shot crops are the synthetic ones.")
    for s in settings:
        sampler = CropSampler(data, s, cfg, seed=cfg.seeds[0])
        x, y = sampler.batch(0)
        n = sampler.n_real + sampler.n_syn
        cells = [x[i] for i in range(n)]
        masks = [y[i] for i in range(n)]
        r.heading(_title(s), level=3)
        r.grid([cells, masks], col_titles=[("real" if i < sampler.n_real else "synthetic") for i in range(n)],
               row_titles=["crop", "mask"], cell_px=72)

    if examples:
        r.heading("Predictions on held-out images (first seed)")
        first = next(iter(examples.values()))
        titles = ["image", "ground truth"] + [SETTING_TITLES.get(s, s) for s in examples]
        grid, row_titles = [], []
        for j, (sid, idx, _) in enumerate(first):
            row = [data.eval_images[idx].float() / 255.0, data.eval_masks[idx].float()]
            row += [examples[s][j][2] for s in examples]
            grid.append(row)
            row_titles.append(f"{sid} ({data.eval_types[idx]})")
        r.grid(grid, col_titles=titles, row_titles=row_titles, cell_px=160)

    r.heading("Protocol")
    r.paragraph(result["protocol"])
    r.paragraph("Anomaly source for Perlin anomalies: the dataset's own defect-free training images (photometrically "
                "altered) or procedural Perlin textures, because the DTD textures DRAEM uses are not available offline.")
    r.table([{"key": k, "value": v} for k, v in result["config"].items()])
    return r
