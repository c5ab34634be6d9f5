"""Feature extractors: any ``nn.Module`` that maps images to vectors, and the compact one this project trains.

Every extractor is a :class:`FeatureExtractor`: ``forward(images)`` takes a float batch (B,{1,3},H,W) in [0,1]
of any size (resized to a square ``input_size``, no crop) and returns (B, ``num_features``) float32, which makes
it a valid ``feature=`` for torchmetrics' ``FrechetInceptionDistance``. ``name`` is what every distribution
metric is named after (``FD_compact``, ``KID_dinov2`` ...).

:class:`CompactExtractor` is a ~0.3M-parameter conv encoder trained self-supervised on the dataset's own
images (:mod:`counterfactory.evaluation.extractor_training`), saved as ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, input_error
from ..io.images import to_rgb
from ..io.manifest import atomic_path, atomic_write_json


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B,C,H,W) → (B,C,size,size), bilinear with antialiasing (no-op when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class FeatureExtractor(nn.Module):
    """Base class: images (B,{1,3},H,W) in [0,1], any size → features (B, num_features) float32."""

    name: str = "features"
    num_features: int = 0
    input_size: int = 64

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return resize_square(to_rgb(images if images.ndim == 4 else images[None]), self.input_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.preprocess(images)).float()

    @torch.no_grad()
    def extract(self, images: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Features of a list of (C,H,W) images of possibly different sizes (each resized), in eval mode."""
        was = self.training
        self.eval()
        out = []
        items = list(images) if not isinstance(images, torch.Tensor) else list(images.unbind(0))
        for i in range(0, len(items), batch_size):
            chunk = [self.preprocess(im if im.ndim == 4 else im[None]) for im in items[i : i + batch_size]]
            out.append(self.embed(torch.cat(chunk)).float())
        self.train(was)
        if not out:
            return torch.zeros(0, self.num_features)
        return torch.cat(out)


# --------------------------------------------------------------------------------------------------------
# compact, self-supervised domain extractor
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompactExtractorConfig:
    input_size: int = 64  # images are resized to input_size² before the encoder
    channels: tuple[int, ...] = (16, 32, 64, 128)  # stem (stride 2) then one stride-2 stage per entry after it
    num_features: int = 128  # = channels[-1]; the pooled output is the feature
    groups: int = 8  # GroupNorm groups
    # self-supervised training (SimCLR / NT-Xent on two views of the same image)
    steps: int = 500  # ≈ 90 s on one CPU thread
    batch_size: int = 48  # images per step (2 views each)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    min_crop_scale: float = 0.02  # area fraction of the smallest random crop (defect-sized views)
    view_jitter: float = 0.25  # the two views of a pair: the same box shifted / rescaled by up to this fraction
    max_train_side: int = 256  # training images are downscaled so the longer side is at most this
    seed: int = 0

    def __post_init__(self):
        if self.input_size < 16 or self.input_size % 16:
            raise input_error("input_size", self.input_size, "a multiple of 16, at least 16")
        if len(self.channels) < 2 or any(c % self.groups for c in self.channels):
            raise input_error("channels", self.channels, f"at least 2 widths, each divisible by groups={self.groups}")
        if self.num_features != self.channels[-1]:
            raise input_error("num_features", self.num_features, f"equal to channels[-1]={self.channels[-1]}")
        if self.steps < 0 or self.batch_size < 2:
            raise input_error("steps/batch_size", (self.steps, self.batch_size), "steps >= 0 and batch_size >= 2")
        if not 0 < self.min_crop_scale <= 1:
            raise input_error("min_crop_scale", self.min_crop_scale, "a number in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict) -> CompactExtractorConfig:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


def _block(cin: int, cout: int, groups: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
    )


class CompactExtractor(FeatureExtractor):
    """Small conv encoder: stride-2 stem, stride-2 stages, global average pool → ``num_features``."""

    name = "compact"

    def __init__(self, config: CompactExtractorConfig | None = None):
        super().__init__()
        self.config = config or CompactExtractorConfig()
        c = self.config
        self.input_size = c.input_size
        self.num_features = c.num_features
        self.stem = nn.Sequential(nn.Conv2d(3, c.channels[0], 4, stride=2, padding=1), nn.GroupNorm(c.groups, c.channels[0]), nn.GELU())
        self.stages = nn.Sequential(
            *[_block(c.channels[i], c.channels[i + 1], c.groups, stride=2) for i in range(len(c.channels) - 1)]
        )
        self.register_buffer("_mean", torch.tensor(0.5), persistent=False)
        self.register_buffer("_std", torch.tensor(0.25), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self._mean) / self._std
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def save_compact_extractor(model: CompactExtractor, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (config, plus ``extra`` training facts) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"kind": "counterfactory.compact_extractor"})
    cfg = asdict(model.config)
    atomic_write_json(directory / "config.json", {"kind": "compact_extractor", "config": cfg, **(extra or {})})
    return directory


def load_compact_extractor(path: str | os.PathLike) -> CompactExtractor:
    """Load from a folder holding ``model.safetensors`` + ``config.json`` (or the .safetensors file itself)."""
    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    weights, cfg_path = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not cfg_path.is_file():
        raise CheckpointError(f"compact extractor: no model.safetensors + config.json at {folder} (written by "
                              "save_compact_extractor, or trained by `counterfactory evaluate` without weights)")
    try:
        meta = json.loads(cfg_path.read_text())
        if meta.get("kind") != "compact_extractor":
            raise ValueError(f"config.json kind is {meta.get('kind')!r}")
        model = CompactExtractor(CompactExtractorConfig.from_dict(meta["config"]))
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # noqa: BLE001 - any failure here means "not our checkpoint"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"compact extractor: {folder} is not a compact extractor checkpoint ({msg})") from None
    return model.eval()
