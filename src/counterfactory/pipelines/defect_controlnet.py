"""Mask-conditioned defect synthesis with a ControlNet: the soft structural constraint, beside inpainting.

A ControlNet (a trainable copy of the base U-Net's encoder) reads the defect mask and steers the frozen base at
every resolution; the damage-type embedding takes the place of text. Unlike :class:`DefectInpaintPipeline`,
the whole image (or window) is generated, so pixels outside the mask are influenced, not frozen.

Two configurations:

- **SD-1.5**: a text-to-image ``UNet2DConditionModel`` + VAE from a local diffusers folder and a diffusers
  ``ControlNetModel`` trained with ``counterfactory train-controlnet --base-kind sd`` (the stock
  ``StableDiffusionControlNetPipeline`` loads the same ControlNet and gives the same image with ``prompt_embeds``);
- **compact**: ``ControlNetModel.from_unet`` on a compact base: a full-image base (``train-base --layout full``,
  3 input channels: the noisy image only), or the shipped *inpainting* base, which for generation is given an
  all-blank masked image and a full mask (nothing known). With ``paste_back`` both get the known region re-injected
  at every step; the inpainting base also reads it through its masked-image input.

Modes: ``image=None`` generates a whole image from noise for a mask; an image with ``strength`` < 1 is img2img
(starts from the image noised to that level, keeping its geometry approximately); ``paste_back=True`` keeps every
pixel outside the mask dilated by ``paste_back_dilation`` bit-identical (the hard constraint after all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..data.sample import GOOD
from ..errors import input_error
from ..io.images import add_grain, convert_output
from ..io.masks import CropWindow, dilate, group_windows
from ..models.conditioning import DamageTypeEmbedding
from ..models.controlnet import (
    ControlledUNet,
    base_weights_file,
    check_controlnet_fits,
    load_controlnet_folder,
    mask_to_control,
)
from ..sampling.inpaint import denoise, inpaint_windows, to_working_resolution
from . import MAX_DILATION, PASTE_BACK_DILATION
from .base import MaskedInpaintPipeline, check_int, check_number

OutputType = Literal["pt", "np", "pil"]


@dataclass
class DefectControlNetOutput(BaseOutput):
    """``images``: the results (the mask's size); ``bypassed[i]`` is True for ``good`` samples and empty masks,
    returned unchanged; ``windows[i]``: the windows generated for image i (source pixel boxes)."""

    images: torch.Tensor | np.ndarray | list
    bypassed: list[bool]
    windows: list[list[tuple[int, int, int, int]]]


class DefectControlNetPipeline(MaskedInpaintPipeline):
    """Generate a damage type where a mask says, through a ControlNet conditioned on the mask.

    Args:
        unet: the frozen base ``UNet2DConditionModel`` (SD text-to-image with 4 input channels, the compact
            full-image base with 3, or the compact 7-channel inpainting base).
        controlnet: a diffusers ``ControlNetModel`` built on ``unet`` (``ControlNetModel.from_unet``), conditioning
            image = the mask as 3 channels.
        scheduler: a diffusers sampling scheduler.
        type_embedding: the :class:`DamageTypeEmbedding` trained with the ControlNet (tokens in place of text).
        vae: an ``AutoencoderKL`` for SD; None for the pixel-space compact base.
        resolution: working resolution in pixels (windows are resized to it).
        conditioning_scale: multiplier of the ControlNet's residuals (diffusers' ``controlnet_conditioning_scale``).
    """

    _conditioning_modules = ("type_embedding", "controlnet")

    def __init__(self, unet, controlnet, scheduler, type_embedding: DamageTypeEmbedding, vae=None,
                 resolution: int | None = None, info: dict | None = None, conditioning_scale: float = 1.0):
        if type_embedding is None:
            raise input_error("type_embedding", None, "the damage-type embedding trained with the ControlNet")
        check_number("conditioning_scale", conditioning_scale, 0, 10, "a number in [0, 10] (1 = as trained)")
        super().__init__(unet, scheduler, vae=vae, resolution=resolution, info=info)
        self.controlnet = controlnet.eval()
        self.type_embedding = type_embedding.eval()
        self.model = ControlledUNet(self.unet, self.controlnet, conditioning_scale)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_compact(cls, base: str | Path | None = None, controlnet: str | Path | None = None, scheduler=None,
                     resolution: int | None = None) -> DefectControlNetPipeline:
        """The compact base from ``base`` (default: the shipped weights) + a ControlNet folder."""
        from ..models.compact import DEFAULT_WEIGHTS_DIR, load_compact, make_schedulers

        if controlnet is None:
            raise input_error("controlnet", None, "a ControlNet folder (train one with `counterfactory train-controlnet`)")
        model = load_compact(base)
        net, emb, cfg = load_controlnet_folder(controlnet, "compact", base_weights_file(base, "compact"))
        check_controlnet_fits(net, model.unet, controlnet, base or "weights/")
        info = {"base_kind": "compact", "base": str(base or "weights/"), "base_dir": str(base or DEFAULT_WEIGHTS_DIR),
                "adapter": str(controlnet), "adapter_config": cfg}
        return cls(model.unet, net, scheduler or make_schedulers(model.config)[1], emb,
                   resolution=resolution or model.config.sample_size, info=info)

    @classmethod
    def from_sd(cls, base: str | Path, controlnet: str | Path | None, scheduler=None,
                resolution: int | None = None) -> DefectControlNetPipeline:
        """SD-1.5 from a local diffusers folder (``unet/``, ``vae/``) + a ControlNet folder."""
        from ..models.controlnet import load_sd_base

        if controlnet is None:
            raise input_error("controlnet", None, "a ControlNet folder (train one with `counterfactory train-controlnet`)")
        parts = load_sd_base(base)
        net, emb, cfg = load_controlnet_folder(controlnet, "sd", base_weights_file(base, "sd"))
        check_controlnet_fits(net, parts["unet"], controlnet, base)
        return cls(parts["unet"], net, scheduler or parts["scheduler"], emb, vae=parts["vae"], resolution=resolution,
                   info={"base_kind": "sd", "base": str(base), "base_dir": str(base), "adapter": str(controlnet),
                         "adapter_config": cfg})

    @classmethod
    def _load(cls, kind, base, adapter, *, scheduler, allow_download, resolution, **kwargs):
        if kwargs:
            raise input_error("from_pretrained", sorted(kwargs), "no further keyword arguments for DefectControlNetPipeline")
        if kind == "compact":
            return cls.from_compact(base, adapter, scheduler=scheduler, resolution=resolution)
        return cls.from_sd(base, adapter, scheduler=scheduler, resolution=resolution)

    @property
    def defect_types(self) -> tuple[str, ...]:
        return self.type_embedding.type_names

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, image, mask_image, defect_type, num_inference_steps=25, guidance_scale=2.0,
                     output_type="pt", crop_margin=0.5, mask_threshold=0.5, crop_to_mask=False, batch_size=16,
                     generator=None, strength=1.0, paste_back=False, paste_back_dilation=PASTE_BACK_DILATION,
                     grain_transfer=0.0, callback_on_step_end=None, callback_on_step_end_tensor_inputs=None) -> None:
        """Validate every argument of :meth:`__call__`; raises :class:`~counterfactory.errors.InputError` naming the
        first bad one. Converts nothing and keeps no state."""
        if mask_image is None:
            raise input_error("mask_image", None, "a mask (tensor, PIL image or list): where the defect goes")
        self.check_common(num_inference_steps, guidance_scale, output_type, crop_margin, mask_threshold, batch_size,
                          strength, callback_on_step_end, callback_on_step_end_tensor_inputs)
        check_number("grain_transfer", grain_transfer, 0, 2, "a number in [0, 2]")
        check_int("paste_back_dilation", paste_back_dilation, 0, f"an integer in [0, {MAX_DILATION}] (pixels)")
        if paste_back_dilation > MAX_DILATION:
            raise input_error("paste_back_dilation", paste_back_dilation, f"an integer in [0, {MAX_DILATION}] (pixels)")
        for name, flag in (("paste_back", paste_back), ("crop_to_mask", crop_to_mask)):
            if not isinstance(flag, bool):
                raise input_error(name, flag, "True or False")
        masks = self._masks(image, mask_image, mask_threshold)
        b = masks.shape[0]
        types = self._types(defect_type, b)
        if image is None:
            if grain_transfer:
                raise input_error("grain_transfer", grain_transfer, "0 when image is None (there is no image grain to transfer)")
            if float(strength) != 1.0:
                raise input_error("strength", strength, "1 when image is None (generation from noise); pass an image for img2img")
            if paste_back:
                raise input_error("paste_back", paste_back, "False when image is None (there is nothing to paste onto)")
            if crop_to_mask:
                raise input_error("crop_to_mask", crop_to_mask, "False when image is None (the whole image is generated)")
            if GOOD in types:
                raise input_error("defect_type", GOOD, "a defect type when image is None ('good' returns an input image)")
        self.check_generator(generator, b)
        for i, t in enumerate(types):
            if t == GOOD:
                continue
            self.type_embedding.index(t)  # raises for unknown types, naming the known ones
            if image is None and float(masks[i].sum()) == 0:
                raise input_error(f"mask_image[{i}]", "empty",
                                  "a non-empty mask when image is None (an empty mask returns an input image unchanged)")

    def _masks(self, image, mask_image, mask_threshold) -> torch.Tensor:
        if image is None:
            from ..io.images import as_batch

            masks = as_batch(mask_image, mode="L", name="mask_image")
            masks = masks.mean(dim=1, keepdim=True) if masks.shape[1] != 1 else masks
            self.check_image_size(masks, "mask_image")
            return self.prepare_masks(masks, masks.shape[0], tuple(masks.shape[-2:]), mask_threshold)
        images = self.prepare_images(image)
        self.check_image_size(images)
        return self.prepare_masks(mask_image, images.shape[0], tuple(images.shape[-2:]), mask_threshold)

    @staticmethod
    def _types(defect_type, b: int) -> list:
        types = [defect_type] * b if isinstance(defect_type, str) else defect_type
        if not isinstance(types, (list, tuple)) or len(types) != b or not all(isinstance(t, str) for t in types):
            raise input_error("defect_type", defect_type, f"a damage type name or a list of {b} names")
        return list(types)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image=None,
        mask_image=None,
        defect_type: str | list[str] = "",
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: OutputType = "pt",
        strength: float = 1.0,
        paste_back: bool = False,
        paste_back_dilation: int = PASTE_BACK_DILATION,
        crop_to_mask: bool = False,
        crop_margin: float = 0.5,
        mask_threshold: float = 0.5,
        batch_size: int = 16,
        grain_transfer: float = 0.0,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ) -> DefectControlNetOutput:
        """Generate ``defect_type`` where ``mask_image`` says.

        Args:
            image: None (generate whole images from noise, of the mask's size), or defect-free images: (B,3,H,W) /
                (3,H,W) float in [0,1], PIL or a list (gray expanded to RGB).
            mask_image: (B,1,H,W) / PIL / list; 1 (white) = where the defect goes; the ControlNet's conditioning.
                Same size as ``image``. An empty mask returns its image unchanged (``bypassed``), as ``good`` does.
            defect_type: one name or one per image; ``"good"`` returns that image unchanged.
            num_inference_steps: denoising steps of ``self.scheduler``.
            guidance_scale: classifier-free guidance against the learned null type tokens (the ControlNet steers
                both branches, as in diffusers); 1 disables it.
            generator: a ``torch.Generator`` or one per image; same seed → bit-identical output on CPU.
            output_type: ``"pt"`` (B,3,H,W) in [0,1], ``"np"`` (B,H,W,3) uint8, ``"pil"`` list.
            strength: with an image, img2img: start from the image noised to this level and run the last
                ``int(num_inference_steps * strength)`` steps; 1 ignores the image's content (but keeps its size;
                with ``paste_back``, its pixels outside the band), 0 returns it unchanged. Must be 1 without image.
            paste_back: keep every pixel outside the mask dilated by ``paste_back_dilation`` bit-identical (the
                known region is also re-injected while denoising, so the band blends in).
            crop_to_mask: False (default): the whole image is one window, resized to the working resolution and
                back. True: a context window around each mask component (for images much larger than the
                working resolution); without ``paste_back`` the whole window is rewritten.
            crop_margin: context around a component's box, as a fraction of its larger side (``crop_to_mask``).
            mask_threshold: binarization threshold of the mask.
            batch_size: windows denoised together.
            grain_transfer: add this much of the input image's own high-frequency grain inside the mask (as in
                :class:`DefectInpaintPipeline`); 0 (default) keeps the model's output as is.
            callback_on_step_end / callback_on_step_end_tensor_inputs: as in diffusers (``latents`` by default).
            return_dict: False returns ``(images, bypassed, windows)``.
        """
        self.check_inputs(image, mask_image, defect_type, num_inference_steps, guidance_scale, output_type, crop_margin,
                          mask_threshold, crop_to_mask, batch_size, generator, strength, paste_back,
                          paste_back_dilation, grain_transfer, callback_on_step_end, callback_on_step_end_tensor_inputs)
        masks = self._masks(image, mask_image, mask_threshold)
        b, (h, w) = masks.shape[0], masks.shape[-2:]
        images = self.prepare_images(image) if image is not None else torch.full((b, 3, h, w), 0.5)
        types = self._types(defect_type, b)
        bypassed = [t == GOOD or float(masks[i].sum()) == 0 for i, t in enumerate(types)]
        write = dilate(masks, paste_back_dilation).clamp(0, 1) if paste_back else torch.ones_like(masks)
        jobs, windows_per_image = [], [[] for _ in range(b)]
        for i, t in enumerate(types):
            if bypassed[i]:
                continue
            wins = (group_windows(masks[i, 0].numpy(), (h, w), crop_margin, min_size=min(self.resolution, max(h, w)))
                    if crop_to_mask else [CropWindow((0, 0, w, h))])
            for win in wins:
                x0, y0, x1, y1 = win.box
                jobs.append((i, win, (t, masks[i : i + 1, :, y0:y1, x0:x1])))
                windows_per_image[i].append(win.box)

        if float(strength) == 0.0 or not jobs:
            out = images.clone()
        else:
            inputs = list(callback_on_step_end_tensor_inputs or ["latents"])

            def denoise_fn(x, m, payloads, gens):
                size = x.shape[-1]
                control = torch.cat([to_working_resolution(c, c, size)[1] for _, c in payloads])
                self.model.control = mask_to_control(control)
                cond, uncond = self.encode_conditioning([t for t, _ in payloads])
                region = m if paste_back else torch.ones_like(m)
                try:
                    return denoise(self.model, self.scheduler, self.space, x, region, cond, uncond,
                                   num_inference_steps, guidance_scale, gens, paste_back, self._progress,
                                   strength=float(strength), callback_on_step_end=callback_on_step_end,
                                   callback_on_step_end_tensor_inputs=inputs, pipeline=self)
                finally:
                    self.model.control = None

            out = inpaint_windows(images, write, jobs, denoise_fn, self.resolution, True, generator, batch_size)
            if grain_transfer:
                painted = (masks > 0.5) & ~torch.tensor(bypassed).view(-1, 1, 1, 1)
                out = add_grain(out, images, painted, grain_transfer)
        result = convert_output(out, output_type)
        if not return_dict:
            return result, bypassed, windows_per_image
        return DefectControlNetOutput(images=result, bypassed=bypassed, windows=windows_per_image)

    def encode_conditioning(self, payloads: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Damage-type tokens (the payloads are type names) and the learned null tokens."""
        idx = self.type_embedding.index(payloads).to(self.type_embedding.embeddings.device)
        return self.type_embedding(idx), self.type_embedding.null_tokens(len(payloads))


__all__ = ["DefectControlNetPipeline", "DefectControlNetOutput"]
