"""One checkpoint format for every trainer, one seeding rule, one notion of "the same run".

Format: tensors in safetensors files, everything else in JSON. Why: no pickle (loading a checkpoint never runs
code), every file is inspectable with standard tools, and safetensors are mmap-able.

A checkpoint folder ``<root>/step-NNNNNNN/`` holds ``<part>.safetensors`` per tensor group (trainable weights,
EMA, optimizer moments) and ``state.json``; ``<root>/latest`` names the newest complete one. Folders are built
under a temporary name and renamed, so a kill leaves the previous checkpoint intact.

Run identity: a run is recognised by its task, its settings and *what it trains on*: a dataset folder is
identified by its resolved path and a content fingerprint (every file's name and size, and a sha256 of each
file the run reads), so the same data spelled differently resumes and a dataset changed under the same path
is refused with the difference named.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..io.manifest import atomic_write_text, sha256_file
from ..io.tensors import save_safetensors

STATE_FILE = "state.json"
LATEST = "latest"


# ---------------------------------------------------------------------------------------------- seeding
def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one step: a pure function of ``(seed, step, stream)``; the one seeding rule.

    Random tensors are drawn from it on the CPU and then moved to the model's device, so CPU results are
    bit-identical across runs and a resumed run sees exactly the draws it would have seen.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1))


# ---------------------------------------------------------------------------------------------- optimizers
def optimizer_state(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``opt``'s state as (tensors keyed ``name.idx.field``, JSON-able rest: param groups + plain values)."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                plain[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def restore_optimizer(name: str, opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], rest: dict) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, field = key[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[field] = value
    for key, value in rest.get("plain", {}).items():
        idx, field = key.split(".", 1)
        state.setdefault(int(idx), {})[field] = value
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


# ---------------------------------------------------------------------------------------------- folders
def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None if there is none)."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def write_checkpoint(root: str | Path, step: int, parts: Mapping[str, Mapping[str, torch.Tensor]], state: dict,
                     keep: int | None = None) -> Path:
    """Write ``step-NNNNNNN/`` under ``root`` atomically, point ``latest`` at it, keep the newest ``keep``.

    Rotation is done here rather than by accelerate's ``ProjectConfiguration(total_limit=...)``: that limit
    applies to ``save_state``, which writes optimizer and RNG states as pickles.
    """
    root = Path(root)
    d, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for part, tensors in parts.items():
        save_safetensors(tensors, tmp / f"{part}.safetensors")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, default=str))
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    atomic_write_text(root / LATEST, d.name + "\n")
    if keep is not None:
        kept = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in kept[: -keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    return d


def read_checkpoint(d: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(state.json, {part: tensors}) of one checkpoint folder."""
    d = Path(d)
    try:
        state = json.loads((d / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint={d}: unreadable {STATE_FILE} ({exc}); use another --out or delete it") from None
    parts = {p.name[: -len(".safetensors")]: load_file(str(p)) for p in sorted(d.glob("*.safetensors"))}
    return state, parts


# ---------------------------------------------------------------------------------------------- identity
def run_identity(task: str, config, **extra) -> dict:
    """What identifies a run for resuming: the task, its config (minus the output folder) and data facts.

    ``extra`` overrides config fields of the same name (e.g. ``data=data_identity(...)`` replaces the path
    string as typed by the identity of the data itself).
    """
    ident = json.loads(json.dumps({"task": task, **asdict(config), **extra},
                                  default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    ident.pop("out", None)
    if isinstance(ident.get("loop"), dict):
        ident["loop"].pop("max_minutes", None)  # a wall-time budget does not change what is trained
    return ident


def data_identity(data: str | Path, members: Iterable[str | Path] = ()) -> dict:
    """A dataset folder's identity: resolved path, every (non-hidden) file's size, and a sha256 of ``members``.

    ``members`` are the files the run reads (its split's images and masks); they are hashed, the rest of the
    folder is identified by names and sizes.
    """
    root = Path(data).resolve()
    files: dict[str, list] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = [p.stat().st_size]
    for m in sorted({Path(m).resolve() for m in members}):
        try:
            rel = m.relative_to(root).as_posix()
        except ValueError:
            rel = str(m)
        files.setdefault(rel, [m.stat().st_size if m.is_file() else None])
        if m.is_file():
            files[rel] = files[rel][:1] + [sha256_file(m)]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"path": str(root), "fingerprint": digest, "files": files}


def tensor_identity(**tensors: torch.Tensor) -> dict:
    """The identity of in-memory training data: shape, dtype and sha256 of each named tensor."""
    out = {}
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        out[name] = {"shape": list(t.shape), "dtype": str(t.dtype),
                     "sha256": hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()}
    return out


def describe_data_change(saved: Any, mine: Any) -> str | None:
    """One line naming how the data differs between two data identities (None when they do not differ)."""
    if saved == mine:
        return None
    if not (isinstance(saved, dict) and isinstance(mine, dict) and "files" in saved and "files" in mine):
        if isinstance(saved, dict) and isinstance(mine, dict):
            parts = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            return f"data changed since the run started ({', '.join(parts)} differ)"
        return "data changed since the run started"
    if saved.get("path") != mine.get("path"):
        return f"the run was started on data {saved.get('path')}, not {mine.get('path')}"
    a, b = saved["files"], mine["files"]
    diffs = []
    for name in sorted(set(a) | set(b)):
        old, new = a.get(name), b.get(name)
        if old == new:
            continue
        if old is None:
            diffs.append(f"{name} added")
        elif new is None:
            diffs.append(f"{name} removed")
        elif old[0] != new[0]:
            diffs.append(f"{name} size {old[0]} -> {new[0]}")
        else:
            diffs.append(f"{name} content changed (same size {old[0]})")
    if not diffs:
        return "data changed since the run started"
    n = len(diffs)
    return f"data changed since the run started: {n} file{'s' if n != 1 else ''} differ{'s' if n == 1 else ''} (first: {diffs[0]})"


def identity_mismatch(saved: dict, mine: dict) -> str | None:
    """One line saying why two run identities differ (None when they match)."""
    if saved == mine:
        return None
    keys = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if "data" in keys:
        return describe_data_change(saved.get("data"), mine.get("data"))
    return f"{', '.join(keys[:5])} differ"


__all__ = [
    "step_generator", "optimizer_state", "restore_optimizer", "latest_checkpoint", "write_checkpoint",
    "read_checkpoint", "run_identity", "data_identity", "tensor_identity", "describe_data_change",
    "identity_mismatch", "save_safetensors",
]
