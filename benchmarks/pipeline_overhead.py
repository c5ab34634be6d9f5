"""Pipeline overhead: our DefectInpaintPipeline vs diffusers' StableDiffusionInpaintPipeline.

Both pipelines share the very same tiny SD-1.5-inpainting-architecture modules (9-channel U-Net with a LoRA
adapter, VAE, DDIM scheduler) and get the same conditioning (a damage-type embedding as ``prompt_embeds``, its
learned null as ``negative_prompt_embeds``), image size, steps, guidance and seed. Ours runs with
``crop_to_mask=False`` (the whole image at its own size, like stock) with known-region re-injection off (like
stock with a 9-channel U-Net) and, separately, on (our default). Calls are interleaved (round-robin, rotating
order) so that load on a shared machine hits every variant alike; the median wall time per call is reported.

    python benchmarks/pipeline_overhead.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64], help="square image sizes (pixels)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (> 1: CFG on)")
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--repeats", type=int, default=11, help="timed calls per variant (after 1 warm-up each)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on the attention projections (0: none)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionInpaintPipeline

    from counterfactory.models.conditioning import DamageTypeEmbedding
    from counterfactory.models.lora import add_lora
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
    from counterfactory.testing import tiny_sd_inpaint_components

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
          f"load average at start {os.getloadavg()[0]:.2f} (shared machine)")
    print(f"steps {args.steps}, guidance {args.guidance}, batch {args.batch}, repeats {args.repeats}, "
          f"LoRA rank {args.lora_rank}")
    parts = tiny_sd_inpaint_components(seed=0, freeze=True)
    unet, vae, scheduler = parts["unet"], parts["vae"], parts["scheduler"]
    if args.lora_rank:
        add_lora(unet, rank=args.lora_rank, seed=0)
        unet.requires_grad_(False).eval()
    emb = DamageTypeEmbedding(["crack"], num_tokens=4, dim=unet.config.cross_attention_dim)
    stock = StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    ours = DefectInpaintPipeline(unet, scheduler, emb, vae=vae)
    ours.set_progress_bar_config(disable=True)
    with torch.no_grad():
        cond, null = emb(emb.index(["crack"] * args.batch)), emb.null_tokens(args.batch)

    print(f"{'size':>5} {'variant':<36} {'wall s':>7} {'min s':>7} {'ratio':>6} {'cpu s':>7} {'ratio':>6} "
          f"{'non-unet s':>10}")
    for size in args.sizes:
        _bench_size(size, args, stock, ours, cond, null)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


def _bench_size(size, args, stock, ours, cond, null):
    import torch

    b = args.batch
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, size, size, generator=g)
    mask = torch.zeros(b, 1, size, size)
    mask[..., size // 4 : size * 3 // 4, size // 4 : size * 3 // 4] = 1

    def run_stock():
        return stock(prompt_embeds=cond, negative_prompt_embeds=null, image=image, mask_image=mask, height=size,
                     width=size, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=torch.Generator().manual_seed(0), output_type="pt").images

    def run_ours(reinject):
        return ours(image, mask, ["crack"] * b, num_inference_steps=args.steps, guidance_scale=args.guidance,
                    generator=torch.Generator().manual_seed(0), crop_to_mask=False,
                    reinject_known_region=reinject, output_type="pt").images

    variants = {
        "stock StableDiffusionInpaintPipeline": run_stock,
        "ours, crop_to_mask=False": lambda: run_ours(False),
        "ours, crop_to_mask=False, reinject": lambda: run_ours(True),
    }
    names = list(variants)
    wall, cpu, outside = ({n: [] for n in names} for _ in range(3))
    unet_time, started = [0.0], [0.0]
    hooks = [ours.unet.register_forward_pre_hook(lambda m, a: started.__setitem__(0, time.perf_counter())),
             ours.unet.register_forward_hook(
                 lambda m, a, o: unet_time.__setitem__(0, unet_time[0] + time.perf_counter() - started[0]))]
    for n in names:  # warm-up
        variants[n]()
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            unet_time[0] = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            variants[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
            outside[n].append(wall[n][-1] - unet_time[0])
    for h in hooks:
        h.remove()
    w0, c0 = statistics.median(wall[names[0]]), statistics.median(cpu[names[0]])
    for n in names:
        w, c, o = statistics.median(wall[n]), statistics.median(cpu[n]), statistics.median(outside[n])
        print(f"{size:>5} {n:<36} {w:>7.3f} {min(wall[n]):>7.3f} {w / w0:>6.3f} {c:>7.3f} {c / c0:>6.3f} {o:>10.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
