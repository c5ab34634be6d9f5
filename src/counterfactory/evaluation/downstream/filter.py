"""Quality filter for generated pairs: keep a pair only if a segmenter trained on the real shots finds its mask.

The judge is the downstream benchmark's real-only segmenter (same data, crops and training), trained on the
split's real training defects only, so it never sees a held-out evaluation defect. A pair is kept when the IoU
between the judge's thresholded anomaly map and the pair's mask is at least ``threshold``. Rejected pairs move to
``<generated>/.rejected/`` (image and mask, same relative paths; hidden folders are not read as a type), so the
generated folder stays an anomalib Folder of the kept pairs, and ``filter.json`` records every pair's IoU.
Rerunning with the same settings is a no-op; the judge's run folder resumes after a kill.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...errors import input_error
from ...io.images import load_image
from ...io.manifest import atomic_write_json
from ...io.masks import read_mask
from ..folders import read_image_folder
from .config import DEFAULT_STEPS, DownstreamConfig
from .data import load_downstream_data
from .metrics import predict
from .training import train_segmenter

REJECTED = ".rejected"
FILTER_FILE = "filter.json"


def mask_iou(score_map: torch.Tensor, mask: torch.Tensor, map_threshold: float = 0.5) -> float:
    """IoU of ``score_map >= map_threshold`` with a binary ``mask`` (same H,W); 0 when both are empty."""
    pred = score_map.reshape(mask.shape[-2:]) >= map_threshold
    m = mask.reshape(mask.shape[-2:]) > 0.5
    union = (pred | m).sum().item()
    return float((pred & m).sum().item() / union) if union else 0.0


def filter_by_iou(generated: str | os.PathLike, data: str | os.PathLike, split: str | os.PathLike | None,
                  threshold: float, *, seed: int = 0, steps: int = DEFAULT_STEPS, map_threshold: float = 0.5,
                  progress: bool = True, log=print) -> dict:
    """Score every pair of ``generated`` with the real-only judge; move pairs below ``threshold`` to ``.rejected/``.

    Returns (and writes to ``<generated>/filter.json``) the settings, per-type kept / total counts and every
    pair's IoU. A folder filtered before with other settings is refused: its rejected pairs were chosen by them.
    """
    if not 0 < threshold <= 1:
        raise input_error("threshold", threshold, "an IoU in (0, 1]")
    if not 0 < map_threshold < 1:
        raise input_error("map_threshold", map_threshold, "a number in (0, 1)")
    root = Path(generated)
    settings = {"threshold": threshold, "seed": seed, "steps": steps, "map_threshold": map_threshold,
                "data": str(data), "split": None if split is None else str(split)}
    record_file = root / FILTER_FILE
    previous = json.loads(record_file.read_text()) if record_file.is_file() else None
    if previous is not None and previous["settings"] != settings:
        raise input_error("generated", str(root), f"a folder not yet filtered, or the settings it was filtered with "
                                                  f"({previous['settings']})")
    scores: dict[str, dict] = dict(previous["pairs"]) if previous else {}

    cfg = DownstreamConfig(data=str(data), out=str(root / REJECTED / "judge"), split=None if split is None else str(split),
                           settings=("real",), seeds=(seed,), steps=steps, eval_good=1)
    folder = read_image_folder(root, name="generated")
    if not folder.has_masks:
        raise input_error("generated", str(root), "generated images with masks (ground_truth/<type>/<id>_mask.png)")
    todo = [(t, it) for t in folder.types for it in folder.of_type(t) if f"{t}/{it.id}" not in scores]
    if todo:
        dd = load_downstream_data(replace(cfg), log=log)
        judge, _ = train_segmenter(dd, "real", seed, cfg, Path(cfg.out) / f"real-seed{seed}")
        for t, it in tqdm(todo, desc="filtering", disable=not progress):
            img = load_image(it.image_path)
            mask = torch.from_numpy(read_mask(it.mask_path))
            iou = mask_iou(predict(judge, [img])[0], mask, map_threshold)
            kept = iou >= threshold
            if not kept:
                for p in (it.image_path, it.mask_path):
                    dest = root / REJECTED / Path(p).relative_to(root)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(p), dest)
            scores[f"{t}/{it.id}"] = {"iou": round(iou, 5), "kept": kept}
    per_type: dict[str, dict] = {}
    for key, s in scores.items():
        c = per_type.setdefault(key.split("/")[0], {"kept": 0, "total": 0})
        c["total"] += 1
        c["kept"] += int(s["kept"])
    result = {"settings": settings, "per_type": per_type, "pairs": dict(sorted(scores.items()))}
    atomic_write_json(record_file, result)
    log("filter: kept " + ", ".join(f"{t} {c['kept']}/{c['total']}" for t, c in sorted(per_type.items()))
        + f" (IoU >= {threshold:g}); rejected pairs in {root / REJECTED}")
    return result
