"""Triplet-synthesis speed: filtered CIRR triplets written per minute with the compact default.

    python benchmarks/text_triplets.py --data ../shared/data/morphomnist --out runs/text_triplets --n 1000 \
        --max-minutes 15 [--threads 2]

Runs `counterfactory triplets` in process for at most --max-minutes (the writer resumes, so a rerun continues)
and reports kept triplets, candidates, pass rate and kept triplets per minute.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path


def _work(cfg_dict, threads):
    import torch

    torch.set_num_threads(threads)
    from counterfactory.pipelines.triplets import TripletConfig, write_triplets

    write_triplets(TripletConfig(**cfg_dict), progress=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    cfg = dict(out=args.out, data=args.data, n=args.n, batch_size=args.batch_size, num_inference_steps=args.steps,
               model=args.model)
    t0 = time.time()
    proc = mp.get_context("spawn").Process(target=_work, args=(cfg, args.threads))
    proc.start()
    proc.join(timeout=args.max_minutes * 60)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    wall = time.time() - t0
    records = [json.loads(line) for line in (Path(args.out) / "manifest.jsonl").read_text().splitlines() if line.strip()] \
        if (Path(args.out) / "manifest.jsonl").is_file() else []
    kept = sum(r["kept"] for r in records)
    print(json.dumps({"wall_seconds": round(wall, 1), "candidates": len(records), "kept": kept,
                      "pass_rate": round(kept / len(records), 4) if records else None,
                      "kept_per_minute": round(kept / (wall / 60), 1), "threads": args.threads,
                      "steps": args.steps}))


if __name__ == "__main__":
    main()
