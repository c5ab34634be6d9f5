"""Stable-Diffusion-1.5-inpainting components from a local diffusers folder.

The SD-1.5 inpainting U-Net takes 9 input channels: noisy latents (4) + VAE latents of the masked image (4) +
the mask resized to latent size (1), and predicts 4 channels. :func:`load_sd_inpaint` loads its ``unet/``,
``vae/`` and ``scheduler/`` subfolders from a local folder and freezes them. It never downloads unless the caller
passes ``allow_download=True``; weights are read as safetensors only. Tiny random models of the same
architecture, for tests, are built by :mod:`counterfactory.testing`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, _short, input_error

__all__ = [
    "SD_INPAINT_IN_CHANNELS",
    "SD_SCHEDULER_CONFIG",
    "WEIGHTS_HINT",
    "load_sd_inpaint",
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

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _one_line(text: Any, limit: int = 200) -> str:
    return _short(str(text), limit)


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
