"""Pluggable image feature extractors: any ``nn.Module`` that maps images to vectors.

Every extractor here is a :class:`FeatureExtractor`: ``forward(images)`` takes a float batch (B,3,H,W) in
[0,1] of any size (it resizes internally to ``input_size``) and returns (B, ``num_features``) float32.
``num_features`` makes it a valid ``feature=`` for torchmetrics' ``FrechetInceptionDistance``.
``name`` is what every distribution metric is named after (``FD_compact``, ``KID_dinov2`` ...); only the
Inception network yields ``FID``.

Kinds:

- ``compact``: :class:`CompactExtractor`, a ~0.3M-parameter conv encoder this project trains itself,
  self-supervised (SimCLR-style contrastive loss on two augmented random crops of the same image) on the
  dataset's own images, in a few CPU minutes; deterministic by seed; saved as ``model.safetensors`` +
  ``config.json``. See :func:`train_compact_extractor`.
- ``inception``: the standard FID Inception-v3, from a local TorchScript file only: NVIDIA's
  ``inception-2015-12-05.pt`` (the file StyleGAN2-ADA and clean-fid use; called as
  ``net(uint8 images, return_features=True)`` → 2048-d pool features, resizing to 299 internally).
  We never download it.
- ``clip``: a CLIP vision tower from a local transformers folder (``CLIPVisionModelWithProjection`` or a full
  ``CLIPModel`` checkpoint); features are the projected image embeddings.
- ``dinov2``: a DINOv2 backbone from a local transformers folder (``Dinov2Model``); features are the CLS
  token after the final layer norm (``pooler_output``).

Both transformers kinds load with ``local_files_only=True``; a wrong path is an :class:`InputError` that
says what the folder must contain. Images are resized to a square (no crop) before every extractor.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import input_error

EXTRACTOR_KINDS = ("compact", "inception", "clip", "dinov2")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B,C,H,W) → (B,C,size,size), bilinear with antialiasing (no-op when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise input_error("images", tuple(images.shape), "(B,1,H,W) or (B,3,H,W) in [0,1]")
    images = images.float()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FeatureExtractor(nn.Module):
    """Base class: images (B,{1,3},H,W) in [0,1], any size → features (B, num_features) float32."""

    name: str = "features"
    num_features: int = 0
    input_size: int = 64

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return resize_square(_as_rgb(images), self.input_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.preprocess(images)).float()

    @torch.no_grad()
    def extract(self, images: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Features of a list of (C,H,W) images of possibly different sizes (each resized), in eval mode."""
        was = self.training
        self.eval()
        out = []
        items = list(images) if not isinstance(images, torch.Tensor) else list(images.unbind(0))
        for i in range(0, len(items), batch_size):
            chunk = [self.preprocess(im if im.ndim == 4 else im[None]) for im in items[i : i + batch_size]]
            out.append(self.embed(torch.cat(chunk)).float())
        self.train(was)
        if not out:
            return torch.zeros(0, self.num_features)
        return torch.cat(out)


# --------------------------------------------------------------------------------------------------------
# compact, self-supervised domain extractor
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompactExtractorConfig:
    input_size: int = 64  # images are resized to input_size² before the encoder
    channels: tuple[int, ...] = (16, 32, 64, 128)  # stem (stride 2) then one stride-2 stage per entry after it
    num_features: int = 128  # = channels[-1]; the pooled output is the feature
    groups: int = 8  # GroupNorm groups
    # self-supervised training (SimCLR / NT-Xent on two views of the same image)
    steps: int = 500  # ≈ 90 s on one CPU thread
    batch_size: int = 48  # images per step (2 views each)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    min_crop_scale: float = 0.02  # area fraction of the smallest random crop (defect-sized views)
    view_jitter: float = 0.25  # the two views of a pair: the same box shifted / rescaled by up to this fraction
    max_train_side: int = 256  # training images are downscaled so the longer side is at most this
    seed: int = 0

    def __post_init__(self):
        if self.input_size < 16 or self.input_size % 16:
            raise input_error("input_size", self.input_size, "a multiple of 16, at least 16")
        if len(self.channels) < 2 or any(c % self.groups for c in self.channels):
            raise input_error("channels", self.channels, f"at least 2 widths, each divisible by groups={self.groups}")
        if self.num_features != self.channels[-1]:
            raise input_error("num_features", self.num_features, f"equal to channels[-1]={self.channels[-1]}")
        if self.steps < 0 or self.batch_size < 2:
            raise input_error("steps/batch_size", (self.steps, self.batch_size), "steps >= 0 and batch_size >= 2")
        if not 0 < self.min_crop_scale <= 1:
            raise input_error("min_crop_scale", self.min_crop_scale, "a number in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict) -> CompactExtractorConfig:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


def _block(cin: int, cout: int, groups: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
    )


class CompactExtractor(FeatureExtractor):
    """Small conv encoder: stride-2 stem, stride-2 stages, global average pool → ``num_features``."""

    name = "compact"

    def __init__(self, config: CompactExtractorConfig | None = None):
        super().__init__()
        self.config = config or CompactExtractorConfig()
        c = self.config
        self.input_size = c.input_size
        self.num_features = c.num_features
        self.stem = nn.Sequential(nn.Conv2d(3, c.channels[0], 4, stride=2, padding=1), nn.GroupNorm(c.groups, c.channels[0]), nn.GELU())
        self.stages = nn.Sequential(
            *[_block(c.channels[i], c.channels[i + 1], c.groups, stride=2) for i in range(len(c.channels) - 1)]
        )
        self.register_buffer("_mean", torch.tensor(0.5), persistent=False)
        self.register_buffer("_std", torch.tensor(0.25), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self._mean) / self._std
        return self.stages(self.stem(x)).mean(dim=(2, 3))


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
        im = _as_rgb(im)[0]
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
        by_class.setdefault(int(c), []).append((_as_rgb(im)[0], m, int(c)))
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


def save_compact_extractor(model: CompactExtractor, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (config, plus ``extra`` training facts) into ``directory``."""
    from safetensors.torch import save_file

    from ..io.manifest import atomic_path, atomic_write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"kind": "counterfactory.compact_extractor"})
    cfg = asdict(model.config)
    atomic_write_json(directory / "config.json", {"kind": "compact_extractor", "config": cfg, **(extra or {})})
    return directory


def load_compact_extractor(path: str | os.PathLike) -> CompactExtractor:
    """Load from a folder holding ``model.safetensors`` + ``config.json`` (or the .safetensors file itself)."""
    from safetensors.torch import load_file

    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    weights, cfg_path = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not cfg_path.is_file():
        raise input_error(
            "--extractor-weights", str(path), "a folder with model.safetensors + config.json written by the compact extractor"
        )
    try:
        meta = json.loads(cfg_path.read_text())
        if meta.get("kind") != "compact_extractor":
            raise ValueError(f"config.json kind is {meta.get('kind')!r}")
        model = CompactExtractor(CompactExtractorConfig.from_dict(meta["config"]))
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # noqa: BLE001 - any failure here means "not our checkpoint"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise input_error("--extractor-weights", str(path), f"a compact extractor checkpoint ({msg})") from None
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# pretrained extractors, local files only
# --------------------------------------------------------------------------------------------------------
class InceptionExtractor(FeatureExtractor):
    """The FID Inception-v3 from a local TorchScript file (NVIDIA ``inception-2015-12-05.pt``)."""

    name = "inception"

    def __init__(self, net: torch.jit.ScriptModule, num_features: int):
        super().__init__()
        self.net = net
        self.num_features = num_features
        self.input_size = 299

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8)
        return self.net(u8, return_features=True)


def load_inception(path: str | os.PathLike) -> InceptionExtractor:
    p = Path(path)
    hint = "a local TorchScript Inception file such as inception-2015-12-05.pt (called as net(uint8, return_features=True))"
    if not p.is_file():
        raise input_error("--extractor-weights", str(path), hint)
    try:
        net = torch.jit.load(str(p), map_location="cpu").eval()
        with torch.no_grad():
            probe = net(torch.zeros(1, 3, 299, 299, dtype=torch.uint8), return_features=True)
        dim = int(probe.shape[-1])
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise input_error("--extractor-weights", str(path), f"{hint} ({msg[:160]})") from None
    return InceptionExtractor(net, dim)


def _local_folder(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise input_error(
            "--extractor-weights", str(path),
            f"a local transformers folder for {what} (config.json + model.safetensors, e.g. from save_pretrained); nothing is downloaded",
        )
    return p


def _preproc_stats(folder: Path, default_mean, default_std, default_size: int) -> tuple[tuple, tuple, int]:
    f = folder / "preprocessor_config.json"
    mean, std, size = default_mean, default_std, default_size
    if f.is_file():
        try:
            d = json.loads(f.read_text())
            mean = tuple(d.get("image_mean", mean))
            std = tuple(d.get("image_std", std))
            crop = d.get("crop_size")
            if isinstance(crop, dict):
                crop = crop.get("height") or crop.get("shortest_edge")
            if isinstance(crop, int):
                size = crop
        except (ValueError, OSError):
            pass
    return mean, std, size


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (ValueError, OSError) as exc:
        raise input_error("--extractor-weights", str(folder), f"a folder with a readable config.json ({exc})") from None


def _load_hf(cls, folder: Path, what: str):
    """``cls.from_pretrained(folder, local_files_only=True)``; any missing weight is an error, never random init."""
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise input_error("--extractor-weights", str(folder), f"a loadable {what} folder ({msg[:160]})") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise input_error(
            "--extractor-weights", str(folder), f"a complete {what} checkpoint ({len(missing)} weights missing, e.g. {missing[0]})"
        )
    return model.eval()


class _NormalizedHF(FeatureExtractor):
    def __init__(self, model: nn.Module, name: str, num_features: int, size: int, mean, std, head: Callable):
        super().__init__()
        self.model = model
        self.name = name
        self.num_features = int(num_features)
        self.input_size = int(size)
        self._head = head
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self.model, (x - self._mean) / self._std)


def _clip_full_head(model, pixel_values):
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def _clip_vision_head(model, pixel_values):
    return model(pixel_values=pixel_values).image_embeds


def _dino_head(model, pixel_values):
    return model(pixel_values=pixel_values).pooler_output


def load_clip(path: str | os.PathLike) -> FeatureExtractor:
    """CLIP image encoder (projected image embeddings) from a local folder: a ``CLIPModel`` or a
    ``CLIPVisionModelWithProjection`` checkpoint. Images are resized to ``vision_config.image_size``."""
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    folder = _local_folder(path, "CLIP")
    kind = _model_type(folder)
    if kind == "clip":
        model = _load_hf(CLIPModel, folder, "CLIP")
        vc, dim, head = model.config.vision_config, model.config.projection_dim, _clip_full_head
    elif kind == "clip_vision_model":
        model = _load_hf(CLIPVisionModelWithProjection, folder, "CLIP vision")
        vc, dim, head = model.config, model.config.projection_dim, _clip_vision_head
    else:
        raise input_error("--extractor-weights", str(folder), f"a CLIP folder (config model_type is {kind!r}, not 'clip')")
    mean, std, _ = _preproc_stats(folder, _CLIP_MEAN, _CLIP_STD, vc.image_size)
    return _NormalizedHF(model, "clip", dim, vc.image_size, mean, std, head)


def load_dinov2(path: str | os.PathLike) -> FeatureExtractor:
    """DINOv2 backbone (CLS token after the last layer norm, ``pooler_output``) from a local folder.
    Images are resized to the preprocessor's crop size (224 by default), a multiple of the patch size."""
    from transformers import Dinov2Model

    folder = _local_folder(path, "DINOv2")
    kind = _model_type(folder)
    if kind != "dinov2":
        raise input_error("--extractor-weights", str(folder), f"a DINOv2 folder (config model_type is {kind!r}, not 'dinov2')")
    model = _load_hf(Dinov2Model, folder, "DINOv2")
    c = model.config
    mean, std, size = _preproc_stats(folder, _IMAGENET_MEAN, _IMAGENET_STD, min(224, c.image_size))
    size = max(c.patch_size, (size // c.patch_size) * c.patch_size)
    return _NormalizedHF(model, "dinov2", c.hidden_size, size, mean, std, _dino_head)


def load_extractor(kind: str, weights: str | os.PathLike | None) -> FeatureExtractor:
    """Load an extractor of ``kind`` from local ``weights`` (a compact checkpoint, TorchScript file or HF folder)."""
    if kind not in EXTRACTOR_KINDS:
        raise input_error("--extractor", kind, f"one of {', '.join(EXTRACTOR_KINDS)}")
    if weights is None:
        raise input_error("--extractor-weights", None, f"a local weights path for the {kind} extractor (nothing is downloaded)")
    loader = {"compact": load_compact_extractor, "inception": load_inception, "clip": load_clip, "dinov2": load_dinov2}[kind]
    return loader(weights)


def distribution_prefix(extractor: FeatureExtractor) -> str:
    """``"FID"`` for the Inception network, else ``"FD_<name>"``."""
    return "FID" if extractor.name == "inception" else f"FD_{extractor.name}"
