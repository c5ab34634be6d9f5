"""The frozen anticausal predictors that guide counterfactual fine-tuning, trained on real images only.

- :class:`Regressor`: image → (area_k, intensity_k) for every structure, in normalised units (Reg-CFT's guide).
- :class:`Segmentor`: image → per-pixel class logits (0 background, k+1 digit k); the soft area of structure k
  is the sum of its class probabilities (Seg-CFT's guide). Its target is the foreground rule of
  data/morphomnist.py.

Their own accuracy on the test split is measured by :func:`predictor_accuracy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..data.morphomnist import label_map
from ..errors import input_error
from .scm import ParentSCM


@dataclass(frozen=True)
class PredictorConfig:
    height: int = 28
    width: int = 28
    num_structures: int = 1
    channels: int = 8  # first conv width (second: twice as many)

    def __post_init__(self):
        if self.height % 4 or self.width % 4:
            raise input_error("height/width", (self.height, self.width), "multiples of 4")
        if self.num_structures < 1 or self.channels < 1:
            raise input_error("num_structures/channels", (self.num_structures, self.channels), "positive integers")

    def to_dict(self) -> dict:
        return asdict(self)


class Regressor(nn.Module):
    """CNN: (B,1,H,W) in [0,1] → (B, 2K): normalised [area_0..area_K-1, intensity_0..intensity_K-1]."""

    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = c = config
        ch = c.channels
        self.net = nn.Sequential(
            nn.Conv2d(1, ch, 3, 1, 1), nn.SiLU(), nn.Conv2d(ch, ch, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(ch, 2 * ch, 3, 1, 1), nn.SiLU(), nn.Conv2d(2 * ch, 2 * ch, 4, 2, 1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * ch * (c.height // 4) * (c.width // 4), 128), nn.SiLU(),
            nn.Linear(128, 2 * c.num_structures),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class Segmentor(nn.Module):
    """Small U-Net: (B,1,H,W) → (B, K+1, H, W) logits."""

    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = c = config
        ch = c.channels
        # with several structures the class of a pixel depends on where it is (digit k = columns 28k..): a
        # convolution cannot see that, so a column-coordinate channel is added (CoordConv)
        self.coords = c.num_structures > 1
        self.e1 = nn.Sequential(nn.Conv2d(2 if self.coords else 1, ch, 3, 1, 1), nn.SiLU())
        self.e2 = nn.Sequential(nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.SiLU(), nn.Conv2d(2 * ch, 2 * ch, 3, 1, 1), nn.SiLU())
        self.up = nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1)
        self.d1 = nn.Conv2d(2 * ch, c.num_structures + 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x * 2 - 1
        if self.coords:
            col = torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, x.shape[2], -1)
            inp = torch.cat([inp, col], dim=1)
        h1 = self.e1(inp)
        h2 = self.e2(h1)
        return self.d1(torch.cat([h1, F.silu(self.up(h2))], dim=1))

    def soft_area(self, x: torch.Tensor) -> torch.Tensor:
        """(B,K) differentiable area: sum over pixels of P(class = structure k)."""
        return self.forward(x).softmax(dim=1)[:, 1:].flatten(2).sum(-1)


def regressor_targets(scm: ParentSCM, area: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    return torch.cat([scm.norm_area(area), scm.norm_int(intensity)], dim=1)


def regressor_decode(scm: ParentSCM, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised regressor output → (area, intensity) in pixels and 0..255."""
    k = out.shape[1] // 2
    return out[:, :k] * scm.area_std + scm.area_mean, out[:, k:] * scm.int_std + scm.int_mean


def regressor_loss(model: Regressor, scm: ParentSCM, x, area, intensity) -> torch.Tensor:
    return F.mse_loss(model(x), regressor_targets(scm, area, intensity))


def segmentor_loss(model: Segmentor, scm: ParentSCM, x, area, intensity) -> torch.Tensor:
    return F.cross_entropy(model(x), label_map(x, model.config.num_structures))


@torch.no_grad()
def crosstalk(read_area, x: torch.Tensor, area: torch.Tensor, batch: int = 500) -> float:
    """How much a predictor's area reading of structure k follows the *other* structure (pixels per pixel).

    The other structure's columns are swapped for those of another image (the next one); the slope of the
    change in the reading of structure k on the change in the other's true area, pooled over images and k.
    0: the reading ignores the other structure (as it should); 1: it moves one for one with it.
    """
    from ..data.morphomnist import structure_columns

    K = area.shape[1]
    cols = structure_columns(K)
    perm = torch.roll(torch.arange(len(x)), 1)
    num = den = 0.0
    for k in range(K):
        for j in range(K):
            if j == k:
                continue
            swapped = x.clone()
            swapped[:, :, :, cols[j]] = x[perm][:, :, :, cols[j]]
            d_read = torch.cat([read_area(swapped[s : s + batch])[:, k] - read_area(x[s : s + batch])[:, k]
                                for s in range(0, len(x), batch)])  # fmt: skip
            d_true = area[perm, j] - area[:, j]
            num += float((d_read * d_true).sum())
            den += float((d_true * d_true).sum())
    return num / den if den > 0 else 0.0


@torch.no_grad()
def predictor_accuracy(regressor: Regressor, segmentor: Segmentor, scm: ParentSCM, x, area, intensity, batch: int = 500) -> dict:
    """Test-split accuracy: regressor MAE (area px, intensity /255), segmentor Dice and soft-area MAE / MAPE."""
    regressor.eval()
    segmentor.eval()
    K = area.shape[1]
    ra, ri, sa, inter, union_sum = [], [], [], torch.zeros(K), torch.zeros(K)
    for s in range(0, len(x), batch):
        xb = x[s : s + batch]
        a, i = regressor_decode(scm, regressor(xb))
        ra.append(a)
        ri.append(i)
        logits = segmentor(xb)
        sa.append(logits.softmax(1)[:, 1:].flatten(2).sum(-1))
        pred, lab = logits.argmax(1), label_map(xb, K)
        for k in range(K):
            p, t = pred == k + 1, lab == k + 1
            inter[k] += (p & t).sum()
            union_sum[k] += p.sum() + t.sum()
    ra, ri, sa = torch.cat(ra), torch.cat(ri), torch.cat(sa)
    extra = {}
    if K > 1:
        extra = {"regressor_crosstalk": crosstalk(lambda im: regressor_decode(scm, regressor(im))[0], x, area, batch),
                 "segmentor_crosstalk": crosstalk(segmentor.soft_area, x, area, batch)}
    return {**extra,
        "regressor_area_mae": float((ra - area).abs().mean()),
        "regressor_area_mape": float(((ra - area).abs() / area).mean() * 100),
        "regressor_intensity_mae": float((ri - intensity).abs().mean()),
        "segmentor_dice": float((2 * inter / union_sum.clamp(min=1)).mean()),
        "segmentor_area_mae": float((sa - area).abs().mean()),
        "segmentor_area_mape": float(((sa - area).abs() / area).mean() * 100),
    }
