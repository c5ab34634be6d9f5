"""Sharded bulk writers: the ``--num-shards K --shard i`` flags, this process's shard, and ``counterfactory
merge-manifests OUT`` (one ``manifest.jsonl`` from the shards of a sharded folder).

Every bulk writer (``generate``, ``triplets``, ``insert --data``) takes its shard here (:func:`shard_args`,
:func:`shard_of`); the items of shard ``i`` of ``K``, the per-shard manifests and the refusal of shards started
with other settings live in :mod:`counterfactory.io.manifest` (``Shard``, ``claim_shards``, ``merge_shards``).
"""

from __future__ import annotations

import json

from ._args import check_out, int_range, positive_int

MAX_SHARDS = 100_000

# writer named in shards.json -> the function that merges a finished folder of its shards
MERGERS = {
    "generate": ("counterfactory.pipelines.generate", "merge_generated"),
    "triplets": ("counterfactory.pipelines.triplets", "merge_triplets"),
}


def shard_args(p, merged: str = "manifest.jsonl") -> None:
    """``--num-shards K`` / ``--shard i``; ``merged``: what the last shard to finish writes."""
    p.add_argument("--num-shards", type=positive_int("--num-shards", MAX_SHARDS), default=None, metavar="K",
                   help="split the items over K processes or machines writing into the same --out (each resumes on "
                        f"its own; the last to finish writes {merged}). Under accelerate launch every rank is "
                        "a shard already")
    p.add_argument("--shard", type=int_range("--shard", 0, MAX_SHARDS - 1), default=None, metavar="i",
                   help="which of the --num-shards parts this process writes, 0..K-1")


def shard_of(args):
    """The shard of this process from ``--num-shards`` / ``--shard`` and the launcher's ranks (one line if wrong)."""
    from ..errors import input_error
    from ..io.manifest import current_shard

    if args.shard is not None and args.num_shards is None:
        raise input_error("--shard", args.shard, "used with --num-shards K (this process's part of K)")
    k = args.num_shards or 1
    i = args.shard if args.shard is not None else 0
    if args.num_shards is not None and args.shard is None and k > 1:
        raise input_error("--num-shards", k, "used with --shard i (which of the K parts this process writes)")
    if i >= k:
        raise input_error("--shard", i, f"an integer in [0, {k - 1}] (below --num-shards {k})")
    return current_shard(k, i)


def cmd_merge_manifests(args) -> int:
    import importlib
    from pathlib import Path

    from ..errors import input_error
    from ..io.manifest import SHARDS_FILE

    out = Path(args.out)
    if not out.is_dir():
        raise input_error("OUT", args.out, "an existing folder written by sharded runs")
    check_out(out, "OUT")
    header = out / SHARDS_FILE
    if not header.is_file():
        raise input_error("OUT", args.out, f"a folder written by sharded runs (it has no {SHARDS_FILE}: a one-process "
                                           "run writes manifest.jsonl itself)")
    writer = json.loads(header.read_text()).get("writer")
    if writer == "insert":
        raise input_error("OUT", args.out, "a folder of generate or triplets shards (insert shards are merged by "
                                           "running the same `counterfactory insert --data ...` command once more: "
                                           "it finds every result and writes the metrics)")
    if writer not in MERGERS:
        raise input_error("OUT", args.out, f"a folder of {' or '.join(MERGERS)} shards ({SHARDS_FILE} names {writer!r})")
    module, name = MERGERS[writer]
    path = getattr(importlib.import_module(module), name)(out)
    n = sum(1 for _ in path.open())
    print(json.dumps({"manifest": str(path), "records": n}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge-manifests", help="one manifest.jsonl from the shards of a sharded generate or triplets run",
                       description="Checks that every shard of OUT finished (each lists its items in "
                                   "manifest-shard<i>-of<K>.jsonl) and writes OUT/manifest.jsonl with the records in "
                                   "the order of a one-process run (triplets: also the caption, split and summary "
                                   "files). The last shard to finish does this by itself; run it by hand after "
                                   "copying the shards of several machines into one folder.")
    p.add_argument("out", metavar="OUT", help="the folder the shards wrote into")
    p.set_defaults(func=cmd_merge_manifests)
