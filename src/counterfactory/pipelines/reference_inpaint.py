"""Reference-guided inpainting in a box: paint a reference crop (one specific defect or object) into a box
of a target image so that it looks native there, and leave every pixel outside the region bit-identical.

The Paint-by-Example / AnyDoor task (diffusers' ``PaintByExamplePipeline`` is deprecated, so we own it), on the
same core as :class:`~counterfactory.pipelines.defect_inpaint.DefectInpaintPipeline`
(:class:`~counterfactory.pipelines.base.MaskedInpaintPipeline`): crop-to-mask
windows at working resolution, known-region re-injection, classifier-free guidance and paste-back inside the
region only (:func:`~counterfactory.sampling.inpaint.inpaint_windows` / :func:`~counterfactory.sampling.inpaint.denoise`).
The one difference is where the cross-attention tokens come from: a reference encoder
(:mod:`counterfactory.models.reference`) instead of the damage-type table; its learned null reference is the
unconditional branch of the guidance.

Two configurations, as for defects: the compact pixel-space base + a reference adapter trained with
``counterfactory train-reference`` (LoRA + compact reference encoder), or SD-1.5-inpainting from a local
folder + an adapter whose encoder is a CLIP / DINOv2 vision tower (also a local folder) with a learned projection.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from ..errors import CheckpointError, input_error
from ..io.images import add_grain, as_batch, convert_output, to_gray
from ..io.masks import bbox, border_band, box_mask, check_box, group_windows
from ..models.reference import (
    MAX_REFERENCE_UPSCALE,
    MIN_REFERENCE_SIDE,
    REFERENCE_ADAPTER_CONFIG,
    REFERENCE_ADAPTER_FORMAT,
    ReferenceEncoder,
    attach_hint,
    load_reference_encoder,
    warp_hint,
)
from ..sampling.paste import PASTE_MODES, paste_defect, resize_image
from .base import MaskedInpaintPipeline, check_base_hash, check_int, check_number

OutputType = Literal["pt", "np", "pil"]
MAX_BOX_FACTOR = 4  # default largest box side: 4 × the working resolution
MIN_BAND_PX = 2  # refine_band never narrower than this (a 1-px band leaves the seam's gradient in place)


def band_width(region_box, refine_band: float) -> int:
    """The refined band's width in pixels for a region with box ``(x0, y0, x1, y1)``: ``refine_band`` × its
    shorter side, at least :data:`MIN_BAND_PX`."""
    x0, y0, x1, y1 = region_box
    return max(MIN_BAND_PX, int(round(refine_band * min(x1 - x0, y1 - y0))))


@dataclass
class ReferenceInpaintOutput(BaseOutput):
    """``images``: the results (input sizes); ``masks``: (B,1,H,W) the regions that were repainted (the box,
    or the given mask); ``windows[i]``: crop windows inpainted for image i (source pixel boxes)."""

    images: torch.Tensor | np.ndarray | list
    masks: torch.Tensor
    windows: list[list[tuple[int, int, int, int]]]


def image_channels(image, name: str) -> int:
    """Channel count of an image argument (1 gray, 3 colour); an alpha channel is an error."""
    if isinstance(image, Image.Image):
        bands = image.getbands()
        if "A" in bands or "a" in bands or (image.mode == "P" and "transparency" in image.info):
            raise input_error(name, f"PIL image mode {image.mode}",
                              "an image without an alpha channel (cut-outs are not supported: flatten it onto its background)")
        return 1 if image.mode in ("L", "1", "I", "I;16", "F") else 3
    if isinstance(image, np.ndarray):
        c = 1 if image.ndim == 2 else image.shape[-1]
    elif isinstance(image, torch.Tensor):
        c = 1 if image.ndim == 2 else image.shape[-3]
    else:
        raise input_error(name, type(image).__name__, "a torch.Tensor (C,H,W) in [0,1], a numpy array or a PIL image")
    if c in (2, 4):
        raise input_error(f"{name} channels", c, "1 (gray) or 3 (RGB); no alpha channel (flatten cut-outs first)")
    if c not in (1, 3):
        raise input_error(f"{name} channels", c, "1 (gray) or 3 (RGB)")
    return int(c)


class ReferenceInpaintPipeline(MaskedInpaintPipeline):
    """Paint a reference image into a box (or mask) of each target image.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` with the inpainting input layout (``2*C+1`` channels) whose
            ``cross_attention_dim`` equals the encoder's token width.
        scheduler: a diffusers sampling scheduler (DDIM, DPM-Solver, ...).
        reference_encoder: a :class:`~counterfactory.models.reference.ReferenceEncoder` (tokens + null reference).
        vae: an ``AutoencoderKL`` for latent models (SD); None for pixel space (compact).
        resolution: working resolution in pixels (windows around the box are resized to it).
    """

    _conditioning_modules = ("reference_encoder",)

    def __init__(self, unet, scheduler, reference_encoder: ReferenceEncoder, vae=None, resolution: int | None = None,
                 info: dict | None = None):
        if not isinstance(reference_encoder, ReferenceEncoder):
            raise input_error("reference_encoder", type(reference_encoder).__name__, "a ReferenceEncoder")
        if reference_encoder.dim != unet.config.cross_attention_dim:
            raise input_error("reference_encoder", f"token width {reference_encoder.dim}",
                              f"the U-Net's cross_attention_dim {unet.config.cross_attention_dim}")
        super().__init__(unet, scheduler, vae=vae, resolution=resolution, info=info)
        self.reference_encoder = reference_encoder.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_compact(cls, adapter: str | Path, base: str | Path | None = None, scheduler=None,
                     encoder_weights: str | Path | None = None, resolution: int | None = None) -> ReferenceInpaintPipeline:
        """The compact base from ``base`` (default: the shipped ``weights/``) + a reference adapter folder."""
        from ..models.compact import DEFAULT_WEIGHTS_DIR, load_compact, make_schedulers

        cfg = read_reference_adapter_config(adapter, "compact")  # a wrong adapter fails before any weights load
        model = load_compact(base, layout="inpaint")
        check_base_hash(cfg, base, adapter, what="reference adapter")
        unet, encoder, cfg = load_reference_adapter(model.unet, adapter, "compact", encoder_weights)
        info = {"base_kind": "compact", "base": str(base or "weights/"), "base_dir": str(base or DEFAULT_WEIGHTS_DIR),
                "adapter": str(adapter), "adapter_config": cfg}
        return cls(unet, scheduler or make_schedulers(model.config)[1], encoder,
                   resolution=resolution or model.config.sample_size, info=info)

    @classmethod
    def from_sd(cls, base: str | Path, adapter: str | Path, scheduler=None, allow_download: bool = False,
                resolution: int | None = None, encoder_weights: str | Path | None = None) -> ReferenceInpaintPipeline:
        """SD-1.5-inpainting from a local diffusers folder + a reference adapter (CLIP/DINOv2 encoder + LoRA)."""
        from ..models.pretrained import load_sd_inpaint

        read_reference_adapter_config(adapter, "sd")
        parts = load_sd_inpaint(base, allow_download=allow_download)
        unet, encoder, cfg = load_reference_adapter(parts["unet"], adapter, "sd", encoder_weights)
        return cls(unet, scheduler or parts["scheduler"], encoder, vae=parts["vae"], resolution=resolution,
                   info={"base_kind": "sd", "base": str(base), "base_dir": str(base), "adapter": str(adapter),
                         "adapter_config": cfg})

    @classmethod
    def _load(cls, kind, base, adapter, *, scheduler, allow_download, resolution, encoder_weights=None, **kwargs):
        if kwargs:
            raise input_error("from_pretrained", sorted(kwargs), "encoder_weights as the only further keyword argument")
        if adapter is None:
            raise input_error("adapter", None, "a reference adapter folder (train one with `counterfactory train-reference`)")
        if kind == "compact":
            return cls.from_compact(adapter, base=base, scheduler=scheduler, encoder_weights=encoder_weights,
                                    resolution=resolution)
        return cls.from_sd(base, adapter, scheduler=scheduler, allow_download=allow_download, resolution=resolution,
                           encoder_weights=encoder_weights)

    @property
    def max_box_side(self) -> int:
        return MAX_BOX_FACTOR * self.resolution

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, image, reference_image, box=None, mask_image=None, num_inference_steps=25,
                     guidance_scale=3.0, output_type="pt", crop_margin=0.5, mask_threshold=0.5, max_box_side=None,
                     batch_size=16, generator=None, strength=1.0, callback_on_step_end=None,
                     callback_on_step_end_tensor_inputs=None, paste_mode="plain", refine_band=None,
                     grain_transfer=0.0) -> None:
        """Validate every argument of :meth:`__call__`; raises :class:`~counterfactory.errors.InputError` naming the
        first bad one. Converts nothing and keeps no state."""
        self.check_common(num_inference_steps, guidance_scale, output_type, crop_margin, mask_threshold, batch_size,
                          strength, callback_on_step_end, callback_on_step_end_tensor_inputs)
        if max_box_side is not None:
            check_int("max_box_side", max_box_side, 1)
        if paste_mode not in PASTE_MODES:
            raise input_error("paste_mode", paste_mode, f"one of {', '.join(PASTE_MODES)} (how strength < 1 places the reference)")
        if refine_band is not None:
            allowed = ("None (refine the whole region) or a number in (0, 0.5]: the refined band's width as a "
                       "fraction of the region box's shorter side")
            check_number("refine_band", refine_band, 0, 0.5, allowed)
            if float(refine_band) == 0:
                raise input_error("refine_band", refine_band, allowed)
        check_number("grain_transfer", grain_transfer, 0, 2, "a number in [0, 2]")
        if (box is None) == (mask_image is None):
            raise input_error("box/mask_image", "both" if box is not None else "neither",
                              "exactly one of box (x0,y0,x1,y1) or mask_image")
        for i, im in enumerate(_items(image)):
            image_channels(im, f"image[{i}]")  # no alpha channel
        images = self.prepare_images(image)
        self.check_image_size(images)
        b = images.shape[0]
        self.check_generator(generator, b)
        refs = _items(reference_image, "reference_image")
        if len(refs) != 1 and len(refs) != b:
            raise input_error("reference_image", f"{len(refs)} references", f"one reference or one per image ({b})")
        sizes = []
        for i, ref in enumerate(refs):
            image_channels(ref, f"reference_image[{i}]")
            if isinstance(ref, Image.Image):
                rh, rw = ref.height, ref.width
            else:
                rh, rw = tuple(ref.shape[:2]) if isinstance(ref, np.ndarray) else tuple(ref.shape[-2:])
            if min(rh, rw) < MIN_REFERENCE_SIDE:
                raise input_error(f"reference_image[{i}] size", f"{rw}x{rh}",
                                  f"at least {MIN_REFERENCE_SIDE} px on each side (W x H)")
            sizes.append((rw, rh))
        masks = self._regions(images, box, mask_image, mask_threshold)
        limit = self.max_box_side if max_box_side is None else max_box_side
        for i in range(b):
            self.check_region(masks[i], f"mask_image[{i}]" if box is None else f"region[{i}]",
                              "a non-empty region to paint the reference into")
            x0, y0, x1, y1 = bbox(masks[i, 0])
            if max(x1 - x0, y1 - y0) > limit:
                raise input_error(f"box[{i}]" if b > 1 else "box", f"{x1 - x0}x{y1 - y0} px",
                                  f"a region at most {limit} px on its longer side (max_box_side; default "
                                  f"{MAX_BOX_FACTOR} x the working resolution {self.resolution}): downscale the image first")
            rw, rh = sizes[i] if len(sizes) > 1 else sizes[0]
            if (x1 - x0) > MAX_REFERENCE_UPSCALE * rw or (y1 - y0) > MAX_REFERENCE_UPSCALE * rh:
                raise input_error(f"reference_image[{i if len(sizes) > 1 else 0}] size", f"{rw}x{rh}",
                                  f"a reference at least 1/{MAX_REFERENCE_UPSCALE:g} of its region's side "
                                  f"({x1 - x0}x{y1 - y0} px, W x H): it would be upscaled more than "
                                  f"{MAX_REFERENCE_UPSCALE:g}x")

    def _regions(self, images: torch.Tensor, box, mask_image, mask_threshold) -> torch.Tensor:
        """(B,1,H,W) in {0,1}: the boxes drawn as masks, or the given masks binarized."""
        b, (h, w) = images.shape[0], images.shape[-2:]
        if box is None:
            return self.prepare_masks(mask_image, b, (h, w), mask_threshold)
        boxes = [box] if _is_one_box(box) else list(box)
        if len(boxes) == 1 and b > 1:
            boxes = boxes * b
        if len(boxes) != b:
            raise input_error("box", f"{len(boxes)} boxes", f"one box or one per image ({b})")
        boxes = [check_box(bx, (h, w), name="box" if b == 1 else f"box[{i}]") for i, bx in enumerate(boxes)]
        return torch.stack([box_mask(bx, (h, w)) for bx in boxes])

    def prepare_references(self, reference_image, image_channels_list: list[int], raw: bool = False):
        """The encoder's input batch (B,3,S,S), one reference per image (with ``raw``: also the references as
        (3,h,w) tensors in [0,1] at their own size). A reference with another channel count than its image is
        converted with a warning: gray → RGB by repeating the channel, RGB → gray by the channel mean (the rule
        the gray result uses)."""
        refs = _items(reference_image, "reference_image")
        b = len(image_channels_list)
        if len(refs) == 1 and b > 1:
            refs = refs * b
        out = []
        for i, ref in enumerate(refs):
            c = image_channels(ref, f"reference_image[{i}]")
            if c != image_channels_list[i]:
                kind = {1: "gray", 3: "RGB"}
                warnings.warn(f"reference_image[{i}] is {kind[c]} and its image is {kind[image_channels_list[i]]}: "
                              f"the reference is converted to {kind[image_channels_list[i]]}", stacklevel=4)
                if c == 3:  # RGB reference for a gray image: its channel mean
                    ref = as_batch(ref, mode="RGB", name=f"reference_image[{i}]")[0].mean(0, keepdim=True)
            out.append(ref)
        prepared = self.reference_encoder.preprocess(out)
        if not raw:
            return prepared
        full = [as_batch(r, mode="RGB", name=f"reference_image[{i}]")[0] for i, r in enumerate(out)]
        return prepared, [r.expand(3, -1, -1) if r.shape[0] == 1 else r for r in full]

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image,
        reference_image,
        box=None,
        mask_image=None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: OutputType = "pt",
        crop_margin: float = 0.5,
        mask_threshold: float = 0.5,
        reinject_known_region: bool = True,
        batch_size: int = 16,
        max_box_side: int | None = None,
        strength: float = 1.0,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
        paste_mode: str = "plain",
        refine_band: float | None = None,
        grain_transfer: float = 0.0,
    ) -> ReferenceInpaintOutput:
        """Paint ``reference_image`` into ``box`` (or ``mask_image``) of each image.

        Args:
            image: (B,C,H,W) / (C,H,W) float in [0,1], a PIL image or a list of them (C = 1 or 3).
            reference_image: the reference crop (same kinds; sizes may differ from the image and between
                references), one for all images or one per image. At least 8 px on each side, no alpha channel.
                A gray reference for an RGB image (or the reverse) is converted, with a warning.
            box: ``(x0, y0, x1, y1)`` integer pixels, end exclusive (one, or one per image); or
            mask_image: (B,1,H,W) / PIL, 1 (white) = region to repaint, binarized at ``mask_threshold``.
                Exactly one of ``box`` and ``mask_image``.
            num_inference_steps: denoising steps of ``self.scheduler`` (at most its ``num_train_timesteps``).
            guidance_scale: the reference guidance scale: classifier-free guidance towards the reference (its
                tokens and, for an adapter trained with the high-frequency hint, its hint) against the learned
                null reference (null tokens, no hint), in [0, 100]; 1 disables it.
            generator: a ``torch.Generator`` (or one per image; CPU or on the pipeline's device) for reproducible
                noise: same seed → bit-identical output on CPU; with one per image, each image's noise comes from
                its own generator, so its result is the same in any batch up to kernel rounding (~1e-7), exactly
                with ``batch_size=1``.
            output_type: ``"pt"`` (B,3,H,W) float in [0,1], ``"np"`` (B,H,W,3) uint8, ``"pil"`` list of images.
            crop_margin: context on each side of the region's box, as a fraction of its larger side.
            reinject_known_region: re-inject the known region (noised to the current level) after every step.
            batch_size: windows denoised together (one U-Net batch).
            max_box_side: largest allowed region side in pixels (default 4 × the working resolution): a larger
                box would be inpainted at a small fraction of its size and come out blurred.
            strength: paste-and-refine (the same implementation as the defect pipeline's): below 1 the reference
                is first resized into the region's box and pasted where the region is 1
                (:func:`counterfactory.sampling.paste.paste_defect`, ``paste_mode``), then denoising starts from
                that composite noised to level ``strength`` in [0, 1]; 1 (default) generates from noise, 0 returns
                the pasted composite unchanged.
            callback_on_step_end: ``fn(pipeline, step, timestep, callback_kwargs) -> dict`` after every denoising
                step of every chunk of windows, as in diffusers.
            callback_on_step_end_tensor_inputs: the tensors passed in ``callback_kwargs`` (default ``["latents"]``).
            return_dict: False returns the tuple ``(images, masks, windows)``.
            paste_mode: ``"plain"`` (default) or ``"poisson"``: how ``strength`` < 1 places the reference.
            refine_band: paste-and-harmonise: the reference is pasted (as for ``strength`` < 1, at any strength)
                and only the band of the region within ``refine_band`` × the region box's shorter side of its
                edge (at least 2 px) is denoised, from level ``strength``; the interior keeps the pasted
                reference's pixels exactly, so the model re-synthesises the seam only. A number in (0, 0.5];
                None (default) refines the whole region.
            grain_transfer: add this much of the target image's own high-frequency grain to the denoised pixels
                (the defect pipeline's ``grain_transfer``; :func:`~counterfactory.io.images.add_grain`); 0 (default)
                keeps the model's pixels as they are.

        Returns:
            :class:`ReferenceInpaintOutput`, always 3 channels; for a 1-channel (gray) image the region gets the
            channel mean, so the result stays gray. Every pixel outside the region equals the input pixel exactly.
        """
        self.check_inputs(image, reference_image, box, mask_image, num_inference_steps, guidance_scale, output_type,
                          crop_margin, mask_threshold, max_box_side, batch_size, generator, strength,
                          callback_on_step_end, callback_on_step_end_tensor_inputs, paste_mode, refine_band,
                          grain_transfer)
        images = self.prepare_images(image)
        chans = [image_channels(im, f"image[{i}]") for i, im in enumerate(_items(image))]
        if len(chans) == 1 and images.shape[0] > 1:
            chans = chans * images.shape[0]
        masks = self._regions(images, box, mask_image, mask_threshold)
        references, raw = self.prepare_references(reference_image, chans, raw=True)
        h, w = images.shape[-2:]
        refined, targets = masks, images  # where denoising happens; the images before any paste
        if float(strength) < 1 or refine_band is not None:  # paste-and-refine: the reference placed in the region
            images, refined = images.clone(), masks.clone()
            for i in range(images.shape[0]):
                x0, y0, x1, y1 = bbox(masks[i, 0])
                ref = resize_image(raw[i], (y1 - y0, x1 - x0))
                images[i], _ = paste_defect(images[i], ref, masks[i, :, y0:y1, x0:x1], (x0, y0), mode=paste_mode)
                if refine_band is not None:
                    refined[i] = border_band(masks[i], band_width((x0, y0, x1, y1), float(refine_band)))
        jobs = []
        windows: list[list[tuple[int, int, int, int]]] = []
        for i in range(images.shape[0]):
            wins = group_windows(masks[i, 0].numpy(), (h, w), crop_margin, min_size=min(self.resolution, max(h, w)))
            jobs += [(i, win, (references[i : i + 1], raw[i], _region_box(masks[i, 0], win.box))) for win in wins]
            windows.append([win.box for win in wins])

        out = self.run_windows(images, refined, jobs, crop_to_mask=True, generator=generator, batch_size=batch_size,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               reinject_known_region=reinject_known_region, strength=strength,
                               callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        if float(strength) > 0:
            out = add_grain(out, targets, refined > 0.5, grain_transfer)
        for i, c in enumerate(chans):  # a gray target gets a gray result (the model may tint the region)
            if c == 1:
                out[i] = torch.where(masks[i] > 0.5, to_gray(out[i]), out[i])
        result = convert_output(out, output_type)
        if not return_dict:
            return result, masks, windows
        return ReferenceInpaintOutput(images=result, masks=masks, windows=windows)

    def encode_conditioning(self, payloads: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference tokens (payloads: (prepared reference (1,3,S,S), raw reference, box in the window)) and the
        learned null reference."""
        p = next(iter(self.reference_encoder.parameters()), None)
        refs = torch.cat([pl[0] for pl in payloads])
        if p is not None:
            refs = refs.to(device=p.device, dtype=p.dtype)
        return self.reference_encoder(refs), self.reference_encoder.null_tokens(len(payloads))

    def encode_hint(self, payloads: list, mask: torch.Tensor) -> torch.Tensor | None:
        """The reference's high-frequency map warped into each window's region box at working resolution
        (:func:`~counterfactory.models.reference.warp_hint`); None for an adapter trained without the hint."""
        if getattr(self.reference_encoder, "hint", None) is None:
            return None
        h, w = mask.shape[-2:]
        boxes = []
        for _, _, (bx0, by0, bx1, by1, ww, wh) in payloads:  # region box in window pixels → working resolution
            boxes.append((bx0 * w / ww, by0 * h / wh, bx1 * w / ww, by1 * h / wh))
        return warp_hint([pl[1] for pl in payloads], boxes, (h, w))


def _items(x, name: str = "image") -> list:
    if isinstance(x, (list, tuple)):
        if not x:
            raise input_error(name, x, "a non-empty list of images")
        return list(x)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return list(x.unbind(0))
    return [x]

def _region_box(mask: torch.Tensor, window: tuple[int, int, int, int]) -> tuple[int, int, int, int, int, int]:
    """The region's bounding box inside a window, in window pixels, with the window's size: (x0,y0,x1,y1,w,h)."""
    wx0, wy0, wx1, wy1 = window
    x0, y0, x1, y1 = bbox(mask[wy0:wy1, wx0:wx1])
    return x0, y0, x1, y1, wx1 - wx0, wy1 - wy0


def _is_one_box(box) -> bool:
    if isinstance(box, torch.Tensor):
        return box.ndim == 1
    if isinstance(box, np.ndarray):
        return box.ndim == 1
    return isinstance(box, (list, tuple)) and len(box) > 0 and not isinstance(box[0], (list, tuple, np.ndarray, torch.Tensor))


def read_reference_adapter_config(adapter, expected_kind: str) -> dict:
    """The adapter's ``reference_adapter.json``; CheckpointError (one line) when missing or of another kind."""
    adapter = Path(adapter)
    cfg_file = adapter / REFERENCE_ADAPTER_CONFIG
    if not cfg_file.is_file():
        other = " (this is a damage-type adapter: use `counterfactory generate`)" if (adapter / "adapter_config.json").is_file() else ""
        raise CheckpointError(
            f"reference adapter not found: {cfg_file} is missing{other}; train one with `counterfactory train-reference`"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{cfg_file}: unreadable ({exc})") from None
    if cfg.get("format") != REFERENCE_ADAPTER_FORMAT:
        raise CheckpointError(f"{cfg_file}: not a reference adapter (format {cfg.get('format')!r})")
    if cfg.get("base_kind") != expected_kind:
        raise CheckpointError(f"reference adapter {adapter} was trained on a {cfg.get('base_kind')!r} base, not {expected_kind!r}")
    return cfg


def load_reference_adapter(unet, adapter, expected_kind: str, encoder_weights=None):
    """Attach a reference adapter folder (LoRA + reference encoder) to a copy of ``unet``;
    returns (unet, encoder, adapter config)."""
    from ..models.lora import add_lora, load_lora

    adapter = Path(adapter)
    cfg = read_reference_adapter_config(adapter, expected_kind)
    encoder = load_reference_encoder(adapter, backbone=encoder_weights)
    unet = copy.deepcopy(unet)
    add_lora(unet, rank=cfg["lora_rank"], alpha=cfg.get("lora_alpha"), target_modules=tuple(cfg["lora_targets"]))
    load_lora(unet, adapter)
    attach_hint(unet, encoder)
    unet.eval().requires_grad_(False)
    return unet, encoder, cfg
