"""Conditioning tokens fed through the U-Net's cross-attention in place of CLIP text.

:class:`DamageTypeEmbedding` is a learned table ``(num_types, num_tokens, dim)`` plus a learned null entry
used for classifier-free guidance (label dropout in training, the unconditional branch at sampling). It is
saved as its own safetensors file, with the type names in the file's metadata, so an adapter always knows
which damage types it was trained for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open
from torch import nn

from ..errors import CheckpointError, input_error
from ..io.names import check_path_name
from ..io.tensors import save_safetensors

EMBEDDING_FILE = "damage_type_embeddings.safetensors"


class DamageTypeEmbedding(nn.Module):
    """Learned tokens per damage type, and a learned null entry for classifier-free guidance."""

    def __init__(self, type_names: Sequence[str], num_tokens: int = 4, dim: int = 64, init_std: float = 0.02):
        super().__init__()
        names = list(type_names)
        for t in names:  # type names become folder and file names of generated data: never path parts
            check_path_name(t, "type_names")
        if not names:
            raise input_error("type_names", list(type_names), "at least one damage type name")
        if len(set(names)) != len(names):
            raise input_error("type_names", names, "distinct damage type names")
        if "good" in names:
            raise input_error("type_names", names, "defect types only; 'good' samples bypass inpainting")
        if num_tokens < 1 or dim < 1:
            raise input_error("num_tokens/dim", (num_tokens, dim), "positive integers")
        self.type_names: tuple[str, ...] = tuple(names)
        self.embeddings = nn.Parameter(torch.randn(len(names), num_tokens, dim) * init_std)
        self.null = nn.Parameter(torch.zeros(num_tokens, dim))

    @property
    def num_tokens(self) -> int:
        return self.embeddings.shape[1]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[2]

    def index(self, defect_types: str | Sequence[str]) -> torch.Tensor:
        """Names → indices; an unknown name raises naming the types this table knows."""
        names = [defect_types] if isinstance(defect_types, str) else list(defect_types)
        out = []
        for n in names:
            if n not in self.type_names:
                raise input_error("defect_type", n, f"one of {list(self.type_names)} (the types this adapter was trained for)")
            out.append(self.type_names.index(n))
        return torch.tensor(out, dtype=torch.long)

    def forward(self, indices: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, num_tokens, dim) for type indices (B,); rows where ``drop`` is True get the null entry."""
        tokens = self.embeddings[indices]
        if drop is not None:
            tokens = torch.where(drop[:, None, None], self.null.expand_as(tokens), tokens)
        return tokens

    def null_tokens(self, batch_size: int) -> torch.Tensor:
        return self.null[None].expand(batch_size, -1, -1)

    def init_from_tokens(self, tokens: torch.Tensor, noise_std: float = 0.02, generator: torch.Generator | None = None):
        """Start every type (and the null entry) from given tokens (e.g. the base model's own unconditional ones)."""
        with torch.no_grad():
            self.null.copy_(tokens)
            noise = torch.randn(self.embeddings.shape, generator=generator) * noise_std
            self.embeddings.copy_(tokens[None] + noise)
        return self

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / EMBEDDING_FILE
        meta = {"type_names": json.dumps(list(self.type_names)), "format": "counterfactory.damage_type_embedding.v1"}
        tensors = {"embeddings": self.embeddings.detach().contiguous(), "null": self.null.detach().contiguous()}
        return save_safetensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DamageTypeEmbedding:
        path = Path(path)
        if path.is_dir():
            path = path / EMBEDDING_FILE
        if not path.is_file():
            raise CheckpointError(f"damage-type embeddings not found at {path}: train an adapter with `counterfactory train-adapter`")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "type_names" not in meta:
            raise CheckpointError(f"{path}: not a damage-type embedding file (no type_names in its metadata)")
        tensors = load_file(str(path))
        emb = cls(json.loads(meta["type_names"]), num_tokens=tensors["embeddings"].shape[1], dim=tensors["embeddings"].shape[2])
        with torch.no_grad():
            emb.embeddings.copy_(tensors["embeddings"])
            emb.null.copy_(tensors["null"])
        return emb
