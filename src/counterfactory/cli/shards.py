"""``counterfactory merge-manifests OUT``: one ``manifest.jsonl`` from the shards of a sharded folder."""

from __future__ import annotations

import json

from ._args import check_out


def cmd_merge_manifests(args) -> int:
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
    if writer != "generate":
        raise input_error("OUT", args.out, f"a folder of generate shards ({SHARDS_FILE} names {writer!r})")
    from ..pipelines.generate import merge_generated

    path = merge_generated(out)
    n = sum(1 for _ in path.open())
    print(json.dumps({"manifest": str(path), "records": n}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge-manifests", help="one manifest.jsonl from the shards of a sharded generate run",
                       description="Checks that every shard of OUT finished (each lists its items in "
                                   "manifest-shard<i>-of<K>.jsonl) and writes OUT/manifest.jsonl with the records in "
                                   "the order of a one-process run. The last shard to finish does this by itself; run "
                                   "it by hand after copying the shards of several machines into one folder.")
    p.add_argument("out", metavar="OUT", help="the folder the shards wrote into")
    p.set_defaults(func=cmd_merge_manifests)
