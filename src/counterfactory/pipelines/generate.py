"""Batch generation of defect image + mask pairs, resumable, in anomalib's Folder layout.

Output::

    <out>/<type>/<id>.png                      generated defect image
    <out>/ground_truth/<type>/<id>_mask.png    its mask (0/255)
    <out>/manifest.jsonl                       one record per finished pair

A pair's files are written (atomically) before its manifest record, so after ``kill -9`` a rerun skips what
the manifest lists and redoes the rest; every item has its own seed, so a rerun produces the same pairs.

Mask sources: ``"train"`` (the few-shot masks: the default, so the evaluation's held-out masks never leak into
training data), ``"held-out"``, or a folder of the user's masks (``<dir>/<type>/*.png``, or ``<dir>/*.png`` for
every type). Each mask is deformed (elastic + affine) and placed on the product of a defect-free image by
:class:`~counterfactory.data.placement.PlacementModel`: ``placement="learned"`` keeps each shot's distance and
orientation to the product edge (an edge chip stays on the edge), ``"uniform"`` puts it anywhere on the product.

``strength`` < 1 is paste-and-refine: the shot's own pixels are pasted at the placement (plainly or by Poisson
cloning), then the adapter re-denoises a slightly dilated region from noise level ``strength``; ``strength=1``
generates the defect from noise, ``strength=0`` is the plain paste.

``method="controlnet"`` writes the same folder with a :class:`DefectControlNetPipeline`: the ControlNet reads the
placed mask and regenerates a context window around it (img2img from ``strength``), keeping every pixel farther
than ``paste_back_dilation`` px from the mask (``None``: the whole window is rewritten).

Sharding (``shard=``, ``--num-shards K --shard i`` or the ranks of ``accelerate launch``): items are denoised in
fixed groups of ``batch_size`` consecutive items, and shard ``i`` of ``K`` takes groups ``i, i + K, ...`` (whole
groups: a group's batch composition is what makes its pixels bit-identical to a one-process run). Each shard lists
its pairs in ``manifest-shard<i>-of<K>.jsonl`` and resumes on its own; the settings every shard must share are in
``shards.json``; the shard that finds every item done writes ``manifest.jsonl`` in the order of a one-process run
(``counterfactory merge-manifests OUT`` does the same by hand).

A folder holds one run: every record carries the run's provenance (base and adapter hashes, dataset, split, mask
source) and sampling settings, and a rerun into a folder made with anything else is refused with the
difference named, so two runs are never mixed. Type names come from the adapter's files and become folder
names: each is checked (:func:`~counterfactory.io.names.check_path_name`) before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.sample import GOOD, Sample
from ..errors import input_error
from ..io.images import IMAGE_EXTENSIONS, load_image, save_image
from ..io.manifest import Manifest, Shard, claim_shards, merge_shards, read_all, sha256_file
from ..io.masks import bbox, read_mask
from ..io.names import check_path_name
from . import GENERATE_PASTE_BACK_DILATION, MAX_DILATION
from .defect_inpaint import DefectInpaintPipeline


@dataclass(frozen=True)
class GenerateConfig:
    out: str
    n_per_type: int = 100
    types: tuple[str, ...] | None = None  # default: every type of the adapter
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    batch_size: int = 16
    seed: int = 0
    crop_margin: float = 0.5
    foreground_overlap: float = 0.9  # fraction of mask pixels that must lie on the product when placing a mask
    grain_transfer: float = 0.0  # add this much of the background's own grain to the fill (see the pipeline)
    placement: str = "learned"  # "learned" (the shots' relation to the product edge) or "uniform"
    deform: bool = True  # new mask shapes from the shots (elastic + affine) instead of the shots' own
    strength: float = 1.0  # 1: generate from noise; < 1: paste the shot's pixels and refine from this noise level
    paste: str = "plain"  # how strength < 1 pastes: "plain" or "poisson"
    refine_dilate: int = 3  # px the refined region extends beyond the pasted defect (strength < 1)
    max_window_scale: float | None = None  # tile regions whose window exceeds this × the working resolution
    method: str = "inpaint"  # "inpaint" (DefectInpaintPipeline) or "controlnet" (DefectControlNetPipeline)
    # controlnet: keep pixels beyond the mask dilated by this many px; None: the whole context window is rewritten
    paste_back_dilation: int | None = GENERATE_PASTE_BACK_DILATION

    def __post_init__(self):
        from ..data.placement import PLACEMENTS
        from ..sampling.paste import PASTE_MODES

        if self.placement not in PLACEMENTS:
            raise input_error("placement", self.placement, f"one of {', '.join(PLACEMENTS)}")
        if not (isinstance(self.strength, (int, float)) and 0 <= self.strength <= 1):
            raise input_error("strength", self.strength, "a number in [0, 1]")
        if self.paste not in PASTE_MODES:
            raise input_error("paste", self.paste, f"one of {', '.join(PASTE_MODES)}")
        if not (isinstance(self.refine_dilate, int) and 0 <= self.refine_dilate <= 64):
            raise input_error("refine_dilate", self.refine_dilate, "an integer in [0, 64]")
        if self.n_per_type < 1:
            raise input_error("n_per_type", self.n_per_type, "an integer >= 1")
        if not 0 <= self.foreground_overlap <= 1:
            raise input_error("foreground_overlap", self.foreground_overlap, "a fraction in [0, 1]")
        if not 0 <= self.grain_transfer <= 2:
            raise input_error("grain_transfer", self.grain_transfer, "a number in [0, 2]")
        if self.max_window_scale is not None and not 1 <= self.max_window_scale <= 64:
            raise input_error("max_window_scale", self.max_window_scale, "None or a number in [1, 64]")
        if self.method not in METHODS:
            raise input_error("method", self.method, f"one of {', '.join(METHODS)}")
        if self.method == "controlnet" and self.max_window_scale is not None:
            raise input_error("max_window_scale", self.max_window_scale, "None with method='controlnet' (its windows are "
                                                                         "generated whole, never tiled)")
        if self.paste_back_dilation is not None and not (isinstance(self.paste_back_dilation, int)
                                                         and 0 <= self.paste_back_dilation <= MAX_DILATION):
            raise input_error("paste_back_dilation", self.paste_back_dilation,
                              f"None or an integer in [0, {MAX_DILATION}]")


METHODS = ("inpaint", "controlnet")


def item_seed(seed: int, defect_type: str, index: int) -> int:
    h = hashlib.sha256(f"{seed}/{defect_type}/{index}".encode()).digest()
    return int.from_bytes(h[:7], "little")


class MaskSource:
    """Draws a mask for (type, index) on a given defect-free image, deterministically by seed, with the shot's own
    pixels moved alongside when the shot's image is known (for paste-and-refine)."""

    def __init__(self, masks_by_type: dict[str, list[tuple]], overlap: float, placement: str = "learned",
                 deform: bool = True):
        from ..data.placement import MaskSampler, PlacementModel, product_region

        shots, self.names = {}, {}
        for t, pool in masks_by_type.items():
            items = []
            for _name, mask, *image in pool:
                img = image[0] if image else None
                items.append((mask[0].numpy() > 0.5, None if img is None else product_region(img),
                              None if img is None else img.numpy()))
            shots[t] = items
            self.names[t] = [entry[0] for entry in pool]
        self.model = PlacementModel(shots, placement=placement, sampler=MaskSampler() if deform else None,
                                    min_coverage=max(overlap, 1e-6))
        self._products: dict[int, torch.Tensor] = {}

    def __call__(self, defect_type: str, image: torch.Tensor, gen: torch.Generator,
                 key: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        from ..data.placement import product_region

        k = key or id(image)
        if k not in self._products:
            self._products[k] = product_region(image)
        mask, pixels, meta = self.model.place_with_pixels(defect_type, self._products[k], gen)
        meta = {"mask_source": self.names[defect_type][meta.pop("shot")], **meta}
        return (torch.from_numpy(mask)[None].float(), None if pixels is None else torch.from_numpy(pixels), meta)


def draw_item(seed: int, defect_type: str, index: int, backgrounds: list[Sample], mask_source: MaskSource,
              cache: dict[str, torch.Tensor]):
    """The background and placed mask of item ``(defect_type, index)``: ``(item seed, background sample, its image,
    mask (1,H,W), shot pixels or None, record)``, a pure function of the seed (``counterfactory masks sample`` draws
    the same masks as ``generate``)."""
    s = item_seed(seed, defect_type, index)
    g = torch.Generator().manual_seed(s)
    bg = backgrounds[int(torch.randint(len(backgrounds), (1,), generator=g))]
    if bg.source_id not in cache:
        cache[bg.source_id] = load_image(bg.image_path)
    img = cache[bg.source_id]
    m, pixels, meta = mask_source(defect_type, img, g, key=bg.source_id)
    return s, bg, img, m, pixels, meta


def paste_and_dilate(image: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor, mode: str,
                     dilate_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shot's pixels pasted where ``mask`` is set (``mode`` plain or poisson) and the region to refine: the mask
    grown by ``dilate_px`` (clipped to nothing more: outside it the result is the image, bit for bit)."""
    from ..io.masks import dilate
    from ..sampling.paste import paste_defect

    x0, y0, x1, y1 = bbox(mask[0])
    if mode == "poisson":  # Poisson needs a one-pixel border of the image around the crop
        x0, y0 = max(x0 - 1, 0), max(y0 - 1, 0)
        x1, y1 = min(x1 + 1, mask.shape[-1]), min(y1 + 1, mask.shape[-2])
    pasted, placed = paste_defect(image, pixels[:, y0:y1, x0:x1].clamp(0, 1), mask[:, y0:y1, x0:x1], (x0, y0),
                                  mode=mode)
    return pasted, dilate(placed, dilate_px)


def split_masks(dataset, split, types: list[str], part: str = "held_out",
                with_images: bool = False) -> dict[str, list[tuple]]:
    """Real masks of one part of the split, per type: ``(id, mask)``, or ``(id, mask, image)`` with ``with_images``
    (the shot's product and pixels then guide placement and paste-and-refine).

    ``"held_out"`` (the field's protocol for generation) or ``"train"`` — use ``"train"`` when the generated
    pairs will train a model that is then evaluated on the held-out defects, or their mask shapes leak.
    """
    if part not in ("held_out", "train"):
        raise input_error("part", part, "'held_out' or 'train'")
    out = {}
    for t in types:
        if not getattr(split, part).get(t):
            raise input_error("masks", part.replace("_", "-"), f"{part} masks for type {t!r} (the split has none)")
        # InputError (not a KeyError) when the split was made from another dataset than ``dataset``
        samples = split.samples(dataset, part, t)
        out[t] = [(s.source_id, s.load_mask(), s.load_image()) if with_images else (s.source_id, s.load_mask())
                  for s in samples]
    return out


def held_out_masks(dataset, split, types: list[str]) -> dict[str, list[tuple[str, torch.Tensor]]]:
    return split_masks(dataset, split, types, "held_out")


MIN_MASK_SIDE = 16  # a mask smaller than this cannot describe a defect's shape


def folder_masks(root: str | Path, types: list[str], warn=None) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """The user's masks per type: ``<root>/<type>/*.png`` or, without such a folder, ``<root>/*.png`` for every
    type. Empty, unreadable, all-defect, noise or tiny masks are skipped with a line to ``warn`` each."""
    from ..data.dataset import mask_quality
    from ..errors import InputError

    root = Path(root)
    if not root.is_dir():
        raise input_error("--masks", str(root), "'held-out' or an existing folder of mask images")
    out = {}
    for t in types:
        d = root / check_path_name(t, "types") if (root / t).is_dir() else root
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        masks = []
        for p in files:
            try:
                m = read_mask(p)
            except InputError as exc:
                why = str(exc)
            else:
                why = None
                if min(m.shape) < MIN_MASK_SIDE:
                    why = f"a mask at least {MIN_MASK_SIDE} px on each side (this one is {m.shape[1]}x{m.shape[0]})"
                elif not m.any():
                    why = "a mask with defect pixels (this one is all background)"
                elif mask_quality(m):
                    why = mask_quality(m)[1]
                why = why and str(input_error("mask", str(p), why))
            if why:
                if warn:
                    warn(f"warning: skipped {why}")
                continue
            masks.append((str(p), torch.from_numpy(m)[None]))
        if not masks:
            raise input_error("--masks", str(d), f"a folder with usable mask images for type {t!r} (non-empty, at "
                                                 f"least {MIN_MASK_SIDE} px, not all defect)")
        out[t] = masks
    return out


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_provenance(*, adapter: str | os.PathLike, base: str | os.PathLike | None, base_kind: str,
                   data_root: str | os.PathLike, split, split_file: str | os.PathLike | None, masks: str,
                   backgrounds: str) -> dict:
    """What a generated folder is made from, recorded with every pair and compared on resume.

    Weights by content (sha256 of each weights file), the dataset by resolved path, the split by a hash of its
    members (so the same split resumes however its file is spelled), the mask source by name or resolved folder.
    """
    from ..models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE

    adapter = Path(adapter)
    weights = sorted(adapter.glob("*.safetensors"))
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text()) if (adapter / "adapter_config.json").is_file() else {}
    base_file = Path(base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE if base_kind == "compact" else None
    return {
        "base_kind": base_kind,
        "base_sha256": sha256_file(base_file) if base_file and base_file.is_file() else adapter_cfg.get("base_sha256"),
        "adapter_sha256": sha256_file(adapter / "pytorch_lora_weights.safetensors")
        if (adapter / "pytorch_lora_weights.safetensors").is_file() else None,
        "adapter_files_sha256": _digest({f.name: sha256_file(f) for f in weights}),
        "data": str(Path(data_root).resolve()),
        "split_sha256": _digest({"train": split.train, "held_out": split.held_out}),
        "masks": masks if masks in ("held-out", "train") else str(Path(masks).resolve()),
        "backgrounds": backgrounds,
    }


def _settings(cfg: GenerateConfig) -> dict:
    """The sampling settings every record carries (compared on resume)."""
    return {"steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale, "grain_transfer": cfg.grain_transfer,
            "crop_margin": cfg.crop_margin, "foreground_overlap": cfg.foreground_overlap, "placement": cfg.placement,
            "deform": cfg.deform, "strength": cfg.strength, "paste": cfg.paste, "refine_dilate": cfg.refine_dilate,
            "max_window_scale": cfg.max_window_scale, "method": cfg.method,
            **({"paste_back_dilation": cfg.paste_back_dilation} if cfg.method == "controlnet" else {})}


def _check_same_run(records: list[dict], cfg: GenerateConfig, provenance: dict, out: Path) -> None:
    """A rerun resumes only a folder made from the same inputs with the same settings: anything else would mix
    two runs silently. Every differing field is named with the folder's value and the new one."""
    expected = {**_settings(cfg), **provenance}
    # fields that records written before they were recorded lack: the value they were made with
    # (placement: older folders were placed by another rule, so they cannot be extended with this one)
    absent = {"grain_transfer": 0.0, "crop_margin": 0.5, "foreground_overlap": 0.9, "placement": "augment (older)",
              "deform": False, "strength": 1.0, "paste": "plain", "refine_dilate": 3, "max_window_scale": None,
              "method": "inpaint"}
    diff: dict[str, tuple] = {}
    for r in records:
        for k, v in expected.items():
            have = r.get(k, absent.get(k, v))
            if have != v and k not in diff:
                diff[k] = (have, v)
        if "type" in r and "index" in r and r.get("seed") != item_seed(cfg.seed, r["type"], r["index"]) \
                and "seed" not in diff:
            diff["seed"] = ("another seed", cfg.seed)
    if diff:
        named = "; ".join(f"{k}: {_short(a)} there, {_short(b)} now" for k, (a, b) in sorted(diff.items()))
        raise input_error("out", str(out), f"a new folder, or the inputs and settings its pairs were made with to "
                                           f"resume it ({named})")


def _short(v) -> str:
    t = str(v)
    return t[:12] + "..." if len(t) > 16 and all(c in "0123456789abcdef" for c in t) else t


def check_resume(cfg: GenerateConfig, types: list[str], provenance: dict | None, shard: Shard | None = None,
                 claim: bool = False) -> tuple[list[dict], int]:
    """``(records of every shard, group size)`` of ``cfg.out``; InputError naming each setting that differs from
    what the folder (or its other shards) was started with. ``claim``: a shard records the shared settings.

    Items are denoised in fixed groups of ``group`` consecutive items: kernels round differently at different
    batch compositions, so a resumed run redoes a partly finished group whole (writing only its missing items)
    with the group size the folder was started with, and every pair comes out bit-identical.
    """
    shard = shard or Shard()
    out = Path(cfg.out)
    records = read_all(out)  # every shard's records: the same-run check and what is done
    _check_same_run(records, cfg, dict(provenance or {}), out)
    recorded = {int(r["batch"]) for r in records if "batch" in r}
    group = recorded.pop() if len(recorded) == 1 else cfg.batch_size
    if shard.count > 1:  # the shards share the item list and its groups: refuse one started otherwise
        group = claim_shards(out, {"writer": "generate", "num_shards": shard.count, "seed": cfg.seed,
                                   "n_per_type": cfg.n_per_type, "types": list(types), "batch": group,
                                   **_settings(cfg), **(provenance or {})}, adopt=("batch",), write=claim)["batch"]
    return records, group


def item_ids(types: list[str], n_per_type: int) -> list[str]:
    """The ids of a run's pairs in the order a one-process run lists them."""
    return [f"{t}_{i:05d}" for t in types for i in range(n_per_type)]


def merge_generated(out: str | os.PathLike) -> Path:
    """``manifest.jsonl`` of a sharded folder from its shards' manifests (InputError while a shard is unfinished)."""
    from ..io.manifest import SHARDS_FILE

    header = json.loads((Path(out) / SHARDS_FILE).read_text())
    return merge_shards(out, item_ids(header["types"], header["n_per_type"]))


def generate(pipe: DefectInpaintPipeline, backgrounds: list[Sample], masks: dict[str, list[tuple[str, torch.Tensor]]],
             cfg: GenerateConfig, provenance: dict | None = None, progress: bool = True,
             shard: Shard | None = None) -> dict:
    """Generate ``cfg.n_per_type`` pairs per type; resumes from ``<out>/manifest.jsonl``.

    ``shard``: only this shard's groups of items (module doc); its manifest is ``manifest-shard<i>-of<K>.jsonl``.
    """
    from .defect_controlnet import DefectControlNetPipeline

    if isinstance(pipe, DefectControlNetPipeline) != (cfg.method == "controlnet"):
        raise input_error("method", cfg.method, f"the method of the pipeline given ({type(pipe).__name__}): "
                                                f"{'controlnet' if isinstance(pipe, DefectControlNetPipeline) else 'inpaint'}")
    shard = shard or Shard()
    out = Path(cfg.out)
    types = list(cfg.types or pipe.defect_types)
    for t in types:
        check_path_name(t, "types")  # names from the adapter's files become folder names
        if t == GOOD or t not in pipe.defect_types:
            raise input_error("types", t, f"types of this adapter: {list(pipe.defect_types)}")
        if t not in masks:
            raise input_error("masks", t, f"masks for every requested type {types}")
    if not backgrounds:
        raise input_error("backgrounds", 0, "at least one defect-free image")
    manifest = Manifest(shard.manifest_path(out))
    records, group = check_resume(cfg, types, provenance, shard, claim=True)
    done = {str(r["id"]) for r in records if "id" in r}
    items = [(t, i) for t in types for i in range(cfg.n_per_type)]
    mine = [it for g, start in enumerate(range(0, len(items), group)) if shard.takes(g)
            for it in items[start : start + group]]
    todo = [it for it in mine if f"{it[0]}_{it[1]:05d}" not in done]
    pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="generating", disable=not progress)
    cache: dict[str, torch.Tensor] = {}
    if cfg.strength < 1 and any(len(e) < 3 for pool in masks.values() for e in pool):
        raise input_error("strength", cfg.strength, "1 with a mask folder (strength < 1 pastes the shots' own pixels: "
                                                    "use the split's masks)")
    mask_source = MaskSource(masks, cfg.foreground_overlap, cfg.placement, cfg.deform)
    for g, start in enumerate(range(0, len(items), group)):
        chunk = items[start : start + group]
        if not shard.takes(g) or all(f"{t}_{i:05d}" in done for t, i in chunk):
            continue
        imgs, msks, refine, gens, metas = [], [], [], [], []
        for t, i in chunk:
            s, bg, img, m, pixels, meta = draw_item(cfg.seed, t, i, backgrounds, mask_source, cache)
            if cfg.strength < 1:
                img, region = paste_and_dilate(img, pixels, m, cfg.paste, cfg.refine_dilate)
            else:
                region = m
            imgs.append(img)
            msks.append(m)
            refine.append(region)
            gens.append(torch.Generator().manual_seed(s + 1))
            metas.append({"id": f"{t}_{i:05d}", "type": t, "index": i, "seed": s, "source_image": str(bg.image_path),
                          "source_id": bg.source_id, **meta})
        # images of different sizes cannot share a tensor: run them one size group at a time
        sizes: dict[tuple, list[int]] = {}
        for k, im in enumerate(imgs):
            sizes.setdefault(tuple(im.shape), []).append(k)
        results: dict[int, torch.Tensor] = {}
        for ks in sizes.values():
            if cfg.strength == 0:  # the plain paste: nothing to denoise
                for k in ks:
                    results[k] = imgs[k]
                continue
            if cfg.method == "controlnet":  # the ControlNet reads the defect mask; the band around it is its own
                extra = {"crop_to_mask": True, "paste_back": cfg.paste_back_dilation is not None,
                         "paste_back_dilation": cfg.paste_back_dilation or 0}
                regions = msks
            else:  # only the inpainting pipeline tiles
                extra = {} if cfg.max_window_scale is None else {"max_window_scale": cfg.max_window_scale}
                regions = refine
            res = pipe(torch.stack([imgs[k] for k in ks]), torch.stack([regions[k] for k in ks]),
                       [metas[k]["type"] for k in ks], num_inference_steps=cfg.num_inference_steps,
                       guidance_scale=cfg.guidance_scale, generator=[gens[k] for k in ks],
                       crop_margin=cfg.crop_margin, batch_size=group, grain_transfer=cfg.grain_transfer,
                       strength=cfg.strength, **extra)
            for k, r in zip(ks, res.images):
                results[k] = r
        for k, meta in enumerate(metas):
            if meta["id"] in done:
                continue
            t = meta["type"]
            img_path = out / t / f"{meta['id']}.png"
            mask_path = out / "ground_truth" / t / f"{meta['id']}_mask.png"
            save_image(results[k], img_path)
            save_image(msks[k], mask_path)
            manifest.append({**meta, "image": str(img_path.relative_to(out)), "mask": str(mask_path.relative_to(out)),
                             **_settings(cfg), "batch": group, **(provenance or {})})
            bar.update(1)
    bar.close()
    summary = {"generated": len(todo), "skipped": len(mine) - len(todo), "out": str(out), "batch_size": group}
    if shard.count > 1:
        summary["shard"] = str(shard)
        # the shard that finds every item listed writes manifest.jsonl (two at once write the same bytes)
        finished = {str(r["id"]) for r in read_all(out) if "id" in r} >= {f"{t}_{i:05d}" for t, i in items}
        summary["merged"] = finished
        if finished:
            merge_generated(out)
    return summary
