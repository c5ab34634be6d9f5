"""Generation settings on Magnetic Tile side by side: paste-and-refine strength and native-scale tiling.

For every (adapter, strength) it runs ``counterfactory generate`` (resumable: a rerun reuses finished folders) and
``counterfactory evaluate`` with the shipped MT extractor, then prints one row per setting and type: KID on
defect crops against the held-out real defects, ring contrast and grain (median of the generated fills, and as a
ratio to the real defects' median), intra-cluster diversity and the generation wall time per pair.

    python benchmarks/mt_generation_sweep.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \\
        --adapter runs/mt/adapter_a --adapter runs/mt/adapter_t1:1 --strengths 0,0.3,0.5,0.7,1 --n 30 --out runs/mt/sweep

``--adapter DIR[:SCALE]``: SCALE is the ``--max-window-scale`` to generate with (0 or absent: one window per defect).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EXTRACTOR = Path(__file__).resolve().parents[1] / "src" / "counterfactory" / "weights" / "compact_extractor_mt"


def _cli(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "counterfactory.cli.main", *args]
    with open(log, "a") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def run_setting(data: str, split: str, adapter: str, scale: float, strength: float, n: int, out: Path,
                grain: float, threads: int) -> dict:
    name = f"{Path(adapter).name}-w{scale:g}-s{strength:g}"
    gen, ev = out / name / "gen", out / name / "eval"
    (out / name).mkdir(parents=True, exist_ok=True)
    log = out / name / "log.txt"
    timing = out / name / "generate_seconds.json"
    if not timing.is_file():
        t0 = time.perf_counter()
        _cli("generate", "--data", data, "--split", split, "--adapter", adapter, "--out", str(gen), "--n", str(n),
             "--strength", f"{strength:g}", "--grain-transfer", f"{grain:g}", "--max-window-scale", f"{scale:g}",
             "--threads", str(threads), "--quiet", log=log)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    if not (ev / "metrics.json").is_file():
        _cli("evaluate", "--real", data, "--split", split, "--generated", str(gen), "--extractor", "compact",
             "--extractor-weights", str(EXTRACTOR), "--kid-subset-size", "16", "--out", str(ev), "--threads", str(threads),
             log=log)
    metrics = json.loads((ev / "metrics.json").read_text())
    seconds = json.loads(timing.read_text())["seconds"]
    return {"name": name, "adapter": adapter, "scale": scale, "strength": strength, "metrics": metrics,
            "seconds_per_pair": seconds / max(1, n * sum(not t.startswith("all") for t in metrics["per_type"]))}


def _pick(per_type: dict, prefix: str, suffix: str = "") -> float | None:
    for k, v in per_type.items():
        if k.startswith(prefix) and k.endswith(suffix) and isinstance(v, (int, float)):
            return float(v)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--adapter", action="append", required=True, help="adapter folder[:max-window-scale]")
    ap.add_argument("--strengths", default="0,0.5,1")
    ap.add_argument("--n", type=int, default=30, help="pairs per type")
    ap.add_argument("--grain-transfer", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for spec in args.adapter:
        adapter, _, scale = spec.partition(":")
        for s in [float(x) for x in args.strengths.split(",")]:
            r = run_setting(args.data, args.split, adapter, float(scale or 0), s, args.n, out, args.grain_transfer,
                            args.threads)
            rows.append(r)
            per = r["metrics"]["per_type"]
            for t in sorted(k for k in per if k != "all"):
                p = per[t]
                g, gr = p.get("grain_ratio_median"), p.get("grain_ratio_median_real")
                c, cr = p.get("ring_contrast_median"), p.get("ring_contrast_median_real")
                row = {"setting": r["name"], "type": t,
                       "KID_crop": _pick(p, "KID_", "_crop"),
                       "grain": g, "grain_vs_real": (g / gr) if g is not None and gr else None,
                       "contrast": c, "contrast_vs_real": (c / cr) if c is not None and cr else None,
                       "IC_dist_crop": _pick(p, "IC_dist_", "_crop"),
                       "s_per_pair": r["seconds_per_pair"]}
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    (out / "sweep.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "metrics"} | {
        "per_type": r["metrics"]["per_type"]} for r in rows], indent=1))


if __name__ == "__main__":
    main()
