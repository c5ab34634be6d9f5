"""The masked denoising step, in pieces: where the model works (pixels or VAE latents), the U-Net input,
classifier-free guidance, known-region re-injection, and the final paste-back.

Conventions: model-space images in [-1,1]; masks 1 = region to regenerate. The input layout follows
SD-inpainting: ``cat([noisy, mask, masked_image])`` along channels (4+1+4 = 9 in latent space, 3+1+3 = 7 in
pixel space).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor


class PixelSpace:
    """Identity 'autoencoder': the compact model denoises pixels directly."""

    scale_factor = 1
    channels = 3

    def encode(self, x: torch.Tensor, generator=None, sample: bool = True) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def mask_to_space(self, mask: torch.Tensor) -> torch.Tensor:
        return mask


class VaeSpace:
    """SD latent space through an ``AutoencoderKL``, encoded and scaled as diffusers does."""

    def __init__(self, vae):
        self.vae = vae
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = vae.config.latent_channels

    def encode(self, x: torch.Tensor, generator=None, sample: bool = True) -> torch.Tensor:
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.vae.config.scaling_factor, return_dict=False)[0]

    def mask_to_space(self, mask: torch.Tensor) -> torch.Tensor:
        h, w = mask.shape[-2:]
        # nearest, as StableDiffusionInpaintPipeline.prepare_mask_latents
        return F.interpolate(mask, size=(h // self.scale_factor, w // self.scale_factor))


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``I * (1 - M)`` for model-space images: the region to regenerate is blanked to 0 (mid-gray)."""
    return image * (mask < 0.5)


def unet_input(latents: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
    return torch.cat([latents, mask, masked_latents], dim=1)


def guided(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


def reinject_known(latents, known, noise, mask, scheduler, next_timestep) -> torch.Tensor:
    """Replace the known region (mask 0) of ``latents`` by the known content noised to ``next_timestep``
    (clean content after the last step), so the model only ever invents the masked region."""
    if next_timestep is None:
        proper = known
    else:
        proper = scheduler.add_noise(known, noise, torch.as_tensor([int(next_timestep)]))
    return (1 - mask) * proper + mask * latents


def initial_noise(shape, generator, dtype=torch.float32) -> torch.Tensor:
    return randn_tensor(shape, generator=generator, dtype=dtype)


def to_working_resolution(x: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a window (B,C,h,w) in [0,1] and its mask (B,1,h,w) to ``size``×``size``.

    Images: bilinear with antialiasing. Masks: any-coverage when shrinking (a source pixel that is masked
    stays masked, so thin cracks never vanish), nearest when enlarging.
    """
    if x.shape[-2:] == (size, size):
        return x, mask
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    if mask.shape[-1] > size or mask.shape[-2] > size:
        mask = (F.interpolate(mask, size=(size, size), mode="area") > 0).float()
    else:
        mask = (F.interpolate(mask, size=(size, size), mode="nearest") > 0.5).float()
    return x, mask
