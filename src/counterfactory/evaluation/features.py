"""The feature-extractor registry: what ``extractor=`` (``--extractor``) chooses, and how metrics are named.

Kinds (all from local files; nothing is downloaded):

- ``compact``: :class:`~counterfactory.evaluation.extractors.CompactExtractor`, trained by this project on the
  dataset's own images (:func:`~counterfactory.evaluation.extractor_training.train_compact_extractor`).
- ``inception``: the FID Inception-v3 TorchScript file, only with ``allow_torchscript=True``.
- ``clip`` / ``dinov2``: local transformers folders (safetensors weights only).

See :mod:`~counterfactory.evaluation.pretrained_extractors`. Only the Inception network yields ``FID``; every
other extractor gives ``FD_<name>``. The names below are re-exported so that callers import one module.
"""

from __future__ import annotations

import os

from ..errors import input_error
from .extractor_training import TrainLog, train_compact_extractor
from .extractors import (
    CompactExtractor,
    CompactExtractorConfig,
    FeatureExtractor,
    load_compact_extractor,
    resize_square,
    save_compact_extractor,
)
from .pretrained_extractors import load_clip, load_dinov2, load_inception

__all__ = [
    "EXTRACTOR_KINDS",
    "CompactExtractor",
    "CompactExtractorConfig",
    "FeatureExtractor",
    "TrainLog",
    "distribution_prefix",
    "load_compact_extractor",
    "load_extractor",
    "resize_square",
    "save_compact_extractor",
    "train_compact_extractor",
]

EXTRACTOR_KINDS = ("compact", "inception", "clip", "dinov2")


def load_extractor(kind: str, weights: str | os.PathLike | None, *, allow_torchscript: bool = False) -> FeatureExtractor:
    """An extractor of ``kind`` from local ``weights``: a compact checkpoint, a transformers folder, or (only with
    ``allow_torchscript=True``) the TorchScript Inception file.

    Raises:
        InputError: an unknown ``kind``, no ``weights``, TorchScript without the opt-in.
        CheckpointError: weights that are missing, of another kind, pickle-format or incomplete.
    """
    if kind not in EXTRACTOR_KINDS:
        raise input_error("kind", kind, f"one of {', '.join(EXTRACTOR_KINDS)}")
    if weights is None:
        raise input_error("weights", None, f"a local weights path for the {kind} extractor (nothing is downloaded)")
    if kind == "inception":
        return load_inception(weights, allow_torchscript=allow_torchscript)
    return {"compact": load_compact_extractor, "clip": load_clip, "dinov2": load_dinov2}[kind](weights)


def distribution_prefix(extractor: FeatureExtractor) -> str:
    """``"FID"`` for the Inception network, else ``"FD_<name>"``."""
    return "FID" if extractor.name == "inception" else f"FD_{extractor.name}"
