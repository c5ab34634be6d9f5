"""The compact text-to-image model: word tokenizer + tiny CLIP text encoder + pixel-space diffusers U-Net.

The U-Net is a ``UNet2DConditionModel`` (the SD class) on 1-channel 28×28 digits in [-1, 1], epsilon
prediction, with cross-attention over the word tokens at two resolutions (14×14 and 7×7, down and up), so a word's
attention map is spatially meaningful and the prompt-to-prompt processors written for SD drive it unchanged.
Saved in the diffusers folder layout (``unet/``, ``text_encoder/`` with safetensors, ``tokenizer.json``,
``scheduler/``), loaded from a local folder only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from ..errors import CheckpointError, ConfigError, input_error
from ..io.manifest import atomic_write_json
from .compact import DEFAULT_WEIGHTS_DIR
from .text import DEFAULT_MAX_LENGTH, WordTokenizer, build_text_encoder

DEFAULT_TEXT2IMAGE_DIR = DEFAULT_WEIGHTS_DIR / "text2image"  # shipped package data, like the compact base
CONFIG_FILE = "text2image.json"


@dataclass(frozen=True)
class Text2ImageConfig:
    sample_size: int = 28  # digit side (pixels)
    in_channels: int = 1  # grayscale
    block_out_channels: tuple[int, ...] = (16, 32, 32)  # 28, 14, 7; cross-attention at 14 and 7
    layers_per_block: int = 1
    text_hidden: int = 64  # text encoder width = cross_attention_dim
    text_layers: int = 2
    text_heads: int = 4
    attention_heads: int = 1  # one head: CPU attention kernels are slow on many tiny heads
    norm_num_groups: int = 8
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per caption incl. BOS/EOS
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self):
        if len(self.block_out_channels) < 3:
            raise ConfigError(f"block_out_channels={self.block_out_channels}: at least 3 levels (cross-attention at >= 2)")
        if self.sample_size % (2 ** (len(self.block_out_channels) - 1)) != 0:
            raise ConfigError(f"sample_size={self.sample_size}: divisible by 2**(levels-1)")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels={self.block_out_channels}: each divisible by norm_num_groups")
        for name in ("attention_heads", "in_channels", "layers_per_block", "text_hidden", "text_layers", "text_heads", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: an integer >= 1")


def build_unet(cfg: Text2ImageConfig, seed: int = 0) -> UNet2DConditionModel:
    n = len(cfg.block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
            down_block_types=down, up_block_types=up, block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.text_hidden,
            attention_head_dim=cfg.attention_heads,  # diffusers reads this as the head count
            norm_num_groups=cfg.norm_num_groups,
        ).eval()


def _quiet_hub():
    """No download/progress bars from transformers and diffusers when reading or writing local folders."""
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    tl.disable_progress_bar()
    dl.disable_progress_bar()


def make_scheduler(cfg: Text2ImageConfig) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")


class Text2ImageModel(torch.nn.Module):
    """tokenizer + text_encoder + unet + scheduler, the parts a text-conditioned pipeline needs."""

    def __init__(self, cfg: Text2ImageConfig, tokenizer: WordTokenizer, text_encoder=None, unet=None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(
            tokenizer.vocab_size, cfg.text_hidden, cfg.text_layers, cfg.text_heads, cfg.max_length, seed=seed)
        self.unet = unet if unet is not None else build_unet(cfg, seed=seed + 1)
        self.scheduler = make_scheduler(cfg)

    @classmethod
    def from_words(cls, words, cfg: Text2ImageConfig | None = None, seed: int = 0) -> Text2ImageModel:
        cfg = cfg or Text2ImageConfig()
        return cls(cfg, WordTokenizer.from_words(words, cfg.max_length), seed=seed)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode(self, prompts, argument: str = "prompt") -> torch.Tensor:
        ids = self.tokenizer.encode(prompts, argument=argument)
        return self.text_encoder(input_ids=ids.to(self.device)).last_hidden_state

    def check_image(self, image: torch.Tensor, argument: str = "image") -> None:
        s, c = self.cfg.sample_size, self.cfg.in_channels
        if not torch.is_tensor(image) or image.ndim != 4 or image.shape[1:] != (c, s, s):
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise input_error(argument, shape, f"images of shape (B,{c},{s},{s}) in [0,1] (this model's size and channels)")

    # ------------------------------------------------------------------ save / load
    def save(self, folder: str | os.PathLike, extra: dict | None = None) -> Path:
        _quiet_hub()
        folder = Path(folder)
        tmp = folder.parent / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        self.scheduler.save_pretrained(tmp / "scheduler")
        self.tokenizer.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / CONFIG_FILE, {**asdict(self.cfg), "extra": extra or {}})
        keep = [p for p in folder.iterdir() if p.name not in {"unet", "text_encoder", "scheduler", "tokenizer.json",
                                                             CONFIG_FILE}] if folder.is_dir() else []
        for p in keep:  # model card, sample grid: kept across re-exports
            shutil.move(str(p), tmp / p.name)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Text2ImageModel:
        from transformers import CLIPTextModel

        _quiet_hub()
        folder = Path(folder) if folder is not None else DEFAULT_TEXT2IMAGE_DIR
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"--model={folder}: a text-to-image folder written by `counterfactory train-text2image` "
                f"(no {CONFIG_FILE}; the shipped one is weights/text2image)")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        meta.pop("extra", None)
        meta["block_out_channels"] = tuple(meta["block_out_channels"])
        cfg = Text2ImageConfig(**meta)
        tok = WordTokenizer.load(folder / "tokenizer.json")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).eval()
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).eval()
        model = cls(cfg, tok, text_encoder=te, unet=unet)
        return model.to(device)


__all__ = ["Text2ImageConfig", "Text2ImageModel", "build_unet", "make_scheduler", "DEFAULT_TEXT2IMAGE_DIR"]
