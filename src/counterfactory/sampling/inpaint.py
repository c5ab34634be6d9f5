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

from ..errors import InputError
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


def unet_input(latents: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor,
               hint: torch.Tensor | None = None) -> torch.Tensor:
    """``cat([latents, mask, masked_latents])``, plus ``hint`` channels (a spatial reference hint) when given."""
    parts = [latents, mask, masked_latents] + ([hint] if hint is not None else [])
    return torch.cat(parts, dim=1)


def guided(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


def reinject_known(latents, known, noise, mask, scheduler, next_timestep) -> torch.Tensor:
    """Replace the known region (mask 0) of ``latents`` by the known content noised to ``next_timestep``
    (clean content after the last step), so the model only ever invents the masked region."""
    if next_timestep is None:
        proper = known
    else:
        t = torch.as_tensor(next_timestep, device=latents.device).reshape(1).long()
        proper = scheduler.add_noise(known, noise, t)
    return (1 - mask) * proper + mask * latents


def initial_noise(shape, generator, dtype=torch.float32, device=None) -> torch.Tensor:
    """Gaussian noise drawn from ``generator`` (a CPU or a device generator, as diffusers' ``randn_tensor``:
    a CPU generator draws on the CPU and the result moves to ``device``)."""
    return randn_tensor(shape, generator=generator, dtype=dtype, device=device)


def module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    """Where a model's weights live and their floating dtype (CPU float32 for a model without parameters)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The timesteps left to run when denoising starts from noise level ``strength`` (as diffusers' img2img and
    inpainting pipelines): the last ``int(num_inference_steps * strength)`` steps of the schedule. Call after
    ``scheduler.set_timesteps``; sets the scheduler's begin index where it has one. Returns (timesteps, count)."""
    init = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init, 0)
    order = getattr(scheduler, "order", 1)
    timesteps = scheduler.timesteps[t_start * order :]
    if t_start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * order)
    return timesteps, num_inference_steps - t_start


def min_steps_for_strength(strength: float) -> int:
    """Smallest ``num_inference_steps`` for which ``strength`` > 0 runs at least one denoising step."""
    n = 1
    while int(n * strength) < 1:
        n += 1
    return n


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


class NonFiniteResultError(InputError):
    """The denoised result holds NaN or inf (for example from an extreme guidance scale or a float16 overflow)."""


CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents")


def denoise(unet, scheduler, space, x01: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor | None, num_inference_steps: int, guidance_scale: float, generator,
            reinject: bool = True, progress: dict | None = None, strength: float = 1.0,
            callback_on_step_end: Callable | None = None, callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
            pipeline=None, hint: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`denoise_latents`, then decoded: (B,3,h,w) in [0,1] on the CPU, float32.

    Raises :class:`NonFiniteResultError` rather than return non-finite pixels.
    """
    latents = denoise_latents(unet, scheduler, space, x01, mask, cond, uncond, num_inference_steps, guidance_scale,
                              generator, reinject, progress, strength, callback_on_step_end,
                              callback_on_step_end_tensor_inputs, pipeline, hint)
    decoded = space.decode(latents).to(device="cpu", dtype=torch.float32) if torch.isfinite(latents).all() else None
    if decoded is None or not torch.isfinite(decoded).all():
        raise NonFiniteResultError(
            f"guidance_scale={guidance_scale}: the denoised values are not finite (NaN or inf) in "
            f"{str(latents.dtype).replace('torch.', '')}; allowed: a smaller guidance_scale (or float32); "
            "nothing was returned")
    return from_model_space(decoded)


def denoise_latents(unet, scheduler, space, x01: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
                    uncond: torch.Tensor | None, num_inference_steps: int, guidance_scale: float, generator,
                    reinject: bool = True, progress: dict | None = None, strength: float = 1.0,
                    callback_on_step_end: Callable | None = None,
                    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",), pipeline=None,
                    hint: torch.Tensor | None = None) -> torch.Tensor:
    """The masked denoising loop shared by the inpainting pipelines; returns the final latents on the U-Net's device.

    ``x01`` (B,3,h,w) windows in [0,1] at working resolution, ``mask`` (B,1,h,w) in {0,1}; ``cond`` (B,T,D)
    cross-attention tokens and ``uncond`` (B,T,D) the null tokens (None: no classifier-free guidance).
    ``generator``: one generator (or None) for the batch, or a list with one per window (results then do
    not depend on batching); CPU or device generators. Every tensor of the loop lives on the U-Net's device in
    its dtype; random draws come from the generators (a CPU generator draws on the CPU, then moves). The initial
    noise is drawn in float32 and cast, so a seed gives the same noise in every dtype.
    ``strength`` in (0, 1]: start from the input noised to that level (1 = from pure noise; at least one step
    must remain, see :func:`min_steps_for_strength`). ``callback_on_step_end(pipeline, step, t, kwargs)`` as in
    diffusers: ``kwargs`` holds the tensors named in ``callback_on_step_end_tensor_inputs`` (from
    :data:`CALLBACK_TENSOR_INPUTS`); a returned dict may replace them. ``scheduler`` is copied, never mutated.
    ``hint`` (B,K,h,w): extra input channels of the conditional branch (a spatial reference hint, e.g.
    :func:`counterfactory.models.reference.warp_hint`); the unconditional branch of the guidance gets zeros.
    """
    scheduler = copy.deepcopy(scheduler)
    device, dtype = module_device_dtype(unet)
    x = to_model_space(x01).to(device=device, dtype=dtype)
    mask = mask.to(device=device, dtype=dtype)
    cond = cond.to(device=device, dtype=dtype)
    uncond = uncond.to(device=device, dtype=dtype) if uncond is not None else None
    b, _, hh, ww = x.shape
    f = space.scale_factor
    if hint is not None:
        hint = hint.to(device=device, dtype=dtype)
        if hint.shape[-2:] != (hh // f, ww // f):
            hint = F.interpolate(hint, size=(hh // f, ww // f), mode="area")
    shape = (b, space.channels, hh // f, ww // f)
    if isinstance(generator, list):  # one generator per window: results independent of batching
        noise = torch.cat([initial_noise((1, *shape[1:]), g, device=device) for g in generator]).to(dtype)
        masked_latents = torch.cat([space.encode(masked_image(x[k : k + 1], mask[k : k + 1]), generator=g)
                                    for k, g in enumerate(generator)])
    else:
        noise = initial_noise(shape, generator, device=device).to(dtype)
        masked_latents = space.encode(masked_image(x, mask), generator=generator)
    mask_lat = space.mask_to_space(mask)
    known = space.encode(x, sample=False) if reinject or strength < 1 else None

    # stochastic schedulers (DDPM, DDIM with eta > 0, Euler ancestral) draw their step noise from the same
    # generator(s), so they stay reproducible; DDIM at eta 0 draws nothing
    step_kw = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    use_cfg = uncond is not None and guidance_scale != 1.0
    if "device" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(num_inference_steps, device=device)
    else:  # pragma: no cover - every diffusers sampling scheduler takes a device
        scheduler.set_timesteps(num_inference_steps)
    if strength >= 1:
        timesteps = scheduler.timesteps
        latents = noise * scheduler.init_noise_sigma
    else:  # paste-and-refine: the input itself, noised to the first remaining timestep
        timesteps, _ = strength_timesteps(scheduler, num_inference_steps, strength)
        latents = scheduler.add_noise(known, noise, timesteps[:1])
    tensors = {"mask": mask_lat, "masked_image_latents": masked_latents, "prompt_embeds": cond,
               "negative_prompt_embeds": uncond}
    for k, t in enumerate(tqdm(timesteps, desc="denoising", leave=False, **(progress or {}))):
        context = torch.cat([tensors["negative_prompt_embeds"], tensors["prompt_embeds"]]) if use_cfg else tensors["prompt_embeds"]
        model_in = torch.cat([latents] * 2) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        mi = torch.cat([tensors["mask"]] * 2) if use_cfg else tensors["mask"]
        ml = torch.cat([tensors["masked_image_latents"]] * 2) if use_cfg else tensors["masked_image_latents"]
        hi = (torch.cat([torch.zeros_like(hint), hint]) if use_cfg else hint) if hint is not None else None
        pred = unet(unet_input(model_in, mi, ml, hi), t, encoder_hidden_states=context, return_dict=False)[0]
        if use_cfg:
            pu, pc = pred.chunk(2)
            pred = guided(pu, pc, guidance_scale)
        latents = scheduler.step(pred, t, latents, return_dict=False, **step_kw)[0]
        if reinject:
            nxt = timesteps[k + 1] if k + 1 < len(timesteps) else None
            latents = reinject_known(latents, known, noise, mask_lat, scheduler, nxt)
        if callback_on_step_end is not None:
            local = {"latents": latents, **tensors}
            outputs = callback_on_step_end(pipeline, k, t, {n: local[n] for n in callback_on_step_end_tensor_inputs}) or {}
            latents = outputs.pop("latents", latents)
            for n in list(tensors):
                tensors[n] = outputs.pop(n, tensors[n])
    return latents


def _next_chunk(jobs, start: int, batch_size: int) -> list:
    """Up to ``batch_size`` jobs from ``start``, ending before a job whose window overlaps an earlier window of the
    same image in the chunk (tiles of one region are denoised one after the other)."""
    chunk: list = []
    for job in jobs[start : start + batch_size]:
        if any(i == job[0] and win.overlaps(job[1]) for i, win, _ in chunk):
            break
        chunk.append(job)
    return chunk


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
    # round-robin over images (each image's windows keep their order), so tiles of one region, which must be
    # denoised one after the other, share their chunks with other images' tiles instead of running one by one
    seen: dict[int, int] = {}
    ranked = []
    for k, job in enumerate(jobs):
        ranked.append((seen.get(job[0], 0), k))
        seen[job[0]] = ranked[-1][0] + 1
    jobs = [jobs[k] for _, k in sorted(ranked)]
    start = 0
    while start < len(jobs):
        chunk = _next_chunk(jobs, start, batch_size)
        start += len(chunk)
        xs, ms = [], []
        for i, win, _ in chunk:
            x0, y0, x1, y1 = win.box
            xi = out[i : i + 1, :, y0:y1, x0:x1]  # tiles see the tiles painted before them
            mi = win.paint_mask(masks[i : i + 1])
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
            out[i] = paste_back(out[i], patch, win.paint_mask(masks[i]), win.box)
    return out
