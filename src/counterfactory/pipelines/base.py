"""The masked-inpainting pipeline core shared by every pipeline that repaints a masked region of an image.

A pipeline built on :class:`MaskedInpaintPipeline` keeps only its conditioning: where the cross-attention tokens
come from (:meth:`MaskedInpaintPipeline.encode_conditioning`, the one hook a subclass must provide) and the
checks of its own arguments. The core owns the rest, once:

- construction (U-Net, scheduler, optional VAE, working resolution) and the adapter's base check;
- the argument checks every inpainting call shares (steps, guidance, strength, output type, crop margin,
  generators, batch size, image and mask sizes); ``check_inputs`` validates and never converts or keeps state;
- crop-to-mask windows, the denoising loop and paste-back (:mod:`counterfactory.sampling.inpaint`), with
  ``strength`` (paste-and-refine) and ``callback_on_step_end`` as in diffusers;
- ``.to(device, dtype)``, ``device`` / ``dtype``, ``from_pretrained`` / ``save_pretrained``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, input_error
from ..io.images import as_batch
from ..io.manifest import atomic_write_json
from ..io.masks import binarize
from ..sampling.inpaint import (
    CALLBACK_TENSOR_INPUTS,
    PixelSpace,
    VaeSpace,
    denoise,
    inpaint_windows,
    min_steps_for_strength,
    module_device_dtype,
)

OUTPUT_TYPES = ("pt", "np", "pil")
MAX_GUIDANCE_SCALE = 100.0  # far above any useful weight; larger ones only overflow the guided prediction
MIN_IMAGE_SIDE = 8  # smaller images leave no context around a region
PIPELINE_CONFIG = "counterfactory_pipeline.json"
PIPELINE_FORMAT = "counterfactory.pipeline.v1"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_number(name: str, value, low: float, high: float, allowed: str) -> None:
    """InputError unless ``value`` is a finite real number in [low, high] (bools are not numbers here)."""
    if not _is_number(value) or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise input_error(name, value, allowed)


def check_int(name: str, value, low: int, allowed: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise input_error(name, value, allowed or f"an integer >= {low}")


class MaskedInpaintPipeline:
    """Base of the inpainting pipelines: repaint the masked region of images, keep every other pixel bit-identical.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` with the inpainting input layout (``2*C+1`` channels).
        scheduler: a diffusers sampling scheduler (DDIM, DPM-Solver, ...).
        vae: an ``AutoencoderKL`` for latent models (SD); None for pixel space (compact).
        resolution: working resolution in pixels (windows around masks are resized to it).
        info: where the pipeline came from (base and adapter folders); :meth:`save_pretrained` reads it.

    Subclasses implement :meth:`encode_conditioning` and list their extra modules in ``_conditioning_modules``.
    """

    _conditioning_modules: tuple[str, ...] = ()  # attribute names of nn.Modules that .to() moves with the U-Net
    _callback_tensor_inputs: list[str] = list(CALLBACK_TENSOR_INPUTS)

    def __init__(self, unet, scheduler, vae=None, resolution: int | None = None, info: dict | None = None):
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.vae = vae.eval() if vae is not None else None
        self.space = VaeSpace(vae) if vae is not None else PixelSpace()
        self.resolution = int(resolution or unet.config.sample_size * self.space.scale_factor)
        self.info = dict(info or {})
        self._progress = {"disable": False}

    # ------------------------------------------------------------------ the conditioning hook
    def encode_conditioning(self, payloads: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention tokens for a chunk of windows: ``(cond (N,T,D), uncond (N,T,D) or None)``.

        ``payloads`` holds one object per window, as the subclass put it in its jobs (a damage type name, a
        prepared reference, ...). ``uncond`` None disables classifier-free guidance.
        """
        raise NotImplementedError

    def encode_hint(self, payloads: list, mask: torch.Tensor) -> torch.Tensor | None:
        """Optional spatial hint channels (N,K,h,w) for a chunk of windows with masks (N,1,h,w); None: no hint."""
        return None

    # ------------------------------------------------------------------ device and dtype
    @property
    def components(self) -> dict:
        """The pipeline's modules by name (None where absent)."""
        parts = {"unet": self.unet, "vae": self.vae, "scheduler": self.scheduler}
        parts.update({name: getattr(self, name, None) for name in self._conditioning_modules})
        return parts

    def _modules(self) -> list[torch.nn.Module]:
        return [m for k, m in self.components.items() if k != "scheduler" and isinstance(m, torch.nn.Module)]

    @property
    def device(self) -> torch.device:
        """The device of the U-Net's weights."""
        return module_device_dtype(self.unet)[0]

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the U-Net's weights."""
        return module_device_dtype(self.unet)[1]

    def to(self, *args, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        """Move every module to ``device`` and/or cast it to ``dtype`` (diffusers semantics: ``pipe.to("cuda")``,
        ``pipe.to(torch.float16)``, ``pipe.to("cuda", torch.float16)``); returns the pipeline itself."""
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            else:
                device = a
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise input_error("dtype", dtype, "a floating torch dtype (torch.float32, torch.float16, torch.bfloat16)")
        if device is not None:
            device = parse_device(device)
        for m in self._modules():
            m.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs):
        self._progress.update(kwargs)

    # ------------------------------------------------------------------ shared checks (validate only)
    def check_common(self, num_inference_steps, guidance_scale, output_type, crop_margin, mask_threshold,
                     batch_size, strength, callback_on_step_end=None, callback_on_step_end_tensor_inputs=None) -> None:
        """The scalar arguments every inpainting call shares; raises :class:`InputError`, returns nothing."""
        limit = int(getattr(self.scheduler.config, "num_train_timesteps", 1000))
        check_int("num_inference_steps", num_inference_steps, 1)
        if num_inference_steps > limit:
            raise input_error("num_inference_steps", num_inference_steps,
                              f"an integer in [1, {limit}] (the scheduler's num_train_timesteps)")
        check_number("guidance_scale", guidance_scale, 0, MAX_GUIDANCE_SCALE,
                     f"a finite number in [0, {MAX_GUIDANCE_SCALE:g}] (1 = no guidance)")
        if output_type not in OUTPUT_TYPES:
            raise input_error("output_type", output_type, "one of 'pt', 'np', 'pil'")
        check_number("crop_margin", crop_margin, 0, 4,
                     "a number in [0, 4] (context as a fraction of the region's box side)")
        check_number("mask_threshold", mask_threshold, 0, 1, "a number in [0, 1]")
        check_int("batch_size", batch_size, 1)
        check_number("strength", strength, 0, 1,
                     "a number in [0, 1] (1 = generate from noise, 0 = return the input unchanged)")
        if 0 < strength < 1 and int(num_inference_steps * strength) < 1:
            raise input_error("strength", strength,
                              f"a value that leaves at least one of num_inference_steps={num_inference_steps} steps "
                              f"(strength * num_inference_steps >= 1; with strength={strength} use at least "
                              f"{min_steps_for_strength(float(strength))} steps), or 0 to return the input")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise input_error("callback_on_step_end", callback_on_step_end,
                              "a callable (pipeline, step, timestep, callback_kwargs) -> dict")
        names = callback_on_step_end_tensor_inputs or []
        unknown = [k for k in names if k not in self._callback_tensor_inputs]
        if unknown:
            raise input_error("callback_on_step_end_tensor_inputs", unknown, f"names from {self._callback_tensor_inputs}")

    def check_generator(self, generator, batch: int) -> None:
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if isinstance(generator, (list, tuple)) and len(gens) != batch:
            raise input_error("generator", f"list of {len(gens)}", f"one generator or a list of {batch}")
        dev = self.device.type
        for g in gens:
            if g is None and not isinstance(generator, (list, tuple)):
                continue
            if not isinstance(g, torch.Generator):
                raise input_error("generator", type(g).__name__, f"None, a torch.Generator or a list of {batch}")
            if g.device.type not in ("cpu", dev):
                raise input_error("generator", f"a {g.device.type} generator",
                                  f"a CPU generator or one on the pipeline's device ({dev})")

    @staticmethod
    def prepare_images(image, name: str = "image") -> torch.Tensor:
        """(B,3,H,W) float in [0,1] on the CPU (gray expanded to RGB); InputError for other channel counts."""
        images = as_batch(image, mode="RGB", name=name)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise input_error(f"{name} channels", images.shape[1], "1 (gray) or 3 (RGB)")
        return images

    @staticmethod
    def prepare_masks(mask_image, batch: int, hw: tuple[int, int], mask_threshold: float) -> torch.Tensor:
        """(B,1,H,W) in {0,1}: channels averaged, one mask broadcast over the batch, binarized at the threshold."""
        masks = as_batch(mask_image, mode="L", name="mask_image")
        if masks.shape[1] != 1:
            masks = masks.mean(dim=1, keepdim=True)
        if masks.shape[0] == 1 and batch > 1:
            masks = masks.expand(batch, -1, -1, -1)
        if masks.shape[0] != batch:
            raise input_error("mask_image batch", masks.shape[0], f"1 or the image batch size {batch}")
        if tuple(masks.shape[-2:]) != tuple(hw):
            raise input_error("mask_image size", tuple(masks.shape[-2:]), f"the image size {tuple(hw)} (H, W)")
        return binarize(masks, mask_threshold)

    @staticmethod
    def check_image_size(images: torch.Tensor, name: str = "image") -> None:
        h, w = images.shape[-2:]
        if min(h, w) < MIN_IMAGE_SIDE:
            raise input_error(f"{name} size", f"{w}x{h}", f"at least {MIN_IMAGE_SIDE} px on each side (W x H)")

    @staticmethod
    def check_region(mask: torch.Tensor, name: str, what: str) -> None:
        """A mask (1,H,W) must be neither empty nor the whole image."""
        area = float(mask.mean())
        if area == 0:
            raise input_error(name, "empty", what)
        if area == 1:
            raise input_error(name, "covers the whole image", "a region that leaves context around it")

    def _size_multiple(self) -> int:
        return self.space.scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ the shared run
    def run_windows(self, images: torch.Tensor, masks: torch.Tensor, jobs: Sequence, *, crop_to_mask: bool,
                    generator, batch_size: int, num_inference_steps: int, guidance_scale: float,
                    reinject_known_region: bool, strength: float, callback_on_step_end: Callable | None = None,
                    callback_on_step_end_tensor_inputs: Sequence[str] | None = None) -> torch.Tensor:
        """Denoise every job ``(image index, window, payload)`` and paste it back inside its mask; returns a copy
        of ``images`` (CPU, float32). ``strength`` 0 returns the images unchanged (no denoising step)."""
        if float(strength) == 0.0:
            return images.clone()
        inputs = list(callback_on_step_end_tensor_inputs or ["latents"])

        def denoise_fn(x, m, payloads, gens):
            cond, uncond = self.encode_conditioning(payloads)
            return denoise(self.unet, self.scheduler, self.space, x, m, cond, uncond, num_inference_steps,
                           guidance_scale, gens, reinject_known_region, self._progress, strength=float(strength),
                           callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=inputs,
                           pipeline=self, hint=self.encode_hint(payloads, m))

        return inpaint_windows(images, masks, jobs, denoise_fn, self.resolution, crop_to_mask, generator, batch_size)

    # ------------------------------------------------------------------ packaging
    @classmethod
    def from_pretrained(cls, base: str | Path | None = None, adapter: str | Path | None = None, *,
                        scheduler=None, torch_dtype: torch.dtype | None = None, device=None,
                        allow_download: bool = False, resolution: int | None = None, **kwargs):
        """Load a pipeline: ``base`` is a compact base folder (None: the shipped compact base), a local diffusers
        SD-1.5-inpainting folder, or a folder written by :meth:`save_pretrained` (then ``adapter`` defaults to
        the saved one). ``torch_dtype`` / ``device`` are applied with :meth:`to`."""
        saved = Path(base) / PIPELINE_CONFIG if base is not None else None
        if saved is not None and saved.is_file():
            try:
                cfg = json.loads(saved.read_text())
            except ValueError as exc:
                raise CheckpointError(f"{saved}: unreadable ({exc})") from None
            if cfg.get("format") != PIPELINE_FORMAT or cfg.get("pipeline") != cls.__name__:
                raise CheckpointError(f"{saved}: a {cfg.get('pipeline')!r} folder, not a {cls.__name__} one")
            root = Path(base)
            base, kind = root / "base", cfg["base_kind"]
            if adapter is None and (root / "adapter").is_dir():
                adapter = root / "adapter"
            if scheduler is None and (root / "scheduler").is_dir():
                scheduler = _load_scheduler(root / "scheduler")
            resolution = resolution or cfg.get("resolution")
        else:
            kind = base_kind_of(base)
        pipe = cls._load(kind, base, adapter, scheduler=scheduler, allow_download=allow_download,
                         resolution=resolution, **kwargs)
        if torch_dtype is not None or device is not None:
            pipe.to(device=device, dtype=torch_dtype)
        return pipe

    @classmethod
    def _load(cls, kind: str, base, adapter, *, scheduler, allow_download: bool, resolution, **kwargs):
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the pipeline as a folder :meth:`from_pretrained` loads: ``base/`` (the base's files, as loaded),
        ``adapter/`` (the adapter folder, if any), ``scheduler/`` (the current scheduler's config) and
        ``counterfactory_pipeline.json``. Weights are copied bit for bit from the folders the pipeline was loaded
        from (in their stored dtype, whatever :meth:`to` did since). Written next to the target and renamed, so an
        interrupted save leaves no half folder. Returns the folder."""
        from ..models.compact import CONFIG_FILE, WEIGHTS_FILE

        base_dir = self.info.get("base_dir")
        if not base_dir or not Path(base_dir).is_dir():
            raise input_error("pipeline", "built from modules in memory",
                              "a pipeline loaded with from_pretrained (its base folder is what is saved)")
        out = Path(save_directory)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PIPELINE_CONFIG).is_file())):
            raise input_error("save_directory", str(out),
                              "a new or empty folder, or one written by save_pretrained (it is replaced)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            if self.info.get("base_kind") == "compact":
                (tmp / "base").mkdir()
                for name in (WEIGHTS_FILE, CONFIG_FILE):
                    shutil.copy2(Path(base_dir) / name, tmp / "base" / name)
            else:
                shutil.copytree(base_dir, tmp / "base")
            if self.info.get("adapter"):
                shutil.copytree(self.info["adapter"], tmp / "adapter")
            self.scheduler.save_config(tmp / "scheduler")
            atomic_write_json(tmp / PIPELINE_CONFIG, {"format": PIPELINE_FORMAT, "pipeline": type(self).__name__,
                                                      "base_kind": self.info.get("base_kind"),
                                                      "resolution": self.resolution})
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def parse_device(device) -> torch.device:
    """A device torch knows and can use here; InputError otherwise."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise input_error("device", device, f"a device torch can use here, e.g. 'cpu' or 'cuda' ({reason})") from None
    return dev


def base_kind_of(base) -> str:
    """``"compact"`` for None (the shipped base) or a folder with a compact config, else ``"sd"``."""
    from ..models.compact import CONFIG_FILE

    if base is None or (Path(base) / CONFIG_FILE).is_file():
        return "compact"
    return "sd"


def _load_scheduler(folder: Path):
    import diffusers

    try:
        cfg = json.loads((folder / "scheduler_config.json").read_text())
        cls = getattr(diffusers, cfg["_class_name"])
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{folder}: not a diffusers scheduler config ({exc})") from None
    return cls.from_config(cfg)


def check_base_hash(cfg: dict, base, adapter, what: str = "adapter") -> None:
    """CheckpointError when an adapter records the sha256 of another compact base than ``base``."""
    from ..io.manifest import check_trained_on
    from ..models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE

    check_trained_on(cfg.get("base_sha256"), Path(base or DEFAULT_WEIGHTS_DIR) / WEIGHTS_FILE, what, adapter)


__all__ = ["MaskedInpaintPipeline", "check_number", "check_int", "parse_device", "base_kind_of",
           "check_base_hash", "OUTPUT_TYPES", "MAX_GUIDANCE_SCALE", "MIN_IMAGE_SIDE", "PIPELINE_CONFIG"]
