"""CPU seconds per training step of every CFT-pipeline stage, and the whole pipeline's CPU-minutes (3 seeds).

Uses ``time.process_time()`` on one thread, so the numbers do not depend much on how busy the shared box is
(wall times there are 3-5x larger). Needs ../shared/data/morphomnist.

    .venv/bin/python benchmarks/cft_step_cost.py [--data ../shared/data/morphomnist] [--steps 15]
"""

from __future__ import annotations

import argparse
import time

import torch

from counterfactory.causal.predictors import (
    PredictorConfig,
    Regressor,
    Segmentor,
    regressor_loss,
    segmentor_loss,
)
from counterfactory.causal.scm import ParentSCM
from counterfactory.causal.training import Lagrange, TrainConfig, cft_step, step_generator
from counterfactory.causal.vae import CondVAE, VAEConfig
from counterfactory.data.morphomnist import build_structures, load_morphomnist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/morphomnist")
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, cfg = load_morphomnist(args.data), TrainConfig()
    for K in (1, 2):
        tr = build_structures(data, "train", K)
        scm = ParentSCM.fit(tr.area, tr.intensity, tr.digit)
        vae = CondVAE(VAEConfig(height=28, width=28 * K, cond_dim=scm.cond_dim))
        pc = PredictorConfig(height=28, width=28 * K, num_structures=K)
        reg, seg, lag = Regressor(pc), Segmentor(pc), Lagrange()
        opt = torch.optim.Adam([*vae.parameters(), *reg.parameters(), *seg.parameters()])
        x, a, i, d = (t[: cfg.batch_size] for t in (tr.images, tr.area, tr.intensity, tr.digit))
        cost = {}
        for name in ("predictors", "vae", "cft-reg", "cft-seg"):
            for s in range(args.steps + 2):  # two warm-up steps
                if s == 2:
                    t0 = time.process_time()
                g = step_generator(0, s)
                if name == "predictors":
                    loss = regressor_loss(reg, scm, x, a, i) + segmentor_loss(seg, scm, x, a, i)
                elif name == "vae":
                    loss = vae.nelbo(x, scm.condition(a, i, d), g).mean()
                else:
                    loss, _ = cft_step(vae, scm, reg, seg, name[4:], x, a, i, d, g, -1.0, lag, cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()
            cost[name] = (time.process_time() - t0) / args.steps
        steps = {"predictors": cfg.predictor_steps, "vae": 3 * cfg.vae_steps, "cft-reg": 3 * cfg.cft_steps, "cft-seg": 3 * cfg.cft_steps}
        total = sum(cost[k] * steps[k] for k in cost) / 60
        print(f"K={K}: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in cost.items()) + f" -> pipeline (3 seeds) {total:.1f} CPU-min")


if __name__ == "__main__":
    main()
