"""Stable-Diffusion-1.5-inpainting components: the real ones from a local diffusers folder, tiny ones built in code.

The SD-1.5 inpainting U-Net takes 9 input channels: noisy latents (4) + VAE latents of the masked image (4) +
the mask resized to latent size (1), and predicts 4 channels. :func:`load_sd_inpaint` loads its ``unet/``,
``vae/`` and ``scheduler/`` subfolders from a local folder and freezes them. It never downloads unless the caller
passes ``allow_download=True``; weights are read as safetensors only.

No weights can be downloaded in the test environment, so the SD code paths are exercised on tiny randomly
initialised models of the same architecture: :func:`tiny_sd_inpaint_components` (in memory) and
:func:`save_tiny_sd_inpaint` (a complete diffusers folder, tiny CLIP text encoder and tokenizer included, that
the stock ``StableDiffusionInpaintPipeline.from_pretrained`` loads offline).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, _short, input_error

__all__ = [
    "SD_INPAINT_IN_CHANNELS",
    "SD_SCHEDULER_CONFIG",
    "WEIGHTS_HINT",
    "load_sd_inpaint",
    "save_tiny_sd_inpaint",
    "tiny_clip_tokenizer",
    "tiny_sd_inpaint_components",
]

#: noisy latents (4) + masked-image latents (4) + mask (1)
SD_INPAINT_IN_CHANNELS = 9

#: The noise schedule SD-1.x was trained with (its ``scheduler/scheduler_config.json``), as a DDIM config.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

#: Where the real weights come from; ends every "weights not found" message.
WEIGHTS_HINT = (
    "download runwayml/stable-diffusion-inpainting (or stable-diffusion-v1-5/stable-diffusion-inpainting) "
    "with `hf download stable-diffusion-v1-5/stable-diffusion-inpainting --local-dir DIR` "
    "(older huggingface_hub: `huggingface-cli download ... --local-dir DIR`) on a machine with access, "
    "then pass --base DIR"
)

_TOKENIZER_MAX_LENGTH = 16  # = the tiny text encoder's max_position_embeddings
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _one_line(text: Any, limit: int = 200) -> str:
    return _short(str(text), limit)


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


def _listing(folder: Path, limit: int = 8) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "unreadable"
    if not names:
        return "nothing (empty folder)"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _resolve_source(path_or_id: Any, allow_download: bool) -> tuple[str, bool]:
    """Return (source for from_pretrained, is_local_folder); raise CheckpointError when nothing usable."""
    if not isinstance(path_or_id, (str, os.PathLike)) or not str(path_or_id).strip():
        raise input_error("path_or_id", path_or_id, "a local diffusers folder or a hub id such as owner/name")
    text = os.fspath(path_or_id)
    folder = Path(text).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise CheckpointError(
                f"SD inpainting weights: {folder} is a file, expected a diffusers folder with unet/ and vae/; "
                + WEIGHTS_HINT
            )
        missing = [sub for sub in ("unet", "vae") if not (folder / sub / "config.json").is_file()]
        if missing:
            raise CheckpointError(
                f"SD inpainting weights: {folder} has no {' or '.join(m + '/config.json' for m in missing)} "
                f"(found: {_listing(folder)}); " + WEIGHTS_HINT
            )
        return str(folder), True
    if _HUB_ID.match(text):
        return text, False
    raise CheckpointError(f"SD inpainting weights: no folder {folder}; " + WEIGHTS_HINT)


def load_sd_inpaint(
    path_or_id: str | os.PathLike,
    *,
    allow_download: bool = False,
    torch_dtype: torch.dtype = torch.float32,
    variant: str | None = None,
) -> dict[str, Any]:
    """Load a frozen SD-1.5-inpainting ``dict(unet=, vae=, scheduler=)``.

    Args:
        path_or_id: a local diffusers folder (with ``unet/`` and ``vae/``; ``scheduler/`` optional), or a hub
            id. A hub id is looked up in the local Hugging Face cache only, unless ``allow_download=True``:
            nothing is ever downloaded silently.
        allow_download: let diffusers fetch a hub id that is not cached (needs network).
        torch_dtype: floating dtype of the loaded weights.
        variant: weights variant, e.g. ``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors``.

    The U-Net must have 9 input channels (the inpainting one) and the VAE ``(in_channels - 1) / 2`` latent
    channels. Weights are read from safetensors only. ``scheduler`` is a ``DDIMScheduler`` built from the
    folder's scheduler config (SD-1.5's schedule when the folder has none); ``unet`` and ``vae`` come back in
    ``eval()`` mode with ``requires_grad=False``.

    Raises:
        CheckpointError: a missing folder / subfolder / weights file, a UNet that is not 9-channel, a VAE of
            the wrong latent width; one line that says what was found and where to get the weights.
        InputError: a bad argument value (e.g. a non-floating ``torch_dtype``).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise input_error("torch_dtype", torch_dtype, "a floating torch.dtype such as torch.float32")
    if not isinstance(allow_download, bool):
        raise input_error("allow_download", allow_download, "True or False")
    source, local = _resolve_source(path_or_id, allow_download)
    where = source if local else f"hub id {source}"
    common: dict[str, Any] = {"local_files_only": not allow_download}

    def fail(what: str, exc: BaseException | None = None) -> CheckpointError:
        detail = f" ({type(exc).__name__}: {_one_line(exc)})" if exc is not None else ""
        return CheckpointError(f"SD inpainting weights: {what} at {where}{detail}; " + WEIGHTS_HINT)

    try:
        with (
            warnings.catch_warnings()
        ):  # diffusers passes huggingface_hub a deprecated argument on hub lookups
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", **common)
            vae_config = AutoencoderKL.load_config(source, subfolder="vae", **common)
    except Exception as exc:  # hub/cache lookups raise several OSError/ValueError subclasses
        if not local and not allow_download:
            raise CheckpointError(
                f"SD inpainting weights: {source} is neither a local folder nor a hub id in the local "
                "Hugging Face cache, and allow_download=False; " + WEIGHTS_HINT
            ) from exc
        raise fail("cannot read unet/ and vae/ configs", exc) from exc

    in_channels = unet_config.get("in_channels")
    if in_channels != SD_INPAINT_IN_CHANNELS:
        raise CheckpointError(
            f"SD inpainting weights: the UNet at {where}/unet has in_channels={in_channels} "
            f"({unet_config.get('_class_name', 'unknown class')}); the inpainting UNet has 9 "
            "(4 noisy + 4 masked-image latents + 1 mask) - a text-to-image checkpoint will not do; "
            + WEIGHTS_HINT
        )
    latent = vae_config.get("latent_channels")
    if latent != (SD_INPAINT_IN_CHANNELS - 1) // 2 or unet_config.get("out_channels") != latent:
        raise CheckpointError(
            f"SD inpainting weights: the VAE at {where}/vae has latent_channels={latent} and the UNet "
            f"out_channels={unet_config.get('out_channels')}; both must be 4; " + WEIGHTS_HINT
        )

    load_kwargs = dict(common, torch_dtype=torch_dtype, use_safetensors=True, variant=variant)
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **load_kwargs)
    except Exception as exc:
        raise fail("cannot load unet/ safetensors weights", exc) from exc
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **load_kwargs)
    except Exception as exc:
        raise fail("cannot load vae/ safetensors weights", exc) from exc

    try:
        scheduler_config = DDIMScheduler.load_config(source, subfolder="scheduler", **common)
        scheduler = DDIMScheduler.from_config(scheduler_config)
    except Exception:  # no scheduler/ subfolder: SD-1.x's own schedule
        scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)

    for module in (unet, vae):
        module.requires_grad_(False)
        module.eval()
    return {"unet": unet, "vae": vae, "scheduler": scheduler}
