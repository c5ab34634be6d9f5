"""The one place tensors are written as safetensors: byte-reproducible files, written atomically.

safetensors stores its metadata in a hash map whose key order changes from process to process, so two
identical saves can differ in their bytes (and sha256). :func:`safetensors_bytes` rewrites the header with
the metadata keys sorted; tensor entries keep their offsets, so the file loads exactly as before.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save

from .manifest import atomic_write_bytes


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a serialised safetensors file) with its header's metadata keys in sorted order."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the data section 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` (moved to CPU, made contiguous) with ``metadata``, deterministically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return canonical_safetensors(save(cpu, metadata=dict(metadata) if metadata else None))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` atomically; identical inputs give identical bytes."""
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


__all__ = ["canonical_safetensors", "safetensors_bytes", "save_safetensors"]
