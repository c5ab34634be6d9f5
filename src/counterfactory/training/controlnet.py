"""Few-shot ControlNet training on segmentation masks, on top of :class:`~counterfactory.training.trainer.Trainer`.

The base U-Net (SD-1.5 text-to-image, or the compact base) is frozen; a ControlNet built from it
(``ControlNetModel.from_unet``) and a damage-type embedding table are trained on the few real defects of each type,
after mask-aware augmentation (the same transform on image and mask), to denoise the whole window while reading
the mask. A compact full-image base (``train-base --layout full``) is given the noisy window only; the compact
inpainting base is given a full mask and a blank masked image (nothing known), as at generation. Every batch is a pure function of ``(seed, step)``, so a killed run resumes exactly.

The export is a ControlNet folder (:mod:`counterfactory.models.controlnet`): diffusers ControlNet files, the
damage-type embeddings and ``controlnet_config.json`` (with the base's sha256), written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import nn

from ..errors import ConfigError, input_error
from ..io.manifest import sha256_file
from ..models.conditioning import DamageTypeEmbedding
from ..models.controlnet import (
    MASK_ENCODER_INITS,
    ControlledUNet,
    base_weights_file,
    build_controlnet,
    mask_to_control,
    save_controlnet_folder,
)
from ..sampling.inpaint import PixelSpace, VaeSpace, masked_image, unet_input
from .inpaint import _few_shot_items, few_shot_loss_fn, record_split, seeded_type_embedding, split_digest
from .trainer import LoopConfig, Trainer, run_identity


@dataclass(frozen=True)
class ControlNetTrainConfig:
    out: str
    data: str  # dataset folder (MVTec or Magnetic Tile layout)
    base: str | None = None  # compact base folder (default: the shipped inpainting weights; a full-image base from
    # `train-base --layout full`) or a local SD-1.5 diffusers folder
    base_kind: str = "compact"  # "compact" | "sd"
    split: str | None = None  # split file; default: the field's first-third split (or --shots)
    shots: int | None = None
    types: tuple[str, ...] | None = None  # train only these defect types (default: all in the split)
    num_tokens: int | None = None  # default: the base's own token count (compact) or 4 (SD)
    batch_size: int = 8
    label_dropout: float = 0.1  # rows trained with the null type tokens (classifier-free guidance)
    outside_weight: float = 0.5  # loss weight outside the mask (inside = 1): the whole window is generated
    margin_range: tuple[float, float] = (0.5, 2.0)  # context around the (augmented) mask, sampled per item
    hflip: bool = True
    vflip: bool = True
    rotate_degrees: float = 20.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_window_scale: None = None  # the shared few-shot batch's tiling; ControlNet windows are never tiled
    mask_encoder_init: str = "zero"  # diffusers' "zero" or "random" (see models.controlnet.build_controlnet)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=400, lr=5e-4, warmup_steps=20, checkpoint_every=50))

    def __post_init__(self):
        if self.base_kind not in ("compact", "sd"):
            raise ConfigError(f"base_kind={self.base_kind!r}: one of 'compact', 'sd'")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError(f"label_dropout={self.label_dropout}: in [0, 1)")
        if not 0 <= self.outside_weight <= 1:
            raise ConfigError(f"outside_weight={self.outside_weight}: in [0, 1]")
        if not 0 <= self.margin_range[0] <= self.margin_range[1]:
            raise ConfigError(f"margin_range={self.margin_range}: 0 <= low <= high")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: an integer >= 1")
        if self.mask_encoder_init not in MASK_ENCODER_INITS:
            raise ConfigError(f"mask_encoder_init={self.mask_encoder_init!r}: one of {MASK_ENCODER_INITS}")


class _ControlNetModule(nn.Module):
    """What the trainer moves and optimises: the frozen base (and VAE) ride along, only the ControlNet and the
    embedding table have trainable parameters."""

    def __init__(self, model: ControlledUNet, emb: DamageTypeEmbedding, vae=None):
        super().__init__()
        self.model = model
        self.emb = emb
        self.vae = vae


def controlnet_loss(model: ControlledUNet, scheduler, space, x0: torch.Tensor, mask: torch.Tensor,
                    context: torch.Tensor, gen: torch.Generator, outside_weight: float) -> torch.Tensor:
    """One denoising loss of the whole window ``x0`` (B,3,H,W, model space) with the ControlNet reading ``mask``
    (B,1,H,W). An inpainting base gets a full mask and a blank masked image (nothing known); the loss is weighted
    1 inside the mask and ``outside_weight`` outside (normalised by the mean weight)."""
    with torch.no_grad():
        latents = space.encode(x0, sample=False)
    noise = torch.randn(latents.shape, generator=gen).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    if model.unet.config.in_channels > latents.shape[1]:  # an inpainting base: nothing known
        full = torch.ones_like(mask)
        with torch.no_grad():
            blank = space.encode(masked_image(x0, full), sample=False)
        noisy = unet_input(noisy, space.mask_to_space(full), blank)
    model.control = mask_to_control(mask)
    try:
        pred = model(noisy, t, encoder_hidden_states=context)[0]
    finally:
        model.control = None
    kind = scheduler.config.prediction_type
    target = latents if kind == "sample" else noise if kind == "epsilon" else scheduler.get_velocity(latents, noise, t)
    m = space.mask_to_space(mask)
    w = outside_weight + (1.0 - outside_weight) * m
    return ((pred - target) ** 2 * w).mean() / w.mean()


def _load_base(base, kind: str):
    """(unet, vae or None, space, train scheduler, resolution, base tokens or None, layout)."""
    if kind == "compact":
        from ..models.compact import load_compact, make_schedulers

        model = load_compact(base)  # either layout: an inpainting base runs in "nothing known" mode
        return model.unet, None, PixelSpace(), make_schedulers(model.config)[0], model.config.sample_size, \
            model.base_tokens.detach(), model.config.layout
    from ..models.controlnet import load_sd_base

    if base is None:
        raise input_error("base", None, "a local SD-1.5 diffusers folder when base_kind='sd' (--base-kind sd)")
    parts = load_sd_base(base)
    space = VaeSpace(parts["vae"])
    layout = "full" if parts["unet"].config.in_channels == space.channels else "inpaint"
    return (parts["unet"], parts["vae"], space, DDPMScheduler.from_config(parts["scheduler"].config),
            parts["unet"].config.sample_size * space.scale_factor, None, layout)


def train_controlnet(cfg: ControlNetTrainConfig, progress: bool = True) -> dict:
    """Train a ControlNet + damage-type embeddings on a frozen base; export a ControlNet folder into ``cfg.out``."""
    out = Path(cfg.out)
    if not Path(cfg.data).is_dir():
        raise input_error("data", cfg.data, "an existing dataset folder (MVTec or Magnetic Tile layout)")
    unet, vae, space, train_s, res, base_tokens, layout = _load_base(cfg.base, cfg.base_kind)
    base_file = base_weights_file(cfg.base, cfg.base_kind)
    types, items, data_id, split = _few_shot_items(cfg)
    unet.requires_grad_(False)
    controlnet = build_controlnet(unet, space.scale_factor, seed=cfg.loop.seed, mask_encoder_init=cfg.mask_encoder_init)
    controlnet.train().requires_grad_(True)
    emb = seeded_type_embedding(types, cfg.num_tokens, unet.config.cross_attention_dim, base_tokens, cfg.loop.seed)
    model = ControlledUNet(unet, controlnet)
    module = _ControlNetModule(model, emb, vae)
    loss_fn = few_shot_loss_fn(items, types, res, cfg, emb,
                               lambda x0, mask, ctx, gen: controlnet_loss(model, train_s, space, x0, mask, ctx, gen,
                                                                          cfg.outside_weight))

    identity = run_identity("train-controlnet", cfg, data=data_id, split=split_digest(split), types=types,
                            shots={t: sum(1 for it in items if it[3] == i) for i, t in enumerate(types)})
    identity.pop("max_window_scale")  # always None here: runs started before the field existed stay resumable
    trainer = Trainer(module, loss_fn, cfg.loop, cfg.out, identity, progress=progress)
    trainer.check_resumable()
    if trainer.is_main_process:
        record_split(split, cfg.out)
    summary = trainer.run()
    trainer.copy_ema_into(module)
    meta = {
        "base_kind": cfg.base_kind,
        "base": str(cfg.base) if cfg.base else "weights/",
        "base_sha256": sha256_file(base_file) if base_file and Path(base_file).is_file() else None,
        "base_layout": layout,
        "types": types,
        "shots": identity["shots"],
        "resolution": res,
        "prediction_type": train_s.config.prediction_type,
        "steps": summary["steps"],
        "seed": cfg.loop.seed,
        "final_loss": summary["final_loss"],
        "data": data_id["path"],
        "data_fingerprint": data_id["fingerprint"],
    }
    if trainer.is_main_process:  # one writer under several processes
        save_controlnet_folder(out, controlnet.eval(), emb.eval(), meta)  # also after --max-minutes: rerun resumes
    trainer.wait()
    return {**summary, "types": types, "shots": identity["shots"], "controlnet": str(out)}


__all__ = ["ControlNetTrainConfig", "train_controlnet", "controlnet_loss"]
