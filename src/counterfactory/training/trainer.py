"""THE training loop (accelerate): every trainer is a ``loss_fn`` for it. Checkpoints, exact resume, EMA, logs.

Exact resume: a task's batch for step ``k`` is a pure function of ``(seed, k)`` (data, masks, noise and
timesteps are drawn from CPU generators seeded by both, then moved to the accelerator's device), and a
checkpoint (:mod:`counterfactory.training.checkpoint`) holds the trainable weights, their EMA, the optimizers,
the schedulers and the step. So a run killed at any point and restarted produces the same losses as an
uninterrupted one (bit-identical on CPU).

Several processes (``accelerate launch --num_processes N -m counterfactory train-...``): rank ``r`` computes the
micro-batch of global index ``(step * gradient_accumulation_steps + k) * N + r``, so the ranks draw different
samples and one optimisation step sees ``N`` times the per-rank batch; the loss is computed inside the module
accelerate prepared (``DistributedDataParallel``), so accelerate averages the gradients across ranks; only the
main process writes checkpoints, logs and exports; every rank resumes from the same checkpoint. A run on ``N``
processes sees exactly the micro-batches of a one-process run with ``N`` times the gradient accumulation (same
losses up to the order of floating-point sums).

Library pieces: accelerate's ``Accelerator`` (device, ``mixed_precision``, ``gradient_accumulation_steps``,
TensorBoard through ``log_with``, ``DistributedDataParallel`` and collectives), diffusers' ``EMAModel`` and
``get_constant_schedule_with_warmup``.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from diffusers.optimization import get_constant_schedule_with_warmup
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError, TrainingError
from ..io.manifest import atomic_path, atomic_write_json
from .checkpoint import (
    identity_mismatch,
    latest_checkpoint,
    optimizer_state,
    read_checkpoint,
    restore_optimizer,
    run_identity,
    step_generator,
    write_checkpoint,
)

MIXED_PRECISION = ("no", "fp16", "bf16")
LossFn = Callable[[int, torch.device], "torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]"]


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000  # optimisation steps in all
    lr: float = 1e-3
    warmup_steps: int = 50  # linear warm-up, then constant (diffusers get_constant_schedule_with_warmup)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    ema_decay: float = 0.995  # EMA of trainable weights (the exported weights); 0 disables
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    max_minutes: float | None = None  # stop (with a checkpoint and export) after this wall time
    mixed_precision: str = "no"  # "no" | "fp16" (CUDA only) | "bf16": autocast of the forward passes
    gradient_accumulation_steps: int = 1  # micro-batches per optimisation step (each of the task's batch size)

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise ConfigError(f"steps={self.steps!r}: an integer >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr}: a positive number")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay}: in [0, 1)")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("checkpoint_every/log_every: integers >= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: one of {', '.join(MIXED_PRECISION)}")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("mixed_precision='fp16': needs a CUDA GPU and none is available; "
                              "allowed on CPU: 'no' or 'bf16'")
        if (isinstance(self.gradient_accumulation_steps, bool)
                or not isinstance(self.gradient_accumulation_steps, numbers.Integral)
                or self.gradient_accumulation_steps < 1):
            raise ConfigError(f"gradient_accumulation_steps={self.gradient_accumulation_steps!r}: an integer >= 1")


def _accelerator(cfg: LoopConfig, out: Path, cpu: bool = False) -> Accelerator:
    cpu = cpu or not torch.cuda.is_available()
    # a process may train several runs one after the other (tests, notebooks, the causal stages on the CPU then an
    # adapter on the GPU): accelerate keeps its device and precision process-wide, so they are reset when they
    # differ; never in a multi-process launch
    device = PartialState._shared_state.get("device")
    if device is not None and (device.type == "cpu") != cpu and PartialState._shared_state.get("num_processes", 1) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    elif AcceleratorState._shared_state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out))
    # a task may leave some trainable parameters without a gradient in a step (a stage, a dropped label):
    # DistributedDataParallel then has to look for them instead of waiting for their gradients forever
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # accelerate warns that tracker packages other than tensorboard are missing
        return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, log_with="tensorboard",
                           gradient_accumulation_steps=cfg.gradient_accumulation_steps, project_config=project,
                           kwargs_handlers=[ddp])


class _LossModule(nn.Module):
    """The trained module with its ``loss_fn`` as ``forward``: what accelerate prepares, so that under several
    processes the loss is computed through ``DistributedDataParallel`` and its gradients are averaged."""

    def __init__(self, module: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, index: int, device):
        return self.loss_fn(index, device)


class Trainer:
    """Optimise the trainable parameters of ``module`` with ``loss_fn(index, device) -> scalar loss``.

    ``index`` is the micro-batch index ``step * gradient_accumulation_steps + k`` (the step itself when there
    is no accumulation); the batch must be a pure function of it. ``loss_fn`` may also return
    ``(loss, {name: float})``: the extra values are logged next to the loss.

    ``identity`` is a JSON-able dict describing the run (task, data, hyper-parameters); resuming a folder
    written with another identity is refused, so two runs never mix in one checkpoint folder.

    By default one AdamW over the trainable parameters with a linear warm-up; a task with other needs passes
    ``optimizers`` (name -> optimizer over parameters of ``module``) and ``lr_lambdas`` (name -> factor of
    the step; default: the warm-up). ``cpu=True`` trains on the CPU even where a GPU exists.

    Under ``accelerate launch`` with ``N`` processes, ``index`` is the global micro-batch index
    ``(step * gradient_accumulation_steps + k) * N + rank`` (see the module doc); tasks write their own
    files (exports, summaries) only where :attr:`is_main_process` is true, then call :meth:`wait`.
    """

    def __init__(self, module: nn.Module, loss_fn: LossFn, config: LoopConfig, out: str | Path, identity: dict,
                 progress: bool = True, *, optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                 lr_lambdas: Mapping[str, Callable[[int], float]] | None = None, cpu: bool = False):
        self.config = config
        self.out = Path(out)
        self.identity = json.loads(json.dumps(identity, default=str))
        self.loss_fn = loss_fn
        self.accelerator = _accelerator(config, self.out, cpu)
        self.num_processes = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.num_processes > 1:  # the data each step sees depends on it: resuming with another count is refused
            self.identity["num_processes"] = self.num_processes
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        if not self.names:
            raise ConfigError("module has no trainable parameters")
        params = [p for n, p in module.named_parameters() if p.requires_grad]
        if optimizers is None:
            optimizers = {"main": torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)}
        lr_lambdas = dict(lr_lambdas or {})
        self.schedulers = {
            k: (torch.optim.lr_scheduler.LambdaLR(opt, lr_lambdas[k]) if k in lr_lambdas
                else get_constant_schedule_with_warmup(opt, num_warmup_steps=config.warmup_steps))
            for k, opt in optimizers.items()
        }
        prepared = self.accelerator.prepare(_LossModule(module, loss_fn), *optimizers.values())
        self.module = prepared[0]
        self.optimizers = dict(zip(optimizers, prepared[1:]))
        self._params = dict(zip(self.names, params))
        self.ema = None
        if config.ema_decay > 0:
            from diffusers.training_utils import EMAModel  # imports transformers: only when EMA is on

            self.ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=False)
        self.step = 0
        self.progress = progress
        self.history: list[tuple[int, float]] = []

    @property
    def is_main_process(self) -> bool:
        """True on the one process that writes files (always true in a one-process run)."""
        return self.accelerator.is_main_process

    def wait(self) -> None:
        """Wait until every process gets here (after the main process wrote its files); nothing on one process."""
        self.accelerator.wait_for_everyone()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The (first) optimizer."""
        return next(iter(self.optimizers.values()))

    @property
    def scheduler(self):
        return next(iter(self.schedulers.values()))

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.ckpt_root)

    def save_checkpoint(self) -> Path:
        parts = {"trainable": {n: p.detach() for n, p in self._params.items()}, "optimizer": {}}
        opt_rest = {}
        for name, opt in self.optimizers.items():
            tensors, opt_rest[name] = optimizer_state(name, opt)
            parts["optimizer"].update(tensors)
        ema_rest = None
        if self.ema is not None:
            ema_sd = self.ema.state_dict()
            parts["ema"] = dict(zip(self.names, ema_sd.pop("shadow_params")))
            ema_rest = ema_sd
        state = {"identity": self.identity, "optimizers": opt_rest, "ema": ema_rest,
                 "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                 "history": self.history[-2000:]}
        if self.accelerator.scaler is not None:  # fp16 loss scale: plain numbers
            state["grad_scaler"] = self.accelerator.scaler.state_dict()
        if self.accelerator.is_main_process:
            return write_checkpoint(self.ckpt_root, self.step, parts, state, keep=self.config.keep_checkpoints)
        return self.ckpt_root / f"step-{self.step:07d}"

    def _check_identity(self, state: dict) -> None:
        why = identity_mismatch(_comparable(state.get("identity", {})), _comparable(self.identity))
        if why is not None:
            raise CheckpointError(f"out={self.out} holds a run with other settings ({why}): "
                                  "use a new output folder, or the same settings and data to resume")

    def check_resumable(self) -> Path | None:
        """The checkpoint a :meth:`run` would resume from (None: a fresh run); refuses one of another run.

        Tasks call it before writing anything of their own into ``out`` (e.g. the recorded split).
        """
        latest = self.latest_checkpoint()
        if latest is not None:
            try:
                state = json.loads((latest / "state.json").read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"checkpoint={latest}: unreadable state.json ({exc}); use a new output folder") from None
            self._check_identity(state)
        return latest

    def load_checkpoint(self, d: Path) -> None:
        state, parts = read_checkpoint(d)
        self._check_identity(state)
        if "optimizers" not in state:
            raise CheckpointError(f"checkpoint={d}: written by an older version of the training loop; "
                                  "start the run again in a new output folder")
        device = self.accelerator.device
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(parts["trainable"][n])
        if self.ema is not None and "ema" in parts:
            self.ema.load_state_dict({**state["ema"], "shadow_params": [parts["ema"][n].to(device) for n in self.names]})
        for name, opt in self.optimizers.items():  # load_state_dict puts each state tensor where torch wants it
            restore_optimizer(name, opt, parts.get("optimizer", {}), state["optimizers"][name])
        if self.accelerator.scaler is not None and state.get("grad_scaler"):
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.step = int(state["step"])
        self.history = [tuple(h) for h in state.get("history", [])]

    # ------------------------------------------------------------------ EMA
    def copy_ema_into(self, module: nn.Module) -> nn.Module:
        """Write the EMA weights into ``module``'s parameters of the same names (what gets exported)."""
        ema = self.ema_state()
        with torch.no_grad():
            for n, p in module.named_parameters():
                if n in ema:
                    p.copy_(ema[n])
        return module

    def ema_state(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return {n: p.detach().clone() for n, p in self._params.items()}
        return {n: t.detach().clone() for n, t in zip(self.names, self.ema.shadow_params)}

    # ------------------------------------------------------------------ loop
    def _micro_step(self, index: int, device) -> tuple[float, dict[str, float]]:
        acc = self.accelerator
        with acc.accumulate(self.module), acc.autocast():
            result = self.module(index, device)
            loss, extra = result if isinstance(result, tuple) else (result, {})
            logged = loss.detach()
            if self.num_processes > 1:  # every rank logs (and checks) the mean over ranks, so all stop together
                values = torch.stack([logged.float().reshape(()),
                                      *[torch.as_tensor(float(v)) for v in extra.values()]]).to(logged.device)
                values = acc.reduce(values, reduction="mean")
                logged, extra = values[0], dict(zip(extra, values[1:].tolist()))
            if not torch.isfinite(logged):
                last = self.latest_checkpoint()
                raise TrainingError(
                    f"loss={logged.item()} at step {self.step}: training stopped; last good checkpoint: "
                    f"{last if last else 'none yet'} (lower --lr or check the data)"
                )
        acc.backward(loss)
        if acc.sync_gradients:
            if self.config.grad_clip > 0:
                acc.clip_grad_norm_(list(self._params.values()), self.config.grad_clip)
            for opt in self.optimizers.values():
                opt.step()
            for s in self.schedulers.values():
                s.step()
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        return float(logged), {k: float(v) for k, v in extra.items()}

    def run(self) -> dict:
        """Train to ``config.steps`` (resuming if a checkpoint exists); returns a summary dict."""
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        latest = self.latest_checkpoint()
        resumed_from = None
        if latest is not None:
            self.load_checkpoint(latest)
            resumed_from = self.step
        main = self.accelerator.is_main_process
        if main:
            atomic_write_json(self.out / "run_config.json", self.identity)
        log_path = self.out / "log.csv"
        if main and resumed_from is None and log_path.exists():
            log_path.unlink()
        elif main and resumed_from is not None:
            _drop_csv_rows_after(log_path, resumed_from)  # steps logged after the checkpoint are redone
        self.accelerator.init_trackers("tensorboard")
        t0 = time.time()
        window: list[float] = []
        extras: dict[str, list[float]] = {}
        device = self.accelerator.device
        k = cfg.gradient_accumulation_steps
        bar = tqdm(total=cfg.steps, initial=self.step, desc="training", disable=not (self.progress and main),
                   dynamic_ncols=True)
        stopped_early = False
        try:
            while self.step < cfg.steps:
                self.module.train()
                losses, stats = [], {}
                for micro in range(k):
                    index = (self.step * k + micro) * self.num_processes + self.rank
                    value, extra = self._micro_step(index, device)
                    losses.append(value)
                    for name, v in extra.items():
                        stats.setdefault(name, []).append(v)
                self.step += 1
                if self.ema is not None:
                    self.ema.step(self._params.values())
                value = sum(losses) / k
                window.append(value)
                for name, vs in stats.items():
                    extras.setdefault(name, []).append(sum(vs) / len(vs))
                self.history.append((self.step, value))
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean = sum(window) / len(window)
                    lr = self.scheduler.get_last_lr()[0]
                    more = {name: sum(vs) / len(vs) for name, vs in extras.items()}
                    if main:
                        _append_csv(log_path, {"step": self.step, "loss": f"{mean:.6g}", "lr": f"{lr:.3g}",
                                               "seconds": f"{time.time() - t0:.1f}",
                                               **{name: f"{v:.6g}" for name, v in more.items()}})
                    self.accelerator.log({"loss": mean, "lr": lr, **more}, step=self.step)
                    bar.set_postfix(loss=f"{mean:.4f}")
                    window, extras = [], {}
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if cfg.max_minutes is not None and self._time_is_up(t0) and self.step < cfg.steps:
                    self.save_checkpoint()
                    stopped_early = True
                    break
        finally:
            bar.close()
            # the trackers only: accelerate's end_training would also end the process group, which the task's
            # own exports after the run and the next run of a multi-stage task still need
            for tracker in self.accelerator.trackers:
                tracker.finish()
        self.wait()  # every rank returns once the last checkpoint is on disk
        tail = [v for _, v in self.history[-50:]]
        return {"steps": self.step, "resumed_from": resumed_from, "stopped_early": stopped_early,
                "wall_seconds": round(time.time() - t0, 1),
                "final_loss": sum(tail) / len(tail) if tail else None}


    def _time_is_up(self, t0: float) -> bool:
        """``max_minutes`` has passed (on any rank: the ranks stop at the same step)."""
        up = (time.time() - t0) > self.config.max_minutes * 60
        if self.num_processes == 1:
            return up
        flag = torch.tensor([1.0 if up else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)


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


__all__ = ["LoopConfig", "Trainer", "MIXED_PRECISION", "run_identity", "step_generator"]
