"""The image mechanism: a small conditional VAE ``p(x | z, pa)`` with a Gaussian pixel likelihood of fixed scale.

Counterfactuals follow abduction–action–prediction as in causal-gen's DSCM:

1. abduction: ``z = mean of q(z | x, pa)`` and the pixel noise ``u = x - mu(z, pa)`` (fixed scale, so the
   exogenous noise is the residual);
2. action: replace the parents by ``pa*`` (see scm.py);
3. prediction: ``x* = mu(z, pa*) + u = x + mu(z, pa*) - mu(z, pa)``, clamped to [0,1].

With this abduction a null intervention returns ``x`` exactly, so composition is reported on the model's own
reconstruction (``mu(z, pa)`` without ``u``) as well; see metrics.py.

``mode="latent"`` drops the pixel-noise abduction: the exogenous noise is the latent alone and
``x* = mu(z, pa*)``. Every pixel of x* then comes from the generative model, so whether an intervention on one
structure leaves the rest of the image alone is earned by the model rather than pinned by ``u``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import input_error

CF_MODES = ("noise", "latent")  # x* = mu(z, pa*) + u (pixel noise abducted) | x* = mu(z, pa*) (latent only)


def check_mode(mode: str) -> str:
    if mode not in CF_MODES:
        raise input_error("counterfactual", mode, "'noise' (abduct the pixel noise) or 'latent' (latent only)")
    return mode


@dataclass(frozen=True)
class VAEConfig:
    height: int = 28
    width: int = 28  # 28 per structure
    cond_dim: int = 12  # 12 per structure (normalised area, intensity, digit one-hot)
    z_dim: int = 16  # latent size; small so that area/intensity are carried by the parents, not by z
    channels: int = 16  # width of the first conv; the second has twice as many
    hidden: int = 128
    pixel_sigma: float = 0.1  # fixed std of the Gaussian pixel likelihood (on [0,1] pixels)

    def __post_init__(self):
        if self.height % 4 or self.width % 4:
            raise input_error("height/width", (self.height, self.width), "multiples of 4")
        for name in ("cond_dim", "z_dim", "hidden"):
            if getattr(self, name) < 1:
                raise input_error(name, getattr(self, name), "a positive integer")
        if self.channels < 2:
            raise input_error("channels", self.channels, "an integer >= 2")
        if not self.pixel_sigma > 0:
            raise input_error("pixel_sigma", self.pixel_sigma, "a positive float")

    def to_dict(self) -> dict:
        return asdict(self)


class CondVAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = c = config
        self.h4, self.w4 = c.height // 4, c.width // 4
        flat = 2 * c.channels * self.h4 * self.w4
        self.enc = nn.Sequential(
            nn.Conv2d(1, c.channels, 4, 2, 1), nn.SiLU(), nn.Conv2d(c.channels, 2 * c.channels, 4, 2, 1), nn.SiLU(), nn.Flatten()
        )
        self.enc_fc = nn.Sequential(nn.Linear(flat + c.cond_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 2 * c.z_dim))
        self.dec_fc = nn.Sequential(
            nn.Linear(c.z_dim + c.cond_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, flat), nn.SiLU()
        )
        self.up1 = nn.ConvTranspose2d(2 * c.channels + c.cond_dim, c.channels, 4, 2, 1)
        self.up2 = nn.ConvTranspose2d(c.channels, c.channels // 2, 4, 2, 1)
        self.out = nn.Conv2d(c.channels // 2, 1, 3, 1, 1)

    def encode(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x * 2 - 1)
        mu, logvar = self.enc_fc(torch.cat([h, cond], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 6)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Mean image in [0,1]."""
        c = self.config
        h = self.dec_fc(torch.cat([z, cond], dim=1)).view(-1, 2 * c.channels, self.h4, self.w4)
        h = F.silu(self.up1(torch.cat([h, cond[:, :, None, None].expand(-1, -1, self.h4, self.w4)], dim=1)))
        h = F.silu(self.up2(h))
        return torch.sigmoid(self.out(h))

    def _nelbo_terms(self, x, rec, mu, logvar) -> torch.Tensor:
        s = self.config.pixel_sigma
        nll = ((x - rec) ** 2 / (2 * s * s) + math.log(s * math.sqrt(2 * math.pi))).flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (nll + kl) / x[0].numel()

    def nelbo(self, x: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per image, in nats per pixel (B,)."""
        mu, logvar = self.encode(x, cond)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
        return self._nelbo_terms(x, self.decode(z, cond), mu, logvar)

    def nelbo_and_counterfactual(
        self, x: torch.Tensor, cond: torch.Tensor, cond_cf: torch.Tensor, generator: torch.Generator | None = None,
        mode: str = "noise",
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(nelbo(x), counterfactual(x))`` sharing one encoder pass and one batched decoder pass (CFT's step)."""
        check_mode(mode)
        mu, logvar = self.encode(x, cond)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
        if mode == "latent":
            rec, mu_cf = self.decode(torch.cat([z, mu]), torch.cat([cond, cond_cf])).chunk(2)
            return self._nelbo_terms(x, rec, mu, logvar), mu_cf
        rec, mu0, mu_cf = self.decode(torch.cat([z, mu, mu]), torch.cat([cond, cond, cond_cf])).chunk(3)
        return self._nelbo_terms(x, rec, mu, logvar), (mu_cf + (x - mu0)).clamp(0, 1)

    def abduct(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, u): posterior-mean latent and pixel noise ``u = x - mu(z, pa)``."""
        z, _ = self.encode(x, cond)
        return z, x - self.decode(z, cond)

    def counterfactual(self, x: torch.Tensor, cond: torch.Tensor, cond_cf: torch.Tensor, mode: str = "noise") -> torch.Tensor:
        """x* = mu(z, pa*) + u clamped to [0,1]; with ``mode="latent"``, x* = mu(z, pa*) (module docstring)."""
        if check_mode(mode) == "latent":
            z, _ = self.encode(x, cond)
            return self.decode(z, cond_cf)
        z, u = self.abduct(x, cond)
        return (self.decode(z, cond_cf) + u).clamp(0, 1)

    def reconstruct(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The model's own reconstruction mu(z, pa), without the pixel noise."""
        z, _ = self.encode(x, cond)
        return self.decode(z, cond)
