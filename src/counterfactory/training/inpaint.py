"""Inpainting training tasks on top of :class:`~counterfactory.training.trainer.Trainer`.

- :func:`train_base`: self-supervised inpainting of defect-free images under random masks (strokes, blobs,
  boxes), as inpainting models are trained; the whole compact model is trained. With the full-image layout
  (``model.layout="full"``) the same loop trains plain denoising of whole crops: an unconditional image
  generator for ControlNets to steer.
- :func:`train_adapter`: few-shot; the base is frozen; LoRA (peft) + damage-type embeddings are trained on
  the few real defects of each type after mask-aware augmentation; the loss can be up-weighted inside the
  mask. Works on the compact base and on an SD-1.5-inpainting base (a local diffusers folder).

Every batch is a pure function of ``(seed, step)``, which makes resume exact.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

from ..data.augment import AugmentConfig, MaskAwareAugment
from ..data.random_masks import random_mask
from ..data.sample import GOOD, Sample
from ..errors import ConfigError, input_error
from ..io.images import to_model_space
from ..io.manifest import atomic_write_json, sha256_file
from ..io.masks import CropWindow, bbox, tile_cell_size, tile_for_cell, window_around
from ..models.compact import CompactConfig, build_compact, load_compact, save_compact
from ..models.conditioning import DamageTypeEmbedding
from ..sampling.inpaint import PixelSpace, VaeSpace, masked_image, to_working_resolution, unet_input
from .checkpoint import data_identity, run_identity, step_generator
from .trainer import LoopConfig, Trainer

ADAPTER_CONFIG = "adapter_config.json"
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CONV_TARGETS = ("conv1", "conv2")


def inpaint_loss(unet, scheduler, space, x0: torch.Tensor, mask: torch.Tensor, context: torch.Tensor,
                 gen: torch.Generator, outside_weight: float, hint: torch.Tensor | None = None) -> torch.Tensor:
    """One denoising loss on model-space images ``x0`` (B,3,H,W) with masks (B,1,H,W).

    Target follows ``scheduler.config.prediction_type`` (sample = x0, epsilon, v_prediction). The loss is
    weighted 1 inside the mask and ``outside_weight`` outside (normalised by the mean weight). ``hint``: extra
    input channels (a spatial reference hint) appended to the U-Net input. A full-image U-Net (input channels =
    the image's) gets the noisy image only: plain denoising, weighted by the mask as above.
    """
    with torch.no_grad():
        latents = space.encode(x0, sample=False)
        masked = space.encode(masked_image(x0, mask), sample=False)
        m = space.mask_to_space(mask)
    # drawn on the CPU from the step's generator (bit-identical CPU runs), then moved where the model is
    noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    if hint is not None:
        hint = hint.to(latents.device, latents.dtype)
        if hint.shape[-2:] != latents.shape[-2:]:
            hint = torch.nn.functional.interpolate(hint, size=tuple(latents.shape[-2:]), mode="area")
    full = unet.config.in_channels == latents.shape[1]
    pred = unet(noisy if full else unet_input(noisy, m, masked, hint), t, encoder_hidden_states=context,
                return_dict=False)[0]
    kind = scheduler.config.prediction_type
    target = latents if kind == "sample" else noise if kind == "epsilon" else scheduler.get_velocity(latents, noise, t)
    w = outside_weight + (1.0 - outside_weight) * m
    return ((pred - target) ** 2 * w).mean() / w.mean()


# ====================================================================== base pre-training
@dataclass(frozen=True)
class BaseTrainConfig:
    out: str
    data: str = "procedural"  # "procedural" (the embedded surfaces) or a dataset folder (its train-split good images)
    split: str | None = None  # split file (data layer) when data is a folder; default: few-shot split's good train part
    batch_size: int = 16
    pool_size: int = 1500  # procedural surfaces rendered once and cropped at random
    pool_image_size: int = 128
    max_crop: int | None = None  # largest random crop side (pixels) before resizing; None = the image's shorter side
    outside_weight: float = 0.1
    init: str | None = None  # a compact base folder whose weights start the run (fine-tuning); None: random init
    model: CompactConfig = field(default_factory=CompactConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: an integer >= 1")
        if not 0 <= self.outside_weight <= 1:
            raise ConfigError(f"outside_weight={self.outside_weight}: in [0, 1]")


def _procedural_pool(n: int, size: int, seed: int, progress: bool = True) -> list[np.ndarray]:
    from tqdm.auto import tqdm

    from ..data.surfaces import render_surface

    rng = np.random.default_rng([seed, 12345])
    return [np.round(render_surface(rng, size) * 255).astype(np.uint8)
            for _ in tqdm(range(n), desc="rendering surfaces", disable=not progress)]


def _good_pool(data: str, split: str | None) -> tuple[list[np.ndarray], dict, dict]:
    """(images, data identity, split) of a dataset folder's defect-free training images."""
    from ..data import open_dataset
    from ..data.splits import few_shot_split, load_split
    from ..io.images import read_array

    ds = open_dataset(data)
    sp = load_split(split) if split else few_shot_split(ds)
    ids = set(sp.train.get(GOOD, []))
    goods = [s for s in ds.good() if s.source_id in ids]
    if not goods:
        raise input_error("data", data, "a dataset with defect-free ('good') training images")
    pool = [np.round(read_array(s.image_path) * 255).astype(np.uint8) for s in goods]
    return pool, data_identity(data, [s.image_path for s in goods]), sp


def split_digest(split) -> str:
    """sha256 of a split's content: what a run's identity records instead of the split file's path."""
    return hashlib.sha256(json.dumps(split.to_dict(), sort_keys=True).encode()).hexdigest()


def record_split(split, out: str | Path) -> None:
    """Write ``out/split.json`` (called after :meth:`Trainer.check_resumable`: a resumed run has the same split)."""
    from ..data.splits import save_split

    path = Path(out) / "split.json"
    if not (path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(split.to_dict()))):
        save_split(split, path)


def _base_batch(pool: list[np.ndarray], res: int, batch: int, seed: int, step: int, max_crop: int | None = None):
    rng = np.random.default_rng([seed, step, 1])
    xs, ms = [], []
    for _ in range(batch):
        img = pool[rng.integers(len(pool))]
        h, w = img.shape[:2]
        side_max = min(h, w, max_crop) if max_crop else min(h, w)
        side = int(rng.integers(min(res, side_max), side_max + 1))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = torch.from_numpy(img[y0 : y0 + side, x0 : x0 + side].transpose(2, 0, 1).copy()).float()[None] / 255.0
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        m = torch.from_numpy(random_mask(rng, res))[None, None]
        crop, _ = to_working_resolution(crop, torch.zeros(1, 1, side, side), res)
        xs.append(crop)
        ms.append(m)
    return to_model_space(torch.cat(xs)), torch.cat(ms)


def train_base(cfg: BaseTrainConfig, progress: bool = True) -> dict:
    """Train the compact base; writes checkpoints and, at the end, ``compact_inpaint.safetensors`` in ``cfg.out``."""
    out = Path(cfg.out)
    model = build_compact(cfg.model, seed=cfg.loop.seed)
    init_sha = None
    if cfg.init is not None:
        from ..io.manifest import sha256_file
        from ..models.compact import WEIGHTS_FILE, full_from_inpaint_state, load_compact

        start = load_compact(cfg.init)
        same = {"extra": None, "layout": None}
        if start.config.to_dict() | same != model.config.to_dict() | same or (
                start.config.layout != cfg.model.layout and cfg.model.layout != "full"):
            raise input_error("init", cfg.init, "a compact base with the same architecture as the model being trained "
                                                "(resolution, channels, prediction type; an inpainting base may start "
                                                "a full-image one, not the reverse)")
        state = start.state_dict()
        if start.config.layout != cfg.model.layout:  # inpainting → full image: its "nothing known" input
            state = full_from_inpaint_state(state)
        model.load_state_dict(state)
        model.train().requires_grad_(True)
        init_sha = sha256_file(Path(cfg.init) / WEIGHTS_FILE)
    train_sched = DDPMScheduler(num_train_timesteps=cfg.model.num_train_timesteps, beta_schedule=cfg.model.beta_schedule,
                                prediction_type=cfg.model.prediction_type, clip_sample=False)
    if cfg.data == "procedural":
        pool = _procedural_pool(cfg.pool_size, cfg.pool_image_size, cfg.loop.seed, progress)
        data_id, split_id = {"procedural": {"pool_size": cfg.pool_size, "pool_image_size": cfg.pool_image_size,
                                            "seed": cfg.loop.seed}}, None
    else:
        pool, data_id, split = _good_pool(cfg.data, cfg.split)
        split_id = split_digest(split)
    space = PixelSpace()
    res = cfg.model.sample_size

    full = cfg.model.layout == "full"

    def loss_fn(step: int, device) -> torch.Tensor:
        x0, mask = _base_batch(pool, res, cfg.batch_size, cfg.loop.seed, step, cfg.max_crop)
        if full:  # whole crops, every pixel weighted alike
            mask = torch.ones_like(mask)
        gen = step_generator(cfg.loop.seed, step)
        return inpaint_loss(model.unet, train_sched, space, x0.to(device), mask.to(device),
                            model.tokens(x0.shape[0]), gen, cfg.outside_weight)

    identity = run_identity("train-base", cfg, data=data_id, split=split_id)
    if cfg.max_crop is None:  # runs started before the option existed stay resumable
        identity.pop("max_crop")
    identity.pop("init")
    if cfg.model.layout == "inpaint":  # runs started before the full-image layout existed stay resumable
        identity["model"].pop("layout")
    if init_sha is not None:  # the starting weights are identified by content, not by their folder's name
        identity["init_sha256"] = init_sha
    trainer = Trainer(model, loss_fn, cfg.loop, out, identity, progress=progress)
    summary = trainer.run()
    if trainer.is_main_process:  # one writer under several processes
        with torch.no_grad():
            ema = trainer.ema_state()
            export = copy.deepcopy(model)
            for n, p in export.named_parameters():
                p.copy_(ema[n])
        cfg_extra = {"data": cfg.data if cfg.data == "procedural" else data_id["path"], "steps": summary["steps"],
                     "seed": cfg.loop.seed, "final_loss": summary["final_loss"],
                     **({"init_sha256": init_sha} if init_sha else {})}
        export.config = CompactConfig.from_dict({**cfg.model.to_dict(), "extra": cfg_extra})
        save_compact(export, out)
        atomic_write_json(out / "train_summary.json", {**summary, "config": trainer.identity})
    trainer.wait()
    return summary


# ====================================================================== few-shot adapter
@dataclass(frozen=True)
class AdapterTrainConfig:
    out: str
    data: str  # dataset folder (MVTec or Magnetic Tile layout)
    base: str | None = None  # compact base folder (default: shipped weights/) or an SD-1.5-inpainting diffusers folder
    base_kind: str = "compact"  # "compact" | "sd"
    split: str | None = None  # split file; default: the field's first-third split (or --shots)
    shots: int | None = None
    types: tuple[str, ...] | None = None  # train only these defect types (default: all in the split)
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ATTENTION_TARGETS + CONV_TARGETS
    num_tokens: int | None = None  # default: the base's own token count (compact) or 4 (SD)
    batch_size: int = 8
    label_dropout: float = 0.1  # rows trained with the null embedding (classifier-free guidance)
    outside_weight: float = 0.1
    margin_range: tuple[float, float] = (0.3, 1.0)  # crop context around the (augmented) mask, sampled per item
    hflip: bool = True
    vflip: bool = True
    rotate_degrees: float = 20.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_window_scale: float | None = None  # as generate's: train on tiles of large regions, at their pixel scale
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=400, lr=1e-3, warmup_steps=20, checkpoint_every=50))

    def __post_init__(self):
        if self.base_kind not in ("compact", "sd"):
            raise ConfigError(f"base_kind={self.base_kind!r}: one of 'compact', 'sd'")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank={self.lora_rank}: an integer >= 1")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError(f"label_dropout={self.label_dropout}: in [0, 1)")
        if not 0 <= self.margin_range[0] <= self.margin_range[1]:
            raise ConfigError(f"margin_range={self.margin_range}: 0 <= low <= high")
        if self.max_window_scale is not None and not 1 <= self.max_window_scale <= 64:
            raise ConfigError(f"max_window_scale={self.max_window_scale}: None or a number in [1, 64]")


class _AdapterModule(nn.Module):
    def __init__(self, unet, emb):
        super().__init__()
        self.unet = unet
        self.emb = emb


def load_base(base: str | None, kind: str):
    """(unet, space, train scheduler, sampling scheduler, resolution, default tokens or None, base file for sha256)."""
    if kind == "compact":
        from ..models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE, make_schedulers

        model = load_compact(base, layout="inpaint")
        train_s, sample_s = make_schedulers(model.config)
        wfile = Path(base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE
        return model.unet, PixelSpace(), train_s, sample_s, model.config.sample_size, model.base_tokens.detach(), wfile
    from ..models.pretrained import load_sd_inpaint

    if base is None:
        raise input_error("base", None, "a local SD-1.5-inpainting diffusers folder when --base-kind sd")
    parts = load_sd_inpaint(base)
    unet, vae = parts["unet"], parts["vae"]
    train_s = DDPMScheduler.from_config(parts["scheduler"].config)
    space = VaeSpace(vae)
    res = unet.config.sample_size * space.scale_factor
    wfile = next(iter(sorted((Path(base) / "unet").glob("*.safetensors"))), None)
    return unet, space, train_s, parts["scheduler"], res, None, wfile


def _few_shot_items(cfg: AdapterTrainConfig):
    """(types, items, data identity, split) of the split's training defects."""
    from ..data import open_dataset
    from ..data.splits import few_shot_split, load_split

    ds = open_dataset(cfg.data, skip_broken=True)  # broken samples: a warning each and a count
    split = load_split(cfg.split) if cfg.split else few_shot_split(ds, shots=cfg.shots)
    types = [t for t in (cfg.types or sorted(t for t in split.train if t != GOOD))]
    for t in types:
        if t not in ds.defect_types:
            raise input_error("types", t, f"defect types of {cfg.data}: {ds.defect_types}")
    by_id = {s.source_id: s for s in ds.samples}
    items: list[tuple[Sample, torch.Tensor, torch.Tensor, int]] = []
    for ti, t in enumerate(types):
        for sid in split.train.get(t, []):
            s = by_id[sid]
            mask = s.load_mask()
            if mask.sum() == 0:
                raise input_error("mask", str(s.mask_path), f"a non-empty mask for defect type {t!r}")
            items.append((s, s.load_image(), mask, ti))
    if not items:
        raise input_error("data", cfg.data, "a dataset whose split has training defects")
    members = [p for s, *_ in items for p in (s.image_path, s.mask_path) if p is not None]
    return types, items, data_identity(cfg.data, members), split


def _tile_around(mask: torch.Tensor, hw: tuple[int, int], margin: float, res: int, max_size: int, rng) -> CropWindow:
    """A training tile of a large region, as :func:`~counterfactory.io.masks.tile_windows` cuts them at sampling: a
    cell around a random mask pixel, painted with the rest of the region as context."""
    ys, xs = np.nonzero(mask.numpy() > 0.5)
    k = int(rng.integers(len(xs)))
    cell = tile_cell_size(max_size, margin)
    h, w = hw
    cx0 = min(max(int(xs[k]) - cell // 2, 0), max(w - cell, 0))
    cy0 = min(max(int(ys[k]) - cell // 2, 0), max(h - cell, 0))
    # the cell holds the drawn mask pixel, so it has a tile
    return tile_for_cell(mask, (cx0, cy0, min(cx0 + cell, w), min(cy0 + cell, h)), hw, margin,
                         min(res, max(h, w)), max_size)


def _adapter_batch(items, types, res, cfg: AdapterTrainConfig, augment, step: int):
    rng = np.random.default_rng([cfg.loop.seed, step, 2])
    per_type: dict[int, list[int]] = {}
    for k, it in enumerate(items):
        per_type.setdefault(it[3], []).append(k)
    xs, ms, ys = [], [], []
    for b in range(cfg.batch_size):
        ti = int(rng.integers(len(types)))
        _, img, mask, _ = items[per_type[ti][rng.integers(len(per_type[ti]))]]
        img, mask, _ = augment(img, mask, generator=step_generator(cfg.loop.seed, step, stream=b + 1))
        box = bbox(mask[0])
        if box is None:  # cannot happen: augmentation keeps the defect inside
            box = (0, 0, mask.shape[-1], mask.shape[-2])
        h, w = mask.shape[-2:]
        margin = float(rng.uniform(*cfg.margin_range))
        win = window_around(box, (h, w), margin, min_size=min(res, max(h, w)))
        if cfg.max_window_scale is not None and win.size > cfg.max_window_scale * res:
            win = _tile_around(mask[0], (h, w), margin, res, int(cfg.max_window_scale * res), rng)
        x0, y0, x1, y1 = win.box
        xi, mi = to_working_resolution(img[None, :, y0:y1, x0:x1], win.paint_mask(mask[None]), res)
        xs.append(xi)
        ms.append(mi)
        ys.append(ti)
    return to_model_space(torch.cat(xs)), torch.cat(ms), torch.tensor(ys)


def train_adapter(cfg: AdapterTrainConfig, progress: bool = True) -> dict:
    """Train LoRA + damage-type embeddings on a frozen base; export a diffusers-format adapter folder."""
    from ..models.lora import add_lora, save_lora

    unet, space, train_s, _, res, base_tokens, base_file = load_base(cfg.base, cfg.base_kind)
    types, items, data_id, split = _few_shot_items(cfg)
    unet = copy.deepcopy(unet)
    unet.requires_grad_(False)
    targets = cfg.lora_targets if cfg.base_kind == "compact" else tuple(t for t in cfg.lora_targets if t in ATTENTION_TARGETS)
    add_lora(unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=targets, seed=cfg.loop.seed)
    emb = seeded_type_embedding(types, cfg.num_tokens, unet.config.cross_attention_dim, base_tokens, cfg.loop.seed)
    module = _AdapterModule(unet, emb)
    loss_fn = few_shot_loss_fn(items, types, res, cfg, emb,
                               lambda x0, mask, ctx, gen: inpaint_loss(unet, train_s, space, x0, mask, ctx, gen,
                                                                       cfg.outside_weight))

    identity = run_identity("train-adapter", cfg, data=data_id, split=split_digest(split), types=types,
                            shots={t: sum(1 for it in items if it[3] == i) for i, t in enumerate(types)})
    if cfg.max_window_scale is None:  # runs started before the option existed stay resumable
        identity.pop("max_window_scale")
    trainer = Trainer(module, loss_fn, cfg.loop, cfg.out, identity, progress=progress)
    trainer.check_resumable()
    if trainer.is_main_process:
        record_split(split, cfg.out)
    _move_space(space, trainer.accelerator.device)
    summary = trainer.run()
    trainer.copy_ema_into(module)
    out = Path(cfg.out)
    adapter_cfg = {
        "format": "counterfactory.adapter.v1",
        "base_kind": cfg.base_kind,
        "base": str(cfg.base) if cfg.base else "weights/",
        "base_sha256": sha256_file(base_file) if base_file and Path(base_file).is_file() else None,
        "types": types,
        "shots": identity["shots"],
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_targets": list(targets),
        "resolution": res,
        "prediction_type": train_s.config.prediction_type,
        "steps": summary["steps"],
        "seed": cfg.loop.seed,
        "final_loss": summary["final_loss"],
        "data": data_id["path"],
        "data_fingerprint": data_id["fingerprint"],
    }
    if trainer.is_main_process:  # one writer under several processes
        save_lora(unet, out, metadata={"counterfactory": json.dumps(adapter_cfg)})
        emb.save(out)
        atomic_write_json(out / ADAPTER_CONFIG, adapter_cfg)  # written last: its presence marks a complete adapter
    trainer.wait()
    return {**summary, "types": types, "shots": identity["shots"], "adapter": str(out)}


def seeded_type_embedding(types: list[str], num_tokens: int | None, dim: int, base_tokens: torch.Tensor | None,
                          seed: int) -> DamageTypeEmbedding:
    """The damage-type table a few-shot trainer starts from: the base's own tokens (plus seeded noise) when it has
    them, else seeded random rows; ``num_tokens`` defaults to the base's token count (4 without one)."""
    n_tok = num_tokens or (base_tokens.shape[0] if base_tokens is not None else 4)
    emb = DamageTypeEmbedding(types, num_tokens=n_tok, dim=dim)
    gen0 = torch.Generator().manual_seed(seed)
    if base_tokens is not None and base_tokens.shape[0] == n_tok:
        emb.init_from_tokens(base_tokens, generator=gen0)
    else:
        with torch.no_grad():
            emb.embeddings.copy_(torch.randn(emb.embeddings.shape, generator=gen0) * 0.5)
    return emb


def few_shot_loss_fn(items, types: list[str], res: int, cfg, emb: DamageTypeEmbedding, denoising_loss):
    """The Trainer ``loss_fn`` of a few-shot trainer: the augmented shot batch of ``step`` (a pure function of
    ``(seed, step)``), label dropout for classifier-free guidance, then ``denoising_loss(x0, mask, context, gen)``."""
    augment = MaskAwareAugment(AugmentConfig(hflip=cfg.hflip, vflip=cfg.vflip, rotate_degrees=cfg.rotate_degrees,
                                             scale=cfg.scale, translate=True))

    def loss_fn(step: int, device) -> torch.Tensor:
        x0, mask, y = _adapter_batch(items, types, res, cfg, augment, step)
        gen = step_generator(cfg.loop.seed, step)
        drop = torch.rand(len(y), generator=gen) < cfg.label_dropout
        ctx = emb(y.to(device), drop=drop.to(device))
        return denoising_loss(x0.to(device), mask.to(device), ctx, gen)

    return loss_fn


def _move_space(space, device) -> None:
    """The frozen VAE of a latent space goes where the trained U-Net is (the U-Net is moved by accelerate)."""
    vae = getattr(space, "vae", None)
    if vae is not None:
        vae.to(device)
