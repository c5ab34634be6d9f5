"""Train the compact text-to-image model on Morpho-MNIST digits captioned from their measured attributes.

Captions come from :class:`counterfactory.editing.captions.AttributeCaptioner` (measured morphometry binned at
the train-split medians, plus the digit's class word), computed once and cached in the run folder. Classifier-free
guidance is learned by caption dropout (the empty caption). The loss is the standard epsilon MSE; every batch is
a pure function of (seed, step), so a killed run resumes exactly.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..errors import ConfigError, input_error
from ..io.manifest import atomic_write_json
from ..models.text2image import Text2ImageConfig, Text2ImageModel
from .trainer import LoopConfig, Trainer, run_identity, step_generator

CAPTIONS_FILE = "captions.json"


@dataclass(frozen=True)
class Text2ImageTrainConfig:
    out: str
    data: str  # Morpho-MNIST folder (its fixed train split trains)
    batch_size: int = 32
    caption_dropout: float = 0.1  # fraction of empty captions (classifier-free guidance)
    limit: int | None = None  # use only the first N train images (tests, quick runs)
    model: Text2ImageConfig = field(default_factory=Text2ImageConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: an integer >= 1")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"caption_dropout={self.caption_dropout}: in [0, 1)")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"limit={self.limit}: an integer >= 2")


def train_captions(data_root: str, out: Path, limit: int | None = None, progress: bool = True):
    """(images (N,1,28,28) float [0,1], captions list[str]) of the train split; captions cached in ``out``."""
    from ..data.morphomnist import load_morphomnist, split_indices
    from ..editing.captions import AttributeCaptioner

    data = load_morphomnist(data_root)
    idx = split_indices(len(data), "train")
    if limit is not None:
        idx = idx[:limit]
    images = torch.from_numpy(data.images[idx]).float()[:, None] / 255.0
    cache = out / CAPTIONS_FILE
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("indices") == idx.tolist():
            return images, saved["captions"]
    captioner = AttributeCaptioner()
    captions: list[str] = []
    chunk = 500
    for s in range(0, len(idx), chunk):
        captions += captioner.caption(data.images[idx[s:s + chunk]], labels=data.labels[idx[s:s + chunk]].tolist())
        if progress:
            print(f"captioned {len(captions)}/{len(idx)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, {"indices": idx.tolist(), "captions": captions})
    return images, captions


def epsilon_loss(model: Text2ImageModel, scheduler: DDPMScheduler, x0: torch.Tensor, ids: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction MSE for a batch in model space; noise and timesteps drawn from ``gen``."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    ctx = model.text_encoder(input_ids=ids.to(x0.device)).last_hidden_state
    pred = model.unet(xt, t, encoder_hidden_states=ctx).sample
    return F.mse_loss(pred, noise)


def train_text2image(cfg: Text2ImageTrainConfig, progress: bool = True) -> dict:
    """Train (resuming if ``cfg.out`` holds a run) and export the EMA model to ``<out>/model``."""
    from ..editing.captions import VOCABULARY

    out = Path(cfg.out)
    images, captions = train_captions(cfg.data, out, cfg.limit, progress)
    model = Text2ImageModel.from_words(VOCABULARY, cfg.model, seed=cfg.loop.seed)
    ids = model.tokenizer.encode(captions, argument="captions")
    null_ids = model.tokenizer.encode([""])
    x_all = images * 2.0 - 1.0
    sched = DDPMScheduler(num_train_timesteps=cfg.model.num_train_timesteps, beta_schedule=cfg.model.beta_schedule,
                          prediction_type="epsilon", clip_sample=False)
    n = len(images)

    def loss_fn(step: int, device) -> torch.Tensor:
        rng = np.random.default_rng([cfg.loop.seed, step, 11])
        pick = rng.integers(0, n, cfg.batch_size)
        drop = rng.random(cfg.batch_size) < cfg.caption_dropout
        batch_ids = ids[pick].clone()
        batch_ids[torch.from_numpy(drop)] = null_ids[0]
        return epsilon_loss(model, sched, x_all[pick].to(device), batch_ids, step_generator(cfg.loop.seed, step))

    identity = run_identity("train-text2image", cfg, n_images=n)
    trainer = Trainer(model, loss_fn, cfg.loop, out, identity, progress=progress)
    summary = trainer.run()
    if trainer.is_main_process:  # one writer under several processes
        export = copy.deepcopy(model)
        trainer.copy_ema_into(export)
        extra = {"data": "Morpho-MNIST train split", "n_images": n, "steps": summary["steps"], "seed": cfg.loop.seed,
                 "batch_size": cfg.batch_size, "caption_dropout": cfg.caption_dropout,
                 "final_loss": summary["final_loss"]}
        export.save(out / "model", extra=extra)
        atomic_write_json(out / "train_summary.json", {**summary, "config": trainer.identity})
    trainer.wait()
    return summary


def check_data(data: str) -> None:
    if not Path(data).is_dir():
        raise input_error("--data", data, "a Morpho-MNIST folder (e.g. ../shared/data/morphomnist)")


__all__ = ["Text2ImageTrainConfig", "train_text2image", "epsilon_loss", "train_captions"]
