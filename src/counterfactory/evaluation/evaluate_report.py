"""The ``report.html`` of ``evaluate``: tables, plots and image grids built from the metrics dict."""

from __future__ import annotations

import math

import numpy as np
import torch

from .report import HtmlReport

_ARROWS = {
    "FD": "↓", "KID": "↓", "precision": "↑", "recall": "↑", "IC_dist": "↑ (≈ real)",
    "outside_mask_max_abs_change": "↓", "outside_mask_mean_abs_change": "↓", "outside_psnr": "↑", "outside_ssim": "↑",
    "mask_changed_fraction": "↑", "outside_changed_fraction": "↓", "change_mask_iou": "↑",
}


def _arrow(key: str) -> str:
    for k, a in _ARROWS.items():
        if key.startswith(k) or key.startswith("FID") and k == "FD":
            return a
    return ""


def _pm(m: dict, key: str) -> str | float | None:
    if key not in m:
        return None
    v = m[key]
    s = m.get(f"{key}_std")
    if s is None or v is None or (isinstance(v, float) and math.isnan(v)):
        return v
    return f"{v:.4g} ± {s:.2g}"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _pca2(*sets: torch.Tensor) -> list[np.ndarray]:
    x = torch.cat(sets).double()
    mu = x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x - mu, full_matrices=False)
    proj = ((x - mu) @ v[:2].t()).numpy()
    out, i = [], 0
    for s in sets:
        out.append(proj[i : i + s.shape[0]])
        i += s.shape[0]
    return out


def build_evaluate_report(metrics, samples, gen_v, train_v, ref_v, matches, per_image_loc) -> HtmlReport:
    ext = metrics["extractor"]
    name = ext["name"]
    fd = "FID" if name == "inception" else f"FD_{name}"
    kid = "KID" if name == "inception" else f"KID_{name}"
    per_type = metrics["per_type"]
    r = HtmlReport(title="Counterfactory evaluation")
    inp = metrics["inputs"]
    r.paragraph(
        f"Generated: {inp['generated']} ({inp['generated_layout']} layout). Real: {inp['real']} ({inp['real_layout']}). "
        + (f"Split: {inp['split']} (reference = held-out real defects; clusters = training shots). " if inp.get("split") else
           "No split: every real defect is both the reference and a cluster centre. ")
        + f"Extractor: {name} ({ext['num_features']}-d, input {ext['input_size']} px"
        + (", trained here self-supervised" if ext.get("trained_here") else "") + f", weights {ext.get('weights')})."
        + f" Run time {metrics['seconds']} s."
    )

    # ---- at a glance -------------------------------------------------------------------------------
    r.heading("At a glance")
    r.paragraph("Arrows: ↓ lower is better, ↑ higher is better. “_crop” = a square crop around the mask (the defect "
                "itself); the plain columns use the whole image. IC_dist is diversity: compare it with the real "
                "defects' own value (…_real), higher than that usually means corrupted backgrounds, much lower means copies.")
    has_crop = any(f"{fd}_crop" in m for m in per_type.values())
    suffix = "_crop" if has_crop else ""
    cols = ["type", "generated", "real ref", f"{kid}{suffix} ↓", f"{fd}{suffix} ↓", f"precision{suffix} ↑",
            f"recall{suffix} ↑", f"IC_dist{suffix} (real)"]
    loc_cols = ["outside_mask_max_abs_change", "mask_changed_fraction", "change_mask_iou"]
    has_loc = bool(metrics["locality"])
    if has_loc:
        cols += [f"{c} {_ARROWS[c]}" for c in loc_cols]
    rows = []
    for t, m in per_type.items():
        c = metrics["counts"].get(t, {})
        ic, icr = m.get(f"IC_dist_{name}{suffix}"), m.get(f"IC_dist_{name}{suffix}_real")
        row = {
            "type": t, "generated": c.get("generated", sum(v["generated"] for v in metrics["counts"].values()) if t not in metrics["counts"] else None),
            "real ref": c.get("real_reference", sum(v["real_reference"] for v in metrics["counts"].values()) if t not in metrics["counts"] else None),
            f"{kid}{suffix} ↓": _pm(m, f"{kid}{suffix}"), f"{fd}{suffix} ↓": m.get(f"{fd}{suffix}"),
            f"precision{suffix} ↑": m.get(f"precision_{name}{suffix}"), f"recall{suffix} ↑": m.get(f"recall_{name}{suffix}"),
            f"IC_dist{suffix} (real)": None if ic is None else (f"{ic:.3g}" + (f" ({icr:.3g})" if icr is not None else "")),
        }
        for k in loc_cols:
            row[f"{k} {_ARROWS[k]}"] = m.get(k)
        rows.append(row)
    r.table(rows, columns=cols)

    if metrics.get("appearance"):
        r.heading("Appearance: generated vs real defects", level=3)
        r.paragraph("Medians over images, [10th–90th percentile]. ring_contrast: mean luminance inside the mask minus "
                    "a ring around it. grain_ratio: high-pass energy inside the mask over that around it (1 = the "
                    "surface's grain; far below 1 = a smooth fill a detector can learn as a shortcut).")
        arows = []
        for t, block in metrics["appearance"].items():
            row = {"type": t}
            for k, v in block.items():
                for who in ("generated", "real"):
                    s = v[who]
                    row[f"{k} {who}"] = (f"{s['median']:.3g} [{s['p10']:.3g}–{s['p90']:.3g}] n={s['n']}"
                                         if s["n"] else "–")
            arows.append(row)
        r.table(arows)

    # ---- plots -------------------------------------------------------------------------------------
    plt = _plt()
    types = [t for t in per_type]
    fig, axes = plt.subplots(1, 2 if has_crop else 1, figsize=(10 if has_crop else 5.5, 3.4), squeeze=False)
    for ax, suf, title in zip(axes[0], ["", "_crop"], ["whole image", "defect crop"]):
        vals = [per_type[t].get(f"{kid}{suf}", np.nan) for t in types]
        errs = [per_type[t].get(f"{kid}{suf}_std", 0.0) for t in types]
        ax.bar(range(len(types)), vals, yerr=errs, color="#4c72b0", capsize=4, label="generated vs real reference")
        fl = metrics.get("real_vs_real") or {}
        for i, t in enumerate(types):
            for rt in matches.get(t, []):
                v = fl.get(rt, {}).get(f"KID_{name}{suf}_train_vs_heldout")
                if v is not None:
                    ax.plot([i - 0.4, i + 0.4], [v, v], color="#dd8452", lw=2,
                            label="real train vs real held-out" if i == 0 else None)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_xticks(range(len(types)), types, rotation=20)
        ax.set_title(f"{kid} ({title}) ↓")
        ax.legend(fontsize=7)
    fig.tight_layout()
    r.figure(fig, caption="KID per type, mean ± std over subsets. The orange line is the same number between the real "
                          "training shots and the real held-out defects: what real data itself scores at this size.")

    if has_crop:
        gtypes = list(matches)
        fig, axes = plt.subplots(1, len(gtypes), figsize=(3.6 * len(gtypes), 3.4), squeeze=False)
        for ax, t in zip(axes[0], gtypes):
            tr = torch.cat([train_v[x].crop for x in matches[t]])
            rf = torch.cat([ref_v[x].crop for x in matches[t]])
            g = gen_v[t].crop
            a, b, c = _pca2(tr, rf, g)
            ax.scatter(c[:, 0], c[:, 1], s=8, alpha=0.5, c="#4c72b0", label=f"generated ({len(c)})")
            if metrics["inputs"].get("split"):
                ax.scatter(b[:, 0], b[:, 1], s=14, c="#55a868", marker="s", label=f"real held-out ({len(b)})")
            lab = "real train" if metrics["inputs"].get("split") else "real (all)"
            ax.scatter(a[:, 0], a[:, 1], s=60, c="#c44e52", marker="*", label=f"{lab} ({len(a)})")
            ax.set_title(f"{t}: defect-crop features, PCA")
            ax.legend(fontsize=7)
        fig.tight_layout()
        r.figure(fig, caption="Generated defects should cover the cloud of real held-out defects, not just sit on the "
                              "training shots (memorisation) nor drift away from all real ones.")

    if has_loc:
        keys = ["outside_mask_max_abs_change", "mask_changed_fraction", "change_mask_iou"]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.0))
        for ax, k in zip(axes, keys):
            for t, acc in per_image_loc.items():
                v = np.array([x for x in acc[k] if not math.isnan(x)])
                if v.size:
                    ax.hist(v, bins=20, range=(0, 1), alpha=0.55, label=t)
            ax.set_title(f"{k} {_ARROWS[k]}", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        r.figure(fig, caption=f"Per-image locality. A change counts when |Δ| > {metrics['settings']['change_threshold']} "
                              "(max over channels).")

    # ---- samples -----------------------------------------------------------------------------------
    r.heading("Samples")
    r.paragraph("First generated images of each type (by id). |diff| is |result − source| × 4 (clipped). The last "
                "column is the real training defect whose crop features are nearest to the generated crop.")
    for t, rows_t in samples.items():
        if not rows_t:
            continue
        r.heading(t, level=3)
        with_src = rows_t[0]["source"] is not None
        titles = (["source"] if with_src else []) + ["mask", "generated"] + (["|diff| ×4"] if with_src else [])
        grid = []
        crop_ok = gen_v[t].crop is not None and gen_v[t].crop_thumbs
        if crop_ok:
            titles += ["generated crop", "nearest real (train)"]
            tr_f = torch.cat([train_v[x].crop for x in matches[t]])
            tr_th = sum((train_v[x].crop_thumbs for x in matches[t]), [])
            tr_ids = sum((train_v[x].ids for x in matches[t]), [])
        row_titles = []
        for j, s in enumerate(rows_t):
            cells = ([s["source"]] if with_src else []) + [s["mask"], s["image"]]
            if with_src:
                cells.append(((s["image"] - s["source"]).abs() * 4).clamp(0, 1))
            title = s["id"]
            if crop_ok:
                nn_i = int(torch.cdist(gen_v[t].crop[j : j + 1].double(), tr_f.double()).argmin())
                cells += [gen_v[t].crop_thumbs[j], tr_th[nn_i]]
                title += f"\n(nearest: {tr_ids[nn_i]})"
            grid.append(cells)
            row_titles.append(title)
        r.grid(grid, col_titles=titles, row_titles=row_titles, cell_px=128)

    # ---- all numbers -------------------------------------------------------------------------------
    r.heading("All metrics")
    keys = sorted({k for m in per_type.values() for k in m})
    r.table([{"metric": f"{k} {_arrow(k)}".strip(), **{t: per_type[t].get(k) for t in per_type}} for k in keys],
            columns=["metric", *per_type])
    if metrics.get("real_vs_real"):
        r.paragraph("Real-vs-real reference (training shots vs held-out real defects of the same type):")
        r.table([{"type": t, **v} for t, v in metrics["real_vs_real"].items()])
    r.heading("Notes")
    for n in metrics["notes"]:
        r.paragraph("• " + n)
    r.paragraph("Settings: " + ", ".join(f"{k}={v}" for k, v in metrics["settings"].items()))
    return r
