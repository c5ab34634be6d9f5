"""A small accelerate training loop: checkpoints, exact resume, EMA, progress bar, CSV/TensorBoard logs.

Exact resume: a task's batch for step ``k`` is a pure function of ``(seed, k)`` (data, masks, noise and
timesteps are drawn from generators seeded by both), and a checkpoint holds the trainable weights, their
EMA, the optimizer and the step. So a run killed at any point and restarted produces the same losses as an
uninterrupted one. Checkpoints are safetensors (tensors) + JSON (everything else); no pickles.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError, TrainingError
from ..io.manifest import atomic_path, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000  # optimisation steps in all
    lr: float = 1e-3
    warmup_steps: int = 50  # linear warm-up, then constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # EMA of trainable weights (the exported weights); 0 disables
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    max_minutes: float | None = None  # stop (with a checkpoint and export) after this wall time

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: an integer >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr}: a positive number")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay}: in [0, 1)")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("checkpoint_every/log_every: integers >= 1")


def run_identity(task: str, config, **extra) -> dict:
    """What identifies a run for resuming: the task, its config (minus the output folder) and data facts."""
    ident = json.loads(json.dumps({"task": task, **asdict(config), **extra},
                                  default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    ident.pop("out", None)
    if isinstance(ident.get("loop"), dict):
        ident["loop"].pop("max_minutes", None)  # a wall-time budget does not change what is trained
    return ident


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The torch generator of one step: a pure function of (seed, step, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1))


class Trainer:
    """Optimise the trainable parameters of ``module`` with ``loss_fn(step, device) -> scalar loss``.

    ``identity`` is a JSON-able dict describing the run (task, data, hyper-parameters); resuming a folder
    written with another identity is refused, so two runs never mix in one checkpoint folder.
    """

    def __init__(self, module: nn.Module, loss_fn: Callable[[int, torch.device], torch.Tensor], config: LoopConfig,
                 out: str | Path, identity: dict, progress: bool = True):
        self.config = config
        self.out = Path(out)
        self.identity = json.loads(json.dumps(identity, default=str))
        self.loss_fn = loss_fn
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        if not self.names:
            raise ConfigError("module has no trainable parameters")
        params = [p for n, p in module.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
        )
        self.module, self.optimizer = self.accelerator.prepare(module, self.optimizer)
        self._params = dict(zip(self.names, params))
        self.ema = {n: p.detach().clone() for n, p in self._params.items()} if config.ema_decay > 0 else None
        self.step = 0
        self.progress = progress
        self.history: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_root / "latest"
        if not pointer.is_file():
            return None
        path = self.ckpt_root / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def save_checkpoint(self) -> Path:
        d = self.ckpt_root / f"step-{self.step:07d}"
        tmp = self.ckpt_root / f".tmp-step-{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().contiguous().cpu() for n, p in self._params.items()}, str(tmp / "trainable.safetensors"))
        if self.ema is not None:
            save_file({n: t.contiguous().cpu() for n, t in self.ema.items()}, str(tmp / "ema.safetensors"))
        opt_state = self.optimizer.state_dict()
        tensors, plain = {}, {}
        for idx, st in opt_state["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{idx}.{k}"] = v.contiguous().cpu()
                else:
                    plain[f"{idx}.{k}"] = v
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": self.step, "identity": self.identity, "param_groups": opt_state["param_groups"],
                 "optimizer_plain": plain, "scheduler": self.scheduler.state_dict(), "history": self.history[-2000:]}
        (tmp / "state.json").write_text(json.dumps(state, default=str))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
        atomic_write_text(self.ckpt_root / "latest", d.name + "\n")
        kept = sorted(p for p in self.ckpt_root.glob("step-*") if p.is_dir())
        for old in kept[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return d

    def load_checkpoint(self, d: Path) -> None:
        state = json.loads((d / "state.json").read_text())
        saved, mine = _comparable(state["identity"]), _comparable(self.identity)
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise CheckpointError(
                f"--out {self.out} holds a run with other settings ({', '.join(diff[:5])} differ): "
                "use a new --out, or the same settings to resume"
            )
        weights = load_file(str(d / "trainable.safetensors"))
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(weights[n])
            if self.ema is not None and (d / "ema.safetensors").is_file():
                ema = load_file(str(d / "ema.safetensors"))
                self.ema = {n: ema[n].clone() for n in self._params}
        tensors = load_file(str(d / "optimizer.safetensors"))
        opt_state: dict = {"state": {}, "param_groups": state["param_groups"]}
        for key, v in list(tensors.items()) + list(state["optimizer_plain"].items()):
            idx, k = key.split(".", 1)
            opt_state["state"].setdefault(int(idx), {})[k] = v
        self.optimizer.load_state_dict(opt_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = [tuple(h) for h in state.get("history", [])]

    # ------------------------------------------------------------------ loop
    def _update_ema(self):
        if self.ema is None:
            return
        # warm EMA: short runs are not dominated by the initial weights
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for n, p in self._params.items():
                self.ema[n].mul_(decay).add_(p.detach(), alpha=1 - decay)

    def copy_ema_into(self, module: nn.Module) -> nn.Module:
        """Write the EMA weights into ``module``'s parameters of the same names (what gets exported)."""
        ema = self.ema_state()
        with torch.no_grad():
            for n, p in module.named_parameters():
                if n in ema:
                    p.copy_(ema[n])
        return module

    def ema_state(self) -> dict[str, torch.Tensor]:
        return dict(self.ema) if self.ema is not None else {n: p.detach().clone() for n, p in self._params.items()}

    def run(self) -> dict:
        """Train to ``config.steps`` (resuming if a checkpoint exists); returns a summary dict."""
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        latest = self.latest_checkpoint()
        resumed_from = None
        if latest is not None:
            self.load_checkpoint(latest)
            resumed_from = self.step
        atomic_write_json(self.out / "run_config.json", self.identity)
        log_path = self.out / "log.csv"
        if resumed_from is None and log_path.exists():
            log_path.unlink()
        elif resumed_from is not None:
            _drop_csv_rows_after(log_path, resumed_from)  # steps logged after the checkpoint are redone
        writer = _TensorBoard(self.out / "tensorboard")
        t0 = time.time()
        window: list[float] = []
        device = self.accelerator.device
        bar = tqdm(total=cfg.steps, initial=self.step, desc="training", disable=not self.progress, dynamic_ncols=True)
        stopped_early = False
        try:
            while self.step < cfg.steps:
                self.module.train()
                loss = self.loss_fn(self.step, device)
                if not torch.isfinite(loss):
                    last = self.latest_checkpoint()
                    raise TrainingError(
                        f"loss={loss.item()} at step {self.step}: training stopped; last good checkpoint: "
                        f"{last if last else 'none yet'} (lower --lr or check the data)"
                    )
                self.accelerator.backward(loss)
                if cfg.grad_clip > 0:
                    self.accelerator.clip_grad_norm_(list(self._params.values()), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self._update_ema()
                value = float(loss.detach())
                window.append(value)
                self.history.append((self.step, value))
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean = sum(window) / len(window)
                    _append_csv(log_path, {"step": self.step, "loss": f"{mean:.6g}",
                                           "lr": f"{self.scheduler.get_last_lr()[0]:.3g}",
                                           "seconds": f"{time.time() - t0:.1f}"})
                    writer.add_scalar("loss", mean, self.step)
                    bar.set_postfix(loss=f"{mean:.4f}")
                    window = []
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if cfg.max_minutes is not None and (time.time() - t0) > cfg.max_minutes * 60 and self.step < cfg.steps:
                    self.save_checkpoint()
                    stopped_early = True
                    break
        finally:
            bar.close()
            writer.close()
        tail = [v for _, v in self.history[-50:]]
        return {"steps": self.step, "resumed_from": resumed_from, "stopped_early": stopped_early,
                "wall_seconds": round(time.time() - t0, 1),
                "final_loss": sum(tail) / len(tail) if tail else None}


def _drop_csv_rows_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
    if len(kept) == len(rows):
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)


def _comparable(identity: dict) -> dict:
    """What must match to resume: everything but the step budget (a run may be extended or stopped early)."""
    ident = json.loads(json.dumps(identity))
    if isinstance(ident.get("loop"), dict):
        ident["loop"].pop("steps", None)
        ident["loop"].pop("max_minutes", None)
    return ident


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


class _TensorBoard:
    """TensorBoard scalars when tensorboard is installed; silently CSV-only otherwise."""

    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.w = SummaryWriter(str(logdir))
        except Exception:  # tensorboard not installed
            self.w = None

    def add_scalar(self, tag, value, step):
        if self.w is not None:
            self.w.add_scalar(tag, value, step)

    def close(self):
        if self.w is not None:
            self.w.close()


def config_dict(cfg) -> dict:
    return asdict(cfg)


def atomic_dir_write(target: Path) -> Path:
    """A temp sibling folder to build an export in before renaming it onto ``target``."""
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


__all__ = ["LoopConfig", "Trainer", "step_generator", "atomic_path"]
