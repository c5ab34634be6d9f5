"""Finished causal stages: ``model.safetensors`` + ``config.json``.

The format is the one of :mod:`counterfactory.training.checkpoint` (safetensors + JSON); runs in progress keep
their resumable checkpoints under ``<stage>/checkpoints/`` (written by :class:`~counterfactory.training.trainer.Trainer`).

``config.json`` records the stage kind (``vae``, ``predictors``, ``cft``), the CFT variant (``none``, ``reg``,
``seg``), the step reached, whether the stage finished, and the configs needed to rebuild the modules. Loading
a checkpoint as another kind or variant raises :class:`~counterfactory.errors.CheckpointError` (one line).
Files are written atomically, so a killed job leaves the previous complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from ..io.manifest import atomic_write_json
from ..io.tensors import save_safetensors

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VARIANTS = ("none", "reg", "seg")
VARIANT_NAMES = {"none": "No-CFT", "reg": "Reg-CFT", "seg": "Seg-CFT"}


def save_checkpoint(folder: str | Path, meta: dict[str, Any], modules: dict[str, nn.Module]) -> Path:
    """Write a finished stage: the modules' weights (``<module>.<param>``), then ``config.json`` (marks completeness)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {f"{m}.{k}": v.detach() for m, mod in modules.items() for k, v in mod.state_dict().items()}
    save_safetensors(weights, folder / MODEL_FILE)
    atomic_write_json(folder / CONFIG_FILE, meta)  # written last: marks completeness
    return folder


def read_meta(folder: str | Path, kind: str, variant: str | None = None) -> dict[str, Any]:
    """The config of a checkpoint folder, checked to be of ``kind`` (and ``variant`` when given)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / MODEL_FILE).is_file():
        raise CheckpointError(f"checkpoint={folder}: no {CONFIG_FILE} + {MODEL_FILE} there; allowed: a folder written by `counterfactory cft train`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint={folder}: unreadable {CONFIG_FILE} ({exc}); allowed: a folder written by `counterfactory cft train`") from None
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint={folder}: holds a {meta.get('kind')!r} stage; allowed: a {kind!r} checkpoint")
    if variant is not None and meta.get("variant") != variant:
        raise CheckpointError(
            f"checkpoint={folder}: holds variant {meta.get('variant')!r} ({VARIANT_NAMES.get(meta.get('variant'), '?')}); "
            f"allowed: a {variant!r} ({VARIANT_NAMES[variant]}) checkpoint"
        )
    return meta


def load_modules(folder: str | Path, modules: dict[str, nn.Module]) -> None:
    tensors = load_file(str(Path(folder) / MODEL_FILE))
    for m, mod in modules.items():
        prefix = f"{m}."
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            mod.load_state_dict(sd)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint={folder}: weights of {m!r} do not fit the model ({first})") from None
