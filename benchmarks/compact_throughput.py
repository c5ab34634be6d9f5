"""Compact model throughput on this CPU: training steps/s and images/s, sampling images/s.

A fresh ``build_compact()`` (default config: 64 px, (32,64,128), cross-attention at 16x16; weights don't matter
for timing). Training step = the adapter/base task's inpainting loss (x0 prediction, mask-weighted MSE) on a
random batch + backward + AdamW on all parameters. Sampling = ``DefectInpaintPipeline`` on a batch of 64 px
images, 25 DDIM steps, classifier-free guidance on (the U-Net batch is doubled), whole image
(``crop_to_mask=False``, the image is the working resolution), known-region re-injection on (default).
Wall time and process CPU time are both printed: on a shared machine wall time includes waiting for a core;
with one thread, CPU time approximates the wall time on an idle core.

    python benchmarks/compact_throughput.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=16, help="training and sampling batch size")
    p.add_argument("--train-steps", type=int, default=5, help="timed training steps (after 1 warm-up)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per sampling call")
    p.add_argument("--sample-repeats", type=int, default=1, help="timed sampling calls (after a 1-step warm-up)")
    p.add_argument("--guidance", type=float, default=2.0, help="CFG scale (!= 1: CFG on)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from counterfactory.models.compact import build_compact, make_schedulers
    from counterfactory.models.conditioning import DamageTypeEmbedding
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
    from counterfactory.sampling.inpaint import PixelSpace
    from counterfactory.training.inpaint import inpaint_loss

    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
          f"load average at start {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} (1/5/15 min; shared machine: "
          "other jobs compete for the cores, so these are lower bounds on what an idle machine does)")
    model = build_compact()
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"compact model: {cfg.sample_size} px, block_out_channels {cfg.block_out_channels}, "
          f"{n_params / 1e6:.2f}M params, prediction {cfg.prediction_type}")
    res, b = cfg.sample_size, args.batch
    train_s, sample_s = make_schedulers(cfg)

    # ---------------------------------------------------------------- training
    model.train()
    model.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(b, 3, res, res, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, res, res, generator=g) > 0.7).float()

    def train_step(step):
        loss = inpaint_loss(model.unet, train_s, PixelSpace(), x0, mask, model.tokens(b),
                            torch.Generator().manual_seed(step), outside_weight=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    train_step(0)  # warm-up
    times, cpu = [], []
    for k in range(args.train_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(k + 1)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    t_step, c_step = statistics.median(times), statistics.median(cpu)
    print(f"training  (batch {b}, {res} px): median {t_step:.3f} s/step wall over {args.train_steps} steps "
          f"(min {min(times):.3f}) -> {1 / t_step:.3f} steps/s, {b / t_step:.1f} images/s; "
          f"process CPU {c_step:.3f} s/step -> {1 / c_step:.3f} steps/s, {b / c_step:.1f} images/s per busy core")

    # ---------------------------------------------------------------- sampling
    model.eval().requires_grad_(False)
    emb = DamageTypeEmbedding(["crack"], num_tokens=cfg.num_tokens, dim=cfg.cross_attention_dim)
    pipe = DefectInpaintPipeline(model.unet, sample_s, emb, resolution=res)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(b, 3, res, res, generator=g)
    smask = torch.zeros(b, 1, res, res)
    smask[..., res // 4 : res * 3 // 4, res // 4 : res * 3 // 4] = 1
    kwargs = dict(guidance_scale=args.guidance, crop_to_mask=False, batch_size=b)
    pipe(image, smask, "crack", num_inference_steps=1, generator=torch.Generator().manual_seed(0), **kwargs)
    times, cpu = [], []
    for _ in range(args.sample_repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        pipe(image, smask, "crack", num_inference_steps=args.sample_steps, generator=torch.Generator().manual_seed(0),
             **kwargs)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    t_call, c_call = statistics.median(times), statistics.median(cpu)
    cfg_on = args.guidance != 1.0
    print(f"sampling  (batch {b}, {res} px, {args.sample_steps} DDIM steps, CFG {'on' if cfg_on else 'off'}): "
          f"median {t_call:.2f} s/call over {args.sample_repeats} -> {b / t_call:.2f} images/s "
          f"({t_call / args.sample_steps:.3f} s per denoising step); process CPU {c_call:.2f} s/call -> "
          f"{b / c_call:.2f} images/s per busy core")
    load1 = os.getloadavg()
    print(f"load average at end {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
