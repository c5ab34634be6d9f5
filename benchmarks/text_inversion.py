"""Inversion benchmark: reconstruction PSNR / SSIM against UNet calls and seconds, on held-out Morpho-MNIST digits.

    python benchmarks/text_inversion.py --data ../shared/data/morphomnist [--model weights/text2image] \
        --n 200 --steps 10 --guidance-scale 3.0 --out runs/text_inversion.json

Each method inverts the digits under their attribute captions (test split) and samples them back with the same
guidance; "calls" = UNet evaluations per image for inversion + reconstruction (a CFG step over two contexts = 2).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--methods", nargs="+", default=["ddim", "null-text", "negative-prompt", "direct"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from counterfactory.data.morphomnist import load_morphomnist, split_indices
    from counterfactory.editing.captions import AttributeCaptioner
    from counterfactory.editing.inversion import invert, reconstruct
    from counterfactory.models.text2image import Text2ImageModel

    model = Text2ImageModel.load(args.model)
    data = load_morphomnist(args.data)
    idx = split_indices(len(data), "test")[: args.n]
    captions = AttributeCaptioner().caption(data.images[idx], labels=data.labels[idx].tolist())
    images = torch.from_numpy(data.images[idx]).float()[:, None] / 255.0

    def eps_fn(x, t, ctx):
        return model.unet(x, t, encoder_hidden_states=ctx).sample

    rows = []
    for method in args.methods:
        recs, calls, seconds = [], 0.0, 0.0
        for s in range(0, len(idx), args.batch_size):
            img = images[s:s + args.batch_size]
            x0 = img * 2 - 1
            t0 = time.time()
            with torch.no_grad():
                cond = model.encode(captions[s:s + args.batch_size])
                null = model.encode([""] * len(img))
            with torch.enable_grad() if method == "null-text" else torch.no_grad():
                inv = invert(eps_fn, model.scheduler, x0, cond, null, method=method, num_inference_steps=args.steps,
                             guidance_scale=args.guidance_scale, inner_steps=args.inner_steps)
            with torch.no_grad():
                back, rcalls = reconstruct(eps_fn, model.scheduler, inv, cond, guidance_scale=args.guidance_scale)
            seconds += time.time() - t0
            calls += (inv.unet_calls + rcalls) * len(img)
            recs.append(((back + 1) / 2).clamp(0, 1))
        rec = torch.cat(recs)
        psnr = float(peak_signal_noise_ratio(rec, images, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean())
        ssim = float(structural_similarity_index_measure(rec, images, data_range=1.0))
        rows.append({"method": method, "psnr": round(psnr, 2), "ssim": round(ssim, 4),
                     "unet_calls_per_image": round(calls / len(idx), 1), "seconds_per_image": round(seconds / len(idx), 4)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"n": len(idx), "steps": args.steps, "guidance_scale": args.guidance_scale,
              "inner_steps": args.inner_steps, "rows": rows}
    if args.out:
        from counterfactory.io.manifest import atomic_write_json

        atomic_write_json(args.out, result)
    print("| method | PSNR (dB) | SSIM | UNet calls / image | s / image |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['psnr']} | {r['ssim']} | {r['unet_calls_per_image']} | {r['seconds_per_image']} |")


if __name__ == "__main__":
    main()
