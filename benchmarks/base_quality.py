"""How well a compact base fills held-out regions: L1 to the truth and grain kept, inside the mask.

Held-out procedural surfaces (rendered from a seed stream the training pool never uses), resized to the working
resolution, one random training-style mask each (stroke / blob / box); every base fills the same images with
the same noise. Per base and mask kind:

- ``l1_in``: mean |fill - truth| inside the mask ([0,1] pixels);
- ``grain``: mean |high-pass(fill)| / mean |high-pass(truth)| inside the mask (high-pass = image minus its 5x5
  box blur). 1 keeps the surface's grain; below 1 the fill is smoother than the surface.

    .venv/bin/python benchmarks/base_quality.py --base runs/base_backup_675 weights --n 96 --steps 25
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from counterfactory.data.random_masks import MASK_KINDS, random_mask
from counterfactory.data.surfaces import render_surface
from counterfactory.io.images import high_pass
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
from counterfactory.sampling.inpaint import to_working_resolution


def held_out(n: int, res: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    rng = np.random.default_rng([seed, 999])  # the training pool uses [seed, 12345], its batches [seed, step, 1]
    xs, ms, kinds = [], [], []
    for k in range(n):
        img = torch.from_numpy(render_surface(rng, 128).transpose(2, 0, 1).copy())[None]
        img, _ = to_working_resolution(img, torch.zeros(1, 1, 128, 128), res)
        kind = MASK_KINDS[k % len(MASK_KINDS)]
        xs.append(img)
        ms.append(torch.from_numpy(random_mask(rng, res, kinds=(kind,)))[None, None])
        kinds.append(kind)
    return torch.cat(xs), torch.cat(ms), kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", required=True, help="folders holding compact_inpaint.safetensors/.json")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"],
                    help="sampling scheduler: the pipelines' default DDIM (eta 0), or DDPM (ancestral)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for base in args.base:
        pipe = DefectInpaintPipeline.from_compact(Path(base))
        pipe.set_progress_bar_config(disable=True)
        if args.scheduler == "ddpm":
            from diffusers import DDPMScheduler

            pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        x, m, kinds = held_out(args.n, pipe.resolution, args.seed)
        gens = [torch.Generator().manual_seed(args.seed * 100_003 + k) for k in range(args.n)]
        y = pipe(x, m, None, num_inference_steps=args.steps, generator=gens, crop_to_mask=False).images
        hx, hy = high_pass(x).abs().mean(1, keepdim=True), high_pass(y).abs().mean(1, keepdim=True)
        err = (y - x).abs().mean(1, keepdim=True)
        rows = []
        for kind in (*MASK_KINDS, "all"):
            sel = [k for k in range(args.n) if kind in ("all", kinds[k])]
            mm = m[sel] > 0.5
            l1 = float(err[sel][mm].mean())
            grain = float(hy[sel][mm].mean() / hx[sel][mm].mean())
            rows.append(f"{kind}: l1_in={l1:.4f} grain={grain:.3f}")
        print(f"{base} (n={args.n}, {args.steps} steps, {args.scheduler}): " + "  ".join(rows))


if __name__ == "__main__":
    main()
