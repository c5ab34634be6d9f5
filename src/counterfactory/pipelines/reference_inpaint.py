"""Reference-guided inpainting in a box: paint a reference crop (one specific defect or object) into a box
of a target image so that it looks native there, and leave every pixel outside the region bit-identical.

The Paint-by-Example / AnyDoor task (diffusers' ``PaintByExamplePipeline`` is deprecated, so we own it), on the
same mechanics as :class:`~counterfactory.pipelines.defect_inpaint.DefectInpaintPipeline`: crop-to-mask
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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, input_error
from ..io.images import as_batch, convert_output
from ..io.masks import bbox, binarize, box_mask, check_box, group_windows
from ..models.reference import (
    MIN_REFERENCE_SIDE,
    REFERENCE_ADAPTER_CONFIG,
    REFERENCE_ADAPTER_FORMAT,
    ReferenceEncoder,
    load_reference_encoder,
)
from ..sampling.inpaint import PixelSpace, VaeSpace, denoise, inpaint_windows

OutputType = Literal["pt", "np", "pil"]
MAX_BOX_FACTOR = 4  # default largest box side: 4 × the working resolution


@dataclass
class ReferenceInpaintOutput:
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


class ReferenceInpaintPipeline:
    """Paint a reference image into a box (or mask) of each target image.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` with the inpainting input layout (``2*C+1`` channels) whose
            ``cross_attention_dim`` equals the encoder's token width.
        scheduler: a diffusers sampling scheduler (DDIM, DPM-Solver, ...).
        reference_encoder: a :class:`~counterfactory.models.reference.ReferenceEncoder` (tokens + null reference).
        vae: an ``AutoencoderKL`` for latent models (SD); None for pixel space (compact).
        resolution: working resolution in pixels (windows around the box are resized to it).
    """

    def __init__(self, unet, scheduler, reference_encoder: ReferenceEncoder, vae=None, resolution: int | None = None,
                 info: dict | None = None):
        if not isinstance(reference_encoder, ReferenceEncoder):
            raise input_error("reference_encoder", type(reference_encoder).__name__, "a ReferenceEncoder")
        if reference_encoder.dim != unet.config.cross_attention_dim:
            raise input_error("reference_encoder", f"token width {reference_encoder.dim}",
                              f"the U-Net's cross_attention_dim {unet.config.cross_attention_dim}")
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.reference_encoder = reference_encoder.eval()
        self.vae = vae.eval() if vae is not None else None
        self.space = VaeSpace(vae) if vae is not None else PixelSpace()
        self.resolution = int(resolution or unet.config.sample_size * self.space.scale_factor)
        self.info = dict(info or {})
        self._progress = {"disable": False}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_compact(cls, adapter: str | Path, base: str | Path | None = None, scheduler=None,
                     encoder_weights: str | Path | None = None) -> ReferenceInpaintPipeline:
        """The compact base from ``base`` (default: the shipped ``weights/``) + a reference adapter folder."""
        from ..io.manifest import sha256_file
        from ..models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE, load_compact, make_schedulers

        cfg = read_reference_adapter_config(adapter, "compact")  # a wrong adapter fails before any weights load
        model = load_compact(base)
        if cfg.get("base_sha256"):
            base_sha = sha256_file(Path(base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE)
            if cfg["base_sha256"] != base_sha:
                raise CheckpointError(
                    f"reference adapter {adapter} was trained on another base (sha256 {cfg['base_sha256'][:12]}..., "
                    f"this base {base_sha[:12]}...): pass the base it was trained on with --base")
        unet, encoder, cfg = load_reference_adapter(model.unet, adapter, "compact", encoder_weights)
        info = {"base_kind": "compact", "base": str(base or "weights/"), "adapter": str(adapter), "adapter_config": cfg}
        return cls(unet, scheduler or make_schedulers(model.config)[1], encoder, resolution=model.config.sample_size,
                   info=info)

    @classmethod
    def from_sd(cls, base: str | Path, adapter: str | Path, scheduler=None, allow_download: bool = False,
                resolution: int | None = None, encoder_weights: str | Path | None = None) -> ReferenceInpaintPipeline:
        """SD-1.5-inpainting from a local diffusers folder + a reference adapter (CLIP/DINOv2 encoder + LoRA)."""
        from ..models.pretrained import load_sd_inpaint

        read_reference_adapter_config(adapter, "sd")
        parts = load_sd_inpaint(base, allow_download=allow_download)
        unet, encoder, cfg = load_reference_adapter(parts["unet"], adapter, "sd", encoder_weights)
        return cls(unet, scheduler or parts["scheduler"], encoder, vae=parts["vae"], resolution=resolution,
                   info={"base_kind": "sd", "base": str(base), "adapter": str(adapter), "adapter_config": cfg})

    def set_progress_bar_config(self, **kwargs):
        self._progress.update(kwargs)

    @property
    def max_box_side(self) -> int:
        return MAX_BOX_FACTOR * self.resolution

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, image, reference_image, box, mask_image, num_inference_steps, guidance_scale, output_type,
                     crop_margin, mask_threshold, max_box_side):
        """Validate and normalise; returns (images (B,3,H,W), masks (B,1,H,W) in {0,1}, references (B,3,S,S))."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise input_error("num_inference_steps", num_inference_steps, "an integer >= 1")
        if (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or guidance_scale < 0
                or not np.isfinite(guidance_scale)):
            raise input_error("guidance_scale", guidance_scale, "a finite number >= 0 (1 = no guidance)")
        if output_type not in ("pt", "np", "pil"):
            raise input_error("output_type", output_type, "one of 'pt', 'np', 'pil'")
        if not isinstance(crop_margin, (int, float)) or not 0 <= crop_margin <= 4:
            raise input_error("crop_margin", crop_margin, "a number in [0, 4] (context as a fraction of the box side)")
        if (box is None) == (mask_image is None):
            raise input_error("box/mask_image", "both" if box is not None else "neither",
                              "exactly one of box (x0,y0,x1,y1) or mask_image")

        image_items = _items(image)
        chans = [image_channels(im, f"image[{i}]") for i, im in enumerate(image_items)]
        images = as_batch(image, mode="RGB", name="image")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        b, (h, w) = images.shape[0], images.shape[-2:]
        if len(chans) == 1 and b > 1:
            chans = chans * b

        refs = _items(reference_image)
        if len(refs) == 1 and b > 1:
            refs = refs * b
        if len(refs) != b:
            raise input_error("reference_image", f"{len(refs)} references", f"one reference or one per image ({b})")
        for i, ref in enumerate(refs):
            c = image_channels(ref, f"reference_image[{i}]")
            if c != chans[i]:
                raise input_error(f"reference_image[{i}] channels", c,
                                  f"{chans[i]} like its target image ({'gray' if chans[i] == 1 else 'RGB'}); "
                                  "convert one of them first")
            if isinstance(ref, Image.Image):
                rh, rw = ref.height, ref.width
            else:
                rh, rw = tuple(ref.shape[:2]) if isinstance(ref, np.ndarray) else tuple(ref.shape[-2:])
            if min(rh, rw) < MIN_REFERENCE_SIDE:
                raise input_error(f"reference_image[{i}] size", f"{rw}x{rh}",
                                  f"at least {MIN_REFERENCE_SIDE} px on each side (W x H)")

        limit = self.max_box_side if max_box_side is None else max_box_side
        if box is not None:
            boxes = [box] if _is_one_box(box) else list(box)
            if len(boxes) == 1 and b > 1:
                boxes = boxes * b
            if len(boxes) != b:
                raise input_error("box", f"{len(boxes)} boxes", f"one box or one per image ({b})")
            boxes = [check_box(bx, (h, w), name="box" if b == 1 else f"box[{i}]") for i, bx in enumerate(boxes)]
            masks = torch.stack([box_mask(bx, (h, w)) for bx in boxes])
        else:
            masks = as_batch(mask_image, mode="L", name="mask_image")
            if masks.shape[1] != 1:
                masks = masks.mean(dim=1, keepdim=True)
            if masks.shape[0] == 1 and b > 1:
                masks = masks.expand(b, -1, -1, -1)
            if masks.shape[0] != b:
                raise input_error("mask_image batch", masks.shape[0], f"1 or the image batch size {b}")
            if masks.shape[-2:] != images.shape[-2:]:
                raise input_error("mask_image size", tuple(masks.shape[-2:]), f"the image size {(h, w)} (H, W)")
            masks = binarize(masks, mask_threshold)
        for i in range(b):
            area = float(masks[i].mean())
            if area == 0:
                raise input_error(f"mask_image[{i}]", "empty", "a non-empty region to paint the reference into")
            if area == 1:
                raise input_error(f"region[{i}]", "covers the whole image", "a region that leaves context around it")
            x0, y0, x1, y1 = bbox(masks[i, 0])
            side = max(x1 - x0, y1 - y0)
            if side > limit:
                raise input_error(f"box[{i}]" if b > 1 else "box", f"{x1 - x0}x{y1 - y0} px",
                                  f"a region at most {limit} px on its longer side (max_box_side; default "
                                  f"{MAX_BOX_FACTOR} x the working resolution {self.resolution}): downscale the image first")
        references = self.reference_encoder.preprocess(refs)
        self._gray = [c == 1 for c in chans]
        return images, masks, references

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
    ) -> ReferenceInpaintOutput:
        """Paint ``reference_image`` into ``box`` (or ``mask_image``) of each image.

        Args:
            image: (B,C,H,W) / (C,H,W) float in [0,1], a PIL image or a list of them (C = 1 or 3).
            reference_image: the reference crop (same kinds; sizes may differ from the image and between
                references), one for all images or one per image. Same channel count as its image, at least
                8 px on each side, no alpha channel.
            box: ``(x0, y0, x1, y1)`` integer pixels, end exclusive (one, or one per image); or
            mask_image: (B,1,H,W) / PIL, 1 (white) = region to repaint, binarized at ``mask_threshold``.
                Exactly one of ``box`` and ``mask_image``.
            num_inference_steps: denoising steps of ``self.scheduler``.
            guidance_scale: classifier-free guidance weight towards the reference (against the learned null
                reference); 1 disables it.
            generator: a ``torch.Generator`` (or one per image) for reproducible noise: same seed → bit-identical
                output on CPU; with one per image, each image's noise comes from its own generator, so its result is
                the same in any batch up to kernel rounding (~1e-7), exactly with ``batch_size=1``.
            output_type: ``"pt"`` (B,3,H,W) float in [0,1], ``"np"`` (B,H,W,3) uint8, ``"pil"`` list of images.
            crop_margin: context on each side of the region's box, as a fraction of its larger side.
            reinject_known_region: re-inject the known region (noised to the current level) after every step.
            batch_size: windows denoised together (one U-Net batch).
            max_box_side: largest allowed region side in pixels (default 4 × the working resolution): a larger
                box would be inpainted at a small fraction of its size and come out blurred.

        Returns:
            :class:`ReferenceInpaintOutput`, always 3 channels; for a 1-channel (gray) image the region gets the
            channel mean, so the result stays gray. Every pixel outside the region equals the input pixel exactly.
        """
        images, masks, references = self.check_inputs(image, reference_image, box, mask_image, num_inference_steps,
                                                      guidance_scale, output_type, crop_margin, mask_threshold,
                                                      max_box_side)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise input_error("batch_size", batch_size, "an integer >= 1")
        if isinstance(generator, (list, tuple)) and len(generator) != images.shape[0]:
            raise input_error("generator", f"list of {len(generator)}", f"one generator or a list of {images.shape[0]}")
        h, w = images.shape[-2:]
        jobs = []
        windows: list[list[tuple[int, int, int, int]]] = []
        for i in range(images.shape[0]):
            wins = group_windows(masks[i, 0].numpy(), (h, w), crop_margin, min_size=min(self.resolution, max(h, w)))
            jobs += [(i, win, i) for win in wins]
            windows.append([win.box for win in wins])

        def denoise_fn(x, m, ref_idx, gens):
            cond = self.reference_encoder(references[ref_idx])
            uncond = self.reference_encoder.null_tokens(len(ref_idx))
            return denoise(self.unet, self.scheduler, self.space, x, m, cond, uncond, num_inference_steps,
                           guidance_scale, gens, reinject_known_region, self._progress)

        out = inpaint_windows(images, masks, jobs, denoise_fn, self.resolution, True, generator, batch_size)
        for i, gray in enumerate(self._gray):  # a gray target gets a gray result (the model may tint the region)
            if gray:
                out[i] = torch.where(masks[i] > 0.5, out[i].mean(0, keepdim=True), out[i])
        return ReferenceInpaintOutput(images=convert_output(out, output_type), masks=masks, windows=windows)


def _items(x) -> list:
    if isinstance(x, (list, tuple)):
        if not x:
            raise input_error("image", x, "a non-empty list of images")
        return list(x)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return list(x.unbind(0))
    return [x]


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
    unet.eval().requires_grad_(False)
    return unet, encoder, cfg
