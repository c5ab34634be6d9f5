"""Triplet-synthesis speed: filtered CIRR triplets written per second with the compact default.

    python benchmarks/text_triplets.py --data ../shared/data/morphomnist --out runs/text_triplets --n 1000 \
        --max-minutes 15 --shards 2 --threads 1

Runs `counterfactory triplets` as --shards processes of --threads torch threads each (shard i of K, writing into
the same folder, as `triplets --num-shards K --shard i` does) for at most --max-minutes (the writer resumes, so a
rerun continues and the time adds up) and prints kept triplets, candidates, kept triplets per second, the pass rate overall and
per filter, the wall time and the CPU time of the worker, and whether the goal (>= --n kept in <= --max-minutes)
was reached. On a shared machine the CPU time is the fair measure: `kept_per_cpu_minute` × 15 is what 15 minutes
of one otherwise idle core would give.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path


def _work(cfg_dict, threads, index, count):
    import torch

    torch.set_num_threads(threads)
    from counterfactory.io.manifest import Shard
    from counterfactory.pipelines.triplets import TripletConfig, write_triplets

    write_triplets(TripletConfig(**cfg_dict), progress=True, shard=Shard(index, count))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--shards", type=int, default=2, help="processes (one shard each)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default=None)
    ap.add_argument("--filters", default="attribute,others,class,local,similarity",
                    help="comma-separated filters that decide what is kept (default: all five)")
    ap.add_argument("--similarity-threshold", type=float, default=0.2)
    args = ap.parse_args()
    filters = tuple(f for f in args.filters.split(",") if f and f != "none")
    cfg = dict(out=args.out, data=args.data, n=args.n, batch_size=args.batch_size, num_inference_steps=args.steps,
               model=args.model, filters=filters, similarity_threshold=args.similarity_threshold)
    timing = Path(args.out) / "benchmark_seconds.json"
    before = json.loads(timing.read_text()) if timing.is_file() else {"seconds": 0.0, "cpu_seconds": 0.0}
    t0 = time.time()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [mp.get_context("spawn").Process(target=_work, args=(cfg, args.threads, i, args.shards))
             for i in range(args.shards)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=max(0.0, args.max_minutes * 60 - (time.time() - t0)))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join()
    wall = before["seconds"] + time.time() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = before["cpu_seconds"] + (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    timing.write_text(json.dumps({"seconds": wall, "cpu_seconds": cpu}))
    from counterfactory.io.manifest import read_all
    from counterfactory.pipelines.triplets import complete_batches, summarize_records

    # every shard's finished batches (a batch cut by the time limit does not count)
    complete = complete_batches(read_all(Path(args.out)), args.batch_size)
    records = [r for k in sorted(complete) for r in complete[k]]
    kept = [r for r in records if r["kept"]]
    s = summarize_records(records, kept, filters)
    per_cpu = len(kept) / cpu if cpu > 0 else 0.0
    print(json.dumps({"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "candidates": len(records),
                      "kept": len(kept), "kept_per_second": round(len(kept) / wall, 3),
                      "candidates_per_second": round(len(records) / wall, 3),
                      "kept_per_cpu_minute": round(60 * per_cpu, 2),
                      "pass_rate": s["pass_rate"], "filter_pass_rate": s["filter_pass_rate"],
                      "per_edit_pass_rate": {k: g["pass_rate"] for k, g in s["per_edit"].items()},
                      "shards": args.shards, "threads": args.threads, "steps": args.steps, "batch_size": args.batch_size,
                      "goal_reached": len(kept) >= args.n and wall <= args.max_minutes * 60}))


if __name__ == "__main__":
    main()
