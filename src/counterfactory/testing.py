"""Tiny randomly initialised components of the real architectures, built in code, for tests and benchmarks.

No weights can be downloaded where the tests run, so the Stable-Diffusion code paths are exercised on tiny random
models of the same architecture: :func:`tiny_sd_inpaint_components` (in memory) and :func:`save_tiny_sd_inpaint`
(a complete diffusers folder, tiny CLIP text encoder and tokenizer included, that the stock
``StableDiffusionInpaintPipeline.from_pretrained`` loads offline); :func:`save_tiny_backbone` writes a tiny
CLIP / DINOv2 transformers folder. The library itself never imports this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, input_error
from .models.pretrained import SD_INPAINT_IN_CHANNELS, SD_SCHEDULER_CONFIG

__all__ = ["save_tiny_backbone", "save_tiny_sd_inpaint", "tiny_clip_tokenizer", "tiny_sd_inpaint_components",
           "tiny_sd_text2img_components"]

_TOKENIZER_MAX_LENGTH = 16  # = the tiny text encoder's max_position_embeddings


def _check_positive_int(name: str, value: Any, *, even: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (even and value % 2):
        allowed = "a positive even integer" if even else "a positive integer"
        raise input_error(name, value, allowed, ConfigError)
    return value


def _private_rng():
    """A private RNG scope: what is seeded inside leaves the caller's global CPU RNG state as it was."""
    return torch.random.fork_rng(devices=[])


def tiny_sd_inpaint_components(
    seed: int = 0, sample_size: int = 32, cross_attention_dim: int = 32, *, freeze: bool = False
) -> dict[str, Any]:
    """A randomly initialised SD-1.5-inpainting stack at toy size: ``dict(unet=, vae=, scheduler=)``.

    Same architecture as the real one (9-channel ``UNet2DConditionModel`` with a cross-attention block, an
    ``AutoencoderKL`` with 4 latent channels, a DDIM scheduler with SD's noise schedule), about 1.7M parameters.

    Args:
        seed: every parameter is a function of ``seed`` only (same seed: bit-identical); the caller's global
            torch RNG state is left untouched.
        sample_size: latent side length; the VAE downsamples by 2, so images are ``2 * sample_size`` pixels.
            Must be even (the U-Net downsamples once).
        cross_attention_dim: width of the ``encoder_hidden_states`` tokens the U-Net attends to.
        freeze: also set ``requires_grad=False`` on every parameter (as :func:`load_sd_inpaint` does).
            Modules are always returned in ``eval()`` mode.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise input_error("seed", seed, "a non-negative integer", ConfigError)
    _check_positive_int("sample_size", sample_size, even=True)
    _check_positive_int("cross_attention_dim", cross_attention_dim)

    with _private_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=SD_INPAINT_IN_CHANNELS,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=2 * sample_size,
        )
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    for module in (unet, vae):
        module.eval()
        if freeze:
            module.requires_grad_(False)
    return {"unet": unet, "vae": vae, "scheduler": scheduler}


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte -> printable-unicode alphabet (the 256 base symbols of a byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_clip_tokenizer(model_max_length: int = _TOKENIZER_MAX_LENGTH):
    """A CLIP-style byte-level BPE tokenizer built offline (no vocab files, no download).

    Vocabulary: the 256 byte symbols, each also with CLIP's ``</w>`` end-of-word suffix, a few merges and
    ``<|startoftext|>`` / ``<|endoftext|>`` (519 tokens); unknown words fall back to characters. Built with
    ``CLIPTokenizer(vocab=..., merges=...)``: transformers 5 silently ignores ``vocab_file=``.
    ``model_max_length`` is set explicitly (the pipeline pads prompts to it).
    """
    from transformers import CLIPTokenizer

    _check_positive_int("model_max_length", model_max_length)
    symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = [("s", "c"), ("r", "a"), ("t", "c"), ("e", "n"), ("a", "t</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _tiny_text_encoder(tokenizer, hidden_size: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    heads = 4 if hidden_size % 4 == 0 else 1
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )
    with _private_rng():
        torch.manual_seed(seed + 2)
        model = CLIPTextModel(config)
    return model.eval()


def save_tiny_sd_inpaint(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    sample_size: int = 32,
    cross_attention_dim: int = 32,
    overwrite: bool = False,
) -> Path:
    """Write a complete tiny SD-1.5-inpainting diffusers folder and return its path.

    Contents: ``model_index.json``, ``unet/``, ``vae/``, ``scheduler/`` (from :func:`tiny_sd_inpaint_components`),
    a 2-layer ``text_encoder/`` and the offline ``tokenizer/`` (:func:`tiny_clip_tokenizer`); no safety checker
    or feature extractor. The stock pipeline loads it without network::

        StableDiffusionInpaintPipeline.from_pretrained(path, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)

    The folder is written beside ``path`` and renamed into place, so a killed call leaves no half folder.
    An existing non-empty ``path`` is an error unless ``overwrite=True``.
    """
    from diffusers import StableDiffusionInpaintPipeline

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise input_error("path", str(path), "a folder path (this is an existing file)")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise input_error("path", str(path), "an empty or new folder (pass overwrite=True to replace it)")

    parts = tiny_sd_inpaint_components(seed, sample_size, cross_attention_dim)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = _tiny_text_encoder(tokenizer, cross_attention_dim, seed)
    pipe = StableDiffusionInpaintPipeline(
        vae=parts["vae"],
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_tiny_backbone(kind: str, path: str | os.PathLike, seed: int = 0, *, image_size: int = 32) -> Path:
    """A tiny random ``CLIPVisionModel`` (``kind="clip"``) or ``Dinov2Model`` (``"dinov2"``) folder written with
    ``save_pretrained`` (config.json + model.safetensors), the layout of the real ones; returns ``path``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=image_size, patch_size=8)
    with _private_rng():
        torch.manual_seed(seed)
        if kind == "clip":
            model = CLIPVisionModel(CLIPVisionConfig(**sizes, intermediate_size=64))
        elif kind == "dinov2":
            model = Dinov2Model(Dinov2Config(**sizes, mlp_ratio=2))
        else:
            raise input_error("kind", kind, "'clip' or 'dinov2'", ConfigError)
    model.save_pretrained(Path(path))
    return Path(path)


def tiny_sd_text2img_components(seed: int = 0, sample_size: int = 16, cross_attention_dim: int = 32) -> dict:
    """A randomly initialised SD-1.5 text-to-image stack at toy size for tests: ``dict(unet=, vae=, scheduler=)``
    (4-channel ``UNet2DConditionModel`` with cross-attention, the tiny 2x ``AutoencoderKL`` of
    :func:`tiny_sd_inpaint_components`, SD's DDIM schedule); images are
    ``2 * sample_size`` pixels. Every parameter is a function of ``seed``; the global RNG is left untouched."""
    from diffusers import UNet2DConditionModel

    parts = tiny_sd_inpaint_components(seed, sample_size=sample_size, cross_attention_dim=cross_attention_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7)
        unet = UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                    layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32)
    return {"unet": unet.eval(), "vae": parts["vae"], "scheduler": parts["scheduler"]}
