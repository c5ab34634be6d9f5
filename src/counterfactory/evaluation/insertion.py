"""Reference-insertion benchmark: metrics and the runner over cases (:mod:`.insertion_cases`) and methods.

Metrics per task and method (:func:`evaluate_insertion`): realism FD/KID (named after the extractor) of crops
around the box against real defect crops; paired error to ground truth for reinsertion (L1, PSNR, SSIM in the
box); reference fidelity ``ref_cos_<extractor>`` (feature cosine between the result's box crop and the
reference, centred on the real crops' mean feature, with a shuffled-reference control); locality outside the
box (:mod:`.locality`). Methods are injected as callables (the baselines of :mod:`.insertion_baselines`, or a
pipeline wrapped by the caller), so this module never imports a pipeline. The case and baseline names are
re-exported here so that callers import one module.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ..errors import input_error
from ..io.images import load_image, save_image
from ..io.manifest import atomic_write_json, atomic_write_text
from ..io.masks import Box, box_mask, crop, window_around
from ..models.reference import high_frequency_map, reference_crop, sobel_magnitude
from .distribution import distribution_metrics
from .features import FeatureExtractor, resize_square
from .insertion_baselines import BASELINES, baseline_method, copy_paste, poisson_blend
from .insertion_cases import (
    REFERENCE_CONTEXT,
    TASKS,
    InsertionCase,
    build_cases,
    defect_instances,
    insertion_region,
    load_case,
    place_box,
)
from .locality import LOCALITY_KEYS, locality_per_image, reduce_locality

__all__ = [
    "BASELINES",
    "REFERENCE_CONTEXT",
    "TASKS",
    "aligned_structure",
    "seam_ratio",
    "InsertionCase",
    "InsertionEvalConfig",
    "baseline_method",
    "build_cases",
    "context_crop",
    "copy_paste",
    "defect_instances",
    "evaluate_insertion",
    "load_case",
    "paired_box_metrics",
    "place_box",
    "poisson_blend",
    "insertion_region",
    "real_defect_crops",
    "result_path",
    "run_methods",
]

# ====================================================================== metrics
def context_crop(image: torch.Tensor, box: Box, margin: float = 1.0, min_size: int = 48) -> torch.Tensor:
    """The realism view: a square window around ``box`` (margin × its side of context, at least ``min_size``)."""
    win = window_around(box, tuple(image.shape[-2:]), margin=margin, min_size=min_size)
    return crop(image, win.box)


def paired_box_metrics(result: torch.Tensor, truth: torch.Tensor, box: Box) -> dict[str, float]:
    """L1, PSNR (data range 1) and SSIM inside the box. SSIM: the SSIM map of a context window around the box
    (Gaussian window 11, σ 1.5), averaged over the box pixels (works for boxes smaller than the window)."""
    x0, y0, x1, y1 = box
    r, t = result[:, y0:y1, x0:x1].double(), truth[:, y0:y1, x0:x1].double()
    l1 = float((r - t).abs().mean())
    mse = float(((r - t) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    win = window_around(box, tuple(result.shape[-2:]), margin=0.5, min_size=32)
    wx0, wy0, wx1, wy1 = win.box
    rw, tw = crop(result, win.box)[None].double(), crop(truth, win.box)[None].double()
    if min(rw.shape[-2:]) < 11:
        return {"L1_box": l1, "PSNR_box": psnr, "SSIM_box": math.nan}
    _, ssim_map = structural_similarity_index_measure(rw, tw, data_range=1.0, reduction="none", return_full_image=True)
    inner = ssim_map[0, :, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    return {"L1_box": l1, "PSNR_box": psnr, "SSIM_box": float(inner.mean())}


def seam_ratio(result: torch.Tensor, box: Box, band: int = 1, ring: tuple[int, int] = (2, 8)) -> float:
    """Boundary seam: mean Sobel gradient magnitude of the result's gray image on the ``2 * band`` px straddling
    the box edge, over the mean on a ring ``ring`` px outside the box (the image's own gradient level there,
    untouched by insertion). About 1 for a seamless insertion, well above 1 for a visible edge (copy-paste on a
    smooth surface). NaN when the box leaves no ring inside the image."""
    h, w = result.shape[-2:]
    g = sobel_magnitude(result.float().mean(0, keepdim=True)[None])[0, 0]
    x0, y0, x1, y1 = box

    def frame(d_in: int, d_out: int) -> torch.Tensor:
        """Pixels whose distance outside the box (negative inside) is in [d_in, d_out)."""
        yy = torch.arange(h).view(-1, 1).float()
        xx = torch.arange(w).view(1, -1).float()
        dx = torch.maximum(x0 - xx, xx - (x1 - 1))
        dy = torch.maximum(y0 - yy, yy - (y1 - 1))
        d = torch.maximum(dx, dy)  # Chebyshev distance: > 0 outside, <= 0 inside
        return (d >= d_in) & (d < d_out)

    edge = frame(-band + 1, band + 1)
    own = frame(ring[0] + 1, ring[1] + 1)
    if not edge.any() or int(own.sum()) < 8:
        return math.nan
    return float(g[edge].mean() / g[own].mean().clamp_min(1e-6))


def aligned_structure(result: torch.Tensor, box: Box, reference: torch.Tensor, size: int = 32,
                      max_shift: float = 0.1) -> float:
    """Structural fidelity to the reference after alignment: the result's crop around ``box`` (the reference's
    own context, :data:`REFERENCE_CONTEXT`) and the reference, both at ``size``², reduced to their
    high-frequency band (:func:`~counterfactory.models.reference.high_frequency_map`, so tone does not count),
    normalised cross-correlation maximised over integer shifts up to ``max_shift`` × ``size`` px. 1 = the same
    structure, ~0 = unrelated."""
    a = resize_square(reference_crop(result, box, (REFERENCE_CONTEXT, REFERENCE_CONTEXT))[None].float(), size)
    b = resize_square(reference[None].float(), size)
    ha, hb = high_frequency_map(a)[0, 0], high_frequency_map(b)[0, 0]
    r = int(round(max_shift * size))
    best = -1.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            pa = ha[max(0, dy) : size + min(0, dy), max(0, dx) : size + min(0, dx)]
            pb = hb[max(0, -dy) : size + min(0, -dy), max(0, -dx) : size + min(0, -dx)]
            pa, pb = pa - pa.mean(), pb - pb.mean()
            den = float(pa.norm() * pb.norm())
            if den > 1e-12:
                best = max(best, float((pa * pb).sum()) / den)
    return best


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def real_defect_crops(samples, size: int, min_area: int = 4, margin: float = 1.0, min_size: int = 48) -> list[torch.Tensor]:
    """Realism references: context crops around every defect component (≥ ``min_area`` px) of real samples."""
    out = []
    for it in defect_instances(samples, min_area, largest_only=False):
        out.append(resize_square(context_crop(load_image(it.path), it.box, margin, min_size)[None], size)[0])
    return out


@dataclass(frozen=True)
class InsertionEvalConfig:
    out: str
    seed: int = 0
    crop_margin: float = 1.0
    crop_min_size: int = 48
    kid_subsets: int = 100
    kid_subset_size: int = 32  # capped by the smaller set size
    change_threshold: float = 0.05
    grid_rows: int = 6


def _identity_check(out: Path, identity: dict) -> None:
    f = out / "run.json"
    if f.is_file():
        old = json.loads(f.read_text())
        if old != identity:
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise input_error("--out", str(out), f"a new folder, or the same settings to resume (this one differs in: "
                                                 f"{', '.join(diff[:5])})")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(f, identity)


def result_path(out: str | Path, case: InsertionCase, method: str) -> Path:
    """Where the result of ``method`` on ``case`` is saved under the run folder ``out``."""
    return Path(out) / case.task / method / f"{case.case_id}.png"


def run_methods(case: InsertionCase, methods: dict[str, Callable], out: str | Path, target: torch.Tensor | None = None,
                reference: torch.Tensor | None = None,
                timings: dict[tuple[str, str], list[float]] | None = None) -> dict[str, torch.Tensor]:
    """Each method's result on ``case`` as saved (8-bit): the file of an earlier run when present, else computed
    and saved atomically (its seconds appended to ``timings[(task, method)]``)."""
    if target is None or reference is None:
        target, reference = load_case(case)
    results = {}
    for name, fn in methods.items():
        path = result_path(out, case, name)
        if not path.is_file():
            t0 = time.perf_counter()
            result = fn(target, case.box, reference, case).clamp(0, 1)
            if timings is not None:
                timings.setdefault((case.task, name), []).append(time.perf_counter() - t0)
            save_image(result, path)
        results[name] = load_image(path)  # metrics on what was saved (8-bit)
    return results


def evaluate_insertion(cases: list[InsertionCase], methods: dict[str, Callable], extractor: FeatureExtractor,
                       real_crops: list[torch.Tensor], cfg: InsertionEvalConfig, identity: dict | None = None,
                       progress: bool = True, log=print,
                       timings: dict[tuple[str, str], list[float]] | None = None) -> dict:
    """Run every method on every case, save results, compute the metrics and write ``metrics.json``,
    ``cases.jsonl`` and ``report.html`` into ``cfg.out``.

    ``methods``: name → ``fn(target (3,H,W), box, reference (3,h,w), case) -> result (3,H,W)`` in [0,1].
    Results are written to ``<out>/<task>/<method>/<case_id>.png`` and reused on a rerun with the same
    ``identity`` (a different one is refused). ``timings``: seconds per case of results computed elsewhere
    (the shards of a sharded run), by ``(task, method)``, reported with this run's own.
    """
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    _identity_check(out, {"cases": [c.to_dict() for c in cases], "methods": sorted(methods), **(identity or {})})
    atomic_write_text(out / "cases.jsonl", "".join(json.dumps(c.to_dict()) + "\n" for c in cases))
    size = extractor.input_size
    extractor.eval()
    with torch.no_grad():
        real_feats = extractor.extract(real_crops) if real_crops else torch.zeros(0, extractor.num_features)
    per: dict[tuple[str, str], dict[str, list]] = {}
    thumbs: dict[str, list] = {}
    timings = {k: list(v) for k, v in (timings or {}).items()}
    for case in tqdm(cases, desc="insertion cases", disable=not progress):
        target, reference = load_case(case)
        region = box_mask(case.box, tuple(target.shape[-2:]))
        row = {"target": context_crop(target, case.box, cfg.crop_margin, cfg.crop_min_size),
               "reference": reference, "box": _outlined(target, case.box, cfg), "results": {}}
        for name, result in run_methods(case, methods, out, target, reference, timings).items():
            rec = per.setdefault((case.task, name), {"crop": [], "box_feat_pair": [], "loc": [], "paired": [],
                                                    "ids": [], "seam": [], "struct": [], "ref": []})
            rec["ids"].append(case.case_id)
            rec["seam"].append(seam_ratio(result, case.box))
            rec["ref"].append(reference)
            rec["crop"].append(resize_square(context_crop(result, case.box, cfg.crop_margin, cfg.crop_min_size)[None], size)[0])
            rec["box_feat_pair"].append((reference_crop(result, case.box, (REFERENCE_CONTEXT, REFERENCE_CONTEXT)), reference))
            rec.setdefault("result_box", []).append((result, reference))
            rec.setdefault("boxes", []).append(case.box)
            rec["loc"].append(locality_per_image(target[None], result[None], region[None], cfg.change_threshold))
            if case.has_ground_truth:
                rec["paired"].append(paired_box_metrics(result, target, case.box))
            row["results"][name] = context_crop(result, case.box, cfg.crop_margin, cfg.crop_min_size)
        thumbs.setdefault(case.task, [])
        if len(thumbs[case.task]) < cfg.grid_rows:
            thumbs[case.task].append((case, row))

    name = extractor.name
    rows = []
    per_case: list[dict] = []
    for (task, method), rec in per.items():
        n = len(rec["crop"])
        with torch.no_grad():
            fake = extractor.extract(rec["crop"])
            a = extractor.extract([p[0] for p in rec["box_feat_pair"]])
            b = extractor.extract([p[1] for p in rec["box_feat_pair"]])
        r: dict = {"task": task, "method": method, "n": n}
        k = min(cfg.kid_subset_size, n, real_feats.shape[0])
        if n >= 4 and real_feats.shape[0] >= 4:
            d = distribution_metrics(real_feats, fake, name, kid_subsets=cfg.kid_subsets, kid_subset_size=k,
                                     pr_k=min(3, n - 1), seed=cfg.seed, suffix="_crop")
            r.update({kk: v for kk, v in d.items() if not kk.startswith(("precision", "recall"))})
            r["kid_subset_size"] = k
        # centred on the real defect crops' mean feature: the generic "looks like a defect crop" direction, shared by
        # every crop, would otherwise put every cosine near 1; the shuffled control pairs each result with another
        # case's reference (same task), so ref_cos - ref_cos_shuffled is what the reference itself explains
        mu = real_feats.double().mean(0) if real_feats.shape[0] else torch.zeros(a.shape[1], dtype=torch.float64)
        ac, bc = a.double() - mu, b.double() - mu
        cos, cos_sh = _cosine(ac, bc), _cosine(ac, bc.roll(1, 0))
        struct = [aligned_structure(p[0], c, p[1]) for p, c in zip(rec["result_box"], rec["boxes"])]
        struct_sh = [aligned_structure(p[0], c, ref) for p, c, ref in
                     zip(rec["result_box"], rec["boxes"], rec["ref"][-1:] + rec["ref"][:-1])]
        r[f"ref_cos_{name}"] = float(cos.mean())
        if n >= 2:
            r[f"ref_cos_{name}_shuffled"] = float(cos_sh.mean())
        r["struct"] = float(np.mean(struct))
        if n >= 2:
            r["struct_shuffled"] = float(np.mean(struct_sh))
        seams = [v for v in rec["seam"] if math.isfinite(v)]
        r["seam"] = float(np.mean(seams)) if seams else math.nan
        for k, cid in enumerate(rec["ids"]):
            per_case.append({"task": task, "method": method, "case_id": cid, f"ref_cos_{name}": float(cos[k]),
                             f"ref_cos_{name}_shuffled": float(cos_sh[k]) if n >= 2 else math.nan,
                             "struct": struct[k], "struct_shuffled": struct_sh[k] if n >= 2 else math.nan,
                             "seam": rec["seam"][k]})
        loc = {key: torch.cat([x[key] for x in rec["loc"]]) for key in LOCALITY_KEYS}
        red = reduce_locality(loc)
        r.update({kk: red[kk] for kk in ("outside_mask_max_abs_change", "outside_psnr", "mask_changed_fraction")})
        if rec["paired"]:
            for key in ("L1_box", "PSNR_box", "SSIM_box"):
                vals = [p[key] for p in rec["paired"] if math.isfinite(p[key])]
                infinite = any(math.isinf(p[key]) for p in rec["paired"])
                r[key] = float(np.mean(vals)) if vals else (math.inf if infinite else math.nan)  # PSNR: mean of finite
        if timings.get((task, method)):
            r["seconds_per_case"] = float(np.mean(timings[(task, method)]))
        rows.append(r)
    rows.sort(key=lambda r: (TASKS.index(r["task"]), r["method"]))
    atomic_write_text(out / "per_case.jsonl", "".join(json.dumps(_clean(c)) + "\n" for c in per_case))
    summary = {"extractor": name, "n_real_crops": int(real_feats.shape[0]), "rows": rows, "per_case": per_case,
               "torch_threads": torch.get_num_threads(), **({"identity": identity} if identity else {})}
    atomic_write_json(out / "metrics.json", _clean(summary))
    _report(out, rows, thumbs, list(methods), name, summary)
    log(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return summary


def _outlined(image: torch.Tensor, box: Box, cfg: InsertionEvalConfig) -> torch.Tensor:
    """The context crop with the box drawn as a 1-px red outline (for the report only)."""
    win = window_around(box, tuple(image.shape[-2:]), margin=cfg.crop_margin, min_size=cfg.crop_min_size)
    c = crop(image, win.box).clone()
    c = c.expand(3, -1, -1).clone() if c.shape[0] == 1 else c
    x0, y0, x1, y1 = (box[0] - win.box[0], box[1] - win.box[1], box[2] - win.box[0] - 1, box[3] - win.box[1] - 1)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    c[:, y0, x0 : x1 + 1] = red
    c[:, y1, x0 : x1 + 1] = red
    c[:, y0 : y1 + 1, x0] = red
    c[:, y0 : y1 + 1, x1] = red
    return c


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _report(out: Path, rows: list[dict], thumbs: dict, methods: list[str], name: str, summary: dict) -> None:
    from .report import HtmlReport

    rep = HtmlReport(title="Reference insertion benchmark")
    rep.paragraph(
        f"Realism: FD/KID of {name} features of context crops around the box (margin 1 x box side, >= 48 px) "
        f"vs {summary['n_real_crops']} real held-out defect crops; small N, so KID is the number to read. "
        f"ref_cos_{name}: cosine between features of the result's box crop and of the reference, both centred on the "
        "real crops' mean feature; _shuffled pairs each result with another case's reference (the chance level). "
        "struct: normalised cross-correlation of the high-frequency band of the result's box crop and the reference "
        "after alignment (best shift up to 10 %). seam: gradient energy on the box edge over the image's own just "
        "outside it (1 = seamless). "
        "L1/PSNR/SSIM_box: reinsertion only (the real image is the ground truth). Locality: change outside the box."
    )
    cols = ["task", "method", "n", f"FD_{name}_crop", f"KID_{name}_crop", f"ref_cos_{name}", f"ref_cos_{name}_shuffled",
            "struct", "struct_shuffled", "seam", "L1_box", "PSNR_box",
            "SSIM_box", "outside_mask_max_abs_change", "seconds_per_case"]
    rep.table(rows, columns=cols)
    for task in TASKS:
        if task not in thumbs:
            continue
        rep.heading(f"{task}: target | reference | box | " + " | ".join(methods))
        grid = [[row["target"], row["reference"], row["box"], *[row["results"][m] for m in methods]]
                for _, row in thumbs[task]]
        titles = [f"{c.case_id} {c.defect_type}" for c, _ in thumbs[task]]
        rep.grid(grid, col_titles=["target", "reference", "box", *methods], row_titles=titles, cell_px=128)
    rep.save(out / "report.html")
