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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..data.sample import GOOD
from ..errors import CheckpointError, input_error
from ..io.images import as_batch, convert_output, high_pass
from ..io.masks import CropWindow, binarize, group_windows
from ..models.conditioning import DamageTypeEmbedding
from ..sampling.inpaint import PixelSpace, VaeSpace, denoise, inpaint_windows

ADAPTER_CONFIG = "adapter_config.json"
OutputType = Literal["pt", "np", "pil"]


@dataclass
class DefectInpaintOutput:
    """``images``: the results (same size as the inputs); ``bypassed[i]`` is True for ``good`` samples
    returned unchanged; ``windows[i]``: the crop windows inpainted for image i (source pixel boxes)."""

    images: torch.Tensor | np.ndarray | list
    bypassed: list[bool]
    windows: list[list[tuple[int, int, int, int]]]


class DefectInpaintPipeline:
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

    def __init__(self, unet, scheduler, type_embedding: DamageTypeEmbedding | None = None, vae=None,
                 base_tokens: torch.Tensor | None = None, resolution: int | None = None, info: dict | None = None):
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.type_embedding = type_embedding.eval() if type_embedding is not None else None
        self.vae = vae.eval() if vae is not None else None
        self.space = VaeSpace(vae) if vae is not None else PixelSpace()
        self.base_tokens = base_tokens
        self.resolution = int(resolution or unet.config.sample_size * self.space.scale_factor)
        self.info = dict(info or {})
        self._progress = {"disable": False}
        if self.type_embedding is None and self.base_tokens is None:
            raise input_error("type_embedding", None, "an adapter's damage-type embedding (or base tokens for a compact base)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_compact(cls, base: str | Path | None = None, adapter: str | Path | None = None,
                     scheduler=None) -> DefectInpaintPipeline:
        """The embedded default: the compact base from ``base`` (default: the shipped ``weights/``) + an adapter."""
        from ..io.manifest import sha256_file
        from ..models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE, load_compact, make_schedulers

        model = load_compact(base)
        unet = model.unet
        emb = None
        info = {"base_kind": "compact", "base": str(base or "weights/")}
        if adapter is not None:
            unet, emb, cfg = _load_adapter(unet, adapter, expected_kind="compact")
            base_sha = sha256_file(Path(base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE)
            if cfg.get("base_sha256") and cfg["base_sha256"] != base_sha:
                raise CheckpointError(
                    f"adapter {adapter} was trained on another base (sha256 {cfg['base_sha256'][:12]}…, this base "
                    f"{base_sha[:12]}…): pass the base it was trained on with --base, or train a new adapter")
            info.update(adapter=str(adapter), adapter_config=cfg)
        return cls(unet, scheduler or make_schedulers(model.config)[1], emb, base_tokens=model.base_tokens.detach(),
                   resolution=model.config.sample_size, info=info)

    @classmethod
    def from_sd(cls, base: str | Path, adapter: str | Path, scheduler=None, allow_download: bool = False,
                resolution: int | None = None) -> DefectInpaintPipeline:
        """SD-1.5-inpainting from a local diffusers folder (a hub id only with ``allow_download=True``) + an adapter."""
        from ..models.pretrained import load_sd_inpaint

        parts = load_sd_inpaint(base, allow_download=allow_download)
        unet, emb, cfg = _load_adapter(parts["unet"], adapter, expected_kind="sd")
        return cls(unet, scheduler or parts["scheduler"], emb, vae=parts["vae"], resolution=resolution,
                   info={"base_kind": "sd", "base": str(base), "adapter": str(adapter), "adapter_config": cfg})

    def set_progress_bar_config(self, **kwargs):
        self._progress.update(kwargs)

    @property
    def defect_types(self) -> tuple[str, ...]:
        return self.type_embedding.type_names if self.type_embedding is not None else ()

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, image, mask_image, defect_type, num_inference_steps, guidance_scale, output_type,
                     crop_margin, mask_threshold, crop_to_mask):
        """Validate and normalise; returns (images (B,3,H,W), masks (B,1,H,W) in {0,1}, types list)."""
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise input_error("num_inference_steps", num_inference_steps, "an integer >= 1")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0 or not np.isfinite(guidance_scale):
            raise input_error("guidance_scale", guidance_scale, "a finite number >= 0 (1 = no guidance)")
        if output_type not in ("pt", "np", "pil"):
            raise input_error("output_type", output_type, "one of 'pt', 'np', 'pil'")
        if not 0 <= crop_margin <= 4:
            raise input_error("crop_margin", crop_margin, "a number in [0, 4] (context as a fraction of the mask box side)")
        images = as_batch(image, mode="RGB", name="image")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise input_error("image channels", images.shape[1], "1 (gray) or 3 (RGB)")
        masks = as_batch(mask_image, mode="L", name="mask_image")
        if masks.shape[1] != 1:
            masks = masks.mean(dim=1, keepdim=True)
        if masks.shape[0] == 1 and images.shape[0] > 1:
            masks = masks.expand(images.shape[0], -1, -1, -1)
        if masks.shape[0] != images.shape[0]:
            raise input_error("mask_image batch", masks.shape[0], f"1 or the image batch size {images.shape[0]}")
        if masks.shape[-2:] != images.shape[-2:]:
            raise input_error("mask_image size", tuple(masks.shape[-2:]), f"the image size {tuple(images.shape[-2:])} (H, W)")
        masks = binarize(masks, mask_threshold)

        b = images.shape[0]
        types = [defect_type] * b if defect_type is None or isinstance(defect_type, str) else list(defect_type)
        if len(types) != b:
            raise input_error("defect_type", defect_type, f"one name or a list of {b} names")
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
            area = float(masks[i].mean())
            if area == 0:
                raise input_error(f"mask_image[{i}]", "empty", f"a non-empty region for defect type {t!r} (use 'good' to keep an image)")
            if area == 1:
                raise input_error(f"mask_image[{i}]", "covers the whole image", "a region that leaves context around it")
            if not crop_to_mask:
                f = self._size_multiple()
                h, w = images.shape[-2:]
                if h % f or w % f:
                    raise input_error("image size", (h, w), f"multiples of {f} when crop_to_mask=False")
        return images, masks, types

    def _size_multiple(self) -> int:
        return self.space.scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image,
        mask_image,
        defect_type: str | list[str | None] | None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
        output_type: OutputType = "pt",
        crop_to_mask: bool = True,
        crop_margin: float = 0.5,
        mask_threshold: float = 0.5,
        reinject_known_region: bool = True,
        batch_size: int = 16,
        grain_transfer: float = 0.0,
    ) -> DefectInpaintOutput:
        """Paint ``defect_type`` into the masked region of each image.

        Args:
            image: (B,3,H,W) / (3,H,W) float in [0,1], a PIL image or a list of them. Gray images are expanded to RGB.
            mask_image: (B,1,H,W) / PIL / list; 1 (white) = region to regenerate. Binarized at ``mask_threshold``.
            defect_type: one name or one per image; ``"good"`` returns that image unchanged (bypass); None only for a
                bare compact base (unconditional inpainting).
            num_inference_steps: denoising steps of ``self.scheduler``.
            guidance_scale: classifier-free guidance weight against the learned null embedding; 1 disables it.
            generator: a ``torch.Generator`` (or one per image) for reproducible noise: same seed → bit-identical
                output on CPU. With one generator per image, each image's noise comes from its own generator, so its
                result is the same in any batch up to kernel rounding (~1e-7); exactly with ``batch_size=1``.
            output_type: ``"pt"`` (B,3,H,W) float in [0,1], ``"np"`` (B,H,W,3) uint8, ``"pil"`` list of images.
            crop_to_mask: inpaint a context window around each mask component at working resolution (True), or the
                whole image at its own size (False; H and W must be multiples of the model's downsampling).
            crop_margin: context on each side of a component's box, as a fraction of the box's larger side.
            reinject_known_region: re-inject the known region (noised to the current level) after every step.
            batch_size: windows denoised together (one U-Net batch). 1 makes every window's result independent of
                the other images in the call, bit for bit (slower: about 1.5x on 2 CPU threads).
            grain_transfer: add this much of the input image's own high-frequency grain (image minus its 5×5 box
                blur) to the painted region. 0 (default) returns the model's fill as is. A small base paints fills
                smoother than the surface; on Magnetic Tile, 1.0 brought the fills' grain to the surface's and
                raised downstream pixel AP (docs/benchmarks.md). Only masked pixels change.

        Returns:
            :class:`DefectInpaintOutput`. Every pixel where the mask is 0 equals the input pixel exactly.
        """
        images, masks, types = self.check_inputs(image, mask_image, defect_type, num_inference_steps, guidance_scale,
                                                 output_type, crop_margin, mask_threshold, crop_to_mask)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise input_error("batch_size", batch_size, "an integer >= 1")
        if isinstance(generator, (list, tuple)) and len(generator) != images.shape[0]:
            raise input_error("generator", f"list of {len(generator)}", f"one generator or a list of {images.shape[0]}")
        if not isinstance(grain_transfer, (int, float)) or isinstance(grain_transfer, bool) or not 0 <= grain_transfer <= 2:
            raise input_error("grain_transfer", grain_transfer, "a number in [0, 2]")
        h, w = images.shape[-2:]
        jobs = []  # (image index, window, type)
        windows_per_image: list[list[tuple[int, int, int, int]]] = [[] for _ in range(images.shape[0])]
        for i, t in enumerate(types):
            if t == GOOD:
                continue
            if crop_to_mask:
                wins = group_windows(masks[i, 0].numpy(), (h, w), crop_margin, min_size=min(self.resolution, max(h, w)))
            else:
                wins = [CropWindow((0, 0, w, h))]
            for win in wins:
                jobs.append((i, win, t))
                windows_per_image[i].append(win.box)

        out = inpaint_windows(
            images, masks, jobs,
            lambda x, m, chunk_types, gens: self._denoise(x, m, chunk_types, num_inference_steps, guidance_scale,
                                                          gens, reinject_known_region),
            self.resolution, crop_to_mask, generator, batch_size,
        )

        if grain_transfer:
            painted = (masks > 0.5) & torch.tensor([t != GOOD for t in types]).view(-1, 1, 1, 1)
            out = torch.where(painted, (out + grain_transfer * high_pass(images)).clamp(0, 1), out)
        bypassed = [t == GOOD for t in types]
        return DefectInpaintOutput(images=convert_output(out, output_type), bypassed=bypassed, windows=windows_per_image)

    def _conditioning(self, types: list[str | None]):
        b = len(types)
        if self.type_embedding is None:
            return self.base_tokens[None].expand(b, -1, -1), None
        idx = self.type_embedding.index(types)
        return self.type_embedding(idx), self.type_embedding.null_tokens(b)

    def _denoise(self, x01, mask, types, steps, guidance_scale, generator, reinject):
        cond, uncond = self._conditioning(types)
        return denoise(self.unet, self.scheduler, self.space, x01, mask, cond, uncond, steps, guidance_scale,
                       generator, reinject, self._progress)


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
