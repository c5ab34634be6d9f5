"""Compact word tokenizer (the ``tokenizers`` library) and a small CLIP-architecture text encoder.

The compact text-to-image model reads captions made of a closed vocabulary (attribute words and digit names),
so the tokenizer is a word-level one built from that word list: one token per word, which makes
prompt-to-prompt's word → token mapping exact. A word outside the vocabulary is an error naming the word, never
a silent ``[UNK]``. The encoder is ``transformers.CLIPTextModel`` with a tiny config, the same class Stable
Diffusion uses, so the SD and compact paths share the conditioning code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from ..errors import CheckpointError, input_error

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL = (PAD, BOS, EOS, UNK)
PUNCTUATION = (",", ".")
DEFAULT_MAX_LENGTH = 16  # BOS + up to 14 words/punctuation + EOS


class WordTokenizer:
    """A word-level tokenizer over a closed vocabulary; ``encode`` returns fixed-length ids (B, max_length)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        self.tok = tokenizer
        self.max_length = int(max_length)
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        if self.pad_id is None or self.unk_id is None:
            raise CheckpointError("tokenizer: a word tokenizer with [PAD] and [UNK] tokens (build it with from_words)")
        self._raw = Tokenizer.from_str(tokenizer.to_str())  # unpadded copy: word counts and unknown words
        self._raw.no_padding()
        self._raw.no_truncation()
        self.tok.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=self.max_length)
        self.tok.enable_truncation(max_length=self.max_length)

    @classmethod
    def from_words(cls, words: Iterable[str], max_length: int = DEFAULT_MAX_LENGTH) -> WordTokenizer:
        vocab: dict[str, int] = {}
        for w in [*SPECIAL, *PUNCTUATION, *sorted({str(w).lower() for w in words})]:
            if w and w not in vocab:
                vocab[w] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
        )
        return cls(tok, max_length)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer={path}: a tokenizer.json file written by WordTokenizer.save (missing)")
        meta = json.loads(path.read_text())
        max_length = int(meta.get("counterfactory_max_length", DEFAULT_MAX_LENGTH))
        meta.pop("counterfactory_max_length", None)
        meta["padding"] = None
        meta["truncation"] = None
        return cls(Tokenizer.from_str(json.dumps(meta)), max_length)

    def save(self, path: str | os.PathLike) -> Path:
        from ..io.manifest import atomic_write_text

        meta = json.loads(self.tok.to_str())
        meta["counterfactory_max_length"] = self.max_length
        return atomic_write_text(path, json.dumps(meta, indent=1))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def words(self) -> list[str]:
        vocab = self.tok.get_vocab()
        return [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w not in SPECIAL]

    def split(self, text: str) -> list[str]:
        """The word tokens of ``text`` (no BOS/EOS), as the model sees them."""
        return list(self._raw.encode(text, add_special_tokens=False).tokens)

    def encode(self, texts: Sequence[str] | str, argument: str = "prompt") -> torch.Tensor:
        """(B, max_length) int64 ids; an unknown word or a too-long caption raises InputError naming ``argument``."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise input_error(argument, texts, "a string or a list of strings")
        encs = self.tok.encode_batch(list(texts))
        for text in texts:
            words = self._raw.encode(text, add_special_tokens=False)
            bad = [text[a:b] for (a, b), i in zip(words.offsets, words.ids) if i == self.unk_id]
            if bad:
                raise input_error(argument, text, f"words the tokenizer knows; unknown: {', '.join(bad)} "
                                  f"(known: {' '.join(self.words)})")
            if len(words.ids) > self.max_length - 2:
                raise input_error(argument, text, f"at most {self.max_length - 2} words and punctuation marks")
        return torch.tensor([e.ids for e in encs], dtype=torch.long)

    def word_positions(self, text: str, word: str) -> list[int]:
        """Token positions (BOS = 0) where ``word`` occurs in ``text``."""
        toks = self.split(text)
        w = word.lower()
        return [i + 1 for i, t in enumerate(toks) if t == w]


def build_text_encoder(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                       max_length: int = DEFAULT_MAX_LENGTH, seed: int = 0):
    """A tiny ``CLIPTextModel`` (the class SD uses), seeded init."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, projection_dim=hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(cfg).eval()


def encode_prompts(text_encoder, tokenizer: WordTokenizer, prompts: Sequence[str] | str,
                   argument: str = "prompt") -> torch.Tensor:
    """(B, L, hidden) token states: the cross-attention context of the U-Net."""
    ids = tokenizer.encode(prompts, argument=argument)
    device = next(text_encoder.parameters()).device
    return text_encoder(input_ids=ids.to(device)).last_hidden_state


__all__ = ["WordTokenizer", "build_text_encoder", "encode_prompts"]
