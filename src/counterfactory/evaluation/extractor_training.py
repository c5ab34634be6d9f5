"""Self-supervised (plus optional type-label) training of the :class:`CompactExtractor` on a dataset's images."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import input_error
from ..io.images import to_rgb
from .extractors import CompactExtractor, CompactExtractorConfig, resize_square


def _random_box(h: int, w: int, min_scale: float, g: torch.Generator) -> tuple[float, float, float, float]:
    """A random box (cx, cy, bw, bh): area fraction in [min_scale, 1] (log-uniform), aspect in [3/4, 4/3]."""
    u = torch.rand(4, generator=g).tolist()
    area = h * w * math.exp(math.log(min_scale) * (1 - u[0]))
    aspect = math.exp(math.log(3 / 4) + u[1] * (math.log(4 / 3) - math.log(3 / 4)))
    bw = min(w, max(4.0, math.sqrt(area * aspect)))
    bh = min(h, max(4.0, math.sqrt(area / aspect)))
    return bw / 2 + u[2] * (w - bw), bh / 2 + u[3] * (h - bh), bw, bh


def _view_of(img: torch.Tensor, box, size: int, jitter: float, g: torch.Generator) -> torch.Tensor:
    """The box, shifted by up to ``jitter`` × its side and rescaled by up to (1 + jitter), cropped → (C,size,size)."""
    _, h, w = img.shape
    cx, cy, bw, bh = box
    u = torch.rand(3, generator=g).tolist()
    s = math.exp((2 * u[0] - 1) * math.log(1 + jitter))
    bw, bh = min(w, max(4.0, bw * s)), min(h, max(4.0, bh * s))
    cx += (2 * u[1] - 1) * jitter * bw
    cy += (2 * u[2] - 1) * jitter * bh
    x0 = int(round(min(max(cx - bw / 2, 0), w - bw)))
    y0 = int(round(min(max(cy - bh / 2, 0), h - bh)))
    crop = img[None, :, y0 : y0 + int(round(bh)), x0 : x0 + int(round(bw))]
    return resize_square(crop, size)[0]


def _augment(views: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Batched geometric (flips, 90° rotations) and mild photometric (brightness, contrast, noise) augmentation."""
    b = views.shape[0]
    r = torch.rand(b, 6, generator=g)
    out = torch.where((r[:, 0] < 0.5).view(b, 1, 1, 1), views.flip(-1), views)
    out = torch.where((r[:, 1] < 0.5).view(b, 1, 1, 1), out.flip(-2), out)
    out = torch.where((r[:, 2] < 0.5).view(b, 1, 1, 1), out.transpose(-1, -2), out)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (0.75 + 0.5 * r[:, 3]).view(b, 1, 1, 1)
    bright = (r[:, 4] - 0.5).view(b, 1, 1, 1) * 0.2
    out = (out - mean) * contrast + mean + bright
    noise = torch.randn(out.shape, generator=g) * (0.03 * r[:, 5]).view(b, 1, 1, 1)
    return (out + noise).clamp(0, 1)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _labelled_crop(img: torch.Tensor, mask: torch.Tensor | None, size: int, g: torch.Generator) -> torch.Tensor:
    """A defect-centred crop like the evaluation's crop view (box side × 3, at least 48 px, jittered), or a random
    crop of 48 px .. half the image for a defect-free image."""
    _, h, w = img.shape
    u = torch.rand(4, generator=g).tolist()
    if mask is not None and mask.any():
        ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        side = max(48.0, 3.0 * max(y1 - y0, x1 - x0)) * (0.8 + 0.4 * u[0])
        box = ((x0 + x1) / 2, (y0 + y1) / 2, min(w, side), min(h, side))
        return _view_of(img, box, size, 0.15, g)
    side = 48 + u[0] * max(0.0, min(h, w) / 2 - 48)
    side = min(side, h, w)
    return _view_of(img, (side / 2 + u[1] * (w - side), side / 2 + u[2] * (h - side), side, side), size, 0.0, g)


def train_compact_extractor(
    images: Sequence[torch.Tensor],
    config: CompactExtractorConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
    labelled: Sequence[tuple[torch.Tensor, torch.Tensor | None, int]] | None = None,
) -> tuple[CompactExtractor, TrainLog]:
    """Train a :class:`CompactExtractor` self-supervised on ``images`` ((C,H,W) in [0,1], any sizes).

    Each step draws ``batch_size`` images and one random box in each (from the whole image down to defect-sized
    patches); the two views of a pair are that box, each shifted / rescaled by up to ``view_jitter`` and augmented
    (flips, 90° turns, brightness, contrast, noise). The NT-Xent loss through a small projection head (discarded
    afterwards) teaches the encoder to recognise a patch's structure among other patches: independent crops of
    whole images (SimCLR's usual views) stay near chance on near-identical industrial textures.

    ``labelled`` (optional): ``(image, mask or None, class)`` triples, the real *training* defects with their type
    index (1..K) and defect-free images (class 0). Each step then adds a batch of crops of them, centred on the
    defect like the evaluation's crop view, and a cross-entropy loss through a linear head (discarded afterwards).
    Self-supervision alone did not separate Magnetic Tile defect types better than a random network (see
    docs/benchmarks.md); this weak supervision from the few shots does. Same inputs + config → same weights.
    """
    config = config or CompactExtractorConfig()
    if len(images) < 2:
        raise input_error("images", f"{len(images)} images", "at least 2 images to train the compact extractor")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    pool = []
    for im in images:
        im = to_rgb(im if im.ndim == 4 else im[None])[0]
        h, w = im.shape[-2:]
        s = config.max_train_side / max(h, w)
        if s < 1:
            im = F.interpolate(im[None], size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear",
                               antialias=True, align_corners=False)[0]
        pool.append(im.contiguous())
    model = CompactExtractor(config)
    d = config.num_features
    head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 64))
    n_cls = 1 + max((c for _, _, c in labelled), default=0) if labelled else 0
    cls_head = nn.Linear(d, n_cls) if n_cls >= 2 else None
    params = list(model.parameters()) + list(head.parameters()) + (list(cls_head.parameters()) if cls_head else [])
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / max(1, config.steps)))
    )
    log = TrainLog()
    t0 = time.perf_counter()
    model.train()
    bsz = min(config.batch_size, max(2, len(pool)))
    by_class: dict[int, list] = {}
    for im, m, c in labelled or []:
        by_class.setdefault(int(c), []).append((to_rgb(im if im.ndim == 4 else im[None])[0], m, int(c)))
    if cls_head is not None and sorted(by_class) != list(range(n_cls)):
        raise input_error("labelled classes", sorted(by_class), f"every class 0..{n_cls - 1} present")
    for step in range(config.steps):
        idx = torch.randperm(len(pool), generator=g)[:bsz].tolist()
        boxes = [_random_box(*pool[i].shape[-2:], config.min_crop_scale, g) for i in idx]
        v1 = torch.stack([_view_of(pool[i], b, config.input_size, config.view_jitter, g) for i, b in zip(idx, boxes)])
        v2 = torch.stack([_view_of(pool[i], b, config.input_size, config.view_jitter, g) for i, b in zip(idx, boxes)])
        x = _augment(torch.cat([v1, v2]), g)
        z = head(model.embed(x))
        loss = _nt_xent(z[:bsz], z[bsz:], config.temperature)
        if cls_head is not None:
            # classes equally likely: pick a class, then one of its images
            picks = []
            for _ in range(bsz):
                c = int(torch.randint(n_cls, (1,), generator=g))
                members = by_class[c]
                picks.append(members[int(torch.randint(len(members), (1,), generator=g))])
            xl = _augment(torch.stack([_labelled_crop(im, m, config.input_size, g) for im, m, _ in picks]), g)
            yl = torch.tensor([c for _, _, c in picks])
            loss = loss + F.cross_entropy(cls_head(model.embed(xl)), yl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, log.losses[-1])
    log.seconds = time.perf_counter() - t0
    model.eval()
    return model, log
