"""Downstream benefit: does synthetic defect data help a segmentation network find real defects?

The field's main claim (AnomalyDiffusion / SeaS protocol), scaled to a CPU: a small U-Net segmenter is
trained on crops, under the *same budget* in every setting (same steps, batch size, crop size, fraction of
defect crops per batch), and evaluated on the held-out real defects plus held-out defect-free images.

Settings (the defect half of every batch comes from):

- ``real``: the real few-shot training defects only (the strong control users found hard to beat);
- ``ours``: half real few-shot defects, half our generated defects (``--generated``);
- ``perlin``: half real, half DRAEM-style Perlin anomalies on defect-free crops (:mod:`.anomalies`; no DTD
  textures: the anomaly source is the dataset's own defect-free images or procedural Perlin textures);
- ``copypaste``: half real, half real training defects pasted onto defect-free crops.

The other half of every batch is random crops of defect-free training images. Defect crops are windows of
``crop`` px that contain a random defect pixel; all crops get a random flip / 90° rotation.

``mix="replace"`` (default, above): synthetic crops take half of the defect slots, so a setting beats ``real`` only
if a synthetic crop teaches as much as a real one. ``mix="add"``: every batch keeps all of ``real``'s crops and the
synthetic crops come on top (batch ``batch_size + round(batch_size * defect_fraction * synthetic_fraction)``,
same steps): "real + X" in the literal sense, at the cost of larger batches.

Evaluation, on whole images at native resolution: pixel AP, pixel F1-max and pixel AUROC over every pixel of
the held-out defect images and of ``eval_good`` held-out defect-free images (evenly spaced by id); image
AUROC with the image score = max of the ``image_pool``×``image_pool`` average-pooled anomaly map. Also per
defect type (that type's images + the same good images). Seeds ×N, mean ± std (population std over seeds).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import input_error
from ..io.images import load_image
from ..io.manifest import atomic_write_json
from ..io.masks import bbox, read_mask
from .anomalies import copy_paste_anomaly, perlin_anomaly

SETTINGS = ("real", "ours", "perlin", "copypaste")
SETTING_TITLES = {
    "real": "(i) real few-shot only",
    "ours": "(ii) real + ours",
    "perlin": "(iii) real + Perlin",
    "copypaste": "(iv) real + copy-paste",
}
METRICS = ("pixel_AP", "pixel_F1max", "pixel_AUROC", "image_AUROC")


@dataclass(frozen=True)
class DownstreamConfig:
    data: str
    out: str
    split: str | None = None  # default: the first-third few-shot split of the data layer
    generated: str | None = None
    settings: tuple[str, ...] | None = None  # default: every setting that applies
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300  # optimisation steps per run (same for every setting)
    batch_size: int = 16
    crop: int = 64
    defect_fraction: float = 0.5  # crops per batch that hold a defect
    synthetic_fraction: float = 0.5  # of those, from the synthetic source (settings ours/perlin/copypaste)
    mix: str = "replace"  # "replace": synthetic crops take defect slots; "add": they come on top of real's batch
    lr: float = 2e-3
    channels: tuple[int, ...] = (12, 24, 48)
    eval_good: int = 150  # held-out defect-free images evaluated (evenly spaced by id)
    image_pool: int = 15
    max_generated_per_type: int | None = None

    def __post_init__(self):
        if self.settings is not None:
            bad = [s for s in self.settings if s not in SETTINGS]
            if bad or not self.settings:
                raise input_error("--settings", ",".join(self.settings), f"a comma-separated subset of {','.join(SETTINGS)}")
            if "ours" in self.settings and self.generated is None:
                raise input_error("--settings", ",".join(self.settings), "'ours' only together with --generated DIR")
        if not self.seeds:
            raise input_error("--seeds", self.seeds, "at least one seed")
        for name, v, lo in (("--steps", self.steps, 1), ("--batch-size", self.batch_size, 2), ("--crop", self.crop, 16),
                            ("--eval-good", self.eval_good, 1)):
            if not isinstance(v, int) or v < lo:
                raise input_error(name, v, f"an integer >= {lo}")
        if self.crop % 4:
            raise input_error("--crop", self.crop, "a multiple of 4")
        if self.mix not in ("replace", "add"):
            raise input_error("--mix", self.mix, "'replace' or 'add'")
        for name, v in (("defect_fraction", self.defect_fraction), ("synthetic_fraction", self.synthetic_fraction)):
            if not 0 <= v <= 1:
                raise input_error(name, v, "a fraction in [0, 1]")

    def active_settings(self) -> tuple[str, ...]:
        if self.settings is not None:
            return self.settings
        return tuple(s for s in SETTINGS if s != "ours" or self.generated is not None)


# --------------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------------
def _conv(cin, cout, groups=4):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU())


class SmallUNet(nn.Module):
    """A small U-Net: image (B,3,H,W) in [0,1] → defect logits (B,1,H,W); any H, W (padded internally)."""

    def __init__(self, channels: tuple[int, ...] = (12, 24, 48)):
        super().__init__()
        self.channels = channels
        self.down = nn.ModuleList()
        cin = 3
        for c in channels:
            self.down.append(_conv(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_skip, c_deep in zip(reversed(channels[:-1]), reversed(channels[1:])):
            self.up.append(nn.ConvTranspose2d(c_deep, c_skip, 2, stride=2))
            self.fuse.append(_conv(2 * c_skip, c_skip))
        self.head = nn.Conv2d(channels[0], 1, 1)
        self.factor = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = (x - 0.5) / 0.25
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (DRAEM's choice for its segmenter) + soft Dice over the batch (tiny defects need it)."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    focal = ((1 - pt) ** gamma * bce).mean()
    inter = (p * target).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    return focal + dice


# --------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------
def binary_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Exact AP (sum of ΔR·P, as sklearn / torchmetrics), F1-max and AUROC (trapezoid) with ties handled."""
    s = scores.flatten().float()
    y = labels.flatten().bool()
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return {"AP": math.nan, "F1max": math.nan, "AUROC": math.nan}
    s, order = torch.sort(s, descending=True, stable=True)
    y = y[order]
    tp = torch.cumsum(y, 0, dtype=torch.float64)
    del order
    fp = torch.arange(1, y.numel() + 1, dtype=torch.float64) - tp
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last index of every run of equal scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    r_prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    ap = float(((recall - r_prev) * precision).sum())
    f1 = float((2 * precision * recall / (precision + recall).clamp_min(1e-12)).max())
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), recall])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp / n_neg])
    auroc = float(torch.trapezoid(tpr, fpr))
    return {"AP": ap, "F1max": f1, "AUROC": auroc}


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------
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
    from ..data import GOOD, few_shot_split, load_split, open_dataset

    ds = open_dataset(cfg.data)
    split = load_split(cfg.split) if cfg.split else few_shot_split(ds)
    idx = ds.by_id()
    types = [t for t in ds.defect_types if t in split.train]
    if not types:
        raise input_error("--split", cfg.split, f"a split with the defect types of {cfg.data}")
    if GOOD not in split.train or GOOD not in split.held_out:
        raise input_error("--split", cfg.split, "a split with defect-free ('good') images in train and held_out")
    margin = cfg.crop
    real = []
    for t in types:
        for s in split.samples(ds, "train", t):
            img, m = _load_pair(s.image_path, s.mask_path, "--data")
            real.append(_defect_window(img, m, margin, t, s.source_id))
    good_train = [_u8(idx[i].load_image()) for i in split.train[GOOD]]
    small = [g for g in good_train if min(g.shape[-2:]) < cfg.crop]
    if small:
        raise input_error("--crop", cfg.crop, f"at most the smallest defect-free image side ({min(small[0].shape[-2:])} px)")
    held_good = split.held_out[GOOD]
    if len(held_good) > cfg.eval_good:
        pick = np.unique(np.round(np.linspace(0, len(held_good) - 1, cfg.eval_good)).astype(int))
        held_good = [held_good[i] for i in pick]
    ev_img, ev_mask, ev_type, ev_id = [], [], [], []
    for t in types:
        for s in split.samples(ds, "held_out", t):
            img, m = _load_pair(s.image_path, s.mask_path, "--data")
            ev_img.append(_u8(img)), ev_mask.append(m > 0.5), ev_type.append(t), ev_id.append(s.source_id)
    for i in held_good:
        img = idx[i].load_image()
        ev_img.append(_u8(img)), ev_mask.append(torch.zeros(1, *img.shape[-2:], dtype=torch.bool))
        ev_type.append(GOOD), ev_id.append(i)

    gen = []
    gen_info = None
    if cfg.generated is not None and "ours" in cfg.active_settings():
        from .folders import read_image_folder, type_key

        gset = read_image_folder(cfg.generated, name="--generated")
        if not gset.has_masks:
            raise input_error("--generated", cfg.generated, "generated images with masks (ground_truth/<type>/<id>_mask.png)")
        by_key = {type_key(t): t for t in types}
        unknown = [t for t in gset.types if type_key(t) not in by_key]
        if unknown:
            raise input_error("--generated type", unknown[0], f"one of the dataset's types {', '.join(types)}")
        per_type = {}
        for gt in gset.types:
            items = gset.of_type(gt)[: cfg.max_generated_per_type] if cfg.max_generated_per_type else gset.of_type(gt)
            for it in items:
                img, m = _load_pair(it.image_path, it.mask_path, "--generated")
                if m.sum() == 0:
                    continue
                gen.append(_defect_window(img, m, margin, by_key[type_key(gt)], it.id))
            per_type[by_key[type_key(gt)]] = len(items)
        gen_info = {"root": str(cfg.generated), "per_type": per_type, "used": len(gen)}
        if not gen:
            raise input_error("--generated", cfg.generated, "at least one generated image with a non-empty mask")
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


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k & 3, dims=(-2, -1))


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
    """Draws training batches for one setting, deterministically from a seeded generator."""

    def __init__(self, data: DownstreamData, setting: str, cfg: DownstreamConfig, seed: int):
        self.d, self.setting, self.cfg = data, setting, cfg
        self.g = torch.Generator().manual_seed(seed)
        self.by_type = {t: [x for x in data.real_defects if x.type == t] for t in data.types}
        self.by_type = {t: v for t, v in self.by_type.items() if v}
        self.gen_by_type = {t: [x for x in data.generated if x.type == t] for t in data.types}
        self.gen_by_type = {t: v for t, v in self.gen_by_type.items() if v}
        self.n_def = int(round(cfg.batch_size * cfg.defect_fraction))
        self.n_syn = int(round(self.n_def * cfg.synthetic_fraction)) if setting != "real" else 0
        # crop slots per batch, in order: real defects, synthetic defects, defect-free
        n_real = self.n_def if cfg.mix == "add" else self.n_def - self.n_syn
        self.slots = ["real"] * n_real + ["synthetic"] * self.n_syn + ["good"] * (cfg.batch_size - self.n_def)

    def _real(self, pool: dict[str, list[_Defect]]) -> _Defect:
        types = list(pool)
        t = types[_randint(self.g, 0, len(types))]  # types equally likely
        return pool[t][_randint(self.g, 0, len(pool[t]))]

    def _synthetic(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, g = self.cfg.crop, self.g
        if self.setting == "ours":
            return _defect_crop(self._real(self.gen_by_type), c, g)
        base = _good_crop(self.d.train_good, c, g)
        if self.setting == "perlin":
            return perlin_anomaly(base, g, texture_pool=self.d.train_good)
        d = self._real(self.by_type)
        return copy_paste_anomaly(base, d.image, d.mask.float(), g)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, g = self.cfg.crop, self.g
        xs, ys = [], []
        for slot in self.slots:
            if slot == "real":
                x, y = _defect_crop(self._real(self.by_type), c, g)
            elif slot == "synthetic":
                x, y = self._synthetic()
            else:
                x, y = _good_crop(self.d.train_good, c, g), torch.zeros(1, c, c)
            k = _randint(g, 0, 8)
            xs.append(_dihedral(x, k)), ys.append(_dihedral(y, k))
        return torch.stack(xs), torch.stack(ys)


# --------------------------------------------------------------------------------------------------------
# one run, the whole benchmark
# --------------------------------------------------------------------------------------------------------
def train_segmenter(data: DownstreamData, setting: str, seed: int, cfg: DownstreamConfig, log=None) -> tuple[SmallUNet, list[float]]:
    torch.manual_seed(seed)
    model = SmallUNet(cfg.channels)
    sampler = CropSampler(data, setting, cfg, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(cfg.steps * 0.8), int(cfg.steps * 0.9)], gamma=0.2)
    losses = []
    model.train()
    for step in range(cfg.steps):
        x, y = sampler.batch()
        loss = focal_dice_loss(model(x), y)
        if not torch.isfinite(loss):
            from ..errors import TrainingError

            raise TrainingError(f"non-finite loss at step {step} ({setting}, seed {seed})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % 100 == 0:
            log(f"  {setting}/seed{seed}: step {step + 1}/{cfg.steps} loss {np.mean(losses[-100:]):.4f}")
    return model.eval(), losses


@torch.no_grad()
def predict(model: SmallUNet, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Anomaly maps (1,H,W) in [0,1] of uint8 or float images (3,H,W)."""
    out = []
    for im in images:
        x = im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
        out.append(torch.sigmoid(model(x[None]))[0])
    return out


def evaluate_maps(maps: list[torch.Tensor], data: DownstreamData, image_pool: int) -> dict:
    from ..data import GOOD

    def image_score(m):
        k = min(image_pool, *m.shape[-2:])
        return float(F.avg_pool2d(m[None], k, stride=1).max())

    scores = torch.tensor([image_score(m) for m in maps])
    labels = torch.tensor([t != GOOD for t in data.eval_types])
    res = {}
    groups = {"all": list(range(len(maps)))}
    for t in data.types:
        groups[t] = [i for i, tt in enumerate(data.eval_types) if tt in (t, GOOD)]
    for name, ids in groups.items():
        px = binary_metrics(torch.cat([maps[i].flatten() for i in ids]), torch.cat([data.eval_masks[i].flatten() for i in ids]))
        im = binary_metrics(scores[ids], labels[ids])
        res[name] = {"pixel_AP": px["AP"], "pixel_F1max": px["F1max"], "pixel_AUROC": px["AUROC"], "image_AUROC": im["AUROC"]}
    return res


def _mean_std(vals: list[float]) -> tuple[float, float]:
    a = np.array([v for v in vals if v is not None and not math.isnan(v)], dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std())


def run_downstream(cfg: DownstreamConfig, log=print) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise input_error("--out", cfg.out, "a folder (or a path that does not exist yet)")
    data = load_downstream_data(cfg, log=log)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    from ..io.manifest import Manifest

    manifest = Manifest(runs_path)
    def cfg_key(setting: str) -> str:
        """What a run's result depends on: the generated folder only matters to 'ours' (so adding --generated
        later reuses the real / perlin / copypaste runs)."""
        skip = {"out", "settings", "seeds"} | (set() if setting == "ours" else {"generated", "max_generated_per_type"})
        if setting == "real" or cfg.mix == "replace":  # real never mixes; "replace" runs predate the option
            skip.add("mix")
        return json.dumps({k: v for k, v in asdict(cfg).items() if k not in skip}, sort_keys=True, default=str)

    done = {r["id"]: r for r in manifest.read() if r.get("config") == cfg_key(r.get("setting", ""))}
    runs = []
    examples = {}
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
            model, losses = train_segmenter(data, setting, seed, cfg, log=log)
            t_train = time.perf_counter() - t1
            maps = predict(model, data.eval_images)
            res = evaluate_maps(maps, data, cfg.image_pool)
            rec = {"id": rid, "setting": setting, "seed": seed, "metrics": res, "config": cfg_key(setting),
                   "final_loss": float(np.mean(losses[-20:])), "train_seconds": round(t_train, 1),
                   "seconds": round(time.perf_counter() - t1, 1), "cpu_seconds": round(time.process_time() - c1, 1)}
            manifest.append(rec)
            runs.append(rec)
            a = res["all"]
            log(f"{rid}: pixel AP {a['pixel_AP']:.3f}  F1max {a['pixel_F1max']:.3f}  pixel AUROC {a['pixel_AUROC']:.3f}  "
                f"image AUROC {a['image_AUROC']:.3f}  ({rec['seconds']} s wall, {rec['cpu_seconds']} s CPU)")
            if seed == cfg.seeds[0]:
                examples[setting] = _example_maps(maps, data)
                _save_examples(examples[setting], out / "maps" / setting)
    summary = summarize(runs, data.types)
    result = {
        "format": "counterfactory.downstream/1",
        "config": asdict(cfg),
        "data": data.info,
        "protocol": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in runs],
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    from .suite import _clean

    atomic_write_json(out / "downstream.json", _clean(result))
    from .downstream_report import build_downstream_report

    build_downstream_report(result, data, cfg, examples).save(out / "report.html")
    log(f"wrote {out / 'downstream.json'} and {out / 'report.html'} ({result['seconds']} s)")
    return result


def summarize(runs: list[dict], types: list[str]) -> dict:
    """setting → group ("all" or a type) → metric → {"mean", "std", "n"}."""
    out: dict = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        rs = [r for r in runs if r["setting"] == setting]
        out[setting] = {}
        for group in ["all", *types]:
            out[setting][group] = {}
            for m in METRICS:
                mean, std = _mean_std([r["metrics"].get(group, {}).get(m, math.nan) for r in rs])
                out[setting][group][m] = {"mean": mean, "std": std, "n": len(rs)}
    return out


def _example_maps(maps, data: DownstreamData, per_type: int = 2) -> list[tuple[str, int]]:
    """Indices of a few evaluation images to show (first of each type + one good)."""
    from ..data import GOOD

    picks = []
    for t in [*data.types, GOOD]:
        ids = [i for i, tt in enumerate(data.eval_types) if tt == t][: (per_type if t != GOOD else 1)]
        picks += [(data.eval_ids[i], i) for i in ids]
    return [(sid, i, maps[i]) for sid, i in picks]


def _save_examples(examples, folder: Path) -> None:
    from ..io.images import save_image

    for _sid, i, m in examples:
        save_image(m, folder / f"{i}.png")


def _load_examples(folder: Path, data: DownstreamData):
    """The first seed's example maps saved by an earlier (resumed) run, or None."""
    from ..io.images import load_image as _load

    picks = _example_maps([None] * len(data.eval_images), data)
    out = []
    for sid, i, _ in picks:
        f = folder / f"{i}.png"
        if not f.is_file():
            return None
        out.append((sid, i, _load(f, mode="L")))
    return out
