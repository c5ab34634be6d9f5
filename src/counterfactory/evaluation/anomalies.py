"""Procedural synthetic-anomaly baselines: Perlin-noise anomalies (DRAEM / anomalib) and copy-paste of real defects.

Both work on one image crop at a time, (C,H,W) float in [0,1], with a ``torch.Generator`` for every random
choice (same generator state → same anomaly), and return ``(image, mask)`` with mask (1,H,W) in {0,1}.

**Perlin** (:func:`perlin_anomaly`) follows DRAEM's augmenter, which anomalib's ``PerlinAnomalyGenerator``
reuses: a 2-D Perlin noise field at a random power-of-two scale, rotated, thresholded at 0.5, gives the
mask; inside it the image is blended with an *anomaly source* texture,
``out = (1−β)·texture + β·image`` with β ~ U(0, 0.8). DRAEM draws the texture from the DTD texture dataset,
which we do not have. Ours is, with equal probability, (a) a random crop of another *defect-free image of
the same dataset*, photometrically altered (gamma, brightness, contrast, inversion, posterize, solarize:
DRAEM's augmenter list minus hue), or (b) a procedural multi-octave Perlin texture. Reports say so.

**Copy-paste** (:func:`copy_paste_anomaly`) cuts a real training defect (its mask's bounding box, the mask
pixels only) and pastes it at a random place of a defect-free crop, after a random flip / 90° rotation,
shifting its intensity by the difference of the local backgrounds (mean of the destination patch minus the
mean of the source pixels around the defect), so a dark crack stays a dark crack on a brighter tile.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.augment import dihedral
from ..errors import input_error


def _rand(g: torch.Generator, *shape) -> torch.Tensor:
    return torch.rand(shape, generator=g) if shape else torch.rand((), generator=g)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=g))


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """2-D Perlin noise (H,W) in about [−1, 1] with ``res`` lattice cells per axis (any H, W)."""
    h, w = shape
    ry, rx = res
    # compute on a lattice-aligned canvas, then crop
    dy, dx = math.ceil(h / ry), math.ceil(w / rx)
    H, W = dy * ry, dx * rx
    angles = 2 * math.pi * _rand(g, ry + 1, rx + 1)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (ry+1, rx+1, 2)
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) / dy
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / dx
    yi, xi = ys.floor().long(), xs.floor().long()
    fy, fx = ys - yi, xs - xi
    fy, fx = fy[:, None].expand(H, W), fx[None, :].expand(H, W)
    yi, xi = yi[:, None].expand(H, W), xi[None, :].expand(H, W)

    def dot(oy: int, ox: int) -> torch.Tensor:
        gr = grads[yi + oy, xi + ox]
        return gr[..., 0] * (fy - oy) + gr[..., 1] * (fx - ox)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    ty, tx = fade(fy), fade(fx)
    n0 = torch.lerp(dot(0, 0), dot(0, 1), tx)
    n1 = torch.lerp(dot(1, 0), dot(1, 1), tx)
    return (math.sqrt(2) * torch.lerp(n0, n1, ty))[:h, :w]


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (H,W) about its centre (bilinear, reflection padding)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, *x.shape], align_corners=False)
    return F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0, 0]


def perlin_mask(shape: tuple[int, int], g: torch.Generator, max_scale_log2: int = 4, threshold: float = 0.5,
                tries: int = 10) -> torch.Tensor:
    """A non-empty binary (1,H,W) mask from thresholded, rotated Perlin noise (DRAEM's recipe)."""
    for _ in range(tries):
        sy = 2 ** _randint(g, 0, max_scale_log2 + 1)
        sx = 2 ** _randint(g, 0, max_scale_log2 + 1)
        n = _rotate(perlin_noise(shape, (sy, sx), g), float(_rand(g) * 180 - 90))
        m = (n > threshold).float()
        if m.sum() >= 4:
            return m[None]
    # rare: fall back to the top 2% of the last noise field
    q = torch.quantile(n.flatten(), 0.98)
    return (n >= q).float()[None]


def perlin_texture(shape: tuple[int, int], channels: int, g: torch.Generator, gray: bool = False) -> torch.Tensor:
    """A procedural multi-octave Perlin texture (C,H,W) in [0,1] (the stand-in for a DTD texture); ``gray``:
    the same values in every channel (for grayscale datasets, where a colour tint would be a give-away)."""
    base = _randint(g, 1, 4)
    acc = torch.zeros(shape)
    amp, total = 1.0, 0.0
    for o in range(4):
        r = base * 2**o
        acc += amp * perlin_noise(shape, (r, r), g)
        total += amp
        amp *= 0.5
    acc = acc / total
    acc = (acc - acc.min()) / (acc.max() - acc.min() + 1e-6)
    tint = 0.6 + 0.4 * _rand(g, channels)
    if gray:
        tint = tint[:1].expand(channels)
    return (acc[None] * tint[:, None, None]).clamp(0, 1)


def _photometric(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Apply three of DRAEM's photometric augmenters (hue left out: most industrial images are gray)."""
    ops = torch.randperm(6, generator=g)[:3].tolist()
    for op in ops:
        if op == 0:  # gamma contrast
            x = x.clamp(0, 1) ** float(0.5 + 1.5 * _rand(g))
        elif op == 1:  # multiply brightness
            x = x * float(0.8 + 0.4 * _rand(g))
        elif op == 2:  # contrast about the mean
            m = x.mean()
            x = (x - m) * float(0.5 + 1.5 * _rand(g)) + m
        elif op == 3:  # invert
            x = 1 - x
        elif op == 4:  # posterize to 2..4 bits
            levels = 2 ** _randint(g, 2, 5)
            x = torch.floor(x.clamp(0, 1) * (levels - 1) + 0.5) / (levels - 1)
        else:  # solarize
            x = torch.where(x > 0.5, 1 - x, x)
    return x.clamp(0, 1)


def perlin_anomaly(
    image: torch.Tensor, g: torch.Generator, texture_pool: list[torch.Tensor] | None = None, max_beta: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM-style Perlin anomaly on ``image`` (C,H,W). ``texture_pool``: defect-free images to cut textures from
    (with probability ½, else a procedural texture). Returns ``(anomalous image, mask (1,H,W))``."""
    if image.ndim != 3:
        raise input_error("image", tuple(image.shape), "(C,H,W)")
    c, h, w = image.shape
    mask = perlin_mask((h, w), g, max_scale_log2=max(0, min(4, int(math.log2(max(2, min(h, w) // 4))))))
    if texture_pool and _rand(g) < 0.5:
        src = texture_pool[_randint(g, 0, len(texture_pool))]
        src = src.float() / 255.0 if src.dtype == torch.uint8 else src.float()
        sh, sw = src.shape[-2:]
        if sh < h or sw < w:
            src = F.interpolate(src[None], size=(max(h, sh), max(w, sw)), mode="bilinear", align_corners=False)[0]
            sh, sw = src.shape[-2:]
        y0, x0 = _randint(g, 0, sh - h + 1), _randint(g, 0, sw - w + 1)
        tex = src[:c, y0 : y0 + h, x0 : x0 + w]
        if tex.shape[0] != c:
            tex = tex[:1].expand(c, -1, -1)
        tex = _photometric(tex, g)
    else:
        gray = c > 1 and bool((image[1:] == image[:1]).all())
        tex = perlin_texture((h, w), c, g, gray=gray)
    beta = float(_rand(g) * max_beta)
    out = image * (1 - mask) + ((1 - beta) * tex + beta * image) * mask
    return out.clamp(0, 1), mask


def _rand_dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return dihedral(x, _randint(g, 0, 8))


def copy_paste_anomaly(
    image: torch.Tensor, defect_image: torch.Tensor, defect_mask: torch.Tensor, g: torch.Generator, ring: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the masked pixels of a real defect onto ``image`` (C,H,W) at a random place (see module doc)."""
    if defect_mask.ndim == 2:
        defect_mask = defect_mask[None]
    ys, xs = torch.nonzero(defect_mask[0] > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise input_error("defect_mask", "empty", "a mask with defect pixels")
    c, h, w = image.shape
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    # background estimate: pixels around the defect (box grown by `ring`) that are not defect
    ry0, ry1 = max(0, y0 - ring), min(defect_image.shape[-2], y1 + ring)
    rx0, rx1 = max(0, x0 - ring), min(defect_image.shape[-1], x1 + ring)
    di = defect_image[:c].float() if defect_image.shape[0] >= c else defect_image[:1].float().expand(c, -1, -1)
    di = di / 255.0 if defect_image.dtype == torch.uint8 else di
    region_m = defect_mask[0, ry0:ry1, rx0:rx1] > 0.5
    region = di[:, ry0:ry1, rx0:rx1]
    bg = region[:, ~region_m]
    src_bg = bg.mean(dim=1) if bg.numel() else region.mean(dim=(1, 2))
    patch = _rand_dihedral(torch.cat([di[:, y0:y1, x0:x1], defect_mask[:1, y0:y1, x0:x1].float()]), g)
    ph, pw = patch.shape[-2:]
    if ph > h or pw > w:  # defect larger than the crop: take a random window of it that holds defect pixels
        for _ in range(20):
            oy, ox = _randint(g, 0, max(1, ph - h + 1)), _randint(g, 0, max(1, pw - w + 1))
            cand = patch[:, oy : oy + min(h, ph), ox : ox + min(w, pw)]
            if cand[-1].sum() > 0:
                break
        patch = cand
        ph, pw = patch.shape[-2:]
    py, px = _randint(g, 0, h - ph + 1), _randint(g, 0, w - pw + 1)
    m = (patch[-1:] > 0.5).float()
    dst = image[:, py : py + ph, px : px + pw]
    dst_bg = dst.mean(dim=(1, 2))
    pix = (patch[:-1] - src_bg[:, None, None] + dst_bg[:, None, None]).clamp(0, 1)
    out = image.clone()
    out[:, py : py + ph, px : px + pw] = dst * (1 - m) + pix * m
    mask = torch.zeros(1, h, w)
    mask[:, py : py + ph, px : px + pw] = m
    return out, mask


def write_baseline_folder(
    data: str,
    out: str,
    kind: str,
    split: str | None = None,
    n_per_type: int = 100,
    window: int = 64,
    seed: int = 0,
) -> int:
    """Write Perlin or copy-paste anomalies on the split's defect-free *training* images as a generated folder
    (anomalib Folder layout + ``manifest.jsonl`` with ``source_image``), so ``evaluate`` can score the
    procedural baselines exactly like any generator. Perlin anomalies are made in a random ``window``-px
    square of the image (as in the downstream benchmark); copy-paste pastes a training defect of the type
    at a random place of the whole image. Returns the number of pairs written."""
    import json
    from pathlib import Path

    from ..data import GOOD, few_shot_split, load_split, open_dataset
    from ..io.images import load_image, save_image
    from ..io.manifest import atomic_write_text

    if kind not in ("perlin", "copypaste"):
        raise input_error("kind", kind, "'perlin' or 'copypaste'")
    ds = open_dataset(data)
    sp = load_split(split) if split else few_shot_split(ds)
    goods = sp.samples(ds, "train", GOOD)
    out_p = Path(out)
    lines = []
    for ti, t in enumerate(ds.defect_types):
        shots = [(s.load_image(), s.load_mask()) for s in sp.samples(ds, "train", t)]
        for i in range(n_per_type):
            g = torch.Generator().manual_seed(seed * 1_000_003 + ti * 10_007 + i)
            src = goods[_randint(g, 0, len(goods))]
            img = load_image(src.image_path)
            if kind == "perlin":
                h, w = img.shape[-2:]
                c = min(window, h, w)
                y, x = _randint(g, 0, h - c + 1), _randint(g, 0, w - c + 1)
                patch, pm = perlin_anomaly(img[:, y : y + c, x : x + c], g, texture_pool=None)
                new = img.clone()
                new[:, y : y + c, x : x + c] = patch
                mask = torch.zeros(1, h, w)
                mask[:, y : y + c, x : x + c] = pm
            else:
                di, dm = shots[_randint(g, 0, len(shots))]
                new, mask = copy_paste_anomaly(img, di, dm, g)
            gid = f"{kind}_{t}_{i:04d}"
            save_image(new, out_p / t / f"{gid}.png")
            save_image(mask[0], out_p / "ground_truth" / t / f"{gid}_mask.png")
            lines.append(json.dumps({"id": gid, "type": t, "source_image": str(src.image_path), "mask_source": kind,
                                     "seed": seed, "index": i}, sort_keys=True))
    atomic_write_text(out_p / "manifest.jsonl", "\n".join(lines) + "\n")
    return len(lines)
