"""``evaluate``: realism, diversity and locality of a folder of generated images against real ones.

What is compared (per defect type, and pooled over types when there are several):

- distribution metrics (FD / KID / k-NN precision-recall, named after the extractor) of generated images
  against the *reference* real defects: the split's held-out ones when ``--split`` is given (the generator
  never saw them), otherwise all real defects of the type. Two views: the whole image resized to the
  extractor's input (``FD_compact``), and a square crop around the mask (``FD_compact_crop``), because
  industrial defects often cover < 1% of the image and a whole-image feature barely sees them.
- intra-cluster diversity ``IC_dist_<extractor>[_crop]`` around the real *training* defects, with the same
  number for held-out real defects as the reference (``IC_dist_..._real``).
- locality (change outside the mask, fraction of the mask changed, change/mask IoU) when the pre-edit image
  of each generated one is known (``--source`` or the manifest's ``source_image``).
- appearance (``ring_contrast``, ``grain_ratio``: see appearance.py) of generated and of real reference defects,
  when both have masks: medians side by side, so a fill smoother or fainter than real defects shows as a number.

Images of different sizes are fine for the distribution metrics (each is resized to the extractor input);
an image and its mask, or a generated image and its source, must have the same size (else an error).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import input_error
from ..io.images import load_image
from ..io.manifest import atomic_write_json
from ..io.masks import bbox, crop, read_mask, window_around
from .appearance import APPEARANCE_KEYS, appearance
from .distribution import distribution_metrics, kernel_distance
from .diversity import intra_cluster_distance
from .features import (
    CompactExtractorConfig,
    FeatureExtractor,
    load_compact_extractor,
    load_extractor,
    resize_square,
    save_compact_extractor,
    train_compact_extractor,
)
from .folders import FLAT_TYPE, ImageSet, Item, check_sizes, read_image_folder, type_key
from .locality import LOCALITY_KEYS, locality_per_image, reduce_locality
from .stats import summarize

POOLED = "all types"


@dataclass(frozen=True)
class EvalConfig:
    real: str
    generated: str
    out: str
    source: str | None = None  # folder of pre-edit images (else the manifest's source_image)
    split: str | None = None  # few-shot split file: held-out real = reference, train = IC clusters
    extractor: str = "compact"
    extractor_weights: str | None = None  # compact: trained into <out>/compact_extractor when absent
    allow_torchscript: bool = False  # inception only: load its TorchScript (pickle-based) file; trusted files only
    kid_subsets: int = 100
    kid_subset_size: int = 32
    pr_k: int = 3
    change_threshold: float = 0.05
    crop_margin: float = 1.0  # crop = mask box + margin × its side on each side ...
    crop_min_size: int = 48  # ... and at least this many pixels
    max_per_type: int | None = None  # use at most this many generated images per type (first by id)
    compact_steps: int = 500
    seed: int = 0
    grid_rows: int = 6

    def __post_init__(self):
        if self.kid_subset_size < 2:
            raise input_error("--kid-subset-size", self.kid_subset_size, "an integer >= 2")
        if self.kid_subsets < 1:
            raise input_error("--kid-subsets", self.kid_subsets, "an integer >= 1")
        if self.pr_k < 1:
            raise input_error("--pr-k", self.pr_k, "an integer >= 1")
        if not 0 <= self.change_threshold < 1:
            raise input_error("--change-threshold", self.change_threshold, "a number in [0, 1)")
        if self.max_per_type is not None and self.max_per_type < 2:
            raise input_error("--max-per-type", self.max_per_type, "an integer >= 2")
        if self.crop_min_size < 8:
            raise input_error("--crop-min-size", self.crop_min_size, "an integer >= 8")


# --------------------------------------------------------------------------------------------------------
# views
# --------------------------------------------------------------------------------------------------------
def _load_mask(item: Item, hw: tuple[int, int], name: str) -> torch.Tensor | None:
    if item.mask_path is None:
        return None
    m = torch.from_numpy(read_mask(item.mask_path))[None]
    if tuple(m.shape[-2:]) != tuple(hw):
        raise input_error(
            f"{name} mask", str(item.mask_path), f"a mask of its image's size {hw[1]}x{hw[0]} (W x H); got {m.shape[-1]}x{m.shape[-2]}"
        )
    return m


def _crop_view(image: torch.Tensor, mask: torch.Tensor, size: int, margin: float, min_size: int) -> torch.Tensor:
    box = bbox(mask[0])
    h, w = image.shape[-2:]
    if box is None:  # empty mask: centre crop
        box = (w // 2, h // 2, w // 2 + 1, h // 2 + 1)
    win = window_around(box, (h, w), margin=margin, min_size=min_size)
    return resize_square(crop(image, win.box)[None], size)[0]


@dataclass
class _Views:
    ids: list[str]
    full: torch.Tensor  # (N, D) features
    crop: torch.Tensor | None  # (N, D) or None without masks
    crop_thumbs: list[torch.Tensor]  # (3,S,S) per item (for the report)


def _extract(items: list[Item], ext: FeatureExtractor, cfg: EvalConfig, name: str, batch: int = 32,
             keep_thumbs: bool = False) -> _Views:
    s = ext.input_size
    full_f, crop_f, thumbs = [], [], []
    has_masks = all(i.mask_path is not None for i in items)
    buf_full, buf_crop = [], []

    def flush():
        with torch.no_grad():
            if buf_full:
                full_f.append(ext(torch.stack(buf_full)).float())
            if buf_crop:
                crop_f.append(ext(torch.stack(buf_crop)).float())
        buf_full.clear()
        buf_crop.clear()

    ext.eval()
    for it in items:
        img = load_image(it.image_path)
        buf_full.append(resize_square(img[None], s)[0])
        if has_masks:
            m = _load_mask(it, img.shape[-2:], name)
            c = _crop_view(img, m, s, cfg.crop_margin, cfg.crop_min_size)
            buf_crop.append(c)
            if keep_thumbs:
                thumbs.append(resize_square(c[None], 64)[0] if s != 64 else c)
        if len(buf_full) >= batch:
            flush()
    flush()
    full = torch.cat(full_f) if full_f else torch.zeros(0, ext.num_features)
    crp = torch.cat(crop_f) if (has_masks and crop_f) else None
    return _Views([i.id for i in items], full, crp, thumbs)


# --------------------------------------------------------------------------------------------------------
# extractor
# --------------------------------------------------------------------------------------------------------
def _fingerprint(paths: list[Path], config: CompactExtractorConfig) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}\n".encode())
    h.update(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(b"recipe:ssl+type-labels/2")
    return h.hexdigest()[:16]


def get_extractor(cfg: EvalConfig, train_items: list[Item], log=print) -> tuple[FeatureExtractor, dict]:
    """Load the extractor; for ``compact`` without weights, train one on ``train_items`` (cached in the out dir)."""
    if cfg.extractor != "compact" or cfg.extractor_weights is not None:
        ext = load_extractor(cfg.extractor, cfg.extractor_weights, allow_torchscript=cfg.allow_torchscript)
        return ext, {"kind": cfg.extractor, "weights": str(cfg.extractor_weights), "trained_here": False}
    ccfg = CompactExtractorConfig(steps=cfg.compact_steps, seed=cfg.seed)
    paths = [i.image_path for i in train_items]
    fp = _fingerprint(paths, ccfg)
    cache = Path(cfg.out) / "compact_extractor"
    meta_path = cache / "config.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("fingerprint") == fp:
                log(f"compact extractor: reusing {cache}")
                return load_compact_extractor(cache), {"kind": "compact", "weights": str(cache), "trained_here": False,
                                                       "cached": True, "fingerprint": fp}
        except (ValueError, OSError):
            pass
    from ..data import GOOD

    types = sorted({i.type for i in train_items if i.type != GOOD})
    log(f"compact extractor: training {ccfg.steps} steps on {len(paths)} real images (self-supervised + "
        f"defect-type labels of the {sum(i.type != GOOD for i in train_items)} real training defects) ...")
    images = [load_image(p) for p in paths]
    labelled = []
    for it, im in zip(train_items, images):
        if it.type == GOOD:
            labelled.append((im, None, 0))
        elif it.mask_path is not None:
            labelled.append((im, _load_mask(it, im.shape[-2:], "--real"), 1 + types.index(it.type)))
    has_good = any(c == 0 for _, _, c in labelled)
    if not has_good:  # no defect-free images: classes are the defect types only
        labelled = [(im, m, c - 1) for im, m, c in labelled]
    if len({c for _, _, c in labelled}) < 2:
        labelled = None
    t0 = time.perf_counter()
    model, tlog = train_compact_extractor(images, ccfg, labelled=labelled)
    extra = {"fingerprint": fp, "trained_on": {"images": len(paths), "root": str(Path(cfg.real).resolve()),
                                               "type_labels": (["good"] if has_good else []) + types if labelled else None},
             "final_loss": float(np.mean(tlog.losses[-20:])) if tlog.losses else None,
             "seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()}
    save_compact_extractor(model, cache, extra)
    log(f"compact extractor: done in {extra['seconds']} s, saved to {cache}")
    return model, {"kind": "compact", "weights": str(cache), "trained_here": True, **extra}


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------
def _clean(obj):
    """JSON-safe copy: NaN → null, ±inf → "inf"/"-inf", tensors → lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def _match_types(real: ImageSet, gen: ImageSet) -> dict[str, list[str]]:
    """generated type → the real types it is compared with."""
    by_key = {type_key(t): t for t in real.types}
    out = {}
    for t in gen.types:
        if t == FLAT_TYPE and type_key(t) not in by_key:
            out[t] = list(real.types)  # a flat folder is compared with every real defect
        elif type_key(t) in by_key:
            out[t] = [by_key[type_key(t)]]
        else:
            raise input_error("--generated type", t, f"a type of the real set: {', '.join(real.types)} (case-insensitive)")
    return out


def _reference_and_train(real: ImageSet, split_path: str | None) -> tuple[dict[str, list[Item]], dict[str, list[Item]], list[Item], dict]:
    """Per real type: reference items (held-out or all) and training items (train part or all), plus
    the images the compact extractor may train on."""
    if split_path is None:
        ref = {t: real.of_type(t) for t in real.types}
        return ref, ref, real.items + real.good, {"split": None}
    from ..data import GOOD, load_split

    sp = load_split(split_path)
    by_id = {i.id: i for i in real.items + real.good}
    ref, train = {}, {}
    for t in real.types:
        if t not in sp.held_out:
            raise input_error("--split", split_path, f"a split of this dataset (it has no type {t!r})")
        missing = [i for i in sp.held_out[t] + sp.train.get(t, []) if i not in by_id]
        if missing:
            raise input_error("--split", split_path, f"ids of {real.root} ({len(missing)} missing, e.g. {missing[0]!r})")
        ref[t] = [by_id[i] for i in sp.held_out[t]]
        train[t] = [by_id[i] for i in sp.train.get(t, [])]
    ext_train = [i for t in real.types for i in train[t]] + [by_id[i] for i in sp.train.get(GOOD, []) if i in by_id]
    counts = {t: {"train": len(train[t]), "held_out": len(ref[t])} for t in real.types}
    return ref, train, ext_train, {"split": str(split_path), "counts": counts}


def evaluate_folders(cfg: EvalConfig, log=print) -> dict:
    """Run the whole evaluation; writes ``metrics.json`` and ``report.html`` into ``cfg.out``; returns the metrics."""
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise input_error("--out", cfg.out, "a folder (or a path that does not exist yet)")
    real = read_image_folder(cfg.real, name="--real")
    gen = read_image_folder(cfg.generated, name="--generated", source_dir=cfg.source)
    if cfg.split is not None and real.layout not in ("mvtec", "magnetic_tile"):
        raise input_error("--split", cfg.split, "used with a dataset folder as --real (MVTec-AD or Magnetic Tile layout)")
    ref, train, ext_train, split_info = _reference_and_train(real, cfg.split)
    matches = _match_types(real, gen)
    gen_items = {t: gen.of_type(t)[: cfg.max_per_type] if cfg.max_per_type else gen.of_type(t) for t in gen.types}

    # bad input found before any heavy work: KID subset size vs counts
    for t, rts in matches.items():
        n_ref = sum(len(ref[r]) for r in rts)
        for which, n in (("real reference", n_ref), ("generated", len(gen_items[t]))):
            if n < cfg.kid_subset_size:
                raise input_error(
                    f"{which} images of type {t!r}", n, f"at least the KID subset size {cfg.kid_subset_size} (lower --kid-subset-size)"
                )
    check_sizes(gen, "--generated")
    if real.layout in ("folder", "flat"):  # datasets were checked by the data layer
        check_sizes(real, "--real")
    out.mkdir(parents=True, exist_ok=True)
    ext, ext_info = get_extractor(cfg, ext_train, log=log)
    name = ext.name
    ext_info.update({"name": name, "num_features": ext.num_features, "input_size": ext.input_size})
    use_crop = real.has_masks and gen.has_masks

    log(f"features: {sum(len(v) for v in ref.values())} real reference, {sum(len(v) for v in gen_items.values())} generated ...")
    real_types_needed = sorted({r for rts in matches.values() for r in rts})
    if cfg.split is None:  # reference = training defects = every real defect of the type
        ref_v = {r: _extract(ref[r], ext, cfg, "--real", keep_thumbs=True) for r in real_types_needed}
        train_v = ref_v
    else:
        ref_v = {r: _extract(ref[r], ext, cfg, "--real") for r in real_types_needed}
        train_v = {r: _extract(train[r], ext, cfg, "--real", keep_thumbs=True) for r in real_types_needed}
    gen_v = {t: _extract(gen_items[t], ext, cfg, "--generated", keep_thumbs=True) for t in gen.types}

    per_type: dict[str, dict] = {}
    counts: dict[str, dict] = {}
    kw = dict(kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, pr_k=cfg.pr_k, seed=cfg.seed)
    for t, rts in matches.items():
        rf = torch.cat([ref_v[r].full for r in rts])
        tf = torch.cat([train_v[r].full for r in rts])
        m = distribution_metrics(rf, gen_v[t].full, name, **kw)
        m[f"IC_dist_{name}"] = intra_cluster_distance(gen_v[t].full, tf, seed=cfg.seed)["value"]
        if use_crop:
            rc = torch.cat([ref_v[r].crop for r in rts])
            tc = torch.cat([train_v[r].crop for r in rts])
            m.update(distribution_metrics(rc, gen_v[t].crop, name, suffix="_crop", **kw))
            ic = intra_cluster_distance(gen_v[t].crop, tc, seed=cfg.seed)
            m[f"IC_dist_{name}_crop"] = ic["value"]
            m["IC_clusters_used"] = ic["clusters_used"]
        if cfg.split is not None:  # diversity real data has at this size, around the same training shots
            m[f"IC_dist_{name}_real"] = intra_cluster_distance(rf, tf, seed=cfg.seed)["value"]
            if use_crop:
                m[f"IC_dist_{name}_crop_real"] = intra_cluster_distance(rc, tc, seed=cfg.seed)["value"]
        per_type[t] = m
        counts[t] = {"real_reference": int(rf.shape[0]), "real_train": int(tf.shape[0]), "generated": int(gen_v[t].full.shape[0]),
                     "compared_with": rts}

    if len(matches) > 1:
        rf = torch.cat([ref_v[r].full for r in real_types_needed])
        gf = torch.cat([gen_v[t].full for t in gen.types])
        m = distribution_metrics(rf, gf, name, **kw)
        if use_crop:
            m.update(distribution_metrics(torch.cat([ref_v[r].crop for r in real_types_needed]),
                                          torch.cat([gen_v[t].crop for t in gen.types]), name, suffix="_crop", **kw))
        for k in (f"IC_dist_{name}", f"IC_dist_{name}_crop", f"IC_dist_{name}_real", f"IC_dist_{name}_crop_real"):
            vals = [per_type[t][k] for t in per_type if k in per_type[t] and not math.isnan(per_type[t][k])]
            if vals:
                m[k] = float(np.mean(vals))
        per_type[POOLED] = m

    # real-vs-real reference: how far the held-out real defects are from the training shots themselves
    floor = {}
    if cfg.split is not None:
        for r in real_types_needed:
            a, b = train_v[r], ref_v[r]
            if a.full.shape[0] >= 2 and b.full.shape[0] >= 2:
                k = min(cfg.kid_subset_size, a.full.shape[0], b.full.shape[0])
                floor[r] = {f"KID_{name}_train_vs_heldout": kernel_distance(a.full, b.full, cfg.kid_subsets, k, cfg.seed)[0],
                            "subset_size": k}
                if use_crop:
                    floor[r][f"KID_{name}_crop_train_vs_heldout"] = kernel_distance(a.crop, b.crop, cfg.kid_subsets, k, cfg.seed)[0]

    # locality
    locality: dict[str, dict] = {}
    per_image_loc: dict[str, dict[str, list[float]]] = {}
    samples_for_grid: dict[str, list[dict]] = {}
    has_src = gen.has_sources and gen.has_masks
    log("locality ..." if has_src else "locality: skipped (no --source and no source_image in the manifest)")
    look: dict[str, dict[str, list[float]]] = {}  # appearance of generated defects, per type
    for t in gen.types:
        rows = []
        acc: dict[str, list[float]] = {k: [] for k in LOCALITY_KEYS}
        look[t] = {k: [] for k in APPEARANCE_KEYS}
        for j, it in enumerate(gen_items[t]):
            if not (has_src or use_crop) and j >= cfg.grid_rows:
                break
            img = load_image(it.image_path)
            mask = _load_mask(it, img.shape[-2:], "--generated")
            if use_crop:
                for k, v in appearance(img, mask).items():
                    look[t][k].append(v)
            if not has_src and j >= cfg.grid_rows:
                continue
            src = None
            if has_src:
                src = load_image(it.source_path)
                if src.shape != img.shape:
                    raise input_error("--source image", str(it.source_path),
                                      f"the size of its generated image {it.image_path.name} ({img.shape[-1]}x{img.shape[-2]}); "
                                      f"got {src.shape[-1]}x{src.shape[-2]}")
                per = locality_per_image(src, img, mask, cfg.change_threshold)
                for k in LOCALITY_KEYS:
                    acc[k].append(float(per[k][0]))
            if j < cfg.grid_rows:
                rows.append({"id": it.id, "image": img, "mask": mask, "source": src})
        samples_for_grid[t] = rows
        if has_src:
            locality[t] = {**reduce_locality(acc), "change_threshold": cfg.change_threshold}
            per_image_loc[t] = acc
    if has_src and len(gen.types) > 1:
        pooled = {k: sum((per_image_loc[t][k] for t in gen.types), []) for k in LOCALITY_KEYS}
        locality[POOLED] = {**reduce_locality(pooled), "change_threshold": cfg.change_threshold}
    for t, loc in locality.items():
        per_type.setdefault(t, {}).update({k: v for k, v in loc.items() if k in LOCALITY_KEYS})

    # appearance: generated vs the real reference defects of the type
    appearance_table: dict[str, dict] = {}
    if use_crop:
        log("appearance ...")
        real_look: dict[str, dict[str, list[float]]] = {}
        for r in real_types_needed:
            real_look[r] = {k: [] for k in APPEARANCE_KEYS}
            for it in ref[r]:
                img = load_image(it.image_path)
                for k, v in appearance(img, _load_mask(it, img.shape[-2:], "--real")).items():
                    real_look[r][k].append(v)
        for t, rts in matches.items():
            appearance_table[t] = {}
            for k in APPEARANCE_KEYS:
                g = summarize(look[t][k])
                rl = summarize(sum((real_look[r][k] for r in rts), []))
                appearance_table[t][k] = {"generated": g, "real": rl}
                per_type[t][f"{k}_median"] = g["median"]
                per_type[t][f"{k}_median_real"] = rl["median"]

    notes = _notes(cfg, ext_info, use_crop, has_src, counts, name)
    metrics = {
        "format": "counterfactory.evaluate/1",
        "inputs": {"real": str(cfg.real), "generated": str(cfg.generated), "source": cfg.source, **split_info,
                   "real_layout": real.layout, "generated_layout": gen.layout},
        "extractor": ext_info,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("real", "generated", "out", "source", "split")},
        "counts": counts,
        "per_type": per_type,
        "real_vs_real": floor,
        "locality": locality,
        "appearance": appearance_table,
        "notes": notes,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(out / "metrics.json", _clean(metrics))
    from .evaluate_report import build_evaluate_report

    build_evaluate_report(metrics, samples_for_grid, gen_v, train_v, ref_v, matches, per_image_loc).save(out / "report.html")
    log(f"wrote {out / 'metrics.json'} and {out / 'report.html'} ({metrics['seconds']} s)")
    return metrics


def _notes(cfg: EvalConfig, ext_info: dict, use_crop: bool, has_src: bool, counts: dict, name: str) -> list[str]:
    notes = []
    if ext_info["kind"] == "compact":
        notes.append(
            "Features come from the compact extractor trained on this dataset's real images "
            f"({'training split and defect-free images' if cfg.split else 'all given real images'}) with a contrastive "
            "loss plus the defect-type labels of the real training defects (never generated images); FD_compact / KID_compact "
            "are comparable only between runs that use the same extractor weights, never with published FID/KID."
        )
    if ext_info["kind"] != "inception":
        notes.append(f"No Inception weights were used, so there is no FID: the Fréchet distance is reported as FD_{name}.")
    nmin = min((c["real_reference"] for c in counts.values()), default=0)
    if nmin and nmin < ext_info.get("num_features", 0):
        notes.append(
            f"FD uses full covariances of {ext_info.get('num_features')}-d features from as few as {nmin} real images: its "
            "small-sample bias is large, so compare FD only between runs with the same image counts; KID is unbiased."
        )
    notes.append(
        f"IC_dist_{name} is the intra-cluster protocol of IC-LPIPS (nearest real training defect, mean pairwise distance "
        "inside clusters) computed with Euclidean distance between our features; it is not LPIPS and not comparable to "
        "published IC-LPIPS. Like IC-LPIPS it also rises when backgrounds are corrupted: read it with the locality metrics."
    )
    if not use_crop:
        notes.append("No masks on both sides: the defect-crop view (_crop metrics) was skipped.")
    if not has_src:
        notes.append("No pre-edit images (--source or manifest source_image): locality metrics were skipped.")
    notes.append("Whole-image views resize every image to a square (aspect ratio not kept); crops are square by construction.")
    return notes

