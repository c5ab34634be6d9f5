"""The harness: evaluate No-CFT / Reg-CFT / Seg-CFT checkpoints over seeds, write results.json and report.html."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.morphomnist import StructureData
from ..errors import CheckpointError, input_error
from ..io.manifest import atomic_write_json
from . import report as rep
from .checkpoint import VARIANT_NAMES, read_meta
from .metrics import DEFAULT_SCALES, METRIC_INFO, evaluate_model, summarize
from .predictors import predictor_accuracy
from .structures import run_data_variant
from .training import load_causal_model, load_predictors
from .vae import check_mode

GRID_SCALES = (0.7, 1.3)


def model_folder(out: Path, variant: str, seed: int) -> Path:
    return out / variant / f"seed{seed}"


def _check_finished(folder: Path, variant: str) -> dict:
    meta = read_meta(folder, "causal_model", variant)
    if not meta.get("done"):
        raise CheckpointError(f"checkpoint={folder}: training stopped at step {meta.get('step')}; allowed: a finished run (rerun `cft train` to resume)")
    return meta


@torch.no_grad()
def counterfactual_rows(
    vae, scm, test: StructureData, indices: list[int], structure: int = 0, mode: str = "noise"
) -> list[list[np.ndarray]]:
    """original | do(area x 0.7) | do(area x 1.3) | Δ(0.7) | Δ(1.3) for each index (structure ``structure``)."""
    rows = []
    for n in indices:
        x, a, i, d = test.images[n : n + 1], test.area[n : n + 1], test.intensity[n : n + 1], test.digit[n : n + 1]
        cond = scm.condition(a, i, d)
        cfs = []
        for s in GRID_SCALES:
            new = (a[:, structure] * s).clamp(scm.area_min, scm.area_max)
            a_cf, i_cf = scm.intervene_area(a, i, d, torch.tensor([structure]), new)
            cfs.append(vae.counterfactual(x, cond, scm.condition(a_cf, i_cf, d), mode)[0, 0].numpy())
        x0 = x[0, 0].numpy()
        rows.append([x0, *cfs, *[c - x0 for c in cfs]])
    return rows


def run_mode(metas: list[dict], requested: str | None = None) -> str:
    """The counterfactual mode of a set of checkpoints: the one their CFT was trained with (all must agree).

    No-CFT checkpoints were trained without counterfactuals: they take ``requested`` (default ``"noise"``).
    A request that differs from what the CFT checkpoints were trained with is refused.
    """
    trained = {m.get("counterfactual", "noise") for m in metas if m.get("variant") != "none"}
    if len(trained) > 1:
        raise CheckpointError(f"checkpoints: trained with counterfactual modes {sorted(trained)}; allowed: one mode per evaluation")
    if trained:
        mode = trained.pop()
        if requested is not None and requested != mode:
            raise input_error("counterfactual", requested, f"{mode!r}, the mode these checkpoints were fine-tuned with")
        return mode
    return check_mode(requested or "noise")


def evaluate_run(
    out: Path,
    test: StructureData,
    variants: list[str],
    seeds: list[int],
    scales=DEFAULT_SCALES,
    report_path: Path | None = None,
    command: str = "",
    progress: bool = True,
    results_path: Path | None = None,
    mode: str | None = None,
) -> dict:
    """Evaluate every (variant, seed) under ``out`` on ``test``; returns and writes ``results.json``."""
    folders = {(v, s): model_folder(out, v, s) for v in variants for s in seeds}
    metas = [_check_finished(f, v) for (v, _), f in folders.items()]  # refuse early: missing, unfinished, wrong variant
    mode = run_mode(metas, mode)
    regressor, segmentor, pmeta = load_predictors(out / "predictors")
    _, scm, _ = load_causal_model(folders[(variants[0], seeds[0])])
    t0 = time.time()
    results = {
        "structures": test.num_structures,
        "n_test": len(test),
        "counterfactual": mode,
        "data_variant": run_data_variant(metas[0]),
        "scales": list(scales),
        "seeds": seeds,
        "predictors": predictor_accuracy(regressor, segmentor, scm, test.images, test.area, test.intensity),
        "variants": {},
    }
    bar = tqdm(total=len(folders) * len(test), desc="evaluate", disable=not progress, mininterval=2.0, dynamic_ncols=True)
    for v in variants:
        per_seed = []
        for s in seeds:
            vae, scm_v, meta = load_causal_model(folders[(v, s)], v)
            r = evaluate_model(vae, scm_v, regressor, segmentor, test, scales, progress=bar, mode=mode)
            r["seed"] = s
            r["train_nelbo"] = meta.get("train_nelbo")
            per_seed.append(r)
        results["variants"][v] = {"per_seed": per_seed, "summary": summarize(per_seed)}
    bar.close()
    results["seconds"] = round(time.time() - t0, 1)
    results["platform"] = f"{platform.machine()} torch {torch.__version__}, threads={torch.get_num_threads()}"
    atomic_write_json(results_path or out / "results.json", results)
    if report_path is not None:
        write_report(report_path, out, test, results, variants, seeds, command)
    return results


def _fmt(name: str, mean: float, std: float) -> str:
    f = METRIC_INFO[name][2]
    return f"{f.format(mean)} ± {f.format(std)}"


def results_table(results: dict, variants: list[str]) -> tuple[list[str], list[list[str]]]:
    """Rows = metrics, columns = variants; the best mean per row in bold."""
    header = ["metric (mean ± std over seeds)"] + [VARIANT_NAMES[v] for v in variants]
    rows = []
    for name, (label, lower, _) in METRIC_INFO.items():
        sums = [results["variants"][v]["summary"].get(name) for v in variants]
        if any(s is None for s in sums):
            continue
        best = min(range(len(sums)), key=lambda j: sums[j][0] if lower else -sums[j][0])
        cells = [f'<span class="best">{_fmt(name, *sm)}</span>' if j == best else _fmt(name, *sm) for j, sm in enumerate(sums)]
        rows.append([label] + cells)
    return header, rows


def markdown_table(results: dict, variants: list[str]) -> str:
    header, rows = results_table(results, variants)
    strip = lambda c: c.replace('<span class="best">', "**").replace("</span>", "**")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(strip(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(path: Path, out: Path, test: StructureData, results: dict, variants, seeds, command: str) -> Path:
    K = test.num_structures
    name = {"single": "single digit (28x28)", "pair": "two digits side by side (28x56), interventions on one digit",
            "pair-corr": "two digits of similar size side by side (28x56, areas correlated), interventions on one digit",
            }.get(results.get("data_variant"), f"{K} structure(s)")
    if results.get("counterfactual") == "latent":
        name += ", latent-only counterfactuals"
    blocks = [
        rep.text_block(
            f"Morpho-MNIST, {name}. Test split: {results['n_test']} images. Seeds {seeds}. "
            f"Interventions do(area_k = area_k x s), s in {results['scales']}, every structure in turn; "
            f"{results['variants'][variants[0]]['per_seed'][0]['left_out_out_of_range']} (image, s, k) triples per seed fell "
            "outside the training range of area and were left out. Areas and intensities on counterfactuals are measured "
            "by the foreground rule (pixels >= half the digit's brightest; area = count, intensity = median), not by "
            "the regressor or segmentor that guided fine-tuning; what those guides read is shown for reference. "
            "Pixel changes are mean |Δ| on a 0-1 scale, x100."
        )
    ]
    header, rows = results_table(results, variants)
    blocks.append(rep.table_block("Results (bold: best mean)", header, rows))
    p = results["predictors"]
    blocks.append(
        rep.table_block(
            "Frozen predictors on the real test split",
            ["predictor", "metric", "value"],
            [
                ["regressor", "area MAE (px) / MAPE (%)", f"{p['regressor_area_mae']:.2f} / {p['regressor_area_mape']:.2f}"],
                ["regressor", "intensity MAE (/255)", f"{p['regressor_intensity_mae']:.2f}"],
                ["segmentor", "Dice (foreground of each digit)", f"{p['segmentor_dice']:.4f}"],
                ["segmentor", "soft-area MAE (px) / MAPE (%)", f"{p['segmentor_area_mae']:.2f} / {p['segmentor_area_mape']:.2f}"],
            ] + [[n, "cross-talk: reading of one digit per px of the other digit's area", f"{p[f'{n}_crosstalk']:.3f}"]
                 for n in ("regressor", "segmentor") if f"{n}_crosstalk" in p],
        )
    )
    xs = [float(s) for s in results["scales"]]
    series = {}
    for v in variants:
        by = np.array([[r["area_mape_by_scale"][f"{s:g}"] for s in xs] for r in results["variants"][v]["per_seed"]])
        series[VARIANT_NAMES[v]] = (by.mean(0).tolist(), by.std(0, ddof=1).tolist() if len(by) > 1 else [0.0] * len(xs))
    blocks.append(rep.line_plot_block("Area MAPE (%) by intervention scale", xs, series, "area MAPE (%)"))
    _, scm0, _ = load_causal_model(model_folder(out, variants[0], seeds[0]))
    idx = [n for n in range(len(test)) if all(scm0.in_range(test.area[n, 0] * s) for s in GRID_SCALES)][:8]
    cols = ["original", "do(area×0.7)", "do(area×1.3)", "Δ ×0.7", "Δ ×1.3"]
    for v in variants:
        vae, scm, _ = load_causal_model(model_folder(out, v, seeds[0]), v)
        rows_img = counterfactual_rows(vae, scm, test, idx, mode=results.get("counterfactual", "noise"))
        blocks.append(rep.grid_block(f"{VARIANT_NAMES[v]} (seed {seeds[0]})", rows_img, cols,
                                     "Δ = counterfactual − original (red brighter, blue darker)"))  # fmt: skip
    if command:
        blocks.append(rep.text_block("Commands:\n" + command, pre=True))
    blocks.append(rep.text_block(f"Evaluation took {results['seconds']} s on {results['platform']}."))
    return rep.write_html(path, f"Counterfactual fine-tuning on Morpho-MNIST ({name})", blocks)

