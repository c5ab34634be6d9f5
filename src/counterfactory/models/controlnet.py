"""ControlNet on segmentation masks: a trainable copy of the base U-Net's encoder reads the defect mask and adds
feature offsets to the frozen base at every resolution (diffusers ``ControlNetModel``).

- :func:`build_controlnet`: ``ControlNetModel.from_unet`` on a base U-Net (SD-1.5 or the compact base), with a
  conditioning-image encoder that maps the pixel-size mask to the base's latent size (8x down for SD's VAE, none
  for the pixel-space compact model). Its zero convolutions make a fresh ControlNet leave the base unchanged.
- :class:`ControlledUNet`: base U-Net + ControlNet as one callable with the U-Net's signature, so the shared
  denoising loop and the training losses drive it unchanged. Each model reads the leading input channels it was
  built for (4 latents for SD text-to-image; 3 pixels for the compact full-image base; the 7-channel inpainting
  layout for the compact inpainting base).
- a ControlNet folder: the diffusers ControlNet files (``config.json``, ``diffusion_pytorch_model.safetensors``,
  loadable by ``ControlNetModel.from_pretrained`` and the stock ``StableDiffusionControlNetPipeline``), the
  damage-type embeddings, and ``controlnet_config.json`` (written last) naming the base it was trained on.
- :func:`load_sd_base`: the frozen SD-1.5 U-Net, VAE and scheduler from a local diffusers folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io.manifest import atomic_write_json, check_trained_on
from .conditioning import DamageTypeEmbedding

CONTROLNET_CONFIG = "controlnet_config.json"
CONTROLNET_FORMAT = "counterfactory.controlnet.v1"
CONDITIONING_CHANNELS = 3  # the mask, repeated to RGB: what StableDiffusionControlNetPipeline feeds a ControlNet


def conditioning_embedding_channels(scale_factor: int) -> tuple[int, ...]:
    """Widths of the mask encoder: one stride-2 stage per factor of 2 between pixels and latents
    (diffusers' default (16, 32, 96, 256) for SD's 8x VAE; a single stage for pixel space)."""
    n = int(round(math.log2(max(1, int(scale_factor))))) + 1
    widths = (16, 32, 96, 256)
    return widths[:n] if n <= len(widths) else widths + tuple(256 for _ in range(n - len(widths)))


MASK_ENCODER_INITS = ("zero", "random")


def build_controlnet(unet, scale_factor: int, seed: int = 0, mask_encoder_init: str = "zero"):
    """A ControlNet initialised from ``unet`` (encoder weights copied, zero convolutions zero; deterministic by seed).

    ``mask_encoder_init``: ``"zero"`` (default) keeps diffusers' initialisation; ``"random"`` gives the mask
    encoder's last convolution PyTorch's default initialisation instead, so the mask reaches the ControlNet's
    features from the first step (with both it and the zero convolutions at zero, neither gets a gradient through
    the other until the other moves); not yet shown to train faster. Either way the zero convolutions make a fresh ControlNet
    leave the base unchanged.
    """
    from diffusers import ControlNetModel

    if mask_encoder_init not in MASK_ENCODER_INITS:
        raise ConfigError(f"mask_encoder_init={mask_encoder_init!r}: one of {MASK_ENCODER_INITS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(unet, conditioning_channels=CONDITIONING_CHANNELS,
                                        conditioning_embedding_out_channels=conditioning_embedding_channels(scale_factor))
        if mask_encoder_init == "random":
            net.controlnet_cond_embedding.conv_out.reset_parameters()
    return net


def mask_to_control(mask: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) mask in {0,1} → the ControlNet conditioning image (B,3,H,W) in [0,1] (white = defect)."""
    return mask.expand(-1, CONDITIONING_CHANNELS, -1, -1)


class ControlledUNet(nn.Module):
    """The base U-Net steered by a ControlNet, with the U-Net's call signature.

    Set :attr:`control` (B,3,H,W) in [0,1] (pixel size) before calling; a model batch that is a multiple of B
    (classifier-free guidance doubles it) reuses the same control for every copy, as diffusers does.
    """

    def __init__(self, unet, controlnet, conditioning_scale: float = 1.0):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.conditioning_scale = float(conditioning_scale)
        self.control: torch.Tensor | None = None

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample, timestep, encoder_hidden_states, return_dict: bool = False, **kwargs):
        control = self.control
        if control is None:
            raise RuntimeError("ControlledUNet.control is not set")  # internal: every caller sets it
        rep = sample.shape[0] // control.shape[0]
        control = control.to(device=sample.device, dtype=sample.dtype)
        if rep > 1:
            control = torch.cat([control] * rep)
        down, mid = self.controlnet(sample[:, : self.controlnet.config.in_channels], timestep,
                                    encoder_hidden_states=encoder_hidden_states, controlnet_cond=control,
                                    conditioning_scale=self.conditioning_scale, return_dict=False)
        out = self.unet(sample[:, : self.unet.config.in_channels], timestep, encoder_hidden_states=encoder_hidden_states,
                        down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)
        return out if not return_dict else {"sample": out[0]}


# ---------------------------------------------------------------------- bases
def base_weights_file(base, kind: str) -> Path | None:
    """The file whose sha256 identifies a base: the compact weights, or the SD U-Net's safetensors."""
    if kind == "compact":
        from .compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE

        return Path(base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE
    files = sorted((Path(base) / "unet").glob("*.safetensors"))
    return files[0] if files else None


def load_sd_base(folder) -> dict:
    """Frozen SD-1.5 ``dict(unet=, vae=, scheduler=)`` from a local diffusers folder (``unet/``, ``vae/``, optional
    ``scheduler/``); safetensors only, never downloads. The U-Net may be text-to-image (4 channels, what SD
    ControlNets steer) or inpainting (9 channels)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from .pretrained import SD_SCHEDULER_CONFIG, WEIGHTS_HINT

    folder = Path(folder)
    if not (folder / "unet").is_dir() or not (folder / "vae").is_dir():
        raise CheckpointError(f"SD base: {folder} has no unet/ and vae/ subfolders (a local diffusers SD-1.5 folder, e.g. "
                              "stable-diffusion-v1-5/stable-diffusion-v1-5 downloaded with `hf download ... --local-dir DIR`)")
    kw = {"local_files_only": True, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
    except Exception as exc:  # diffusers raises OSError / ValueError / EnvironmentError variants
        raise CheckpointError(f"SD base at {folder}: cannot load unet/ and vae/ safetensors weights "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); {WEIGHTS_HINT}") from None
    if unet.config.in_channels not in (vae.config.latent_channels, 2 * vae.config.latent_channels + 1):
        raise CheckpointError(f"SD base at {folder}: a U-Net with in_channels={unet.config.in_channels}; expected "
                              f"{vae.config.latent_channels} (text-to-image) or {2 * vae.config.latent_channels + 1} (inpainting)")
    try:
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder, subfolder="scheduler", local_files_only=True))
    except Exception:  # no scheduler/ subfolder: SD-1.x's own schedule
        scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    for m in (unet, vae):
        m.eval().requires_grad_(False)
    return {"unet": unet, "vae": vae, "scheduler": scheduler}


# ---------------------------------------------------------------------- ControlNet folders
def save_controlnet_folder(out, controlnet, type_embedding: DamageTypeEmbedding, meta: dict) -> Path:
    """Write a ControlNet folder; ``controlnet_config.json`` is written last, so its presence marks a complete one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    controlnet.save_pretrained(out, safe_serialization=True)
    type_embedding.save(out)
    atomic_write_json(out / CONTROLNET_CONFIG, {"format": CONTROLNET_FORMAT, **meta})
    return out


def load_controlnet_folder(folder, expected_kind: str, base_file: Path | None):
    """(ControlNetModel, DamageTypeEmbedding, config) from a folder :func:`save_controlnet_folder` wrote; refuses one
    trained on another kind of base or on another base (naming both sha256)."""
    from diffusers import ControlNetModel

    folder = Path(folder)
    cfg_file = folder / CONTROLNET_CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(f"ControlNet not found: {cfg_file} is missing "
                              "(train one with `counterfactory train-controlnet --data DATASET --out DIR`)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{cfg_file}: unreadable ({exc})") from None
    if cfg.get("format") != CONTROLNET_FORMAT:
        raise CheckpointError(f"{cfg_file}: format {cfg.get('format')!r}, not {CONTROLNET_FORMAT!r}")
    if cfg.get("base_kind") != expected_kind:
        raise CheckpointError(f"ControlNet {folder} was trained on a {cfg.get('base_kind')!r} base, not a {expected_kind!r} one")
    check_trained_on(cfg.get("base_sha256"), base_file, "ControlNet", folder)
    try:
        net = ControlNetModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"ControlNet {folder}: cannot load its safetensors weights "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    emb = DamageTypeEmbedding.load(folder)
    net.eval().requires_grad_(False)
    return net, emb, cfg


def check_controlnet_fits(controlnet, unet, folder, base) -> None:
    """CheckpointError when a ControlNet reads another input layout than the base U-Net's (e.g. one trained on a
    full-image base, given an inpainting base): caught even when the folder records no base hash."""
    have, need = controlnet.config.in_channels, unet.config.in_channels
    if have != need:
        raise CheckpointError(f"ControlNet {folder} reads {have} input channels but the base {base} takes {need} "
                              "(another layout: full image vs inpainting): pass the base it was trained on")


__all__ = ["ControlledUNet", "check_controlnet_fits", "build_controlnet", "conditioning_embedding_channels", "mask_to_control",
           "base_weights_file", "load_sd_base", "save_controlnet_folder", "load_controlnet_folder",
           "CONTROLNET_CONFIG", "CONTROLNET_FORMAT", "MASK_ENCODER_INITS"]
