"""argparse value types and checks shared by the command modules: one-line messages naming the flag, the value
and what is allowed.

Every numeric flag of every command gets a bounded type from here (:func:`int_range`, :func:`float_range`);
every output path goes through :func:`check_out` (an existing file in the way, an unwritable place, or an
output that is, holds or lies inside an input folder); sizes that cannot fit in memory are refused by
:func:`check_fits` with the estimate; adapter folders are checked file by file by :func:`check_weights_folder`.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds both accept this range


def _checked(name: str, convert, ok, allowed: str):
    """An argparse type: ``convert(text)`` that must satisfy ``ok``; else one line naming the flag and what is allowed."""

    def parse(text):
        try:
            v = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{name}={text!r}: {allowed}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{name}={text!r}: {allowed}")
        return v

    parse.bounded = True  # marks a type with a range (the flag sweep test checks every numeric flag has one)
    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def int_range(name: str, lo: int, hi: int):
    """Integers in ``[lo, hi]``."""
    return _checked(name, int, lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}]")


def float_range(name: str, lo: float, hi: float, lo_open: bool = False):
    """Finite numbers in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    left = "(" if lo_open else "["

    def ok(v):
        return math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi

    return _checked(name, float, ok, f"a number in {left}{_fmt(lo)}, {_fmt(hi)}]")


def zero_or_range(name: str, lo: float, hi: float):
    """0 (off) or a finite number in ``[lo, hi]``."""
    return _checked(name, float, lambda v: v == 0 or (math.isfinite(v) and lo <= v <= hi),
                    f"0 (off) or a number in [{_fmt(lo)}, {_fmt(hi)}]")


def positive_int(name: str, hi: int = 1_000_000):
    return int_range(name, 1, hi)


def nonneg_float(name: str, hi: float = 1e6):
    return float_range(name, 0.0, hi)


def seed_arg(name: str = "--seed"):
    return int_range(name, 0, SEED_MAX)


def threads_type(name: str = "--threads"):
    return int_range(name, 1, max(256, os.cpu_count() or 1))


# ---- output paths ---------------------------------------------------------------------------------------------


def check_out(path: str | os.PathLike, argument: str = "--out", *, kind: str = "dir",
              inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Check an output path before anything is written; returns it as a Path.

    ``kind="dir"``: a folder (existing or to be made), not an existing file. ``kind="file"``: a file, not an
    existing folder. Either way the nearest existing parent must be a folder where files can be created (tried
    for real: permission bits do not tell for root or on read-only mounts), and the output must not be, hold or
    lie inside any folder of ``inputs`` (``{flag: path}``; None values are skipped).
    """
    from ..errors import input_error

    p = Path(path)
    if str(path) == "":
        raise input_error(argument, path, "a non-empty path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise input_error(argument, str(path), "a folder path (this is an existing file)")
    if kind == "file" and p.is_dir():
        raise input_error(argument, str(path), "a file path (this is an existing folder)")
    parent = p if (kind == "dir" and p.is_dir()) else p.parent
    parent = Path(os.path.abspath(parent))
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise input_error(argument, str(path), f"a path whose folders can be created ({parent} is a file)")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise input_error(argument, str(path), f"a writable location (cannot create files in {parent}: "
                                               f"{exc.strerror or exc})") from None
    check_not_in_inputs(p, argument, inputs or {})
    return p


def check_not_in_inputs(out: str | os.PathLike, argument: str, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is, holds or lies inside one of the input folders, or that is an input file."""
    from ..errors import input_error

    o = Path(out).resolve()
    for flag, inp in inputs.items():
        if inp is None or str(inp) == "":
            continue
        i = Path(inp)
        if not i.exists():
            continue
        is_dir = i.is_dir()
        i = i.resolve()
        if o == i or (is_dir and (i in o.parents or o in i.parents)):
            rel = "is" if o == i else ("lies inside" if i in o.parents else "holds")
            raise input_error(argument, str(out), f"a path outside the input {flag} {inp} (it {rel} it: outputs "
                                                  "never go into, onto or around their inputs)")


# ---- memory ---------------------------------------------------------------------------------------------------


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(argument: str, value, need_bytes: float, what: str) -> None:
    """Refuse a size whose estimated memory (``need_bytes``, a deliberately low estimate) exceeds this machine's RAM.

    The estimate is a lower bound, so what is refused could never run; what passes may still be tight.
    """
    from ..errors import input_error

    total = physical_memory()
    if total and need_bytes > total:
        raise input_error(argument, value, f"a size that fits in memory: {what} needs at least {_gib(need_bytes)}, "
                                           f"this machine has {_gib(total)}")


def unet_activation_bytes(batch: int, resolution: int, channels=(32, 64, 128)) -> float:
    """Low estimate of one training step's activations of the compact U-Net: batch x pixels x widths, fp32,
    kept once for the backward pass (the real figure is several times larger)."""
    return float(batch) * resolution * resolution * sum(channels) * 4


def lora_activation_bytes(rank: int, batch: int, resolution: int, layers: int = 8) -> float:
    """Low estimate of LoRA's extra activations: each adapted layer keeps a (batch, rank, H, W) fp32 map."""
    return float(rank) * batch * resolution * resolution * 4 * layers


# ---- weights folders ------------------------------------------------------------------------------------------


def check_weights_folder(folder: str | os.PathLike, argument: str) -> None:
    """Every ``*.json`` of an adapter/weights folder parses and every ``*.safetensors`` has a whole header and
    data section; else one line naming the file. Catches truncated downloads and hand-edited configs before a
    loader meets them."""
    import json

    from ..errors import CheckpointError

    folder = Path(folder)
    if not folder.is_dir():
        return
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if f.suffix == ".json":
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{argument}={folder}: {f.name} is not valid JSON ({exc}); re-export or "
                                      "re-download the folder") from None
        elif f.suffix == ".safetensors":
            why = _safetensors_problem(f)
            if why:
                raise CheckpointError(f"{argument}={folder}: {f.name} is not a whole safetensors file ({why}); "
                                      "re-export or re-download the folder")


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded (header or data cut short), or None. Reads only the header."""
    import json
    import struct

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header of {n} bytes announced, {size - 8} present"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "the header is not JSON"
    if not isinstance(header, dict):
        return "the header is not a table of tensors"
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        return f"tensor data ends at byte {8 + n + end}, the file has {size}"
    return None


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


def bound_loop_flags(p: argparse.ArgumentParser) -> None:
    """Give the optimisation flags of :func:`loop_args` their ranges (call right after it)."""
    ranges = {
        "--lr": float_range("--lr", 0.0, 10.0, lo_open=True),
        "--seed": seed_arg(),
        "--ema-decay": float_range("--ema-decay", 0.0, 0.999999),
        "--max-minutes": float_range("--max-minutes", 0.0, 1e6, lo_open=True),
        "--threads": threads_type(),
    }
    for action in p._actions:
        for flag in action.option_strings:
            if flag in ranges and not getattr(action.type, "bounded", False):
                action.type = ranges[flag]


def threads_arg(p) -> None:
    p.add_argument("--threads", type=threads_type(), default=None, help="torch CPU threads (default: torch's choice)")


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


def is_main_process() -> bool:
    """False on the ranks other than 0 of a launcher (``accelerate launch``, ``torchrun``): they print nothing."""
    return os.environ.get("RANK", "0") == "0"


def set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
