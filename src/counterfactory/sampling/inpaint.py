"""The masked denoising step, in pieces: where the model works (pixels or VAE latents), the U-Net input,
classifier-free guidance, known-region re-injection, and the final paste-back.

Conventions: model-space images in [-1,1]; masks 1 = region to regenerate. The input layout follows
SD-inpainting: ``cat([noisy, mask, masked_image])`` along channels (4+1+4 = 9 in latent space, 3+1+3 = 7 in
pixel space).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ..io.images import from_model_space, to_model_space
from ..io.masks import CropWindow, paste_back


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


def denoise(unet, scheduler, space, x01: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor | None, num_inference_steps: int, guidance_scale: float, generator,
            reinject: bool = True, progress: dict | None = None) -> torch.Tensor:
    """The masked denoising loop shared by the inpainting pipelines; returns (B,3,h,w) in [0,1].

    ``x01`` (B,3,h,w) windows in [0,1] at working resolution, ``mask`` (B,1,h,w) in {0,1}; ``cond`` (B,T,D)
    cross-attention tokens and ``uncond`` (B,T,D) the null tokens (None: no classifier-free guidance).
    ``generator``: one generator (or None) for the batch, or a list with one per window (results then do
    not depend on batching). ``scheduler`` is copied, never mutated.
    """
    scheduler = copy.deepcopy(scheduler)
    x = to_model_space(x01)
    b, _, hh, ww = x.shape
    f = space.scale_factor
    shape = (b, space.channels, hh // f, ww // f)
    if isinstance(generator, list):  # one generator per window: results independent of batching
        noise = torch.cat([initial_noise((1, *shape[1:]), g, dtype=x.dtype) for g in generator])
        masked_latents = torch.cat([space.encode(masked_image(x[k : k + 1], mask[k : k + 1]), generator=g)
                                    for k, g in enumerate(generator)])
    else:
        noise = initial_noise(shape, generator, dtype=x.dtype)
        masked_latents = space.encode(masked_image(x, mask), generator=generator)
    latents = noise * scheduler.init_noise_sigma
    mask_lat = space.mask_to_space(mask)
    known = space.encode(x, sample=False) if reinject else None

    # stochastic schedulers (DDPM, DDIM with eta > 0, Euler ancestral) draw their step noise from the same
    # generator(s), so they stay reproducible; DDIM at eta 0 draws nothing
    step_kw = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    use_cfg = uncond is not None and guidance_scale != 1.0
    context = torch.cat([uncond, cond]) if use_cfg else cond
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    for k, t in enumerate(tqdm(timesteps, desc="denoising", leave=False, **(progress or {}))):
        model_in = torch.cat([latents] * 2) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        mi = torch.cat([mask_lat] * 2) if use_cfg else mask_lat
        ml = torch.cat([masked_latents] * 2) if use_cfg else masked_latents
        pred = unet(unet_input(model_in, mi, ml), t, encoder_hidden_states=context, return_dict=False)[0]
        if use_cfg:
            pu, pc = pred.chunk(2)
            pred = guided(pu, pc, guidance_scale)
        latents = scheduler.step(pred, t, latents, return_dict=False, **step_kw)[0]
        if reinject:
            nxt = timesteps[k + 1] if k + 1 < len(timesteps) else None
            latents = reinject_known(latents, known, noise, mask_lat, scheduler, nxt)
    return from_model_space(space.decode(latents))


def inpaint_windows(images: torch.Tensor, masks: torch.Tensor, jobs: Sequence[tuple[int, CropWindow, object]],
                    denoise_fn: Callable, resolution: int, crop_to_mask: bool, generator,
                    batch_size: int) -> torch.Tensor:
    """Crop-to-mask orchestration shared by the inpainting pipelines; returns a copy of ``images`` with
    every job's result pasted back inside its mask only (pixels where the mask is 0 are bit-identical).

    ``jobs``: ``(image index, window, payload)``; ``denoise_fn(x01, mask, payloads, generator)`` denoises a
    chunk of up to ``batch_size`` windows (at ``resolution`` when ``crop_to_mask``) and returns (N,3,h,w) in
    [0,1]. With one generator per image (a list), every window draws its noise from its image's generator, so
    a window's result depends on the other windows of its chunk only through kernel rounding (a Linear at batch
    1 vs 2 differs by ~1e-7 on CPU): the same call gives the same bits, and ``batch_size=1`` makes each
    window's result a function of its image, mask, payload and generator alone (callers that must reproduce
    an item outside its original batch, e.g. a resumed ``generate``, keep the batches fixed instead).
    """
    out = images.clone()
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        xs, ms = [], []
        for i, win, _ in chunk:
            x0, y0, x1, y1 = win.box
            xi = images[i : i + 1, :, y0:y1, x0:x1]
            mi = masks[i : i + 1, :, y0:y1, x0:x1]
            if crop_to_mask:
                xi, mi = to_working_resolution(xi, mi, resolution)
            xs.append(xi)
            ms.append(mi)
        gens = [generator[i] for i, _, _ in chunk] if isinstance(generator, (list, tuple)) else generator
        result = denoise_fn(torch.cat(xs), torch.cat(ms), [p for _, _, p in chunk], gens)
        for (i, win, _), patch in zip(chunk, result):
            x0, y0, x1, y1 = win.box
            if patch.shape[-2:] != (y1 - y0, x1 - x0):
                patch = F.interpolate(patch[None], size=(y1 - y0, x1 - x0), mode="bilinear", antialias=True,
                                      align_corners=False)[0].clamp(0, 1)
            out[i] = paste_back(out[i], patch, masks[i, :, y0:y1, x0:x1], win.box)
    return out
