"""Training one downstream segmenter: a ``loss_fn`` for :class:`counterfactory.training.trainer.Trainer`.

The Trainer brings the schedule (linear warm-up, then constant), gradient clipping, the EMA of the weights (what
is evaluated), checkpoints and exact resume. Because the schedule does not depend on the step budget and a batch
is a pure function of ``(seed, step)``, training to ``n`` steps and then extending the same folder to ``m`` steps
gives exactly the run of ``m`` steps: the learning curve evaluates one run at growing budgets.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...errors import input_error
from ...training.trainer import LoopConfig, Trainer
from .config import DownstreamConfig
from .data import CropSampler, DownstreamData
from .model import SmallUNet, build_segmenter, focal_dice_loss


def segmenter_loss_fn(model: SmallUNet, sampler: CropSampler):
    """``loss_fn(step, device)`` for the Trainer: focal + Dice loss on the sampler's batch of ``step``."""

    def loss_fn(step: int, device: torch.device) -> torch.Tensor:
        x, y = sampler.batch(step)
        return focal_dice_loss(model(x.to(device)), y.to(device))

    return loss_fn


def loop_config(cfg: DownstreamConfig, seed: int, steps: int, checkpoint_every: int = 100) -> LoopConfig:
    return LoopConfig(steps=steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay,
                      checkpoint_every=checkpoint_every, keep_checkpoints=1, log_every=25, seed=seed)


def train_segmenter(data: DownstreamData, setting: str, seed: int, cfg: DownstreamConfig, folder: str | Path,
                    steps: int | None = None, checkpoint_every: int = 100) -> tuple[SmallUNet, dict]:
    """Train (or resume, or extend) one setting × seed in ``folder``; returns the EMA model in eval mode and the
    Trainer's summary. Same seed → same initial weights and the same real batches in every setting."""
    steps = cfg.steps if steps is None else steps
    trained = _trained_steps(Path(folder))
    if trained > steps:
        raise input_error("steps", steps, f"at least the {trained} steps already trained in {folder} (or another out folder)")
    model = build_segmenter(cfg.channels, seed)
    sampler = CropSampler(data, setting, cfg, seed)
    # training never reads the evaluation images: a run is the same whatever it is evaluated on (the learning
    # curve's real-only runs, evaluated on fewer defect-free images, are the table's)
    identity = {"task": "downstream-segmenter", "setting": setting, "seed": seed,
                "config": json.loads(cfg.run_key(setting)), "data": {k: v for k, v in data.info.items() if k != "eval"},
                "loop": {"steps": steps}}
    trainer = Trainer(model, segmenter_loss_fn(model, sampler), loop_config(cfg, seed, steps, checkpoint_every),
                      out=folder, identity=identity, progress=False)
    summary = trainer.run()
    eval_model = trainer.copy_ema_into(build_segmenter(cfg.channels, seed)).to(next(model.parameters()).device)
    return eval_model.eval(), summary


def _trained_steps(folder: Path) -> int:
    """The step of the latest checkpoint in a run folder (0 when there is none)."""
    pointer = folder / "checkpoints" / "latest"
    if not pointer.is_file():
        return 0
    state = folder / "checkpoints" / pointer.read_text().strip() / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else 0
