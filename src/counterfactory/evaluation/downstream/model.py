"""The downstream segmenter: a small U-Net and its loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin, cout, groups=4):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU())


class SmallUNet(nn.Module):
    """A small U-Net: image (B,3,H,W) in [0,1] → defect logits (B,1,H,W); any H, W (padded internally)."""

    def __init__(self, channels: tuple[int, ...] = (12, 24, 48)):
        super().__init__()
        self.channels = channels
        self.down = nn.ModuleList()
        cin = 3
        for c in channels:
            self.down.append(_conv(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_skip, c_deep in zip(reversed(channels[:-1]), reversed(channels[1:])):
            self.up.append(nn.ConvTranspose2d(c_deep, c_skip, 2, stride=2))
            self.fuse.append(_conv(2 * c_skip, c_skip))
        self.head = nn.Conv2d(channels[0], 1, 1)
        self.factor = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = (x - 0.5) / 0.25
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (DRAEM's choice for its segmenter) + soft Dice over the batch (tiny defects need it)."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    focal = ((1 - pt) ** gamma * bce).mean()
    inter = (p * target).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    return focal + dice


def build_segmenter(channels: tuple[int, ...], seed: int) -> SmallUNet:
    """A U-Net initialised from ``seed`` alone (the global RNG is left as it was): same seed, same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallUNet(tuple(channels))
