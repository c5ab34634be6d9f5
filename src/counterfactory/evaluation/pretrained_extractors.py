"""Pretrained feature extractors from local files only: CLIP and DINOv2 (:mod:`counterfactory.models.backbones`)
and, behind an explicit opt-in, the FID Inception network as a TorchScript file.

- ``inception``: the standard FID Inception-v3 from NVIDIA's ``inception-2015-12-05.pt`` (the file StyleGAN2-ADA
  and clean-fid use; called as ``net(uint8 images, return_features=True)`` → 2048-d pool features, resizing to
  299 internally). A TorchScript file is a pickle-based container that can run code when loaded, so it is read
  only with ``allow_torchscript=True``, for a file whose origin you trust. Only this network yields ``FID``.
- ``clip``: a CLIP image encoder (``CLIPModel`` or ``CLIPVisionModelWithProjection`` folder); features are the
  projected image embeddings.
- ``dinov2``: a DINOv2 backbone (``Dinov2Model``); features are the CLS token after the final layer norm
  (``pooler_output``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, input_error
from ..models.backbones import load_backbone
from .extractors import FeatureExtractor


class InceptionExtractor(FeatureExtractor):
    """The FID Inception-v3 from a local TorchScript file (NVIDIA ``inception-2015-12-05.pt``)."""

    name = "inception"

    def __init__(self, net: torch.jit.ScriptModule, num_features: int):
        super().__init__()
        self.net = net
        self.num_features = num_features
        self.input_size = 299

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8)
        return self.net(u8, return_features=True)


def load_inception(path: str | os.PathLike, *, allow_torchscript: bool = False) -> InceptionExtractor:
    """The FID Inception network from a local TorchScript file.

    ``allow_torchscript`` must be True: a TorchScript file is a pickle-based container, so loading one means
    trusting its origin (e.g. NVIDIA's ``inception-2015-12-05.pt`` checked against its published hash).

    Raises:
        InputError: ``allow_torchscript`` not set.
        CheckpointError: a missing or unloadable file.
    """
    hint = "a local TorchScript Inception file such as inception-2015-12-05.pt (net(uint8, return_features=True))"
    if allow_torchscript is not True:
        raise input_error("allow_torchscript", allow_torchscript, "True to load the TorchScript Inception file "
                          f"{path} (a pickle-based container: pass True only for a file whose origin you trust)")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Inception weights: no file {p}; expected {hint}")
    try:
        net = torch.jit.load(str(p), map_location="cpu").eval()
        with torch.no_grad():
            dim = int(net(torch.zeros(1, 3, 299, 299, dtype=torch.uint8), return_features=True).shape[-1])
    except Exception as exc:  # noqa: BLE001 - torch.jit raises many kinds for a file that is not TorchScript
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"Inception weights: cannot load {p} as {hint} ({msg[:160]})") from None
    return InceptionExtractor(net, dim)


class BackboneExtractor(FeatureExtractor):
    """A CLIP / DINOv2 backbone (:func:`counterfactory.models.backbones.load_backbone`) as a feature extractor."""

    def __init__(self, name: str, model: nn.Module, num_features: int, size: int, mean, std, head: Callable):
        super().__init__()
        self.model = model
        self.name = name
        self.num_features = int(num_features)
        self.input_size = int(size)
        self._head = head
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self.model, (x - self._mean) / self._std)


def _clip_full_head(model, pixel_values):
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def _clip_vision_head(model, pixel_values):
    return model(pixel_values=pixel_values).image_embeds


def _dino_head(model, pixel_values):
    return model(pixel_values=pixel_values).pooler_output


def load_clip(path: str | os.PathLike) -> BackboneExtractor:
    """CLIP image encoder (projected image embeddings) from a local ``CLIPModel`` or
    ``CLIPVisionModelWithProjection`` folder; images are resized to ``vision_config.image_size``."""
    b = load_backbone("clip", path, projection=True)
    head = _clip_full_head if hasattr(b.model, "text_model") else _clip_vision_head  # CLIPModel vs vision-only
    return BackboneExtractor("clip", b.model, b.model.config.projection_dim, b.image_size, b.mean, b.std, head)


def load_dinov2(path: str | os.PathLike) -> BackboneExtractor:
    """DINOv2 backbone (CLS token after the last layer norm, ``pooler_output``) from a local folder; images are
    resized to the preprocessor's crop size (224 by default), a multiple of the patch size."""
    b = load_backbone("dinov2", path)
    return BackboneExtractor("dinov2", b.model, b.hidden_size, b.image_size, b.mean, b.std, _dino_head)
