"""Inversion benchmark: reconstruction PSNR / SSIM against UNet calls and seconds, on held-out Morpho-MNIST digits.

    python benchmarks/text_inversion.py --data ../shared/data/morphomnist [--model weights/text2image] \
        --n 200 --steps 10 --guidance-scale 3.0 --inner-steps 10 \
        --methods ddim null-text negative-prompt fixed-point@3x2 direct --out runs/text_inversion.json

Each method inverts the digits under their attribute captions (test split) and samples them back with the same
guidance; "calls" = UNet evaluations per image for inversion + reconstruction (a CFG step over two contexts = 2).
A method may carry its own step count: ``fixed-point@3x2`` = 3 DDIM steps, 2 fixed-point iterations per step;
``negative-prompt@5`` = 5 steps (without ``@``: ``--steps`` and ``--fixed-point-iters``).

PSNR and SSIM (torchmetrics) are computed per digit; every method is compared with null-text (when it runs) digit
by digit: the mean PSNR difference with its 95 % Student-t interval, and its share of null-text's UNet calls.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def parse_method(spec: str, steps: int, iters: int) -> tuple[str, int, int]:
    """``"fixed-point@3x2"`` → ("fixed-point", 3, 2); ``"ddim"`` → ("ddim", steps, iters)."""
    name, _, rest = spec.partition("@")
    if rest:
        s, _, k = rest.partition("x")
        steps, iters = int(s), (int(k) if k else iters)
    return name, steps, iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--fixed-point-iters", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--methods", nargs="+",
                    default=["ddim", "null-text", "negative-prompt", "fixed-point@3x2", "direct"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from counterfactory.data.morphomnist import load_morphomnist, split_indices
    from counterfactory.editing.captions import AttributeCaptioner
    from counterfactory.editing.inversion import invert, reconstruct
    from counterfactory.evaluation.stats import paired_difference, summarize
    from counterfactory.models.text2image import Text2ImageModel

    model = Text2ImageModel.load(args.model)
    data = load_morphomnist(args.data)
    idx = split_indices(len(data), "test")[: args.n]
    captions = AttributeCaptioner().caption(data.images[idx], labels=data.labels[idx].tolist())
    images = torch.from_numpy(data.images[idx]).float()[:, None] / 255.0

    def eps_fn(x, t, ctx):
        return model.unet(x, t, encoder_hidden_states=ctx).sample

    rows, per_digit = [], {}
    for spec in args.methods:
        method, steps, iters = parse_method(spec, args.steps, args.fixed_point_iters)
        recs, calls, seconds = [], 0.0, 0.0
        for s in range(0, len(idx), args.batch_size):
            img = images[s:s + args.batch_size]
            x0 = img * 2 - 1
            t0 = time.time()
            with torch.no_grad():
                cond = model.encode(captions[s:s + args.batch_size])
                null = model.encode([""] * len(img))
            with torch.enable_grad() if method == "null-text" else torch.no_grad():
                inv = invert(eps_fn, model.scheduler, x0, cond, null, method=method, num_inference_steps=steps,
                             guidance_scale=args.guidance_scale, inner_steps=args.inner_steps,
                             fixed_point_iters=iters)
            with torch.no_grad():
                back, rcalls = reconstruct(eps_fn, model.scheduler, inv, cond, guidance_scale=args.guidance_scale)
            seconds += time.time() - t0
            calls += (inv.unet_calls + rcalls) * len(img)
            recs.append(((back + 1) / 2).clamp(0, 1))
        rec = torch.cat(recs)
        psnr = peak_signal_noise_ratio(rec, images, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=100.0)
        ssim = structural_similarity_index_measure(rec, images, data_range=1.0, reduction="none")
        per_digit[spec] = {"psnr": psnr.tolist(), "ssim": ssim.tolist()}
        ps, ss = summarize(psnr.tolist()), summarize(ssim.tolist())
        label = method + (f" ({steps} steps" + (f", {iters} iterations" if method == "fixed-point" else "")
                          + (f", {args.inner_steps} inner" if method == "null-text" else "") + ")")
        rows.append({"method": spec, "label": label, "steps": steps, "digits": len(idx),
                     "psnr": round(ps["mean"], 2), "psnr_std": round(ps["std"], 2),
                     "ssim": round(ss["mean"], 4), "ssim_std": round(ss["std"], 4),
                     "unet_calls_per_image": round(calls / len(idx), 1),
                     "seconds_per_image": round(seconds / len(idx), 4)})
        print(json.dumps(rows[-1]), flush=True)
    nt = next((r for r in rows if r["method"].partition("@")[0] == "null-text"), None)
    if nt is not None:
        for r in rows:
            if r is nt:
                continue
            r["calls_share_of_null_text"] = round(r["unet_calls_per_image"] / nt["unet_calls_per_image"], 4)
            for metric in ("psnr", "ssim"):
                d = paired_difference(per_digit[r["method"]][metric], per_digit[nt["method"]][metric])
                r[f"{metric}_minus_null_text"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
    result = {"n": len(idx), "steps": args.steps, "guidance_scale": args.guidance_scale,
              "inner_steps": args.inner_steps, "rows": rows, "per_digit": per_digit}
    if args.out:
        from counterfactory.io.manifest import atomic_write_json

        atomic_write_json(args.out, result)
    print("| method | digits | PSNR (dB) | SSIM | UNet calls / image | share of null-text's calls | "
          "PSNR − null-text (95 % CI) | s / image |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r.get("psnr_minus_null_text")
        ci = f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" if d else "—"
        share = f"{100 * r['calls_share_of_null_text']:.1f} %" if "calls_share_of_null_text" in r else "—"
        print(f"| {r['label']} | {r['digits']} | {r['psnr']} ± {r['psnr_std']} | {r['ssim']} ± {r['ssim_std']} | "
              f"{r['unet_calls_per_image']} | {share} | {ci} | {r['seconds_per_image']} |")


if __name__ == "__main__":
    main()
