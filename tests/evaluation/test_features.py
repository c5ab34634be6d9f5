"""Feature extractors: compact training determinism + round trip, local-only CLIP / DINOv2 / Inception loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from counterfactory.errors import CheckpointError, InputError
from counterfactory.evaluation.features import (
    CompactExtractorConfig,
    distribution_prefix,
    load_compact_extractor,
    load_extractor,
    save_compact_extractor,
    train_compact_extractor,
)

TINY = dict(input_size=32, channels=(8, 8, 16), num_features=16, steps=3, batch_size=4)


def _imgs(n=6):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 20 + 3 * i, 24, generator=g) for i in range(n)]


def test_compact_training_is_deterministic_and_round_trips(tmp_path):
    imgs = _imgs()
    m1, log1 = train_compact_extractor(imgs, CompactExtractorConfig(**TINY, seed=3))
    m2, _ = train_compact_extractor(imgs, CompactExtractorConfig(**TINY, seed=3))
    m3, _ = train_compact_extractor(imgs, CompactExtractorConfig(**TINY, seed=4))
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert len(log1.losses) == 3
    save_compact_extractor(m1, tmp_path / "ext", extra={"trained_on": "test"})
    loaded = load_compact_extractor(tmp_path / "ext")
    f1, f2 = m1.extract(imgs), loaded.extract(imgs)
    assert f1.shape == (6, 16) and torch.equal(f1, f2)
    assert loaded.num_features == 16 and distribution_prefix(loaded) == "FD_compact"
    # mixed sizes, gray images and batched tensors are all accepted
    assert loaded.extract([torch.rand(1, 40, 17)]).shape == (1, 16)
    assert load_extractor("compact", tmp_path / "ext" / "model.safetensors").num_features == 16


def test_compact_extractor_works_as_torchmetrics_feature():
    from torchmetrics.image.fid import FrechetInceptionDistance

    m, _ = train_compact_extractor(_imgs(), CompactExtractorConfig(**TINY))
    fid = FrechetInceptionDistance(feature=m, normalize=True)
    fid.update(torch.rand(4, 3, 32, 32), real=True)
    fid.update(torch.rand(4, 3, 32, 32), real=False)
    assert torch.isfinite(fid.compute())


@pytest.mark.parametrize("kind", ["compact", "inception", "clip", "dinov2"])
def test_wrong_weights_path_is_one_line_error_naming_it(kind, tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_extractor(kind, tmp_path / "nope", allow_torchscript=True)
    assert "\n" not in str(e.value) and str(tmp_path / "nope") in str(e.value)
    with pytest.raises(InputError, match="weights=None"):
        load_extractor(kind, None)


def test_clip_from_local_tiny_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    vc = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vc, projection_dim=12)).save_pretrained(tmp_path / "vision")
    full = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=99),
        vision_config=vc,
        projection_dim=12,
    )
    CLIPModel(full).save_pretrained(tmp_path / "full")
    for folder in ("vision", "full"):
        ext = load_extractor("clip", tmp_path / folder)
        f = ext.extract([torch.rand(3, 50, 40), torch.rand(3, 32, 32)])
        assert ext.name == "clip" and ext.num_features == 12 and f.shape == (2, 12)
        assert distribution_prefix(ext) == "FD_clip"


def test_dinov2_from_local_tiny_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=28, patch_size=7)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    ext = load_extractor("dinov2", tmp_path / "dino")
    assert ext.input_size == 28 and ext.num_features == 32
    assert ext.extract([torch.rand(3, 64, 48)]).shape == (1, 32)
    # a CLIP loader pointed at a DINOv2 folder is a one-line error, not a traceback
    with pytest.raises(CheckpointError, match="not clip"):
        load_extractor("clip", tmp_path / "dino")


def test_pickle_only_folder_is_refused_naming_the_file(tmp_path):
    """Only safetensors: a transformers folder holding only pytorch_model.bin is never unpickled."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, image_size=28, patch_size=7)
    model = Dinov2Model(cfg)
    model.save_pretrained(tmp_path / "dino")
    (tmp_path / "dino" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "dino" / "pytorch_model.bin")  # the older pickle layout
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        load_extractor("dinov2", tmp_path / "dino")
    assert "convert" in str(e.value) and "\n" not in str(e.value)


class _FakeInception(nn.Module):
    """Stands in for inception-2015-12-05.pt: uint8 (B,3,H,W) in, (B, 2048) out with return_features=True."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = self.fc(x.float().mean(dim=(2, 3)) / 255.0)
        return f if return_features else f[:, :1008]


def test_inception_from_torchscript_file_is_named_fid(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    with pytest.raises(InputError, match="allow_torchscript=False"):  # a pickle container: only on explicit opt-in
        load_extractor("inception", path)
    ext = load_extractor("inception", path, allow_torchscript=True)
    assert ext.num_features == 2048 and distribution_prefix(ext) == "FID"
    assert ext.extract([torch.rand(3, 20, 20)]).shape == (1, 2048)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_extractor("inception", bad, allow_torchscript=True)


def test_compact_training_with_type_labels_is_deterministic():
    imgs = _imgs()
    masks = [torch.zeros(1, *im.shape[-2:]) for im in imgs]
    for m in masks[:4]:
        m[:, 5:9, 6:12] = 1
    labelled = [(imgs[i], masks[i], 1 + i % 2) for i in range(4)] + [(imgs[i], None, 0) for i in (4, 5)]
    cfg = CompactExtractorConfig(**TINY, seed=1)
    a, log = train_compact_extractor(imgs, cfg, labelled=labelled)
    b, _ = train_compact_extractor(imgs, cfg, labelled=labelled)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    plain, _ = train_compact_extractor(imgs, cfg)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), plain.state_dict().values()))
    assert len(log.losses) == 3
    with pytest.raises(InputError):  # a class number with no member
        train_compact_extractor(imgs, cfg, labelled=[(imgs[0], None, 0), (imgs[1], masks[1], 2)])
