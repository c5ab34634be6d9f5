"""Atomic file writes and the append-only ``manifest.jsonl`` that lets long jobs resume after a kill.

A record is written only after its files are complete (each file is written to a temp name, then renamed),
so "the id is in the manifest" means "its outputs exist and are whole". A torn last line (the writer was
killed mid-append) is ignored on read and overwritten by the next append.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
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
