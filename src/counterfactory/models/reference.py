"""Reference encoders: a reference image (a crop of one defect or object) → cross-attention tokens.

They play the part the damage-type table plays for :class:`~counterfactory.models.conditioning.DamageTypeEmbedding`:
``encoder(references)`` gives ``(B, num_tokens, dim)`` tokens the U-Net attends to, and a learned **null
reference** (``null_tokens``) is the unconditional branch of classifier-free guidance (reference dropout in
training, as Paint-by-Example's ``uncond_vector``).

Kinds:

- ``compact``: :class:`CompactReferenceEncoder`, a small conv net on a 32-48 px reference crop, trained jointly
  with the LoRA adapter (works on a CPU). Its head starts at the base model's own tokens (bias = base tokens,
  small weights), so an untrained adapter starts as the base.
- ``clip`` / ``dinov2``: :class:`PretrainedReferenceEncoder`, a frozen ``CLIPVisionModel`` / ``Dinov2Model``
  loaded from a local folder (``local_files_only=True``, never a download) plus a learned projection to the
  U-Net's ``cross_attention_dim``: one pooled token mapped to ``num_tokens`` tokens (``token_mode="pooled"``,
  the PbE bottleneck) or every hidden state projected (``"patches"``, AnyDoor-style CLS + patch tokens).

Saved as ``reference_encoder.safetensors`` (the trainable weights only: never the pretrained backbone) +
``reference_encoder.json`` (kind, sizes, the backbone folder it was trained with).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError, _short, input_error
from ..io.images import as_batch, to_model_space, to_rgb
from ..io.manifest import atomic_path, atomic_write_json
from .backbones import load_backbone

REFERENCE_ADAPTER_CONFIG = "reference_adapter.json"  # written last: its presence marks a complete adapter
REFERENCE_ADAPTER_FORMAT = "counterfactory.reference_adapter.v1"
ENCODER_WEIGHTS = "reference_encoder.safetensors"
ENCODER_CONFIG = "reference_encoder.json"
ENCODER_KINDS = ("compact", "clip", "dinov2")
TOKEN_MODES = ("pooled", "patches")
MIN_REFERENCE_SIDE = 8  # smaller references carry no usable appearance
MAX_REFERENCE_UPSCALE = 4.0  # a box side may be at most this many times the reference's side (it would be a blur)
HINT_KINDS = ("none", "hf")
HINT_CHANNELS = 3  # high-pass detail, Sobel magnitude, box indicator



@dataclass(frozen=True)
class ReferenceEncoderConfig:
    kind: str = "compact"  # "compact" | "clip" | "dinov2"
    dim: int = 64  # token width = the U-Net's cross_attention_dim
    num_tokens: int = 4  # tokens per reference (compact and token_mode="pooled"); patches: the backbone's count
    input_size: int = 48  # compact: references are resized to input_size² (pretrained: the backbone's size)
    channels: tuple[int, ...] = (32, 64, 128)  # compact: stem width, then one stride-2 stage per entry after it
    groups: int = 8  # compact: GroupNorm groups
    token_mode: str = "pooled"  # pretrained: "pooled" (1 pooled vector -> num_tokens) | "patches" (all states)
    backbone: str | None = None  # pretrained: the local transformers folder it was built from
    hint: str = "none"  # "none" | "hf": AnyDoor-style high-frequency map of the reference, warped into the box,
    #                     as extra U-Net input channels through a zero-initialised hint encoder
    hint_out: int = 32  # "hf": the U-Net's conv_in output width (the hint encoder's output is added there)

    def __post_init__(self):
        if self.kind not in ENCODER_KINDS:
            raise input_error("encoder kind", self.kind, f"one of {', '.join(ENCODER_KINDS)}", ConfigError)
        for name in ("dim", "num_tokens", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise input_error(name, v, "an integer >= 1", ConfigError)
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or not 16 <= self.input_size <= 512:
            raise input_error("input_size", self.input_size, "an integer in [16, 512]", ConfigError)
        ch = tuple(self.channels)
        if not ch or any((not isinstance(c, int)) or c < 1 or c % self.groups for c in ch):
            raise input_error("channels", self.channels, f"positive widths divisible by groups={self.groups}", ConfigError)
        object.__setattr__(self, "channels", ch)
        if self.token_mode not in TOKEN_MODES:
            raise input_error("token_mode", self.token_mode, f"one of {', '.join(TOKEN_MODES)}", ConfigError)
        if self.hint not in HINT_KINDS:
            raise input_error("hint", self.hint, f"one of {', '.join(HINT_KINDS)}", ConfigError)
        if isinstance(self.hint_out, bool) or not isinstance(self.hint_out, int) or self.hint_out < 1:
            raise input_error("hint_out", self.hint_out, "an integer >= 1", ConfigError)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ReferenceEncoderConfig:
        known = {k: (tuple(v) if k == "channels" else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def reference_batch(references, size: int, name: str = "reference_image") -> torch.Tensor:
    """References (a (B,C,h,w) / (C,h,w) tensor in [0,1], a PIL image, or a list of them, sizes may differ) →
    (B,3,size,size): gray expanded to RGB, resized bilinearly with antialiasing (aspect not kept, as PbE)."""
    items = list(references) if isinstance(references, (list, tuple)) else [references]
    if isinstance(references, torch.Tensor) and references.ndim == 4:
        items = list(references.unbind(0))
    if not items:
        raise input_error(name, references, "at least one reference image")
    out = []
    for i, ref in enumerate(items):
        r = as_batch(ref, mode="RGB", name=f"{name}[{i}]")
        if r.shape[1] not in (1, 3):
            raise input_error(f"{name}[{i}] channels", r.shape[1], "1 (gray) or 3 (RGB); no alpha channel")
        h, w = r.shape[-2:]
        if min(h, w) < MIN_REFERENCE_SIDE:
            raise input_error(f"{name}[{i}] size", (h, w), f"at least {MIN_REFERENCE_SIDE} px on each side")
        r = to_rgb(r)
        if (h, w) != (size, size):
            r = F.interpolate(r, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        out.append(r)
    return torch.cat(out)


def int_box(box, h: int, w: int) -> tuple[int, int, int, int]:
    """Float box → the pixels it touches (floor / ceil), inside the canvas, at least 1 px."""
    x0, y0, x1, y1 = box
    ix0, iy0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    ix1, iy1 = min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1)))
    return ix0, iy0, max(ix1, min(w, ix0 + 1)), max(iy1, min(h, iy0 + 1))


def reference_crop(image: torch.Tensor, box: tuple[int, int, int, int], jitter: tuple[float, float] = (0.0, 0.0),
                   rng=None, min_side: int = 8) -> torch.Tensor:
    """Crop a reference (C,h,w) around ``box`` of ``image`` (C,H,W): each side moves outwards by
    U(jitter) × the box side (a fixed ``jitter[0]`` without ``rng``), the crop is at least ``min_side`` px
    per axis (centred on the box) and stays inside the image."""
    h, w = image.shape[-2:]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    u = rng.uniform(jitter[0], jitter[1], size=4) if rng is not None else np.full(4, jitter[0])
    cx0, cx1 = x0 - u[0] * bw, x1 + u[2] * bw
    cy0, cy1 = y0 - u[1] * bh, y1 + u[3] * bh
    cx0, cy0, cx1, cy1 = int_box((cx0, cy0, cx1, cy1), h, w)

    def grow(a, b, n):
        need = min(min_side, n) - (b - a)
        if need > 0:
            a = max(0, a - need // 2 - need % 2)
            b = min(n, a + min(min_side, n))
            a = max(0, b - min(min_side, n))
        return a, b

    cx0, cx1 = grow(cx0, cx1, w)
    cy0, cy1 = grow(cy0, cy1, h)
    return image[..., cy0:cy1, cx0:cx1]


class ReferenceEncoder(nn.Module):
    """Base: ``forward(references, drop=None) -> (B, num_tokens, dim)``; ``null_tokens(B)`` for CFG."""

    config: ReferenceEncoderConfig
    null: nn.Parameter

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def dim(self) -> int:
        return self.null.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.null.shape[0]

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def preprocess(self, references) -> torch.Tensor:
        """References in [0,1] (any sizes) → the encoder's input batch (B,3,S,S) in [0,1]."""
        return reference_batch(references, self.input_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, references, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, num_tokens, dim); rows where ``drop`` is True get the null reference."""
        x = references if _is_prepared(references, self.input_size) else self.preprocess(references)
        tokens = self.embed(x)
        if drop is not None:
            tokens = torch.where(drop.to(tokens.device)[:, None, None], self.null.expand_as(tokens), tokens)
        return tokens

    def null_tokens(self, batch_size: int) -> torch.Tensor:
        return self.null[None].expand(batch_size, -1, -1)

    def init_from_tokens(self, tokens: torch.Tensor) -> ReferenceEncoder:
        """Start the null reference (and, for the compact kind, the head's output) at given tokens, e.g. the
        compact base's own unconditional tokens: an untrained adapter then reproduces the base."""
        if tuple(tokens.shape) != tuple(self.null.shape):
            raise input_error("tokens", tuple(tokens.shape), f"shape {tuple(self.null.shape)} (num_tokens, dim)")
        with torch.no_grad():
            self.null.copy_(tokens)
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What is saved: every parameter except a pretrained backbone's."""
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def _is_prepared(x, size: int) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == 3 and tuple(x.shape[-2:]) == (size, size)


# ---------------------------------------------------------------------------------------------------------
# compact
# ---------------------------------------------------------------------------------------------------------
def _stage(cin: int, cout: int, groups: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
    )


class CompactReferenceEncoder(ReferenceEncoder):
    """Conv net on the resized reference: stem, stride-2 stages, 2×2 average pool (coarse layout survives),
    a linear head to ``num_tokens × dim`` tokens, plus the learned null reference."""

    def __init__(self, config: ReferenceEncoderConfig | None = None, seed: int = 0):
        super().__init__()
        config = config or ReferenceEncoderConfig()
        if config.kind != "compact":
            raise input_error("encoder kind", config.kind, "'compact' for CompactReferenceEncoder", ConfigError)
        self.config = config
        c = config.channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(3, c[0], 3, padding=1), nn.GroupNorm(config.groups, c[0]), nn.SiLU())
            self.stages = nn.Sequential(*[_stage(c[i], c[i + 1], config.groups, 2) for i in range(len(c) - 1)])
            self.head = nn.Linear(4 * c[-1], config.num_tokens * config.dim)
            nn.init.normal_(self.head.weight, std=0.02 / (4 * c[-1]) ** 0.5 * 8)
            nn.init.zeros_(self.head.bias)
            self.null = nn.Parameter(torch.zeros(config.num_tokens, config.dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(to_model_space(x)))
        h = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.head(h).view(x.shape[0], self.config.num_tokens, self.config.dim)

    def init_from_tokens(self, tokens: torch.Tensor) -> CompactReferenceEncoder:
        super().init_from_tokens(tokens)
        with torch.no_grad():
            self.head.bias.copy_(tokens.reshape(-1))
        return self


# ---------------------------------------------------------------------------------------------------------
# pretrained (CLIP / DINOv2 vision towers from a local folder)
# ---------------------------------------------------------------------------------------------------------
class PretrainedReferenceEncoder(ReferenceEncoder):
    """A frozen CLIP / DINOv2 vision tower + a learned projection to the U-Net's token width."""

    def __init__(self, config: ReferenceEncoderConfig, backbone=None, seed: int = 0):
        super().__init__()
        if config.kind not in ("clip", "dinov2"):
            raise input_error("encoder kind", config.kind, "'clip' or 'dinov2'", ConfigError)
        if backbone is None:
            if not config.backbone:
                raise input_error("backbone", None, f"a local {config.kind} transformers folder (encoder weights path)")
            backbone = load_backbone(config.kind, config.backbone)
        model, hidden, size, mean, std = backbone
        if config.input_size != size:
            config = ReferenceEncoderConfig.from_dict({**config.to_dict(), "input_size": size})
        self.config = config
        self.backbone = model
        self.hidden_size = hidden
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if config.token_mode == "patches":
            with torch.no_grad():
                n = model(pixel_values=torch.zeros(1, 3, size, size)).last_hidden_state.shape[1]
        else:
            n = config.num_tokens
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.norm = nn.LayerNorm(hidden)
            out = config.dim if config.token_mode == "patches" else config.num_tokens * config.dim
            self.proj = nn.Linear(hidden, out)
            nn.init.normal_(self.proj.weight, std=hidden ** -0.5)
            nn.init.zeros_(self.proj.bias)
            self.null = nn.Parameter(torch.zeros(n, config.dim))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / batch-statistics changes
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.backbone(pixel_values=(x - self._mean) / self._std)
        if self.config.token_mode == "patches":
            return self.proj(self.norm(out.last_hidden_state))
        pooled = out.pooler_output
        return self.proj(self.norm(pooled)).view(x.shape[0], self.config.num_tokens, self.config.dim)

    def init_from_tokens(self, tokens: torch.Tensor) -> PretrainedReferenceEncoder:
        super().init_from_tokens(tokens)
        if self.config.token_mode == "pooled":
            with torch.no_grad():
                self.proj.bias.copy_(tokens.reshape(-1))
        return self


# ---------------------------------------------------------------------------------------------------------
# high-frequency hint (AnyDoor's detail map, as extra input channels)
# ---------------------------------------------------------------------------------------------------------
def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W), reflect padding (replicate where the image is too small)."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    y = F.pad(x, (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def sobel_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """|∇| of (B,1,H,W) by 3×3 Sobel filters (replicate padding), in units of the input per pixel."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype, device=gray.device) / 8
    g = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(g, kx.view(1, 1, 3, 3))
    gy = F.conv2d(g, kx.t().contiguous().view(1, 1, 3, 3))
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def high_frequency_map(reference: torch.Tensor) -> torch.Tensor:
    """The reference's detail, without its tone: (B,3,h,w) in [0,1] → (B,2,h,w): the gray image minus its
    Gaussian blur (σ = a quarter of the shorter side, ≥ 1.5 px), and the Sobel gradient magnitude, each scaled
    ×4 (so typical defect detail is of order 1). The low frequencies (tone, illumination) are left to the target."""
    gray = reference.mean(1, keepdim=True)
    sigma = max(1.5, min(gray.shape[-2:]) / 4)
    band = (gray - _blur(gray, sigma)) * 4
    return torch.cat([band, sobel_magnitude(gray) * 4], dim=1)


def warp_hint(references: list[torch.Tensor], boxes: list, size: tuple[int, int]) -> torch.Tensor:
    """(N, HINT_CHANNELS, H, W): each reference (3,h,w) in [0,1] resized to its box (x0,y0,x1,y1 in pixels of an
    (H,W) canvas; float boxes are rounded), its high-frequency map placed there, plus a box-indicator channel;
    zero elsewhere. A ``None`` box gives an all-zero hint (the null reference)."""
    h, w = size
    out = torch.zeros(len(references), HINT_CHANNELS, h, w)
    for i, (ref, box) in enumerate(zip(references, boxes)):
        if box is None or ref is None:
            continue
        x0, y0, x1, y1 = int_box(box, h, w)
        r = ref[None].float()
        if r.shape[1] == 1:
            r = r.expand(-1, 3, -1, -1)
        r = F.interpolate(r, size=(y1 - y0, x1 - x0), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        out[i, :2, y0:y1, x0:x1] = high_frequency_map(r)[0]
        out[i, 2, y0:y1, x0:x1] = 1.0
    return out


class HintEncoder(nn.Module):
    """Hint channels → a residual added to the U-Net's ``conv_in`` output; the last conv starts at zero, so an
    untrained hint encoder leaves the base unchanged (ControlNet's zero convolution)."""

    def __init__(self, out_channels: int, in_channels: int = HINT_CHANNELS, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.zero = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.zero.weight)
        nn.init.zeros_(self.zero.bias)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.zero(self.net(hint))


class HintConvIn(nn.Module):
    """The U-Net's ``conv_in`` taking ``in_channels + HINT_CHANNELS`` inputs: the original conv on the first
    ``in_channels``, plus the hint encoder on the rest. Inputs without the extra channels pass unchanged."""

    def __init__(self, conv_in: nn.Conv2d, hint: HintEncoder):
        super().__init__()
        self.conv = conv_in
        self.set_hint(hint)
        self.in_channels = conv_in.in_channels

    def set_hint(self, hint: HintEncoder) -> None:
        # not registered as a submodule: the hint encoder belongs to (is saved, moved and trained with) the
        # reference encoder, so the U-Net's state holds no second copy of it
        object.__setattr__(self, "_hint", hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_channels:
            return self.conv(x)
        return self.conv(x[:, : self.in_channels]) + self._hint(x[:, self.in_channels :].to(x.dtype))


def attach_hint(unet, encoder: ReferenceEncoder):
    """Route ``encoder.hint`` into ``unet.conv_in`` (in place); no-op for an encoder without a hint."""
    hint = getattr(encoder, "hint", None)
    if hint is None:
        return unet
    if isinstance(unet.conv_in, HintConvIn):
        unet.conv_in.set_hint(hint)
    else:
        unet.conv_in = HintConvIn(unet.conv_in, hint)
    return unet


# ---------------------------------------------------------------------------------------------------------
# build / save / load
# ---------------------------------------------------------------------------------------------------------
def build_reference_encoder(config: ReferenceEncoderConfig, seed: int = 0, backbone=None) -> ReferenceEncoder:
    """A fresh encoder of ``config.kind`` (deterministic by ``seed``); pretrained kinds load their backbone
    from ``config.backbone`` unless a loaded ``backbone`` tuple (:func:`load_backbone`) is passed. With
    ``config.hint == "hf"`` it carries a :class:`HintEncoder` (``encoder.hint``), saved with it."""
    if config.kind == "compact":
        enc = CompactReferenceEncoder(config, seed=seed)
    else:
        enc = PretrainedReferenceEncoder(config, backbone=backbone, seed=seed)
    if config.hint != "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            enc.hint = HintEncoder(config.hint_out)
    else:
        enc.hint = None
    return enc


def save_reference_encoder(encoder: ReferenceEncoder, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``reference_encoder.safetensors`` (trainable weights only) + ``reference_encoder.json`` (atomic)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ENCODER_WEIGHTS) as tmp:
        save_file(encoder.trainable_state(), str(tmp), metadata={"format": "counterfactory.reference_encoder.v1"})
    info = {"format": "counterfactory.reference_encoder.v1", "config": encoder.config.to_dict(),
            "num_tokens_out": encoder.num_tokens, **(extra or {})}
    atomic_write_json(directory / ENCODER_CONFIG, info)
    return directory / ENCODER_WEIGHTS


def load_reference_encoder(directory: str | os.PathLike, backbone: str | os.PathLike | None = None) -> ReferenceEncoder:
    """Load an encoder saved by :func:`save_reference_encoder`; frozen, eval mode.

    ``backbone``: the local CLIP/DINOv2 folder for pretrained kinds (default: the folder recorded at training).
    """
    directory = Path(directory)
    wfile, cfile = directory / ENCODER_WEIGHTS, directory / ENCODER_CONFIG
    if not wfile.is_file() or not cfile.is_file():
        raise CheckpointError(
            f"reference encoder not found in {directory} (need {ENCODER_WEIGHTS} and {ENCODER_CONFIG}): "
            "train one with `counterfactory train-reference`"
        )
    try:
        info = json.loads(cfile.read_text())
        config = ReferenceEncoderConfig.from_dict(info["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfile}: not a reference encoder config ({_short(str(exc))})") from None
    if backbone is not None:
        config = ReferenceEncoderConfig.from_dict({**config.to_dict(), "backbone": str(backbone)})
    if config.kind != "compact" and not config.backbone:
        raise CheckpointError(f"{cfile}: a {config.kind} encoder needs its backbone folder (pass --encoder-weights DIR)")
    encoder = build_reference_encoder(config)
    try:
        state = load_file(str(wfile))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for broken files
        raise CheckpointError(f"{wfile}: not a readable safetensors file ({_short(str(exc))})") from None
    own = encoder.trainable_state()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        diff = sorted(set(state) ^ set(own)) or [k for k in own if state[k].shape != own[k].shape]
        raise CheckpointError(f"{wfile}: does not match its encoder config (e.g. {_short(str(diff[:2]))})")
    encoder.load_state_dict(state, strict=False)
    encoder.eval().requires_grad_(False)
    return encoder

