"""Pretrained vision backbones (CLIP, DINOv2) from local transformers folders: one loader, one error style.

Both the evaluation feature extractors and the reference encoders load their backbone here. A folder is what
``save_pretrained`` writes: ``config.json`` + ``model.safetensors`` (+ optionally ``preprocessor_config.json``
for the normalisation and input size). Nothing is downloaded (``local_files_only=True``), weights are read from
safetensors only (``use_safetensors=True``: a folder holding only a pickle ``pytorch_model.bin`` is refused,
with a note on converting it), remote code is never run, and a checkpoint that leaves weights uninitialised is
refused rather than silently filled with random values. Every problem is a one-line :class:`CheckpointError`
naming the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from torch import nn

from ..errors import CheckpointError, ConfigError, _short, input_error

BACKBONE_KINDS = ("clip", "dinov2")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_TYPES = {"clip": ("clip", "clip_vision_model"), "dinov2": ("dinov2",)}
_EXAMPLES = {"clip": "openai/clip-vit-large-patch14", "dinov2": "facebook/dinov2-base"}


class Backbone(NamedTuple):
    """A loaded, frozen backbone and how to feed it: images resized to ``image_size`` square, in [0,1],
    normalised by ``(x - mean) / std`` per channel."""

    model: nn.Module
    hidden_size: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _fail(kind: str, message: str) -> CheckpointError:
    return CheckpointError(f"{kind} backbone: {message}")


def read_config(kind: str, path: str | os.PathLike) -> tuple[Path, dict]:
    """The folder and its ``config.json`` (checked to be a ``kind`` model)."""
    if kind not in BACKBONE_KINDS:
        raise input_error("kind", kind, f"one of {', '.join(BACKBONE_KINDS)}", ConfigError)
    folder = Path(path).expanduser()
    cfg = folder / "config.json"
    if not folder.is_dir() or not cfg.is_file():
        raise _fail(kind, f"no transformers folder at {folder} (need config.json + model.safetensors, e.g. from "
                          f"save_pretrained of {_EXAMPLES[kind]}); nothing is downloaded")
    try:
        raw = json.loads(cfg.read_text())
    except (ValueError, OSError) as exc:
        raise _fail(kind, f"unreadable {cfg} ({_short(str(exc))})") from None
    model_type = str(raw.get("model_type", "")) if isinstance(raw, dict) else ""
    if model_type not in _MODEL_TYPES[kind]:
        raise _fail(kind, f"{folder} holds a {model_type or 'unknown'!r} model, not {kind} (config model_type one of "
                          f"{_MODEL_TYPES[kind]})")
    return folder, raw


def _require_safetensors(kind: str, folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise _fail(kind, f"{folder / pickles[0]} is a pickle-format checkpoint, which is never read; convert it to "
                          "model.safetensors (load it once where you trust it and save_pretrained(folder, "
                          "safe_serialization=True))")
    raise _fail(kind, f"{folder} has a config.json but no model.safetensors")


@contextlib.contextmanager
def _quiet_transformers():
    """No weight-loading progress bar or load report (a full CLIPModel folder lists its unused text tower)."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _preprocessing(folder: Path, kind: str, config) -> tuple[tuple, tuple, int]:
    """(mean, std, input size): ``preprocessor_config.json`` where given, else the model family's defaults.
    CLIP always takes ``image_size`` (its position embeddings are fixed); DINOv2 the crop size (default
    min(224, image_size)), rounded down to a multiple of the patch size."""
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    size = int(config.image_size) if kind == "clip" else int(min(224, config.image_size))
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            d = json.loads(pre.read_text())
            mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
            crop = d.get("crop_size")
            crop = (crop.get("height") or crop.get("shortest_edge")) if isinstance(crop, dict) else crop
            if isinstance(crop, int) and kind == "dinov2":
                size = crop
        except (ValueError, OSError, AttributeError):
            pass  # an unreadable preprocessor file: the family's defaults
    if kind == "dinov2":
        size = max(config.patch_size, (size // config.patch_size) * config.patch_size)
    return mean, std, size


def load_backbone(kind: str, path: str | os.PathLike, *, projection: bool = False) -> Backbone:
    """A frozen CLIP / DINOv2 vision model from a local folder.

    Args:
        kind: ``"clip"`` (a ``CLIPModel`` or ``CLIPVisionModel*`` folder) or ``"dinov2"`` (``Dinov2Model``).
        path: the folder.
        projection: CLIP only: load the projection head too (``CLIPModel`` for a full checkpoint,
            ``CLIPVisionModelWithProjection`` for a vision-only one) for projected image embeddings; the
            default is the plain ``CLIPVisionModel`` (hidden states and pooled output).

    Raises:
        CheckpointError: a missing folder, another model type, pickle-only or incomplete weights.
    """
    import transformers  # here, not at the top: heavy, and only needed when a backbone is loaded

    folder, raw = read_config(kind, path)
    _require_safetensors(kind, folder)
    if kind == "dinov2":
        cls = transformers.Dinov2Model
    elif not projection:
        cls = transformers.CLIPVisionModel
    else:
        cls = transformers.CLIPModel if raw.get("model_type") == "clip" else transformers.CLIPVisionModelWithProjection
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                              output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/... for broken folders
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(kind, f"cannot load {folder} ({_short(msg, 160)})") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise _fail(kind, f"{folder} is incomplete ({len(missing)} weights missing, e.g. {_short(str(missing[0]), 80)})")
    model.eval().requires_grad_(False)
    vision = model.config.vision_config if hasattr(model.config, "vision_config") else model.config
    mean, std, size = _preprocessing(folder, kind, vision)
    return Backbone(model, int(vision.hidden_size), size, mean, std)
