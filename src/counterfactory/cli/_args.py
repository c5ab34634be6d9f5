"""argparse value types shared by the command modules: one-line messages naming the flag and what is allowed."""

from __future__ import annotations

import argparse
import math


def _checked(name: str, convert, ok, allowed: str):
    """An argparse type: ``convert(text)`` that must satisfy ``ok``; else one line naming the flag and what is allowed."""

    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r}: {allowed}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{name}={text!r}: {allowed}")
        return v

    return parse


def positive_int(name: str):
    return _checked(name, int, lambda v: v >= 1, "an integer >= 1")


def nonneg_float(name: str):
    return _checked(name, float, lambda v: v >= 0 and not math.isinf(v), "a finite number >= 0")


def loop_args(p: argparse.ArgumentParser, steps: int, lr: float, batch: int, ckpt: int) -> None:
    """The optimisation flags every training command shares (read back by :func:`loop_config`)."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int("--steps"), default=steps, help=f"optimisation steps (default {steps})")
    g.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr})")
    g.add_argument("--batch-size", type=positive_int("--batch-size"), default=batch, help=f"batch size (default {batch})")
    g.add_argument("--seed", type=int, default=0, help="seed of data, masks, noise and init (default 0)")
    g.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=ckpt,
                   help=f"steps between checkpoints (default {ckpt}); a rerun with the same --out resumes")
    g.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the exported weights (default 0.995)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time (checkpoint kept; rerun resumes)")
    g.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast of the forward passes: no (default), fp16 (CUDA GPUs only) or bf16")
    g.add_argument("--gradient-accumulation-steps", type=positive_int("--gradient-accumulation-steps"), default=1,
                   help="micro-batches of --batch-size per optimisation step (default 1)")
    threads_arg(g)
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def threads_arg(p) -> None:
    p.add_argument("--threads", type=positive_int("--threads"), default=None, help="torch CPU threads (default: torch's choice)")


def loop_config(args, warmup: int):
    from ..training.trainer import LoopConfig

    if args.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            from ..errors import ConfigError

            raise ConfigError("--mixed-precision fp16: needs a CUDA GPU and none is available; allowed on CPU: no, bf16")
    return LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=warmup, ema_decay=args.ema_decay,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, max_minutes=args.max_minutes,
                      mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps)


def set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
