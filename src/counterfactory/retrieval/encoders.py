"""Compact CLIP-style dual encoder and a CLIP4Cir-style Combiner for composed image retrieval.

- :class:`DualEncoder`: a small convolutional image tower and a word-level text tower (one token per word from
  a closed vocabulary, the ``tokenizers`` library; a small transformer encoder, mean-pooled), both projected to
  L2-normalised embeddings and trained contrastively on (image, caption) pairs like CLIP. Written here because
  the CLIP classes in transformers expect RGB 224-px images and a BPE vocabulary; the digits are 28-px gray.
- :class:`Combiner` (Baldrati et al., CLIP4Cir): image and text features each go through Linear→ReLU→Dropout
  to ``projection_dim``; their concatenation gives a residual ``v`` (Linear→ReLU→Dropout→Linear) and a gate
  ``λ = sigmoid(MLP)``; the query is ``normalize((1 − λ)·image + λ·text + v)``. Trained with the encoders frozen.

Weights are saved as safetensors next to a JSON config and the tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, input_error

PAD, UNK = "[PAD]", "[UNK]"


class WordVocabulary:
    """Word-level tokenizer over a closed word list (``tokenizers`` WordLevel + whitespace/punctuation split).

    A word outside the list is an :class:`InputError` naming it (``strict=True``), never a silent ``[UNK]``.
    """

    def __init__(self, words: Iterable[str], max_length: int = 16):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        vocab: dict[str, int] = {PAD: 0, UNK: 1}
        for w in sorted({str(w).lower() for w in words} | {","}):
            if w and w not in vocab:
                vocab[w] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        self.tok, self.vocab, self.max_length = tok, vocab, int(max_length)

    @property
    def words(self) -> list[str]:
        return [w for w in self.vocab if w not in (PAD, UNK)]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """→ ids (B, max_length) int64 and a mask (B, max_length) bool of real tokens."""
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.zeros((len(texts), self.max_length), dtype=torch.long)
        for i, enc in enumerate(self.tok.encode_batch(list(texts))):
            if strict and 1 in enc.ids:
                start, end = enc.offsets[enc.ids.index(1)]
                word = texts[i][start:end]
                raise input_error("text", texts[i], f"words of the model's vocabulary (unknown word {word!r})")
            if len(enc.ids) == 0:
                raise input_error("text", texts[i], "at least one word")
            n = min(len(enc.ids), self.max_length)
            ids[i, :n] = torch.tensor(enc.ids[:n])
        return ids, ids != 0


@dataclass(frozen=True)
class DualEncoderConfig:
    embed_dim: int = 64  # shared embedding size
    image_channels: tuple[int, ...] = (16, 32, 32)  # conv widths at 28, 14, 7 px
    text_width: int = 64  # token embedding / transformer width
    text_layers: int = 1
    text_heads: int = 4
    max_length: int = 16  # words per text, incl. commas
    image_size: int = 28

    def __post_init__(self):
        for name in ("embed_dim", "text_width", "text_layers", "text_heads", "max_length", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: a positive integer")
        if self.text_width % self.text_heads:
            raise ConfigError(f"text_heads={self.text_heads}: must divide text_width={self.text_width}")
        object.__setattr__(self, "image_channels", tuple(int(c) for c in self.image_channels))


class ImageTower(nn.Module):
    def __init__(self, cfg: DualEncoderConfig):
        super().__init__()
        layers, c_in = [], 1
        for k, c in enumerate(cfg.image_channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if k == 0 else 2, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in * 2, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x * 2 - 1)
        return self.proj(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


class TextTower(nn.Module):
    def __init__(self, cfg: DualEncoderConfig, vocab_size: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, cfg.text_width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(cfg.max_length, cfg.text_width))
        layer = nn.TransformerEncoderLayer(cfg.text_width, cfg.text_heads, 2 * cfg.text_width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.body(self.tok(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).float()
        return self.proj((h * m).sum(1) / m.sum(1).clamp_min(1.0))


class DualEncoder(nn.Module):
    """CLIP-style: ``encode_image`` / ``encode_text`` give L2-normalised (B, embed_dim) features."""

    def __init__(self, cfg: DualEncoderConfig, vocabulary: WordVocabulary):
        super().__init__()
        self.cfg, self.vocabulary = cfg, vocabulary
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg, len(vocabulary))
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's initial temperature

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1:] != (1, s, s):
            raise input_error("images", tuple(images.shape), f"(B,1,{s},{s}) gray images in [0,1]")
        return images.float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(self.check_images(images)), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.vocabulary.encode(texts)
        dev = self.logit_scale.device
        return F.normalize(self.text(ids.to(dev), mask.to(dev)), dim=-1)


class Combiner(nn.Module):
    """CLIP4Cir's Combiner over frozen features (dimension ``dim``)."""

    def __init__(self, dim: int, projection_dim: int = 256, hidden_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.text_proj = nn.Sequential(nn.Linear(dim, projection_dim), nn.ReLU(), nn.Dropout(dropout))
        self.image_proj = nn.Sequential(nn.Linear(dim, projection_dim), nn.ReLU(), nn.Dropout(dropout))
        self.combine = nn.Sequential(nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden_dim, dim))
        self.gate = nn.Sequential(nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden_dim, 1), nn.Sigmoid())
        self.logit_scale = 100.0
        self.dims = {"dim": dim, "projection_dim": projection_dim, "hidden_dim": hidden_dim, "dropout": dropout}

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.image_proj(image_features), self.text_proj(text_features)], -1)
        lam = self.gate(h)
        return F.normalize(self.combine(h) + lam * text_features + (1 - lam) * image_features, dim=-1)


# --------------------------------------------------------------------------------------------- save / load
def save_dual_encoder(model: DualEncoder, folder: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    from ..io.manifest import atomic_path, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "dual_encoder.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write_text(folder / "dual_encoder.json", json.dumps(
        {"config": asdict(model.cfg), "words": model.vocabulary.words}, indent=1))
    return folder


def load_dual_encoder(folder: str | os.PathLike) -> DualEncoder:
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "dual_encoder.json", folder / "dual_encoder.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"encoder={folder}: a folder holding dual_encoder.json and dual_encoder.safetensors "
                              "(train one with `counterfactory cir study` or `cir train`)")
    meta = json.loads(cfg_path.read_text())
    cfg = DualEncoderConfig(**{**meta["config"], "image_channels": tuple(meta["config"]["image_channels"])})
    model = DualEncoder(cfg, WordVocabulary(meta["words"], cfg.max_length))
    model.load_state_dict(load_file(str(w_path)))
    return model.eval()


def save_combiner(model: Combiner, folder: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    from ..io.manifest import atomic_path, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "combiner.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write_text(folder / "combiner.json", json.dumps(model.dims, indent=1))
    return folder


def load_combiner(folder: str | os.PathLike) -> Combiner:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "combiner.json").is_file() or not (folder / "combiner.safetensors").is_file():
        raise CheckpointError(f"combiner={folder}: a folder holding combiner.json and combiner.safetensors")
    model = Combiner(**json.loads((folder / "combiner.json").read_text()))
    model.load_state_dict(load_file(str(folder / "combiner.safetensors")))
    return model.eval()
