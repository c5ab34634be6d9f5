"""Mask-guided defect synthesis: paint a damage type into a masked region, leave every other pixel bit-identical.

One pipeline, two configurations:

- **compact** (the embedded default): the project's pixel-space 7-channel U-Net from ``weights/`` plus an
  adapter (LoRA + damage-type embeddings) trained with ``counterfactory train-adapter``;
- **SD-1.5-inpainting**: a 9-channel latent U-Net + VAE from a local diffusers folder plus an adapter of the
  same format (``pytorch_lora_weights.safetensors`` is the diffusers LoRA format).

Images larger than the working resolution are handled by *crop-to-mask*: a square context window around each
mask component is inpainted at working resolution and pasted back inside the mask only, so the cost depends
on the defect, not the image size.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..data.sample import GOOD
from ..errors import CheckpointError, input_error
from ..io.images import add_grain, convert_output
from ..io.masks import CropWindow, tile_windows
from ..models.conditioning import DamageTypeEmbedding
from .base import MaskedInpaintPipeline, check_base_hash, check_number

ADAPTER_CONFIG = "adapter_config.json"
OutputType = Literal["pt", "np", "pil"]


@dataclass
class DefectInpaintOutput(BaseOutput):
    """``images``: the results (same size as the inputs); ``bypassed[i]`` is True for ``good`` samples
    returned unchanged; ``windows[i]``: the crop windows inpainted for image i (source pixel boxes)."""

    images: torch.Tensor | np.ndarray | list
    bypassed: list[bool]
    windows: list[list[tuple[int, int, int, int]]]


class DefectInpaintPipeline(MaskedInpaintPipeline):
    """Inpaint a damage type into the masked region of images.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` with the inpainting input layout (``2*C+1`` channels).
        scheduler: a diffusers sampling scheduler (DDIM, DPM-Solver, ...).
        type_embedding: the adapter's :class:`DamageTypeEmbedding`, or None for the bare base (compact only:
            unconditional inpainting with the base's own tokens).
        vae: an ``AutoencoderKL`` for latent models (SD); None for pixel space (compact).
        base_tokens: the compact base's learned unconditional tokens (used when ``type_embedding`` is None).
        resolution: working resolution in pixels (crops around masks are resized to it).
    """

    _conditioning_modules = ("type_embedding",)

    def __init__(self, unet, scheduler, type_embedding: DamageTypeEmbedding | None = None, vae=None,
                 base_tokens: torch.Tensor | None = None, resolution: int | None = None, info: dict | None = None):
        if type_embedding is None and base_tokens is None:
            raise input_error("type_embedding", None, "an adapter's damage-type embedding (or base tokens for a compact base)")
        super().__init__(unet, scheduler, vae=vae, resolution=resolution, info=info)
        self.type_embedding = type_embedding.eval() if type_embedding is not None else None
        self.base_tokens = base_tokens

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_compact(cls, base: str | Path | None = None, adapter: str | Path | None = None,
                     scheduler=None, resolution: int | None = None) -> DefectInpaintPipeline:
        """The embedded default: the compact base from ``base`` (default: the shipped ``weights/``) + an adapter."""
        from ..models.compact import DEFAULT_WEIGHTS_DIR, load_compact, make_schedulers

        model = load_compact(base, layout="inpaint")
        unet = model.unet
        emb = None
        info = {"base_kind": "compact", "base": str(base or "weights/"), "base_dir": str(base or DEFAULT_WEIGHTS_DIR)}
        if adapter is not None:
            unet, emb, cfg = _load_adapter(unet, adapter, expected_kind="compact")
            check_base_hash(cfg, base, adapter)
            info.update(adapter=str(adapter), adapter_config=cfg)
        return cls(unet, scheduler or make_schedulers(model.config)[1], emb, base_tokens=model.base_tokens.detach(),
                   resolution=resolution or model.config.sample_size, info=info)

    @classmethod
    def from_sd(cls, base: str | Path, adapter: str | Path, scheduler=None, allow_download: bool = False,
                resolution: int | None = None) -> DefectInpaintPipeline:
        """SD-1.5-inpainting from a local diffusers folder (a hub id only with ``allow_download=True``) + an adapter."""
        from ..models.pretrained import load_sd_inpaint

        if adapter is None:
            raise input_error("adapter", None, "an adapter folder (an SD base paints damage types only through one)")
        parts = load_sd_inpaint(base, allow_download=allow_download)
        unet, emb, cfg = _load_adapter(parts["unet"], adapter, expected_kind="sd")
        return cls(unet, scheduler or parts["scheduler"], emb, vae=parts["vae"], resolution=resolution,
                   info={"base_kind": "sd", "base": str(base), "base_dir": str(base), "adapter": str(adapter),
                         "adapter_config": cfg})

    @classmethod
    def _load(cls, kind, base, adapter, *, scheduler, allow_download, resolution, **kwargs):
        if kwargs:
            raise input_error("from_pretrained", sorted(kwargs), "no further keyword arguments for DefectInpaintPipeline")
        if kind == "compact":
            return cls.from_compact(base, adapter, scheduler=scheduler, resolution=resolution)
        return cls.from_sd(base, adapter, scheduler=scheduler, allow_download=allow_download, resolution=resolution)

    @property
    def defect_types(self) -> tuple[str, ...]:
        return self.type_embedding.type_names if self.type_embedding is not None else ()

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, image, mask_image, defect_type, num_inference_steps=25, guidance_scale=2.0,
                     output_type="pt", crop_margin=0.5, mask_threshold=0.5, crop_to_mask=True, batch_size=16,
                     generator=None, grain_transfer=0.0, strength=1.0, callback_on_step_end=None,
                     callback_on_step_end_tensor_inputs=None, max_window_scale=None) -> None:
        """Validate every argument of :meth:`__call__`; raises :class:`~counterfactory.errors.InputError` naming the
        first bad one. Converts nothing and keeps no state."""
        self.check_common(num_inference_steps, guidance_scale, output_type, crop_margin, mask_threshold, batch_size,
                          strength, callback_on_step_end, callback_on_step_end_tensor_inputs)
        check_number("grain_transfer", grain_transfer, 0, 2, "a number in [0, 2]")
        if max_window_scale is not None:
            check_number("max_window_scale", max_window_scale, 1, 64, "None or a number in [1, 64]")
        images = self.prepare_images(image)
        self.check_image_size(images)
        b, (h, w) = images.shape[0], images.shape[-2:]
        masks = self.prepare_masks(mask_image, b, (h, w), mask_threshold)
        self.check_generator(generator, b)
        types = self._types(defect_type, b)
        if not crop_to_mask and any(t != GOOD for t in types):
            f = self._size_multiple()
            if h % f or w % f:
                raise input_error("image size", (h, w), f"multiples of {f} when crop_to_mask=False")
        for i, t in enumerate(types):
            if t == GOOD:
                continue
            if t is None:
                if self.type_embedding is not None:
                    raise input_error("defect_type", None, f"one of {list(self.defect_types)} or 'good'")
            elif self.type_embedding is None:
                raise input_error("defect_type", t, "None (this pipeline has no adapter; load one to paint damage types)")
            else:
                self.type_embedding.index(t)  # raises for unknown types
            self.check_region(masks[i], f"mask_image[{i}]",
                              f"a non-empty region for defect type {t!r} (use 'good' to keep an image)")

    @staticmethod
    def _types(defect_type, b: int) -> list:
        types = [defect_type] * b if defect_type is None or isinstance(defect_type, str) else list(defect_type)
        if len(types) != b:
            raise input_error("defect_type", defect_type, f"one name or a list of {b} names")
        return types

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image,
        mask_image,
        defect_type: str | list[str | None] | None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: OutputType = "pt",
        crop_to_mask: bool = True,
        crop_margin: float = 0.5,
        mask_threshold: float = 0.5,
        reinject_known_region: bool = True,
        batch_size: int = 16,
        grain_transfer: float = 0.0,
        strength: float = 1.0,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
        max_window_scale: float | None = None,
    ) -> DefectInpaintOutput:
        """Paint ``defect_type`` into the masked region of each image.

        Args:
            image: (B,3,H,W) / (3,H,W) float in [0,1], a PIL image or a list of them. Gray images are expanded to RGB.
            mask_image: (B,1,H,W) / PIL / list; 1 (white) = region to regenerate. Binarized at ``mask_threshold``.
            defect_type: one name or one per image; ``"good"`` returns that image unchanged (bypass); None only for a
                bare compact base (unconditional inpainting).
            num_inference_steps: denoising steps of ``self.scheduler`` (at most its ``num_train_timesteps``).
            guidance_scale: classifier-free guidance weight against the learned null embedding, in [0, 100];
                1 disables it.
            generator: a ``torch.Generator`` (or one per image; CPU or on the pipeline's device) for reproducible
                noise: same seed → bit-identical output on CPU. With one generator per image, each image's noise
                comes from its own generator, so its result is the same in any batch up to kernel rounding (~1e-7);
                exactly with ``batch_size=1``.
            output_type: ``"pt"`` (B,3,H,W) float in [0,1], ``"np"`` (B,H,W,3) uint8, ``"pil"`` list of images.
            crop_to_mask: inpaint a context window around each mask component at working resolution (True), or the
                whole image at its own size (False; H and W must be multiples of the model's downsampling).
            crop_margin: context on each side of a component's box, as a fraction of the box's larger side.
            max_window_scale: largest context window side, as a multiple of the working resolution (``crop_to_mask``).
                A region whose window would be larger is painted in tiles of at most that size, one after the
                other, each seeing the tiles before it (:func:`~counterfactory.io.masks.tile_windows`), so thin
                structures are painted close to their native pixel scale instead of shrunk away. None (default):
                one window per region, whatever its size.
            reinject_known_region: re-inject the known region (noised to the current level) after every step.
            batch_size: windows denoised together (one U-Net batch). 1 makes every window's result independent of
                the other images in the call, bit for bit (slower: about 1.5x on 2 CPU threads).
            grain_transfer: add this much of the input image's own high-frequency grain (image minus its 5×5 box
                blur) to the painted region. 0 (default) returns the model's fill as is. A small base paints fills
                smoother than the surface; on Magnetic Tile, 1.0 brought the fills' grain to the surface's and
                raised downstream pixel AP (docs/benchmarks.md). Only masked pixels change.
            strength: paste-and-refine, as diffusers' inpainting pipelines: denoising starts from ``image`` itself
                inside the mask, noised to level ``strength`` in [0, 1], and runs the last
                ``int(num_inference_steps * strength)`` steps. 1 (default) generates from pure noise; 0 returns
                ``image`` unchanged. Use it on an image with a defect already pasted in
                (:func:`counterfactory.sampling.paste.paste_defect`) and a slightly dilated mask.
            callback_on_step_end: ``fn(pipeline, step, timestep, callback_kwargs) -> dict`` after every denoising
                step of every chunk of windows (``step`` counts from 0 in each chunk), as in diffusers; the returned
                dict may replace the tensors it was given.
            callback_on_step_end_tensor_inputs: the tensors passed in ``callback_kwargs`` (default
                ``["latents"]``), from ``self._callback_tensor_inputs``.
            return_dict: False returns the tuple ``(images, bypassed, windows)``.

        Returns:
            :class:`DefectInpaintOutput`. Every pixel where the mask is 0 equals the input pixel exactly.
        """
        self.check_inputs(image, mask_image, defect_type, num_inference_steps, guidance_scale, output_type, crop_margin,
                          mask_threshold, crop_to_mask, batch_size, generator, grain_transfer, strength,
                          callback_on_step_end, callback_on_step_end_tensor_inputs, max_window_scale)
        images = self.prepare_images(image)
        h, w = images.shape[-2:]
        masks = self.prepare_masks(mask_image, images.shape[0], (h, w), mask_threshold)
        types = self._types(defect_type, images.shape[0])
        jobs = []  # (image index, window, type)
        windows_per_image: list[list[tuple[int, int, int, int]]] = [[] for _ in range(images.shape[0])]
        for i, t in enumerate(types):
            if t == GOOD:
                continue
            if crop_to_mask:
                max_size = None if max_window_scale is None else int(max_window_scale * self.resolution)
                wins = tile_windows(masks[i, 0].numpy(), (h, w), crop_margin, min(self.resolution, max(h, w)), max_size)
            else:
                wins = [CropWindow((0, 0, w, h))]
            for win in wins:
                jobs.append((i, win, t))
                windows_per_image[i].append(win.box)

        out = self.run_windows(images, masks, jobs, crop_to_mask=crop_to_mask, generator=generator,
                               batch_size=batch_size, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, reinject_known_region=reinject_known_region,
                               strength=strength, callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)

        if grain_transfer and strength > 0:
            painted = (masks > 0.5) & torch.tensor([t != GOOD for t in types]).view(-1, 1, 1, 1)
            out = add_grain(out, images, painted, grain_transfer)
        bypassed = [t == GOOD for t in types]
        result = convert_output(out, output_type)
        if not return_dict:
            return result, bypassed, windows_per_image
        return DefectInpaintOutput(images=result, bypassed=bypassed, windows=windows_per_image)

    def encode_conditioning(self, payloads: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Damage-type tokens (the payloads are type names) and the learned null tokens; the bare compact base
        uses its own tokens and no guidance."""
        b = len(payloads)
        if self.type_embedding is None:
            return self.base_tokens[None].expand(b, -1, -1), None
        idx = self.type_embedding.index(payloads).to(self.type_embedding.embeddings.device)
        return self.type_embedding(idx), self.type_embedding.null_tokens(b)


def _load_adapter(unet, adapter, expected_kind: str):
    """Attach an adapter folder (LoRA + damage-type embeddings) to a copy of ``unet``."""
    from ..models.lora import add_lora, load_lora

    adapter = Path(adapter)
    cfg_file = adapter / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(f"adapter not found: {cfg_file} is missing (train one with `counterfactory train-adapter`)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("base_kind") != expected_kind:
        raise CheckpointError(f"adapter {adapter} was trained on a {cfg.get('base_kind')!r} base, not {expected_kind!r}")
    emb = DamageTypeEmbedding.load(adapter)
    unet = copy.deepcopy(unet)
    add_lora(unet, rank=cfg["lora_rank"], alpha=cfg.get("lora_alpha"), target_modules=tuple(cfg["lora_targets"]))
    load_lora(unet, adapter)
    unet.eval().requires_grad_(False)
    return unet, emb, cfg
