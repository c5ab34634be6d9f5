"""Reference-adapter training, the Paint-by-Example way (self-reference), on a frozen inpainting base.

Each training item is one real defect (a connected component of a training mask):

- the **target** is a window around the defect's box (random context margin, flips), resized to the working
  resolution; the **region** to inpaint is the box extended at random towards the window border (each side
  by up to ``box_extend`` × its free space), with an irregular outline made of four quadratic Bezier curves
  between the box and the extended box half of the time (``irregular_prob``), so the model cannot learn the
  region's shape from the mask; the defect box is always inside the region;
- the **reference** is the same defect cropped from the same image with a jittered crop, flipped, rotated
  and sometimes blurred (PbE: crop + flips + rotation + blur), then resized to the encoder's input;
- the **high-frequency hint** (``hint="hf"``, AnyDoor's detail map): the reference's high-pass band and Sobel
  magnitude, warped into the defect's box, enter the U-Net as extra input channels through a zero-initialised
  hint encoder added to ``conv_in`` (:class:`~counterfactory.models.reference.HintEncoder`); it carries the
  reference's structure *in place*, which a few global tokens at the lowest U-Net resolution cannot;
- ``mask_perturb`` switches the region perturbation above off (the region is then the defect box itself);
- with probability ``reference_dropout`` the reference is replaced by the learned null reference and the hint by
  zeros (CFG: the pipeline's ``guidance_scale`` is the reference guidance scale);
- with probability ``background_prob`` the row is a defect-sized box on a *defect-free* training image trained
  with the null reference (AnydoorMed's erased-reference rows on healthy images): the null branch learns plain
  surface filling on the real product, so guidance pushes towards the reference's defect, and the LoRA keeps
  the base's inpainting of unseen surfaces;
- contrast/brightness jitter of the target and, independently, of the reference (``photometric_prob``): the
  lighting of the result has to come from the target's context, not from the reference.

Trained: LoRA on the base U-Net (attention + ResNet convs on the compact base; attention only on SD) and the
reference encoder (all of the compact one; the projection and null of a CLIP/DINOv2 one, whose backbone stays
frozen). Every batch is a pure function of ``(seed, step)``, so a killed run resumes exactly
(:class:`~counterfactory.training.trainer.Trainer`).

Export (``--out``): ``pytorch_lora_weights.safetensors`` (diffusers LoRA format), ``reference_encoder.*`` and,
written last, ``reference_adapter.json``; ``split.json`` records which defects trained.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from ..data.augment import AugmentParams, MaskAwareAugment
from ..data.sample import GOOD
from ..errors import ConfigError, input_error
from ..io.images import to_model_space
from ..io.manifest import atomic_write_json, sha256_file
from ..io.masks import Box, bbox, components, window_around
from ..models.reference import (
    ENCODER_KINDS,
    HINT_KINDS,
    REFERENCE_ADAPTER_CONFIG,
    REFERENCE_ADAPTER_FORMAT,
    TOKEN_MODES,
    ReferenceEncoderConfig,
    attach_hint,
    build_reference_encoder,
    int_box,
    reference_batch,
    reference_crop,
    save_reference_encoder,
    warp_hint,
)
from ..sampling.inpaint import to_working_resolution
from .checkpoint import data_identity, run_identity, step_generator
from .inpaint import (
    ATTENTION_TARGETS,
    CONV_TARGETS,
    _move_space,
    inpaint_loss,
    load_base,
    record_split,
    split_digest,
)
from .trainer import LoopConfig, Trainer


@dataclass(frozen=True)
class ReferenceTrainConfig:
    out: str
    data: str  # dataset folder (MVTec or Magnetic Tile layout); its split's training defects are the items
    base: str | None = None  # compact base folder (default: shipped weights/) or an SD-1.5-inpainting folder
    base_kind: str = "compact"  # "compact" | "sd"
    encoder: str = "compact"  # reference encoder kind: "compact" | "clip" | "dinov2"
    encoder_weights: str | None = None  # clip/dinov2: local transformers folder of the vision tower
    token_mode: str = "pooled"  # clip/dinov2: "pooled" (PbE bottleneck) | "patches" (all hidden states)
    num_tokens: int | None = None  # default: the compact base's token count, else 4
    reference_size: int = 48  # compact encoder input side (pixels)
    split: str | None = None  # split file; default: the field's first-third few-shot split
    types: tuple[str, ...] | None = None  # train on these defect types only (default: all)
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ATTENTION_TARGETS + CONV_TARGETS
    batch_size: int = 8
    reference_dropout: float = 0.2  # PbE's u_cond_percent: rows trained with the null reference (and no hint)
    hint: str = "hf"  # "hf": AnyDoor-style high-frequency map of the reference in the box as extra input channels
    mask_perturb: bool = True  # region = box extended at random, Bezier outline (PbE/AnyDoor); False: the box itself
    outside_weight: float = 0.1
    margin_range: tuple[float, float] = (0.3, 1.0)  # window context around the defect box, per item
    box_extend: float = 0.4  # each region side extends by up to this fraction of its free space (PbE: 0.4)
    irregular_prob: float = 0.5  # Bezier outline instead of the extended rectangle (PbE arbitrary_mask_percent)
    hflip: bool = True
    vflip: bool = True
    rotate_degrees: float = 20.0  # reference rotation (PbE: 20)
    blur_prob: float = 0.3  # reference Gaussian blur (PbE: 0.3)
    crop_jitter: tuple[float, float] = (-0.05, 0.2)  # reference crop: each side moves by U(a, b) × the box side
    min_component_area: int = 4  # defect components smaller than this (pixels) are not used
    background_prob: float = 0.2  # rows on a defect-free training image, random box, null reference (AnydoorMed)
    max_backgrounds: int = 64  # defect-free training images kept in memory for those rows
    photometric_prob: float = 0.5  # per target and (independently) per reference: contrast/brightness jitter
    photometric: tuple[float, float] = (0.25, 0.12)  # contrast in 1 ± a, brightness offset in ± b ([0,1] scale)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=600, lr=1e-3, warmup_steps=20,
                                                                checkpoint_every=50))

    def __post_init__(self):
        if self.base_kind not in ("compact", "sd"):
            raise ConfigError(f"base_kind={self.base_kind!r}: one of 'compact', 'sd'")
        if self.encoder not in ENCODER_KINDS:
            raise ConfigError(f"encoder={self.encoder!r}: one of {', '.join(ENCODER_KINDS)}")
        if self.encoder != "compact" and not self.encoder_weights:
            raise ConfigError(f"encoder_weights=None: a local {self.encoder} transformers folder for --encoder {self.encoder}")
        if self.token_mode not in TOKEN_MODES:
            raise ConfigError(f"token_mode={self.token_mode!r}: one of {', '.join(TOKEN_MODES)}")
        if self.hint not in HINT_KINDS:
            raise ConfigError(f"hint={self.hint!r}: one of {', '.join(HINT_KINDS)}")
        if self.batch_size < 1 or self.lora_rank < 1:
            raise ConfigError(f"batch_size={self.batch_size}, lora_rank={self.lora_rank}: integers >= 1")
        if not 0 <= self.reference_dropout < 1:
            raise ConfigError(f"reference_dropout={self.reference_dropout}: in [0, 1)")
        for name in ("irregular_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)}: a probability in [0, 1]")
        if not 0 <= self.outside_weight <= 1:
            raise ConfigError(f"outside_weight={self.outside_weight}: in [0, 1]")
        if not 0 <= self.margin_range[0] <= self.margin_range[1]:
            raise ConfigError(f"margin_range={self.margin_range}: 0 <= low <= high")
        if not 0 <= self.box_extend <= 1:
            raise ConfigError(f"box_extend={self.box_extend}: in [0, 1]")
        if not -0.4 <= self.crop_jitter[0] <= self.crop_jitter[1] <= 1:
            raise ConfigError(f"crop_jitter={self.crop_jitter}: -0.4 <= low <= high <= 1")
        for name in ("background_prob", "photometric_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)}: a probability in [0, 1]")
        if not (0 <= self.photometric[0] < 1 and 0 <= self.photometric[1] <= 0.5):
            raise ConfigError(f"photometric={self.photometric}: contrast in [0, 1), brightness in [0, 0.5]")
        if not 0 <= self.rotate_degrees <= 180:
            raise ConfigError(f"rotate_degrees={self.rotate_degrees}: in [0, 180]")


# ====================================================================== region and reference sampling
def extend_box(box, limits, rng: np.random.Generator, extend: float) -> tuple[float, float, float, float]:
    """PbE's extended box: each side moves outwards by U(0, ``extend``) × its free space up to ``limits``."""
    x0, y0, x1, y1 = box
    lx0, ly0, lx1, ly1 = limits
    u = rng.uniform(0.0, extend, size=4)
    return (x0 - u[0] * max(0.0, x0 - lx0), y0 - u[1] * max(0.0, y0 - ly0),
            x1 + u[2] * max(0.0, lx1 - x1), y1 + u[3] * max(0.0, ly1 - y1))


def _quad_bezier(p0, p1, p2, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def irregular_region(box, ext_box, size: tuple[int, int], rng: np.random.Generator, points_per_side: int = 18,
                     jitter: float = 1.0) -> np.ndarray:
    """A (H,W) float {0,1} region with a Bezier outline between ``box`` and ``ext_box`` (both x0,y0,x1,y1 in
    pixels of an (H,W) canvas): each side is a quadratic Bezier curve whose end and control points sit at random
    depths between the box side and the extended side, sampled at ``points_per_side`` points with ±``jitter`` px
    noise (PbE: 4 curves, 18 points, jittered). The box itself is always inside; nothing outside ``ext_box`` is."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    X0, Y0, X1, Y1 = (float(v) for v in ext_box)

    def depth(a, b, k):
        return a + (b - a) * rng.uniform(0.0, 1.0, size=k)

    # corners are shared by the two sides meeting there, so the outline is closed
    ty = depth(y0, Y0, 1)[0], depth(y0, Y0, 1)[0]
    by = depth(y1, Y1, 1)[0], depth(y1, Y1, 1)[0]
    lx = depth(x0, X0, 1)[0], depth(x0, X0, 1)[0]
    rx = depth(x1, X1, 1)[0], depth(x1, X1, 1)[0]
    n = points_per_side
    sides = [
        _quad_bezier(np.array([lx[0], ty[0]]), np.array([(x0 + x1) / 2, depth(y0, Y0, 1)[0]]), np.array([rx[0], ty[1]]), n),
        _quad_bezier(np.array([rx[0], ty[1]]), np.array([depth(x1, X1, 1)[0], (y0 + y1) / 2]), np.array([rx[1], by[0]]), n),
        _quad_bezier(np.array([rx[1], by[0]]), np.array([(x0 + x1) / 2, depth(y1, Y1, 1)[0]]), np.array([lx[1], by[1]]), n),
        _quad_bezier(np.array([lx[1], by[1]]), np.array([depth(x0, X0, 1)[0], (y0 + y1) / 2]), np.array([lx[0], ty[0]]), n),
    ]
    pts = np.concatenate([s[:-1] for s in sides])
    pts = pts + rng.uniform(-jitter, jitter, size=pts.shape)
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(float(px), float(py)) for px, py in pts], fill=255)
    region = np.asarray(canvas, dtype=np.float32) / 255.0
    ix0, iy0, ix1, iy1 = int_box(box, h, w)
    region[iy0:iy1, ix0:ix1] = 1.0
    ex0, ey0, ex1, ey1 = int_box(ext_box, h, w)
    clip = np.zeros_like(region)
    clip[ey0:ey1, ex0:ex1] = 1.0
    return region * clip


def augment_reference(ref: torch.Tensor, rng: np.random.Generator, cfg: ReferenceTrainConfig) -> torch.Tensor:
    """Flips, rotation (reflection padding) and an occasional blur of a reference crop (C,h,w) in [0,1]."""
    angle = float(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
    params = AugmentParams(hflip=bool(cfg.hflip and rng.random() < 0.5), vflip=bool(cfg.vflip and rng.random() < 0.5),
                           angle=angle)
    out, _ = MaskAwareAugment().apply(params, ref)
    if rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(0.4, 1.2)) * max(1.0, min(out.shape[-2:]) / 32)
        out = _gaussian_blur(out, sigma)
    return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = x[None]
    if min(x.shape[-2:]) > r:
        y = F.pad(y, (r, r, r, r), mode="reflect")
    else:
        y = F.pad(y, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0].clamp(0, 1)


# ====================================================================== data
@dataclass(frozen=True)
class DefectItem:
    source_id: str
    defect_type: str
    image: torch.Tensor  # (3,H,W) uint8
    boxes: tuple[Box, ...]  # one per usable component


def defect_items(data: str, split_path: str | None, types, min_area: int, out: str | None = None):
    """The training defects of a dataset's split: (types, items). Writes the split to ``out/split.json``."""
    from ..data import open_dataset
    from ..data.splits import few_shot_split, load_split, save_split

    ds = open_dataset(data)
    split = load_split(split_path) if split_path else few_shot_split(ds)
    names = list(types or sorted(t for t in split.train if t != GOOD))
    for t in names:
        if t not in ds.defect_types:
            raise input_error("types", t, f"defect types of {data}: {ds.defect_types}")
    index = ds.by_id()
    items: list[DefectItem] = []
    for t in names:
        for sid in split.train.get(t, []):
            s = index[sid]
            mask = s.load_mask()[0].numpy()
            boxes = tuple(bbox(c) for c in components(mask) if c.sum() >= min_area)
            if not boxes:
                continue
            img = torch.round(s.load_image() * 255).to(torch.uint8)
            items.append(DefectItem(sid, t, img, boxes))
    if not items:
        raise input_error("data", data, "a dataset whose split has training defects")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_split(split, Path(out) / "split.json")
    return [t for t in names if any(it.defect_type == t for it in items)], items


def _data_facts(cfg: ReferenceTrainConfig, ids: list[str]):
    """(data identity hashing the image and mask files of ``ids``, split) of a reference run."""
    from ..data import open_dataset
    from ..data.splits import few_shot_split, load_split

    ds = open_dataset(cfg.data)
    split = load_split(cfg.split) if cfg.split else few_shot_split(ds)
    index = ds.by_id()
    members = [p for i in dict.fromkeys(ids) for p in (index[i].image_path, index[i].mask_path) if p is not None]
    return data_identity(cfg.data, members), split


def background_items(data: str, split_path: str | None, limit: int) -> list[DefectItem]:
    """Up to ``limit`` defect-free training images (evenly spaced over the split's train part), as items."""
    from ..data import open_dataset
    from ..data.splits import few_shot_split, load_split

    if limit <= 0:
        return []
    ds = open_dataset(data)
    split = load_split(split_path) if split_path else few_shot_split(ds)
    ids = split.train.get(GOOD, [])
    index = ds.by_id()
    pick = [ids[int(i)] for i in np.unique(np.linspace(0, len(ids) - 1, min(limit, len(ids))).round())] if ids else []
    return [DefectItem(i, GOOD, torch.round(index[i].load_image() * 255).to(torch.uint8), ()) for i in pick]


def photometric_jitter(x: torch.Tensor, rng: np.random.Generator, contrast: float, brightness: float) -> torch.Tensor:
    """Contrast about the mean (× U(1 ± contrast)) and a brightness offset (U(± brightness)), clamped to [0,1]."""
    a = float(rng.uniform(1 - contrast, 1 + contrast))
    b = float(rng.uniform(-brightness, brightness))
    mean = x.mean()
    return ((x - mean) * a + mean + b).clamp(0, 1)


def reference_batch_for_step(items: list[DefectItem], types: list[str], res: int, ref_size: int,
                             cfg: ReferenceTrainConfig, step: int, backgrounds: list[DefectItem] | None = None):
    """(targets in model space (B,3,res,res), regions (B,1,res,res), references (B,3,S,S) in [0,1], null rows (B,)
    bool: background rows that must be trained with the null reference, hints (B,K,res,res): the reference's
    high-frequency map warped into the defect box, zero on null rows); a pure function of (cfg.loop.seed, step)."""
    rng = np.random.default_rng([cfg.loop.seed, step, 6])
    per_type: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        per_type.setdefault(it.defect_type, []).append(k)
    xs, ms, refs, nulls, hint_refs, hint_boxes = [], [], [], [], [], []
    for _ in range(cfg.batch_size):
        t = types[int(rng.integers(len(types)))]
        it = items[per_type[t][int(rng.integers(len(per_type[t])))]]
        box = it.boxes[int(rng.integers(len(it.boxes)))]
        is_bg = bool(backgrounds) and rng.random() < cfg.background_prob
        if is_bg:  # a defect-sized box at a random place of a defect-free image
            it = backgrounds[int(rng.integers(len(backgrounds)))]
            h, w = it.image.shape[-2:]
            bw, bh = min(box[2] - box[0], w - 1), min(box[3] - box[1], h - 1)
            bx, by = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (bx, by, bx + bw, by + bh)
        img = it.image.float() / 255.0
        h, w = img.shape[-2:]
        win = window_around(box, (h, w), float(rng.uniform(*cfg.margin_range)), min_size=min(res, max(h, w)))
        wx0, wy0, wx1, wy1 = win.box
        crop = img[None, :, wy0:wy1, wx0:wx1]
        x, _ = to_working_resolution(crop, torch.zeros(1, 1, wy1 - wy0, wx1 - wx0), res)
        if rng.random() < cfg.photometric_prob:
            x = photometric_jitter(x, rng, *cfg.photometric)
        sx, sy = res / (wx1 - wx0), res / (wy1 - wy0)
        b = ((box[0] - wx0) * sx, (box[1] - wy0) * sy, (box[2] - wx0) * sx, (box[3] - wy0) * sy)
        if cfg.hflip and rng.random() < 0.5:
            x = x.flip(-1)
            b = (res - b[2], b[1], res - b[0], b[3])
        if cfg.vflip and rng.random() < 0.5:
            x = x.flip(-2)
            b = (b[0], res - b[3], b[2], res - b[1])
        ext = extend_box(b, (0, 0, res, res), rng, cfg.box_extend if cfg.mask_perturb else 0.0)
        if cfg.mask_perturb and rng.random() < cfg.irregular_prob:
            region = torch.from_numpy(irregular_region(b, ext, (res, res), rng))
        else:
            region = torch.zeros(res, res)
            ex0, ey0, ex1, ey1 = int_box(ext, res, res)
            region[ey0:ey1, ex0:ex1] = 1.0
        ref = augment_reference(reference_crop(img, box, cfg.crop_jitter, rng), rng, cfg)
        if rng.random() < cfg.photometric_prob:  # independent: lighting must come from the target, not the reference
            ref = photometric_jitter(ref, rng, *cfg.photometric)
        xs.append(x)
        ms.append(region[None, None])
        refs.append(reference_batch(ref, ref_size))
        nulls.append(is_bg)
        hint_refs.append(ref)
        hint_boxes.append(None if is_bg else b)
    hints = warp_hint(hint_refs, hint_boxes, (res, res))
    return (to_model_space(torch.cat(xs)), torch.cat(ms), torch.cat(refs), torch.tensor(nulls, dtype=torch.bool),
            hints)


# ====================================================================== training
class _ReferenceModule(nn.Module):
    def __init__(self, unet, encoder):
        super().__init__()
        self.unet = unet
        self.encoder = encoder


def train_reference(cfg: ReferenceTrainConfig, progress: bool = True) -> dict:
    """Train LoRA + a reference encoder on a frozen base; export a reference adapter folder into ``cfg.out``."""
    from ..models.lora import add_lora, save_lora

    unet, space, train_s, _, res, base_tokens, base_file = load_base(cfg.base, cfg.base_kind)
    types, items = defect_items(cfg.data, cfg.split, cfg.types, cfg.min_component_area)
    backgrounds = background_items(cfg.data, cfg.split, cfg.max_backgrounds) if cfg.background_prob > 0 else []
    data_id, split = _data_facts(cfg, [it.source_id for it in items + backgrounds])
    unet = copy.deepcopy(unet)
    unet.requires_grad_(False)
    targets = cfg.lora_targets if cfg.base_kind == "compact" else tuple(t for t in cfg.lora_targets if t in ATTENTION_TARGETS)
    add_lora(unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=targets, seed=cfg.loop.seed)
    dim = unet.config.cross_attention_dim
    n_tok = cfg.num_tokens or (base_tokens.shape[0] if base_tokens is not None else 4)
    enc_cfg = ReferenceEncoderConfig(kind=cfg.encoder, dim=dim, num_tokens=n_tok, input_size=cfg.reference_size,
                                     token_mode=cfg.token_mode, backbone=cfg.encoder_weights, hint=cfg.hint,
                                     hint_out=unet.conv_in.out_channels)
    encoder = build_reference_encoder(enc_cfg, seed=cfg.loop.seed)
    attach_hint(unet, encoder)
    if base_tokens is not None and tuple(base_tokens.shape) == tuple(encoder.null.shape):
        encoder.init_from_tokens(base_tokens)
    module = _ReferenceModule(unet, encoder)
    ref_size = encoder.input_size

    def loss_fn(step: int, device) -> torch.Tensor:
        x0, region, refs, null_rows, hints = reference_batch_for_step(items, types, res, ref_size, cfg, step, backgrounds)
        gen = step_generator(cfg.loop.seed, step)
        drop = (torch.rand(x0.shape[0], generator=gen) < cfg.reference_dropout) | null_rows
        ctx = encoder(refs.to(device), drop=drop.to(device))
        hint = hints.masked_fill(drop[:, None, None, None], 0.0) if encoder.hint is not None else None
        return inpaint_loss(unet, train_s, space, x0.to(device), region.to(device), ctx, gen, cfg.outside_weight,
                            hint=hint)

    identity = run_identity("train-reference", cfg, data=data_id, split=split_digest(split), types=types,
                            backgrounds=len(backgrounds),
                            defects={t: sum(1 for it in items if it.defect_type == t) for t in types})
    trainer = Trainer(module, loss_fn, cfg.loop, cfg.out, identity, progress=progress)
    trainer.check_resumable()
    if trainer.is_main_process:
        record_split(split, cfg.out)
    _move_space(space, trainer.accelerator.device)
    summary = trainer.run()
    trainer.copy_ema_into(module)
    out = Path(cfg.out)
    adapter_cfg = {
        "format": REFERENCE_ADAPTER_FORMAT,
        "base_kind": cfg.base_kind,
        "base": str(cfg.base) if cfg.base else "weights/",
        "base_sha256": sha256_file(base_file) if base_file and Path(base_file).is_file() else None,
        "encoder": cfg.encoder,
        "encoder_weights": cfg.encoder_weights,
        "hint": cfg.hint,
        "mask_perturb": cfg.mask_perturb,
        "reference_dropout": cfg.reference_dropout,
        "types": types,
        "defects": identity["defects"],
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_targets": list(targets),
        "resolution": res,
        "prediction_type": train_s.config.prediction_type,
        "steps": summary["steps"],
        "complete": summary["steps"] >= cfg.loop.steps,
        "seed": cfg.loop.seed,
        "final_loss": summary["final_loss"],
        "data": data_id["path"],
        "data_fingerprint": data_id["fingerprint"],
    }
    if trainer.is_main_process:  # one writer under several processes
        save_lora(unet, out, metadata={"counterfactory": json.dumps(adapter_cfg)})
        save_reference_encoder(encoder, out)
        atomic_write_json(out / REFERENCE_ADAPTER_CONFIG, adapter_cfg)  # written last: marks a complete export
    trainer.wait()
    return {**summary, "types": types, "defects": identity["defects"], "adapter": str(out)}
