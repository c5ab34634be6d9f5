"""Atomic file writes and the append-only ``manifest.jsonl`` that lets long jobs resume after a kill.

A record is written only after its files are complete (each file is written to a temp name, then renamed),
so "the id is in the manifest" means "its outputs exist and are whole". A torn last line (the writer was
killed mid-append) is ignored on read and overwritten by the next append.

Shards: a bulk writer split over K processes or machines (:class:`Shard`) writes one
``manifest-shard<i>-of<K>.jsonl`` per shard into the same folder, next to ``shards.json`` (the settings every
shard must share, claimed by the first shard to start: :func:`claim_shards`). When every item is listed,
:func:`merge_shards` writes ``manifest.jsonl`` with the records in the order of a one-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh unique name that the writer creates itself, so the file gets the usual permissions (umask);
    # mkstemp would leave every written file readable by its owner only (0600)
    tmp_path = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp_path
        if not tmp_path.exists():
            tmp_path.touch()
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class Manifest:
    """Append-only JSON-lines log of finished items, keyed by ``id``."""

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open("r", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn final line from a killed writer
                line = line.strip()
                if line:
                    records.append(json.loads(line))
        return records

    def done(self) -> set[str]:
        """Ids already finished (what a resumed job skips)."""
        return {str(r[self.key]) for r in self.read() if self.key in r}

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)

    def append(self, record: dict[str, Any]) -> None:
        if self.key not in record:
            raise KeyError(f"manifest record needs {self.key!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_torn_tail()
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------- shards
MANIFEST = "manifest.jsonl"
SHARDS_FILE = "shards.json"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the work items (or groups of items) ``k`` with ``k % count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            from ..errors import input_error

            raise input_error("num_shards", self.count, "an integer >= 1")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < self.count:
            from ..errors import input_error

            raise input_error("shard", self.index, f"an integer in [0, {self.count - 1}] (below num_shards={self.count})")

    def takes(self, k: int) -> bool:
        return k % self.count == self.index

    def manifest_path(self, out: str | os.PathLike) -> Path:
        """Where this shard lists its finished items (``manifest.jsonl`` itself for a single shard)."""
        if self.count == 1:
            return Path(out) / MANIFEST
        return Path(out) / f"manifest-shard{self.index}-of{self.count}.jsonl"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def launcher_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process under a launcher (``accelerate launch``, ``torchrun``: the
    ``RANK`` / ``WORLD_SIZE`` variables they set); ``(0, 1)`` otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 and 0 <= rank < world else (0, 1)


def current_shard(num_shards: int = 1, shard: int = 0) -> Shard:
    """The shard of this process: ``shard`` of ``num_shards`` (machines without a common launcher) times the
    launcher's ranks: under ``accelerate launch`` with W processes, shard ``shard * W + rank`` of ``num_shards * W``."""
    base = Shard(shard, num_shards)
    rank, world = launcher_rank()
    return Shard(base.index * world + rank, base.count * world)


def shard_manifests(out: str | os.PathLike) -> list[Path]:
    """``manifest.jsonl`` (when present) and every shard manifest of ``out``."""
    out = Path(out)
    found = sorted(out.glob("manifest-shard*-of*.jsonl"))
    return ([out / MANIFEST] if (out / MANIFEST).is_file() else []) + found


def read_all(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of every manifest of ``out`` (the merged one and the shards'), merged first."""
    return [r for p in shard_manifests(out) for r in Manifest(p).read()]


def claim_shards(out: str | os.PathLike, settings: dict[str, Any], adopt: Iterable[str] = (),
                 argument: str = "out", write: bool = True) -> dict[str, Any]:
    """Record ``settings`` in ``<out>/shards.json`` if no shard did yet (atomically: of two shards starting at
    once, one claims and the other compares), else compare and refuse a difference with every differing
    setting named. Keys in ``adopt`` are taken from the folder instead of compared (returned: the folder's).
    ``write=False`` only compares (a check before the work starts)."""
    from ..errors import input_error

    out = Path(out)
    path = out / SHARDS_FILE
    mine = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if not path.is_file() and not write:
        return mine
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{SHARDS_FILE}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
        tmp.write_text(json.dumps(mine, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)  # fails when another shard claimed first: then compare with its settings
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    have = json.loads(path.read_text(encoding="utf-8"))
    adopted = set(adopt)
    diff = sorted(k for k in set(have) | set(mine) if k not in adopted and have.get(k) != mine.get(k))
    if diff:
        named = "; ".join(f"{k}: {_brief(have.get(k))} there, {_brief(mine.get(k))} now" for k in diff)
        raise input_error(argument, str(out), f"the settings its other shards were started with ({named}), or a new "
                                              "folder")
    return {**mine, **{k: have[k] for k in adopted if k in have}}


def _brief(v: Any) -> str:
    t = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return t if len(t) <= 40 else t[:37] + "..."


def merge_shards(out: str | os.PathLike, ids: list[str], key: str = "id") -> Path:
    """Write ``<out>/manifest.jsonl``: the records of ``ids`` in that order (the order of a one-process run),
    each line as its shard wrote it. InputError naming what is missing when a shard is not finished."""
    from ..errors import input_error

    out = Path(out)
    lines: dict[str, str] = {}
    for p in shard_manifests(out):
        with p.open("r", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n") or not line.strip():
                    continue
                rid = str(json.loads(line).get(key))
                lines.setdefault(rid, line)
    missing = [i for i in ids if i not in lines]
    if missing:
        header = out / SHARDS_FILE
        count = json.loads(header.read_text()).get("num_shards") if header.is_file() else None
        where = f" of {count} shards" if count else ""
        raise input_error("out", str(out), f"a folder whose shards{where} are all finished ({len(missing)} of "
                                           f"{len(ids)} items missing, first {missing[0]}): run the unfinished "
                                           "shards again (they resume), then merge")
    with atomic_path(out / MANIFEST) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.writelines(lines[i] for i in ids)
    return out / MANIFEST


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (provenance of weights in manifests and adapter configs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_trained_on(recorded_sha256: str | None, base_file, what: str, name) -> None:
    """CheckpointError when ``what`` (an adapter, a ControlNet) ``name`` records the sha256 of another base file than
    ``base_file``; nothing to check when it records none or the base file is absent."""
    from ..errors import CheckpointError

    if not recorded_sha256 or base_file is None or not Path(base_file).is_file():
        return
    have = sha256_file(base_file)
    if have != recorded_sha256:
        raise CheckpointError(
            f"{what} {name} was trained on another base (sha256 {recorded_sha256[:12]}..., this base "
            f"{have[:12]}...): pass the base it was trained on (base=, --base), or train a new {what}")
