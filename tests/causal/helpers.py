"""Tiny seeded components for the causal tests (built in code, a few KiB)."""

from __future__ import annotations

import torch

from counterfactory.causal.predictors import PredictorConfig, Regressor, Segmentor
from counterfactory.causal.scm import ParentSCM
from counterfactory.causal.training import TrainConfig
from counterfactory.causal.vae import CondVAE, VAEConfig
from counterfactory.data.morphomnist import StructureData, measure


def tiny_digits(n: int = 24, structures: int = 1, seed: int = 0) -> StructureData:
    """Blocky fake digits: a bright bar of random size and brightness per structure, on black."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28 * structures)
    for b in range(n):
        for k in range(structures):
            h, w = int(torch.randint(6, 20, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g))
            top, left = int(torch.randint(2, 26 - h, (1,), generator=g)), int(torch.randint(2, 26 - w, (1,), generator=g))
            v = 0.3 + 0.7 * float(torch.rand(1, generator=g))
            x[b, 0, top : top + h, 28 * k + left : 28 * k + left + w] = v
    area, intensity = measure(x, structures)
    digit = torch.randint(0, 10, (n, structures), generator=g)
    return StructureData(x, area, intensity, digit, torch.zeros(n, structures, dtype=torch.long), intensity.clone())


def tiny_models(data: StructureData, seed: int = 0):
    torch.manual_seed(seed)
    K = data.num_structures
    scm = ParentSCM.fit(data.area, data.intensity, data.digit)
    vae = CondVAE(VAEConfig(height=28, width=28 * K, cond_dim=scm.cond_dim, z_dim=2, channels=4, hidden=16))
    pc = PredictorConfig(height=28, width=28 * K, num_structures=K, channels=4)
    return scm, vae, Regressor(pc).requires_grad_(False), Segmentor(pc).requires_grad_(False)


def tiny_config(**kw) -> TrainConfig:
    base = dict(batch_size=8, predictor_steps=4, vae_steps=4, cft_steps=4, z_dim=2, vae_channels=4, save_every=2)
    base.update(kw)
    return TrainConfig(**base)
