"""Crop-to-mask vs full-image inpainting on a 512x512 image, masks of 1 %, 5 % and 20 % of the area.

Same model, steps, guidance and seed on both paths (known-region re-injection on, the default). Full image: ``crop_to_mask=False``, the whole 512 px image is
denoised at its own size. Crop: ``crop_to_mask=True`` (default), a context window around the mask is resized to
the model's working resolution (64 px for both models here), denoised, and pasted back inside the mask.

Models: the tiny SD-1.5-inpainting architecture (VAE factor 2, so a 512 px image is a 256x256 latent with
self-attention over 128x128 = 16,384 tokens) and the compact pixel-space model (attention at 128x128 too at
512 px). Weights are random: timing does not depend on them.

A full-image call at 512 px costs minutes on a CPU, so the default is 1 denoising step; every call's U-Net time
is measured separately (forward hooks), and the script also prints each path extrapolated to
``--extrapolate-steps`` steps as ``fixed + steps * U-Net time per step`` (labelled "extrapolated").

    python benchmarks/crop_to_mask.py --models sd --threads 1
    python benchmarks/crop_to_mask.py --models compact --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["sd"], choices=["sd", "compact"], help="models to time")
    p.add_argument("--size", type=int, default=512, help="image side (pixels)")
    p.add_argument("--areas", type=float, nargs="+", default=[0.01, 0.05, 0.20], help="mask area fractions")
    p.add_argument("--steps", type=int, default=1, help="denoising steps (both paths)")
    p.add_argument("--extrapolate-steps", type=int, default=25, help="also print times extrapolated to this many steps")
    p.add_argument("--guidance", type=float, default=2.0, help="CFG scale (> 1: the U-Net batch is doubled)")
    p.add_argument("--crop-repeats", type=int, default=5, help="timed crop calls per mask (median)")
    p.add_argument("--full-repeats", type=int, default=1, help="timed full-image calls (median)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
          f"load average at start {os.getloadavg()[0]:.2f} (shared machine)")
    print(f"image {args.size}x{args.size}, steps {args.steps}, guidance {args.guidance}, "
          f"crop repeats {args.crop_repeats}, full repeats {args.full_repeats}")
    s = args.size
    image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))

    def box_mask(frac):
        side = max(1, round(math.sqrt(frac) * s))
        m = torch.zeros(1, 1, s, s)
        y0 = x0 = (s - side) // 2
        m[..., y0 : y0 + side, x0 : x0 + side] = 1
        return m

    for kind in args.models:
        _bench_model(kind, args, image, box_mask)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


def _bench_model(kind, args, image, box_mask):
    import torch

    from counterfactory.models.compact import build_compact, make_schedulers
    from counterfactory.models.conditioning import DamageTypeEmbedding
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
    from counterfactory.testing import tiny_sd_inpaint_components

    s = args.size
    if kind == "sd":
        parts = tiny_sd_inpaint_components(seed=0, freeze=True)
        emb = DamageTypeEmbedding(["crack"], num_tokens=4, dim=parts["unet"].config.cross_attention_dim)
        pipe = DefectInpaintPipeline(parts["unet"], parts["scheduler"], emb, vae=parts["vae"])
        label = "tiny SD-1.5-inpainting arch (latent, VAE x2)"
    else:
        model = build_compact()
        emb = DamageTypeEmbedding(["crack"], num_tokens=model.config.num_tokens, dim=model.config.cross_attention_dim)
        pipe = DefectInpaintPipeline(model.unet.eval(), make_schedulers(model.config)[1], emb,
                                     resolution=model.config.sample_size)
        label = "compact pixel-space (32,64,128)"
    pipe.set_progress_bar_config(disable=True)
    unet_time = [0.0]
    started = [0.0]
    pipe.unet.register_forward_pre_hook(lambda m, a: started.__setitem__(0, time.perf_counter()))
    pipe.unet.register_forward_hook(
        lambda m, a, o: unet_time.__setitem__(0, unet_time[0] + time.perf_counter() - started[0]))

    def timed(mask, crop, repeats):
        totals, unets = [], []
        for _ in range(repeats):
            unet_time[0] = 0.0
            t0 = time.perf_counter()
            out = pipe(image, mask, "crack", num_inference_steps=args.steps, guidance_scale=args.guidance,
                       generator=torch.Generator().manual_seed(0), crop_to_mask=crop)
            totals.append(time.perf_counter() - t0)
            unets.append(unet_time[0])
        total, unet = statistics.median(totals), statistics.median(unets)
        extra = (total - unet) + args.extrapolate_steps * unet / args.steps
        return total, unet, extra, out.windows[0]

    print(f"\n[{label}] working resolution {pipe.resolution} px")
    pipe(image, box_mask(args.areas[0]), "crack", num_inference_steps=1, generator=torch.Generator().manual_seed(0),
         crop_to_mask=True)  # warm-up
    t_full, u_full, x_full, _ = timed(box_mask(args.areas[0]), False, args.full_repeats)
    n = args.extrapolate_steps
    print(f"{'path':<28} {'window px':>10} {'s/call':>9} {'unet s':>8} {'speed-up':>9} "
          f"{f'extrap. {n} steps s':>19} {'speed-up':>9}")
    print(f"{'full image (any mask)':<28} {s:>10} {t_full:>9.3f} {u_full:>8.3f} {1.0:>9.1f} {x_full:>19.2f} {1.0:>9.1f}")
    for frac in args.areas:
        t, u, x, win = timed(box_mask(frac), True, args.crop_repeats)
        side = f"{win[0][2] - win[0][0]}"
        print(f"{f'crop, mask {frac * 100:g} % area':<28} {side:>10} {t:>9.3f} {u:>8.3f} {t_full / t:>9.1f} "
              f"{x:>19.2f} {x_full / x:>9.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
