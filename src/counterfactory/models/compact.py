"""The compact pixel-space inpainting model the project trains and ships (the embedded default).

It is a diffusers ``UNet2DConditionModel`` in the SD-inpainting input layout, in pixel space:
input = noisy image (3) + mask (1) + masked image (3) = 7 channels, output 3, x0 ("sample") prediction.
The same family has a full-image layout (``layout="full"``: input = the noisy image only, 3 channels), an
unconditional generator of whole images that a ControlNet steers (``train-base --layout full``).
Cross-attention sits only at the lowest resolution (16×16 at 64 px), where it is cheap on a CPU; it reads
conditioning tokens: the base model's own learned unconditional tokens, or an adapter's damage-type tokens.
The same pipeline, LoRA and training code serve this model and SD-1.5-inpainting.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError, input_error
from ..io.manifest import atomic_path, atomic_write_json

WEIGHTS_FILE = "compact_inpaint.safetensors"
CONFIG_FILE = "compact_inpaint.json"
# The shipped weights are package data (counterfactory/weights, which links to the repository's weights/ in a
# source checkout); COUNTERFACTORY_WEIGHTS points elsewhere, e.g. at a copy on shared storage.
DEFAULT_WEIGHTS_DIR = Path(os.environ.get("COUNTERFACTORY_WEIGHTS") or Path(__file__).resolve().parent.parent / "weights")
PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")
# U-Net input layouts: "inpaint" = noisy image + mask + masked image (7 channels); "full" = noisy image (3)
LAYOUTS = ("inpaint", "full")
LAYOUT_CHANNELS = {"inpaint": 7, "full": 3}


@dataclass(frozen=True)
class CompactConfig:
    sample_size: int = 64  # working resolution (pixels); crops around masks are resized to this
    block_out_channels: tuple[int, ...] = (32, 64, 128)  # one level per entry; cross-attention at the last
    layers_per_block: int = 1
    cross_attention_dim: int = 64  # width of conditioning tokens
    num_tokens: int = 4  # conditioning tokens per damage type
    attention_head_dim: int = 8
    norm_num_groups: int = 16
    prediction_type: str = "sample"  # x0-prediction: learned class-distinct defects here where epsilon did not
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    layout: str = "inpaint"  # "inpaint" (7 input channels) or "full" (3: whole images, for ControlNets)
    extra: dict = field(default_factory=dict)  # provenance (data, command, steps) kept next to the weights

    def __post_init__(self):
        if not self.block_out_channels or any(int(c) < 1 for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels={self.block_out_channels}: one or more positive widths")
        for name in ("sample_size", "layers_per_block", "cross_attention_dim", "num_tokens", "attention_head_dim",
                     "norm_num_groups", "num_train_timesteps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: an integer >= 1")
        if self.sample_size % (2 ** (len(self.block_out_channels) - 1)) != 0:
            raise ConfigError(
                f"sample_size={self.sample_size}: must be divisible by 2**(levels-1)={2 ** (len(self.block_out_channels) - 1)}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type={self.prediction_type!r}: one of {PREDICTION_TYPES}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout={self.layout!r}: one of {LAYOUTS}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels={self.block_out_channels}: each divisible by norm_num_groups={self.norm_num_groups}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CompactConfig:
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        d.setdefault("layout", "inpaint")  # configs written before the full-image layout existed
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class CompactInpaintModel(nn.Module):
    """U-Net + the base's learned unconditional tokens (what the base sees when no adapter conditions it).

    The U-Net's input channels follow ``config.layout`` (7 for "inpaint", 3 for "full")."""

    def __init__(self, config: CompactConfig):
        super().__init__()
        self.config = config
        n = len(config.block_out_channels)
        self.unet = UNet2DConditionModel(
            sample_size=config.sample_size,
            in_channels=LAYOUT_CHANNELS[config.layout],
            out_channels=3,
            down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            cross_attention_dim=config.cross_attention_dim,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
        )
        self.base_tokens = nn.Parameter(torch.zeros(config.num_tokens, config.cross_attention_dim))

    def tokens(self, batch_size: int) -> torch.Tensor:
        return self.base_tokens[None].expand(batch_size, -1, -1)


def build_compact(config: CompactConfig | None = None, seed: int = 0) -> CompactInpaintModel:
    """A freshly initialised compact model (deterministic by seed)."""
    config = config or CompactConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CompactInpaintModel(config)


def make_schedulers(config: CompactConfig) -> tuple[DDPMScheduler, DDIMScheduler]:
    """(training scheduler, sampling scheduler) for the compact model."""
    kw = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
    )
    return DDPMScheduler(**kw), DDIMScheduler(**kw, set_alpha_to_one=True, timestep_spacing="trailing")


def full_from_inpaint_state(state: dict) -> dict:
    """An inpainting base's weights as a full-image base's starting point: the input convolution keeps the noisy
    image's channels, and what the base computes in its "nothing known" input (mask 1, masked image 0) is folded
    into the bias (exact away from the border, where zero padding differs)."""
    state = dict(state)
    w, b = state["unet.conv_in.weight"], state["unet.conv_in.bias"]
    state["unet.conv_in.weight"] = w[:, :3].clone()
    state["unet.conv_in.bias"] = b + w[:, 3].sum(dim=(-2, -1))
    return state


def save_compact(model: CompactInpaintModel, directory: str | os.PathLike, half: bool = False) -> Path:
    """Write ``compact_inpaint.safetensors`` + ``compact_inpaint.json`` (atomic)."""
    directory = Path(directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "counterfactory.compact_inpaint.v1"})
    atomic_write_json(directory / CONFIG_FILE, model.config.to_dict())
    return directory / WEIGHTS_FILE


def load_compact(directory: str | os.PathLike | None = None, layout: str | None = None) -> CompactInpaintModel:
    """Load a compact model from a folder holding the two files; frozen and in eval mode.

    ``layout``: the input layout the caller needs ("inpaint" or "full"); a base of the other layout is refused
    (:class:`CheckpointError` naming both). None accepts either.
    """
    directory = Path(directory) if directory is not None else DEFAULT_WEIGHTS_DIR
    wfile, cfile = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not wfile.is_file() or not cfile.is_file():
        raise CheckpointError(
            f"compact base weights not found in {directory} (need {WEIGHTS_FILE} and {CONFIG_FILE}): "
            f"train one with `counterfactory train-base --out {directory}` or use the shipped weights/ folder"
        )
    try:
        config = CompactConfig.from_dict(json.loads(cfile.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfile}: not a compact model config ({exc})") from None
    except ConfigError as exc:
        raise CheckpointError(f"{cfile}: {exc}") from None
    if layout is not None and config.layout != layout:
        raise CheckpointError(f"compact base {directory} has layout {config.layout!r}; this needs layout {layout!r} "
                              "(a base trained with that CompactConfig.layout)")
    model = CompactInpaintModel(config)
    try:
        state = load_file(str(wfile))
    except Exception as exc:  # safetensors raises its own error type for truncated / foreign files
        raise CheckpointError(f"{wfile}: not a readable safetensors file ({exc})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{wfile}: does not match its config ({' '.join(str(exc).split())[:300]})") from None
    if missing or unexpected:
        raise CheckpointError(f"{wfile}: does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval().requires_grad_(False)
    return model


def check_prediction_type(value: str) -> str:
    if value not in PREDICTION_TYPES:
        raise input_error("prediction_type", value, f"one of {PREDICTION_TYPES}")
    return value
