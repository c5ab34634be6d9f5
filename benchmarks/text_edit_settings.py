"""Which prompt-to-prompt settings make text edits pass the triplet filters: a paired sweep on validation digits.

    python benchmarks/text_edit_settings.py --data ../shared/data/morphomnist --out runs/text_settings \
        --candidates 128 --setting base: --setting g5:guidance_scale=5 \
        --setting cross04:cross_replace_steps=0.4 --setting blend01:blend_threshold=0.1

Every setting runs `counterfactory triplets` on the same validation-split references with the same seeded
caption perturbations (batch k is a function of the seed and k only), so the settings are compared on identical
candidates. A setting is ``name:key=value,key=value`` over `TripletConfig` fields (empty after the colon: the
defaults). Prints, per setting, the pass rate overall, per filter and per edit type, and kept candidates per CPU
second; writes ``<out>/settings_sweep.json``. Settings are chosen here on the validation split so that the
triplets written from the train split are not what the choice was made on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _parse(spec: str) -> tuple[str, dict]:
    from counterfactory.pipelines.triplets import TripletConfig

    name, _, rest = spec.partition(":")
    fields = {f.name: f.type for f in dataclasses.fields(TripletConfig)}
    kw = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--setting {spec}: {key!r} is not a TripletConfig field")
        kind = fields[key]
        kw[key] = (int(value) if kind == "int" else float(value) if kind == "float"
                   else value.lower() in ("1", "true", "on", "yes") if kind == "bool" else value)
    return name, kw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None, help="text-to-image folder (default: the shipped one)")
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--split", default="val")
    ap.add_argument("--setting", action="append", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from counterfactory.pipelines.text_edit import TextEditPipeline
    from counterfactory.pipelines.triplets import TripletConfig, TripletWriter

    torch.set_num_threads(args.threads)
    pipe = TextEditPipeline.from_pretrained(args.model)
    rows = []
    for spec in args.setting:
        name, kw = _parse(spec)
        cfg = TripletConfig(out=str(Path(args.out) / name), data=args.data, n=args.candidates, split=args.split,
                            batch_size=args.batch_size, max_candidates=args.candidates, model=args.model, **kw)
        c0, t0 = time.process_time(), time.time()
        summary = TripletWriter(cfg, pipe, progress=False).run()
        cpu = time.process_time() - c0
        rows.append({"setting": name, "changes": kw, "candidates": summary["candidates"], "kept": summary["kept"],
                     "pass_rate": summary["pass_rate"], "filter_pass_rate": summary["filter_pass_rate"],
                     "per_edit": {k: g["pass_rate"] for k, g in summary["per_edit"].items()},
                     "cpu_seconds_this_run": round(cpu, 1), "wall_seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "settings_sweep.json").write_text(json.dumps(rows, indent=1))
    edits = sorted({e for r in rows for e in r["per_edit"]})
    filters = list(rows[0]["filter_pass_rate"])
    pct = lambda v: "–" if v is None else f"{100 * v:.0f}"  # noqa: E731
    print("\n| setting | kept / candidates | pass % | " + " | ".join(f"{f} %" for f in filters) + " | "
          + " | ".join(edits) + " |")
    print("|---|---|---|" + "---|" * (len(filters) + len(edits)))
    for r in rows:
        print(f"| {r['setting']} | {r['kept']} / {r['candidates']} | {pct(r['pass_rate'])} | "
              + " | ".join(pct(r["filter_pass_rate"].get(f)) for f in filters) + " | "
              + " | ".join(pct(r["per_edit"].get(e)) for e in edits) + " |")


if __name__ == "__main__":
    main()
