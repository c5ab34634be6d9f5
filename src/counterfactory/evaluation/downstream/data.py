"""Downstream data: the real few-shot defects, defect-free crops, the evaluation images, and the paired sampler.

Pairing: a batch is a pure function of ``(seed, step)``, drawn from three independent streams (real defect
crops, defect-free crops, synthetic crops). With ``mix="add"`` every setting of one seed therefore trains on
exactly the same real and defect-free crops at every step; only the synthetic crops on top differ. With
``mix="replace"`` the real crops of a synthetic setting are the first ones of real-only's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...data import GOOD, few_shot_split, load_split, open_dataset
from ...data.augment import dihedral
from ...errors import input_error
from ...io.images import load_image
from ...io.masks import bbox, read_mask
from ...training.trainer import step_generator
from ..anomalies import copy_paste_anomaly, perlin_anomaly
from ..folders import read_image_folder, type_key
from .config import DownstreamConfig

# independent random streams of one step (see step_generator)
REAL_STREAM, GOOD_STREAM, SYNTHETIC_STREAM = 1, 2, 3


def _u8(img: torch.Tensor) -> torch.Tensor:
    return torch.round(img.clamp(0, 1) * 255).to(torch.uint8)


@dataclass
class _Defect:
    image: torch.Tensor  # (3,h,w) uint8 window around the defect
    mask: torch.Tensor  # (1,h,w) bool
    type: str
    id: str


def _defect_window(img: torch.Tensor, mask: torch.Tensor, margin: int, t: str, sid: str) -> _Defect:
    """Keep only the part of the image within ``margin`` px of the mask box (memory), uint8."""
    box = bbox(mask[0])
    if box is None:
        raise input_error("mask", sid, "a mask with defect pixels")
    h, w = img.shape[-2:]
    x0, y0, x1, y1 = max(0, box[0] - margin), max(0, box[1] - margin), min(w, box[2] + margin), min(h, box[3] + margin)
    return _Defect(_u8(img[:, y0:y1, x0:x1]).contiguous(), (mask[:, y0:y1, x0:x1] > 0.5).contiguous(), t, sid)


def _load_pair(image_path, mask_path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    img = load_image(image_path)
    m = torch.from_numpy(read_mask(mask_path))[None]
    if m.shape[-2:] != img.shape[-2:]:
        raise input_error(f"{name} mask", str(mask_path), f"a mask of its image's size {img.shape[-1]}x{img.shape[-2]}")
    return img, m


@dataclass
class DownstreamData:
    types: list[str]
    real_defects: list[_Defect]
    generated: list[_Defect]
    train_good: list[torch.Tensor]  # (3,H,W) uint8
    eval_images: list[torch.Tensor]  # (3,H,W) uint8
    eval_masks: list[torch.Tensor]  # (1,H,W) bool
    eval_types: list[str]  # defect type or "good"
    eval_ids: list[str]
    info: dict


def load_downstream_data(cfg: DownstreamConfig, log=print) -> DownstreamData:
    ds = open_dataset(cfg.data)
    split = load_split(cfg.split) if cfg.split else few_shot_split(ds)
    idx = ds.by_id()
    types = [t for t in ds.defect_types if t in split.train]
    if not types:
        raise input_error("split", cfg.split, f"a split with the defect types of {cfg.data}")
    if GOOD not in split.train or GOOD not in split.held_out:
        raise input_error("split", cfg.split, "a split with defect-free ('good') images in train and held_out")
    margin = cfg.crop
    real = []
    for t in types:
        for s in split.samples(ds, "train", t):
            img, m = _load_pair(s.image_path, s.mask_path, "data")
            real.append(_defect_window(img, m, margin, t, s.source_id))
    good_train = [_u8(idx[i].load_image()) for i in split.train[GOOD]]
    small = [g for g in good_train if min(g.shape[-2:]) < cfg.crop]
    if small:
        raise input_error("crop", cfg.crop, f"at most the smallest defect-free image side ({min(small[0].shape[-2:])} px)")
    held_good = split.held_out[GOOD]
    if len(held_good) > cfg.eval_good:
        pick = np.unique(np.round(np.linspace(0, len(held_good) - 1, cfg.eval_good)).astype(int))
        held_good = [held_good[i] for i in pick]
    ev_img, ev_mask, ev_type, ev_id = [], [], [], []
    for t in types:
        for s in split.samples(ds, "held_out", t):
            img, m = _load_pair(s.image_path, s.mask_path, "data")
            ev_img.append(_u8(img)), ev_mask.append(m > 0.5), ev_type.append(t), ev_id.append(s.source_id)
    for i in held_good:
        img = idx[i].load_image()
        ev_img.append(_u8(img)), ev_mask.append(torch.zeros(1, *img.shape[-2:], dtype=torch.bool))
        ev_type.append(GOOD), ev_id.append(i)

    gen = []
    gen_info = None
    if cfg.generated is not None and "ours" in cfg.active_settings():
        gset = read_image_folder(cfg.generated, name="generated")
        if not gset.has_masks:
            raise input_error("generated", cfg.generated, "generated images with masks (ground_truth/<type>/<id>_mask.png)")
        by_key = {type_key(t): t for t in types}
        unknown = [t for t in gset.types if type_key(t) not in by_key]
        if unknown:
            raise input_error("generated type", unknown[0], f"one of the dataset's types {', '.join(types)}")
        per_type = {}
        for gt in gset.types:
            items = gset.of_type(gt)[: cfg.max_generated_per_type] if cfg.max_generated_per_type else gset.of_type(gt)
            for it in items:
                img, m = _load_pair(it.image_path, it.mask_path, "generated")
                if m.sum() == 0:
                    continue
                gen.append(_defect_window(img, m, margin, by_key[type_key(gt)], it.id))
            per_type[by_key[type_key(gt)]] = len(items)
        gen_info = {"root": str(cfg.generated), "per_type": per_type, "used": len(gen)}
        if not gen:
            raise input_error("generated", cfg.generated, "at least one generated image with a non-empty mask")
    info = {
        "dataset": str(cfg.data), "layout": ds.layout, "split": cfg.split or "first third per type (few_shot_split)",
        "types": types,
        "train": {t: len(split.train[t]) for t in types} | {GOOD: len(split.train[GOOD])},
        "eval": {t: ev_type.count(t) for t in types} | {GOOD: len(held_good), "good_held_out_total": len(split.held_out[GOOD])},
        "generated": gen_info,
    }
    log(f"data: {len(real)} real training defects, {len(good_train)} defect-free training images, "
        f"{len(ev_img)} evaluation images ({len(held_good)} defect-free), {len(gen)} generated")
    return DownstreamData(types, real, gen, good_train, ev_img, ev_mask, ev_type, ev_id, info)


def _randint(g, lo, hi):
    return int(torch.randint(lo, hi, (1,), generator=g))


def _good_crop(goods, c, g) -> torch.Tensor:
    im = goods[_randint(g, 0, len(goods))]
    h, w = im.shape[-2:]
    y, x = _randint(g, 0, h - c + 1), _randint(g, 0, w - c + 1)
    return im[:, y : y + c, x : x + c].float() / 255.0


def _defect_crop(d: _Defect, c: int, g) -> tuple[torch.Tensor, torch.Tensor]:
    """A c×c window of ``d`` holding a random defect pixel at a random offset (replicate-padded if needed)."""
    img, m = d.image.float() / 255.0, d.mask.float()
    h, w = img.shape[-2:]
    if h < c or w < c:
        ph, pw = max(0, c - h), max(0, c - w)
        img = F.pad(img[None], (0, pw, 0, ph), mode="replicate")[0]
        m = F.pad(m[None], (0, pw, 0, ph))[0]
        h, w = img.shape[-2:]
    ys, xs = torch.nonzero(m[0] > 0.5, as_tuple=True)
    k = _randint(g, 0, ys.numel())
    cy, cx = int(ys[k]), int(xs[k])
    y0 = min(max(0, cy - _randint(g, 0, c)), h - c)
    x0 = min(max(0, cx - _randint(g, 0, c)), w - c)
    return img[:, y0 : y0 + c, x0 : x0 + c], m[:, y0 : y0 + c, x0 : x0 + c]


class CropSampler:
    """Training batches of one setting: ``batch(step)`` is a pure function of ``(seed, step)``."""

    def __init__(self, data: DownstreamData, setting: str, cfg: DownstreamConfig, seed: int):
        self.d, self.setting, self.cfg, self.seed = data, setting, cfg, seed
        self.by_type = {t: [x for x in data.real_defects if x.type == t] for t in data.types}
        self.by_type = {t: v for t, v in self.by_type.items() if v}
        self.gen_by_type = {t: [x for x in data.generated if x.type == t] for t in data.types}
        self.gen_by_type = {t: v for t, v in self.gen_by_type.items() if v}
        self.n_def = int(round(cfg.batch_size * cfg.defect_fraction))
        self.n_syn = int(round(self.n_def * cfg.synthetic_fraction)) if setting != "real" else 0
        self.n_real = self.n_def if cfg.mix == "add" else self.n_def - self.n_syn
        self.n_good = cfg.batch_size - self.n_def
        # crop slots per batch, in order: real defects, synthetic defects, defect-free
        self.slots = ["real"] * self.n_real + ["synthetic"] * self.n_syn + ["good"] * self.n_good

    @staticmethod
    def _pick(pool: dict[str, list[_Defect]], g: torch.Generator) -> _Defect:
        types = list(pool)
        t = types[_randint(g, 0, len(types))]  # types equally likely
        return pool[t][_randint(g, 0, len(pool[t]))]

    def _synthetic(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg.crop
        if self.setting == "ours":
            return _defect_crop(self._pick(self.gen_by_type, g), c, g)
        base = _good_crop(self.d.train_good, c, g)
        if self.setting == "perlin":
            return perlin_anomaly(base, g, texture_pool=self.d.train_good)
        d = self._pick(self.by_type, g)
        return copy_paste_anomaly(base, d.image, d.mask.float(), g)

    def parts(self, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The crops of one step by source: ``{"real", "synthetic", "good"}`` → (images (n,3,c,c), masks (n,1,c,c))."""
        c = self.cfg.crop
        gens = {"real": step_generator(self.seed, step, REAL_STREAM), "good": step_generator(self.seed, step, GOOD_STREAM),
                "synthetic": step_generator(self.seed, step, SYNTHETIC_STREAM)}
        counts = {"real": self.n_real, "synthetic": self.n_syn, "good": self.n_good}
        out = {}
        for source, n in counts.items():
            g = gens[source]
            xs, ys = [], []
            for _ in range(n):
                if source == "real":
                    x, y = _defect_crop(self._pick(self.by_type, g), c, g)
                elif source == "synthetic":
                    x, y = self._synthetic(g)
                else:
                    x, y = _good_crop(self.d.train_good, c, g), torch.zeros(1, c, c)
                k = _randint(g, 0, 8)
                xs.append(dihedral(x, k)), ys.append(dihedral(y, k))
            out[source] = (torch.stack(xs) if xs else torch.zeros(0, 3, c, c), torch.stack(ys) if ys else torch.zeros(0, 1, c, c))
        return out

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B,3,c,c) in [0,1] and masks (B,1,c,c) of one step, in slot order (real, synthetic, good)."""
        p = self.parts(step)
        return (torch.cat([p[s][0] for s in ("real", "synthetic", "good")]),
                torch.cat([p[s][1] for s in ("real", "synthetic", "good")]))
