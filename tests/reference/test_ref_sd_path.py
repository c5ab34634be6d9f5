"""The SD-1.5-inpainting path with a pretrained reference encoder, on tiny random models of those architectures:
train-reference (base_kind sd, CLIP / DINOv2 vision tower from a local folder) → ReferenceInpaintPipeline.from_sd."""

from __future__ import annotations

import shutil

import pytest
import torch

from counterfactory.errors import CheckpointError
from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline
from counterfactory.testing import save_tiny_sd_inpaint
from counterfactory.training.reference import ReferenceTrainConfig, train_reference
from counterfactory.training.trainer import LoopConfig


@pytest.fixture(scope="module")
def sd_work(tmp_path_factory, tiny_data):
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("ref_sd")
    base = save_tiny_sd_inpaint(d / "tiny-sd", seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, image_size=32, patch_size=8)).save_pretrained(d / "clip")
        Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                                 patch_size=8, mlp_ratio=2)).save_pretrained(d / "dinov2")
    return d, base, tiny_data


@pytest.mark.parametrize("encoder,mode", [("clip", "pooled"), ("dinov2", "patches")])
def test_sd_reference_adapter_end_to_end(sd_work, encoder, mode):
    d, base, data = sd_work
    out = d / f"adapter_{encoder}"
    cfg = ReferenceTrainConfig(out=str(out), data=str(data), base=str(base), base_kind="sd", encoder=encoder,
                               encoder_weights=str(d / encoder), token_mode=mode, batch_size=1, lora_rank=2,
                               loop=LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0, checkpoint_every=2))
    summary = train_reference(cfg, progress=False)
    assert summary["steps"] == 2
    pipe = ReferenceInpaintPipeline.from_sd(base, out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.resolution == 64 and pipe.reference_encoder.dim == 32
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
    box = (20, 16, 44, 40)
    res = pipe(image, torch.rand(3, 20, 20), box=box, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0)).images[0]
    m = torch.zeros(64, 80, dtype=torch.bool)
    m[16:40, 20:44] = True
    assert torch.equal(res[:, ~m], image[:, ~m]) and (res[:, m] - image[:, m]).abs().mean() > 1e-3


def test_moved_backbone_needs_encoder_weights(sd_work):
    d, base, _ = sd_work
    adapter = d / "adapter_clip"
    if not adapter.is_dir():
        pytest.skip("needs the clip adapter of the previous test")
    moved = d / "clip_moved"
    shutil.move(str(d / "clip"), str(moved))
    try:
        with pytest.raises(CheckpointError, match="no transformers folder") as e:
            ReferenceInpaintPipeline.from_sd(base, adapter)
        assert "\n" not in str(e.value)
        pipe = ReferenceInpaintPipeline.from_sd(base, adapter, encoder_weights=moved)
        assert pipe.reference_encoder.config.backbone == str(moved)
    finally:
        shutil.move(str(moved), str(d / "clip"))
    with pytest.raises(CheckpointError, match="trained on a 'sd' base"):
        ReferenceInpaintPipeline.from_compact(adapter)
