"""The ONE place where files, PIL and numpy meet tensors, and where [0,1] meets [-1,1].

Conventions (see ARCHITECTURE.md): images at public boundaries are float tensors (B,C,H,W) or (C,H,W) in [0,1]
or PIL images; model space is [-1,1]. 8-bit files round-trip exactly: ``to_uint8(load(x)) == x``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, input_error
from .manifest import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Mode = Literal["RGB", "L"]
AlphaPolicy = Literal["error", "drop"]
ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_array(path: str | os.PathLike, mode: Mode = "RGB", alpha: AlphaPolicy = "error") -> np.ndarray:
    """Decode an image file into a float32 array in [0,1], shape (H,W,3) for RGB or (H,W) for L.

    - EXIF orientation is applied (a phone photo comes out upright).
    - 16-bit grayscale is scaled by 65535, not clipped to 8 bits.
    - An alpha channel that is fully opaque is dropped; real transparency raises unless ``alpha="drop"``.
    - Unreadable, truncated and non-image files raise :class:`InputError` naming the file.
    """
    path = Path(path)
    if mode not in ("RGB", "L"):
        raise input_error("mode", mode, "one of 'RGB', 'L'")
    if not path.is_file():
        raise input_error("image", str(path), "an existing image file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "truncated or corrupt" if isinstance(exc, OSError) and "truncated" in str(exc) else "not a readable image"
        raise input_error("image", str(path), f"a readable image file ({reason}: {exc})") from None

    return pil_to_array(im, mode=mode, alpha=alpha, name=str(path))


def pil_to_array(im: Image.Image, mode: Mode = "RGB", alpha: AlphaPolicy = "error", name: str = "image") -> np.ndarray:
    """A decoded PIL image → float32 (H,W,3) / (H,W) in [0,1], with :func:`read_array`'s rules (16-bit scaled
    by 65535, float kept, opaque alpha dropped, real transparency an error unless ``alpha="drop"``)."""
    if mode not in ("RGB", "L"):
        raise input_error("mode", mode, "one of 'RGB', 'L'")
    if im.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode != "I" or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
        return gray if mode == "L" else np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return gray if mode == "L" else np.repeat(gray[..., None], 3, axis=2)

    if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("LA" if im.mode in ("LA", "La") else "RGBA")
        a = np.asarray(rgba.getchannel("A"))
        if a.min(initial=255) < 255 and alpha == "error":
            raise input_error(
                "image", name, "an image without transparency (this one has an alpha channel in use; flatten it first)"
            )
        im = rgba.convert("RGB") if rgba.mode == "RGBA" else rgba.convert("L")
    im = im.convert(mode)
    return np.asarray(im, dtype=np.float32) / 255.0


def to_tensor(image: ImageLike) -> torch.Tensor:
    """PIL / numpy (H,W[,C]) in [0,1] or uint8 / tensor → float32 tensor (C,H,W) in [0,1]."""
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim == 2:
            t = t[None]
        return t
    if isinstance(image, Image.Image):
        # 16-bit / float / alpha images go through the same rules as files (not a clipping 8-bit convert)
        arr = pil_to_array(image, mode="L" if image.mode == "L" else "RGB", alpha="drop")
    else:
        arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_image(path: str | os.PathLike, mode: Mode = "RGB", alpha: AlphaPolicy = "error") -> torch.Tensor:
    """Read a file into a (C,H,W) float tensor in [0,1]."""
    return to_tensor(read_array(path, mode=mode, alpha=alpha))


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C,H,W) tensor or (H,W[,C]) array in [0,1] → (H,W,C) / (H,W) uint8, rounded (exact inverse of /255).

    uint8 input is already on the 8-bit scale and is returned as is (only a trailing channel of 1 dropped).
    """
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:  # already 8-bit: keep the values (do not treat 0..255 as [0,1])
            arr = image.detach().cpu().numpy()
            arr = arr.transpose(1, 2, 0) if arr.ndim == 3 else arr
            return np.ascontiguousarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
        arr = image.detach().cpu().float().numpy()
        arr = arr.transpose(1, 2, 0) if arr.ndim == 3 else arr
    else:
        if np.asarray(image).dtype == np.uint8:  # already 8-bit (as to_tensor reads it): keep the values
            arr = np.asarray(image)
            return arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
        arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    arr = to_uint8(image)
    return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round a [0,1] tensor to the 8-bit grid, as saving and reloading a PNG would."""
    return torch.round(image.clamp(0, 1) * 255.0) / 255.0


def save_image(image: ImageLike, path: str | os.PathLike) -> Path:
    """Write an image atomically (temp file + rename): a killed writer never leaves a half file."""
    path = Path(path)
    pil = image if isinstance(image, Image.Image) else to_pil(image if isinstance(image, torch.Tensor) else np.asarray(image))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise input_error("path", str(path), f"a file name ending in one of {', '.join(IMAGE_EXTENSIONS)}")
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt)
    return path


def to_model_space(image: torch.Tensor) -> torch.Tensor:
    """[0,1] → [-1,1]."""
    return image * 2.0 - 1.0


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] → [0,1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def to_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Gray → RGB by repeating the channel: (1,H,W) / (B,1,H,W) → 3 channels; 3-channel input unchanged (float)."""
    x = images.float()
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        raise input_error(name, tuple(images.shape), "(C,H,W) or (B,C,H,W) with C = 1 or 3")
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]) if x.shape[-3] == 1 else x


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """RGB → gray as the mean of the channels (keeping a channel axis of 1): (C,H,W) or (B,C,H,W)."""
    return images.mean(dim=-3, keepdim=True)


def as_batch(images: ImageLike | list, mode: Mode = "RGB", name: str = "image") -> torch.Tensor:
    """Accept a PIL image, a list of them, a (C,H,W) or (B,C,H,W) tensor in [0,1]; return (B,C,H,W) float32.

    Values outside [0,1] raise: public boundaries take [0,1] images, not model-space ones.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise input_error(name, images, "a non-empty list of images")
        parts = [as_batch(im, mode=mode, name=name) for im in images]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise input_error(name, sorted(shapes), "images of one size and channel count")
        return torch.cat(parts)
    if isinstance(images, Image.Image):
        images = pil_to_array(images, mode=mode, alpha="drop", name=name)
    t = to_tensor(images) if not isinstance(images, torch.Tensor) else images.float()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise input_error(name, tuple(t.shape), "(C,H,W) or (B,C,H,W)")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise input_error(f"{name} range", (float(t.min()), float(t.max())), "values in [0,1]")
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or inf; allowed: finite values in [0,1]")
    return t


def high_pass(images: torch.Tensor, kernel: int = 5) -> torch.Tensor:
    """(B,C,H,W) or (C,H,W) images minus their ``kernel``×``kernel`` box blur (edges replicated): the grain."""
    import torch.nn.functional as F

    x = images if images.dim() == 4 else images[None]
    p = kernel // 2
    blur = F.avg_pool2d(F.pad(x, (p, p, p, p), mode="replicate"), kernel, stride=1)
    out = x - blur
    return out if images.dim() == 4 else out[0]


def add_grain(images: torch.Tensor, source: torch.Tensor, where: torch.Tensor, amount: float) -> torch.Tensor:
    """``images`` with ``amount`` × the grain of ``source`` (:func:`high_pass`) added where ``where`` is True
    (broadcast over channels), clamped to [0, 1]; elsewhere unchanged. The pipelines' ``grain_transfer``."""
    if not amount:
        return images
    return torch.where(where, (images + amount * high_pass(source)).clamp(0, 1), images)


def convert_output(images: torch.Tensor, output_type: str):
    """Pipeline results (B,3,H,W) in [0,1] → ``"pt"`` (unchanged), ``"np"`` (B,H,W,3) uint8 or ``"pil"`` (list)."""
    if output_type == "np":
        return np.stack([to_uint8(o) for o in images])
    if output_type == "pil":
        return [to_pil(o) for o in images]
    return images
