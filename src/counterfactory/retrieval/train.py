"""Training the retrieval models: the dual encoder on (image, caption), the Combiner on triplets, a digit classifier.

Each fit takes seconds to a minute on one CPU thread, so these are plain seeded loops (resumption happens at the
granularity of whole fits in :mod:`counterfactory.retrieval.study`); the same inputs and seed give bit-identical
weights on CPU. Global random state is left untouched (``torch.random.fork_rng``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, input_error
from .encoders import Combiner, DualEncoder, DualEncoderConfig, WordVocabulary


def _check_steps(**kw):
    for k, v in kw.items():
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{k}={v}: a positive integer")


def caption_targets(captions: Sequence[str]) -> torch.Tensor:
    """(N,N) soft targets: uniform over the items that share a caption (many digits share one)."""
    codes = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([codes[c] for c in captions])
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def train_dual_encoder(images: torch.Tensor, captions: Sequence[str], words: Sequence[str],
                       config: DualEncoderConfig | None = None, steps: int = 600, batch_size: int = 256,
                       lr: float = 2e-3, seed: int = 0, progress=None) -> DualEncoder:
    """CLIP-style contrastive fit on (image, caption); captions shared by several images are all positives."""
    _check_steps(steps=steps, batch_size=batch_size)
    if len(images) != len(captions) or len(images) < 2:
        raise input_error("captions", f"{len(captions)} captions for {len(images)} images", "one caption per image, >= 2")
    config = config or DualEncoderConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DualEncoder(config, WordVocabulary(words, config.max_length))
        images = model.check_images(images)
        ids, mask = model.vocabulary.encode(list(captions))
        g = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        caps = list(captions)
        model.train()
        for step in range(steps):
            b = torch.randperm(len(images), generator=g)[:batch_size]
            img = F.normalize(model.image(images[b]), dim=-1)
            txt = F.normalize(model.text(ids[b], mask[b]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            tgt = caption_targets([caps[i] for i in b.tolist()])
            loss = 0.5 * (torch.sum(-tgt * logits.log_softmax(1), 1).mean()
                          + torch.sum(-tgt * logits.T.log_softmax(1), 1).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step + 1, float(loss))
    return model.eval()


@torch.no_grad()
def encode_images(model: DualEncoder, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@dataclass
class ComposedModel:
    """The retrieval model: a frozen image tower (features given), a fine-tuned text tower and a Combiner."""

    encoder: DualEncoder
    combiner: Combiner
    finetuned_image: bool = False  # the image tower was trained with the Combiner: gallery features must be re-encoded

    @torch.no_grad()
    def query(self, reference_features: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        self.encoder.eval()
        self.combiner.eval()
        return self.combiner(reference_features, self.encoder.encode_text(list(texts)))


def batch_indices(n: int, batch_size: int, seed: int, n_extra: int = 0, extra_per_batch: int = 0):
    """The Combiner's batches: an endless iterator of (real indices, extra indices).

    The real indices come from one generator seeded by ``seed`` alone, so they are the same with or without extra
    (synthetic) items; ``extra_per_batch`` extra items per step (at most ``n_extra``) come from a second generator."""
    g = torch.Generator().manual_seed(seed + 1)
    g2 = torch.Generator().manual_seed(seed + 2)
    k = min(extra_per_batch, n_extra)
    while True:
        real = torch.randperm(n, generator=g)[:batch_size]
        extra = torch.randperm(n_extra, generator=g2)[:k] if k else torch.zeros(0, dtype=torch.long)
        yield real, extra


def train_combiner(encoder: DualEncoder, reference_features: torch.Tensor, texts: Sequence[str],
                   target_features: torch.Tensor, steps: int = 400, batch_size: int = 128, lr: float = 1e-3,
                   seed: int = 0, projection_dim: int = 256, hidden_dim: int = 512, progress=None,
                   evaluate=None, eval_every: int = 0, finetune_image: bool = False, synthetic=None,
                   synthetic_per_batch: int = 32) -> ComposedModel:
    """CLIP4Cir stage 2 on precomputed image features: the Combiner and a copy of the text tower are trained
    with an in-batch contrastive loss (query vs the batch's targets, logits × 100).

    ``evaluate(step, model)`` is called every ``eval_every`` steps with the model in eval mode (a learning
    curve); it draws no random numbers, so the trained weights are the same with or without it.

    ``finetune_image=True``: ``reference_features`` and ``target_features`` are *images* (N,1,28,28) in [0,1] and
    a copy of the image tower is trained too (CLIP4Cir's first stage fine-tunes the encoders on the triplets);
    the returned model's ``finetuned_image`` is set, so callers encode the gallery with ``model.encoder``.

    ``synthetic``: optional (references, texts, targets) in the same form, added to every batch:
    ``synthetic_per_batch`` of them on top of the ``batch_size`` real ones (:func:`batch_indices`), so a run with
    and one without synthetic triplets start from the same weights and see the same real batches."""
    _check_steps(steps=steps, batch_size=batch_size)
    if evaluate is not None:
        _check_steps(eval_every=eval_every)
    n = len(texts)
    if not (len(reference_features) == n == len(target_features)) or n < 2:
        raise input_error("triplets", f"{len(reference_features)} references, {n} texts, {len(target_features)} targets",
                          "as many references, texts and targets, at least 2")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = copy.deepcopy(encoder)
        for p in enc.image.parameters():
            p.requires_grad_(finetune_image)
        n_syn = 0
        if synthetic is not None:
            s_ref, s_txt, s_tgt = synthetic
            n_syn = len(s_txt)
            if not (len(s_ref) == n_syn == len(s_tgt)):
                raise input_error("synthetic", f"{len(s_ref)} references, {n_syn} texts, {len(s_tgt)} targets",
                                  "as many references, texts and targets")
            if n_syn:
                reference_features = torch.cat([reference_features, s_ref])
                target_features = torch.cat([target_features, s_tgt])
                texts = list(texts) + list(s_txt)
        if finetune_image:
            reference_features = enc.check_images(reference_features)
            target_features = enc.check_images(target_features)
        comb = Combiner(encoder.cfg.embed_dim, projection_dim, hidden_dim)
        ids, mask = enc.vocabulary.encode(list(texts))
        params = list(comb.parameters()) + list(enc.text.parameters())
        if finetune_image:
            params += list(enc.image.parameters())
            enc.image.train()

        def feats(x):
            return F.normalize(enc.image(x), dim=-1) if finetune_image else x

        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        batches = batch_indices(n, batch_size, seed, n_syn, synthetic_per_batch)
        comb.train()
        enc.text.train()
        for step in range(steps):
            real, extra = next(batches)
            b = torch.cat([real, n + extra])
            txt = F.normalize(enc.text(ids[b], mask[b]), dim=-1)
            q = comb(feats(reference_features[b]), txt)
            logits = comb.logit_scale * q @ feats(target_features[b]).T
            loss = F.cross_entropy(logits, torch.arange(len(b)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step + 1, float(loss))
            if evaluate is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
                with torch.random.fork_rng(devices=[]):
                    evaluate(step + 1, ComposedModel(enc.eval(), comb.eval(), finetune_image))
                comb.train()
                enc.text.train()
                if finetune_image:
                    enc.image.train()
    return ComposedModel(enc.eval(), comb.eval(), finetune_image)


# --------------------------------------------------------------------------------------------- digit classifier
class DigitClassifier(nn.Module):
    """A small CNN digit classifier on 28-px gray digits; ``predict`` takes numpy or torch images in [0,1]."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 49, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)

    @torch.no_grad()
    def predict(self, images) -> np.ndarray:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise input_error("images", tuple(x.shape), "(N,28,28) gray digits in [0,1]")
        self.eval()
        dev = next(self.parameters()).device
        return torch.cat([self(x[i:i + 1000].to(dev)).argmax(1).cpu() for i in range(0, len(x), 1000)]).numpy()

    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        from ..io.manifest import atomic_path, atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "digit_classifier.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        atomic_write_text(folder / "digit_classifier.json", json.dumps({"width": self.width}))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DigitClassifier:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "digit_classifier.safetensors").is_file() or not (folder / "digit_classifier.json").is_file():
            raise CheckpointError(f"classifier={folder}: a folder holding digit_classifier.json and "
                                  "digit_classifier.safetensors (train one with `counterfactory cir classifier`)")
        model = cls(**json.loads((folder / "digit_classifier.json").read_text()))
        model.load_state_dict(load_file(str(folder / "digit_classifier.safetensors")))
        return model.eval()


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int = 400, batch_size: int = 128,
                           lr: float = 2e-3, seed: int = 0, width: int = 16) -> DigitClassifier:
    """Cross-entropy fit with small random shifts (±2 px) so edited digits off-centre stay recognised."""
    _check_steps(steps=steps, batch_size=batch_size)
    if images.ndim == 3:
        images = images[:, None]
    if len(images) != len(labels) or len(images) == 0:
        raise input_error("labels", f"{len(labels)} labels for {len(images)} images", "one label per image")
    images, labels = images.float(), torch.as_tensor(labels).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(width)
        g = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.train()
        for _ in range(steps):
            b = torch.randperm(len(images), generator=g)[:batch_size]
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            x = torch.roll(images[b], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
