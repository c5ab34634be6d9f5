"""Reference encoders: compact (trained with the adapter) and CLIP / DINOv2 from a local folder (tiny configs)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from counterfactory.errors import CheckpointError, InputError
from counterfactory.models.backbones import load_backbone
from counterfactory.models.reference import (
    ENCODER_WEIGHTS,
    CompactReferenceEncoder,
    ReferenceEncoderConfig,
    build_reference_encoder,
    load_reference_encoder,
    reference_batch,
    reference_crop,
    save_reference_encoder,
)
from counterfactory.testing import save_tiny_backbone

CFG = ReferenceEncoderConfig(dim=16, num_tokens=4, input_size=32, channels=(8, 16))


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Tiny random CLIPVisionModel and Dinov2Model saved with save_pretrained (the layout of the real ones)."""
    d = tmp_path_factory.mktemp("hf")
    for kind in ("clip", "dinov2"):
        save_tiny_backbone(kind, d / kind)
    return d


def test_compact_tokens_shape_null_and_determinism():
    a, b = CompactReferenceEncoder(CFG, seed=0), CompactReferenceEncoder(CFG, seed=0)
    refs = [torch.rand(3, 20, 30), torch.rand(1, 40, 12)]  # any sizes, gray or colour
    ta, tb = a(refs), b(refs)
    assert ta.shape == (2, 4, 16)
    assert torch.equal(ta, tb)
    assert not torch.allclose(ta[0], ta[1])  # the reference matters
    dropped = a(refs, drop=torch.tensor([True, False]))
    assert torch.equal(dropped[0], a.null) and torch.equal(dropped[1], ta[1])
    assert a.null_tokens(3).shape == (3, 4, 16)


def test_compact_init_from_base_tokens_starts_near_them():
    base = torch.randn(4, 16)
    enc = CompactReferenceEncoder(CFG).init_from_tokens(base)
    assert torch.equal(enc.null, base)
    tok = enc(torch.rand(2, 3, 32, 32))
    assert (tok - base).abs().max() < 0.5 * base.abs().max()
    with pytest.raises(InputError, match="tokens"):
        enc.init_from_tokens(torch.zeros(3, 16))


def test_compact_save_load_roundtrip(tmp_path):
    enc = CompactReferenceEncoder(CFG, seed=3)
    save_reference_encoder(enc, tmp_path)
    back = load_reference_encoder(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(enc(x), back(x))
    assert not any(p.requires_grad for p in back.parameters())


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
@pytest.mark.parametrize("mode,n_tokens", [("pooled", 4), ("patches", 17)])
def test_pretrained_encoders_from_local_folder(hf_folders, tmp_path, kind, mode, n_tokens):
    cfg = ReferenceEncoderConfig(kind=kind, dim=16, num_tokens=4, token_mode=mode, backbone=str(hf_folders / kind))
    enc = build_reference_encoder(cfg)
    tok = enc([torch.rand(3, 20, 30), torch.rand(3, 9, 9)])
    assert tok.shape == (2, n_tokens, 16) and enc.null_tokens(2).shape == (2, n_tokens, 16)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.") for n in trainable)  # the backbone stays frozen
    save_reference_encoder(enc, tmp_path)
    saved = json.loads((tmp_path / "reference_encoder.json").read_text())
    assert saved["config"]["backbone"] == str(hf_folders / kind)
    from safetensors.torch import load_file

    assert not any(k.startswith("backbone.") for k in load_file(str(tmp_path / ENCODER_WEIGHTS)))
    back = load_reference_encoder(tmp_path)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(enc(x), back(x))


def test_pretrained_bad_paths_are_one_line_checkpoint_errors(hf_folders, tmp_path):
    with pytest.raises(CheckpointError, match="no transformers folder") as e:
        load_backbone("clip", tmp_path / "nowhere")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not clip"):
        load_backbone("clip", hf_folders / "dinov2")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((hf_folders / "clip" / "config.json").read_text())
    with pytest.raises(CheckpointError) as e:  # config without weights: never a silent random init
        load_backbone("clip", tmp_path / "half")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="reference encoder not found"):
        load_reference_encoder(tmp_path / "nothing")


def test_reference_batch_rejects_tiny_and_alpha():
    assert reference_batch(torch.rand(1, 8, 8), 16).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="at least 8 px"):
        reference_batch(torch.rand(3, 7, 20), 16)
    with pytest.raises(InputError, match="channels"):
        reference_batch(torch.rand(4, 10, 10), 16)
    rgba = Image.new("RGBA", (10, 10))
    assert reference_batch(rgba.convert("RGB"), 16).shape == (1, 3, 16, 16)


def test_reference_crop_context_and_min_side():
    img = torch.arange(100 * 80, dtype=torch.float32).view(1, 100, 80)
    c = reference_crop(img, (10, 20, 30, 40), (0.1, 0.1))
    assert c.shape[-2:] == (24, 24)  # 20 px box + 2 px on each side
    tiny = reference_crop(img, (0, 0, 3, 3), (0.0, 0.0), min_side=8)
    assert tiny.shape[-2:] == (8, 8)  # grown to 8 px, still inside the image


def test_high_frequency_hint_ignores_tone_and_lands_in_the_box():
    from counterfactory.models.reference import HINT_CHANNELS, high_frequency_map, warp_hint

    ref = torch.rand(3, 20, 16)
    a, b = high_frequency_map(ref[None]), high_frequency_map(ref[None] * 0.5 + 0.3)
    assert torch.allclose(a * 0.5, b, atol=1e-5)  # an offset changes nothing; contrast scales the detail
    flat = high_frequency_map(torch.full((1, 3, 20, 16), 0.7))
    assert flat.abs().max() < 1e-3
    h = warp_hint([ref, ref], [(4, 6, 14, 20), None], (32, 24))
    assert h.shape == (2, HINT_CHANNELS, 32, 24) and h[1].abs().sum() == 0
    inside = torch.zeros(32, 24, dtype=torch.bool)
    inside[6:20, 4:14] = True
    assert h[0, :, ~inside].abs().sum() == 0 and torch.equal(h[0, 2], inside.float())


def test_hint_encoder_starts_at_zero_and_is_saved_with_the_encoder(tmp_path):
    from counterfactory.models.reference import (
        HINT_CHANNELS,
        HintConvIn,
        ReferenceEncoderConfig,
        attach_hint,
        build_reference_encoder,
        load_reference_encoder,
        save_reference_encoder,
    )

    enc = build_reference_encoder(ReferenceEncoderConfig(dim=16, num_tokens=2, input_size=16, channels=(8, 16),
                                                         hint="hf", hint_out=8), seed=0)
    conv = torch.nn.Conv2d(7, 8, 3, padding=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_in = conv

    net = attach_hint(Net(), enc)
    assert isinstance(net.conv_in, HintConvIn)
    x, hint = torch.randn(2, 7, 12, 12), torch.randn(2, HINT_CHANNELS, 12, 12)
    assert torch.equal(net.conv_in(torch.cat([x, hint], 1)), conv(x))  # zero-initialised: the base unchanged
    assert not any(k.startswith("conv_in._hint") or "hint" in k for k in net.state_dict())  # one home: the encoder
    with torch.no_grad():
        enc.hint.zero.weight.normal_()
    assert not torch.equal(net.conv_in(torch.cat([x, hint], 1)), conv(x))
    save_reference_encoder(enc, tmp_path)
    back = load_reference_encoder(tmp_path)
    assert back.hint is not None and torch.equal(back.hint.zero.weight, enc.hint.zero.weight)
    plain = build_reference_encoder(ReferenceEncoderConfig(dim=16, num_tokens=2, input_size=16, channels=(8, 16)))
    assert plain.hint is None and attach_hint(Net(), plain).conv_in is conv
