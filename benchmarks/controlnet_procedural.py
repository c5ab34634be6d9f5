"""ControlNet vs inpainting on the procedural surfaces: mask agreement, change outside the mask, cost.

Writes a procedural MVTec-layout dataset (64 px), trains a ControlNet (``train_controlnet``) and, for the side by
side, an inpainting adapter (``train_adapter``) on the same few shots, both on the shipped compact base with the
same steps, batch and seed. Then, for every held-out defect mask, placed on a defect-free training image, it runs

- ``controlnet strength=1``: the whole image regenerated from noise, steered by the mask;
- ``controlnet strength=0.6``: img2img from the defect-free image;
- ``controlnet paste-back``: strength 1, pixels outside the mask dilated by 3 px kept;
- ``inpaint``: the inpainting adapter (pixels outside the mask kept exactly);

and reports, per method (mean over masks), with ``counterfactory.evaluation.locality``:

- ``change_iou``: IoU between the mask and the pixels that changed (> 0.05) against the defect-free source;
- ``mask_iou``: IoU between the mask and the pixels that changed against the *same call with the ControlNet's
  residuals switched off* (conditioning_scale 0, same seed, type and strength): where the mask itself put
  something (ControlNet rows only);
- ``outside_mean``: mean |change| outside the mask; ``mask_changed``: fraction of mask pixels changed;
- ``s_per_image``: wall seconds per image (batch 1, 1 thread) and the training wall time.

    python benchmarks/controlnet_procedural.py --steps 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="training steps of each method")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shots", type=int, default=3, help="training defects per type")
    p.add_argument("--inference-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4, help="ControlNet learning rate")
    p.add_argument("--skip-inpaint", action="store_true", help="ControlNet rows only (no adapter is trained)")
    p.add_argument("--max-minutes", type=float, default=10.0, help="wall-time cap of each training run")
    p.add_argument("--workdir", default=None, help="where data and runs go (default: a temporary folder)")
    args = p.parse_args(argv)

    import torch

    from counterfactory.data import open_dataset
    from counterfactory.data.splits import few_shot_split
    from counterfactory.data.surfaces import synth_dataset
    from counterfactory.evaluation.locality import locality_per_image
    from counterfactory.pipelines.defect_controlnet import DefectControlNetPipeline
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
    from counterfactory.training.controlnet import ControlNetTrainConfig, train_controlnet
    from counterfactory.training.inpaint import AdapterTrainConfig, train_adapter
    from counterfactory.training.trainer import LoopConfig

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cn-bench-"))
    types = ("crack", "spot")
    data = synth_dataset(work / "data", seed=0, size=64, n_train_good=6, n_test_good=0, n_per_type=3 * args.shots,
                         types=types)
    ds = open_dataset(data)
    split = few_shot_split(ds, shots=args.shots)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=20, checkpoint_every=max(50, args.steps),
                      max_minutes=args.max_minutes)
    t0 = time.time()
    cn = train_controlnet(ControlNetTrainConfig(out=str(work / "cn"), data=str(data), shots=args.shots,
                                                batch_size=args.batch_size, loop=loop), progress=False)
    cn_train = time.time() - t0
    t0 = time.time()
    ad = {"steps": 0, "final_loss": None} if args.skip_inpaint else train_adapter(AdapterTrainConfig(out=str(work / "adapter"), data=str(data), shots=args.shots,
                                          batch_size=args.batch_size,
                                          loop=LoopConfig(steps=args.steps, lr=1e-3, warmup_steps=20,
                                                          checkpoint_every=max(50, args.steps),
                                                          max_minutes=args.max_minutes)), progress=False)
    ad_train = time.time() - t0

    cpipe = DefectControlNetPipeline.from_pretrained(None, work / "cn")
    ipipe = None if args.skip_inpaint else DefectInpaintPipeline.from_compact(None, work / "adapter")
    for pipe in (cpipe, ipipe):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    by_id = {s.source_id: s for s in ds.samples}
    goods = [s for s in ds.good()]
    jobs = [(t, by_id[sid]) for t in types for sid in split.held_out.get(t, [])]

    rows: dict[str, dict[str, list[float]]] = {}

    def record(name, src, out, mask, seconds, reference=None):
        loc = locality_per_image(src, out, mask)
        r = rows.setdefault(name, {})
        r.setdefault("change_iou", []).append(float(loc["change_mask_iou"][0]))
        r.setdefault("outside_mean", []).append(float(loc["outside_mask_mean_abs_change"][0]))
        r.setdefault("mask_changed", []).append(float(loc["mask_changed_fraction"][0]))
        r.setdefault("s_per_image", []).append(seconds)
        if reference is not None:
            r.setdefault("mask_iou", []).append(float(locality_per_image(reference, out, mask)["change_mask_iou"][0]))

    steps = args.inference_steps
    for k, (t, s) in enumerate(jobs):
        mask = s.load_mask()[None]
        src = goods[k % len(goods)].load_image()[None]
        if src.shape[-2:] != mask.shape[-2:]:
            continue
        for name, kw in (("controlnet strength=1", dict(strength=1.0)),
                         ("controlnet strength=0.6", dict(strength=0.6)),
                         ("controlnet paste-back", dict(strength=1.0, paste_back=True))):
            start = time.time()
            out = cpipe(src, mask, t, num_inference_steps=steps, generator=torch.Generator().manual_seed(k), **kw).images
            sec = time.time() - start
            cpipe.model.conditioning_scale = 0.0
            ref = cpipe(src, mask, t, num_inference_steps=steps, generator=torch.Generator().manual_seed(k), **kw).images
            cpipe.model.conditioning_scale = 1.0
            record(name, src, out, mask, sec, ref)
        if ipipe is None:
            continue
        start = time.time()
        out = ipipe(src, mask, t, num_inference_steps=steps, generator=torch.Generator().manual_seed(k)).images
        record("inpaint", src, out, mask, time.time() - start)

    summary = {"masks": len(jobs), "train_steps": {"controlnet": cn["steps"], "inpaint": ad["steps"]},
               "train_seconds": {"controlnet": round(cn_train, 1), "inpaint": round(ad_train, 1)},
               "final_loss": {"controlnet": cn["final_loss"], "inpaint": ad["final_loss"]}, "methods": {}}
    for name, r in rows.items():
        summary["methods"][name] = {k: round(sum(v) / len(v), 4) for k, v in r.items()}
    print(json.dumps(summary, indent=1))
    print("| method | mask IoU (vs no-ControlNet) | change IoU (vs source) | outside mean abs change | "
          "mask changed | s/image |")
    print("|---|---|---|---|---|---|")
    for name, m in summary["methods"].items():
        print(f"| {name} | {m.get('mask_iou', float('nan')):.3f} | {m['change_iou']:.3f} | {m['outside_mean']:.4f} | "
              f"{m['mask_changed']:.3f} | {m['s_per_image']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
