"""Inpainting training tasks: base pre-training on random masks, few-shot adapters, their exports and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from counterfactory.data.random_masks import MASK_KINDS, random_mask
from counterfactory.errors import CheckpointError, InputError
from counterfactory.models.compact import WEIGHTS_FILE, build_compact, load_compact
from counterfactory.models.conditioning import EMBEDDING_FILE, DamageTypeEmbedding
from counterfactory.models.lora import LORA_WEIGHT_NAME
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
from counterfactory.training.inpaint import (
    ADAPTER_CONFIG,
    AdapterTrainConfig,
    BaseTrainConfig,
    sha256_file,
    train_adapter,
    train_base,
)
from counterfactory.training.trainer import LoopConfig


def _base_cfg(out, tiny_config, steps=2, **kw) -> BaseTrainConfig:
    loop = LoopConfig(steps=steps, lr=1e-3, warmup_steps=1, checkpoint_every=1, **kw)
    return BaseTrainConfig(out=str(out), pool_size=3, pool_image_size=48, batch_size=2, model=tiny_config, loop=loop)


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("train_base") / "run"
    summary = train_base(_base_cfg(out, tiny_config), progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    return out


def test_train_base_writes_loadable_weights(trained_base, tiny_config):
    model = load_compact(trained_base)
    assert model.config.sample_size == tiny_config.sample_size
    assert model.config.extra["steps"] == 2 and model.config.extra["data"] == "procedural"
    init = build_compact(tiny_config, seed=0)
    assert not torch.equal(model.unet.conv_in.weight, init.unet.conv_in.weight)  # it was trained
    assert (trained_base / "train_summary.json").is_file() and (trained_base / "log.csv").is_file()
    # the trained base drives the pipeline
    pipe = DefectInpaintPipeline.from_compact(trained_base)
    pipe.set_progress_bar_config(disable=True)
    img, mask = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    mask[..., 8:16, 8:16] = 1
    out = pipe(img, mask, None, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out[mask.expand_as(img) == 0], img[mask.expand_as(img) == 0])


def test_train_base_stopped_and_resumed_equals_uninterrupted(trained_base, tiny_config, tmp_path):
    summary = train_base(_base_cfg(tmp_path, tiny_config, max_minutes=1e-9), progress=False)
    assert summary["stopped_early"] and summary["steps"] == 1
    summary = train_base(_base_cfg(tmp_path, tiny_config), progress=False)  # the rerun resumes
    assert summary["resumed_from"] == 1 and summary["steps"] == 2
    assert sha256_file(tmp_path / WEIGHTS_FILE) == sha256_file(trained_base / WEIGHTS_FILE)


def _full_cfg(out, tiny_config, steps=2, init=None, **kw) -> BaseTrainConfig:
    from dataclasses import replace

    return replace(_base_cfg(out, tiny_config, steps, **kw), model=replace(tiny_config, layout="full"), init=init)


def test_full_layout_base_trains_and_resumes_bit_identically(tiny_config, tmp_path):
    summary = train_base(_full_cfg(tmp_path / "run", tiny_config), progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    model = load_compact(tmp_path / "run")
    assert model.config.layout == "full" and model.unet.config.in_channels == 3
    assert json.loads((tmp_path / "run" / "compact_inpaint.json").read_text())["layout"] == "full"
    assert not torch.equal(model.unet.conv_in.weight, build_compact(model.config, seed=0).unet.conv_in.weight)
    stopped = train_base(_full_cfg(tmp_path / "again", tiny_config, max_minutes=1e-9), progress=False)
    assert stopped["stopped_early"] and stopped["steps"] == 1
    assert train_base(_full_cfg(tmp_path / "again", tiny_config), progress=False)["resumed_from"] == 1
    assert sha256_file(tmp_path / "again" / WEIGHTS_FILE) == sha256_file(tmp_path / "run" / WEIGHTS_FILE)
    # the layout is part of the run: an inpainting run does not resume into it
    with pytest.raises(CheckpointError, match="layout"):
        train_base(_base_cfg(tmp_path / "run", tiny_config), progress=False)
    # loaders that need the inpainting layout refuse it, naming both
    with pytest.raises(CheckpointError, match="has layout 'full'; this needs layout 'inpaint'"):
        load_compact(tmp_path / "run", layout="inpaint")


def test_full_layout_base_starts_from_an_inpainting_base(trained_base, tiny_config, tmp_path):
    from dataclasses import replace

    from counterfactory.models.compact import full_from_inpaint_state

    start = load_compact(trained_base)
    model = build_compact(replace(tiny_config, layout="full"))
    model.load_state_dict(full_from_inpaint_state(start.state_dict()))
    assert torch.equal(model.unet.conv_in.weight, start.unet.conv_in.weight[:, :3])
    # away from the border, the "nothing known" input (mask 1, masked image 0) is what the full base computes
    x = torch.randn(1, 3, 32, 32)
    nothing_known = torch.cat([x, torch.ones(1, 1, 32, 32), torch.zeros(1, 3, 32, 32)], dim=1)
    a, b = start.unet.conv_in(nothing_known), model.unet.conv_in(x)
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])
    assert (a - b).abs().max() > 1e-4  # (at the border zero padding differs)

    summary = train_base(_full_cfg(tmp_path / "full", tiny_config, steps=1, init=str(trained_base)), progress=False)
    assert summary["steps"] == 1
    assert load_compact(tmp_path / "full").config.extra["init_sha256"] == sha256_file(trained_base / WEIGHTS_FILE)
    back = replace(_base_cfg(tmp_path / "back", tiny_config, steps=1), init=str(tmp_path / "full"))
    with pytest.raises(InputError, match="an inpainting base may start a full-image one, not the reverse"):
        train_base(back, progress=False)


def test_train_base_refuses_a_folder_with_other_settings(trained_base, tiny_config, tmp_path):
    import shutil

    shutil.copytree(trained_base, tmp_path / "run")
    cfg = BaseTrainConfig(out=str(tmp_path / "run"), pool_size=3, pool_image_size=48, batch_size=4, model=tiny_config,
                          loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, checkpoint_every=1))
    with pytest.raises(CheckpointError, match="batch_size"):
        train_base(cfg, progress=False)


def test_train_base_on_a_dataset_folder(tiny_data, tiny_config, tmp_path):
    cfg = BaseTrainConfig(out=str(tmp_path), data=str(tiny_data), batch_size=2, model=tiny_config,
                          loop=LoopConfig(steps=1, warmup_steps=1))
    assert train_base(cfg, progress=False)["steps"] == 1
    assert load_compact(tmp_path).config.extra["data"] == str(tiny_data)


def test_adapter_folder_contents(tiny_adapter, tiny_base):
    a = Path(tiny_adapter)
    for name in (ADAPTER_CONFIG, LORA_WEIGHT_NAME, EMBEDDING_FILE, "split.json"):
        assert (a / name).is_file(), name
    cfg = json.loads((a / ADAPTER_CONFIG).read_text())
    assert cfg["types"] == ["crack", "spot"] and cfg["base_kind"] == "compact"
    assert cfg["shots"] == {"crack": 1, "spot": 1} and cfg["steps"] == 2 and cfg["lora_rank"] == 2
    assert cfg["base_sha256"] == sha256_file(Path(tiny_base) / WEIGHTS_FILE)
    assert DamageTypeEmbedding.load(a).type_names == ("crack", "spot")
    lora = load_file(str(a / LORA_WEIGHT_NAME))
    assert lora and all(k.startswith("unet.") for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if ".lora.up." in k or "lora_B" in k)  # trained


def test_adapter_stopped_and_resumed_equals_uninterrupted(tiny_adapter, tiny_base, tiny_data, tmp_path):
    def cfg(**kw):
        return AdapterTrainConfig(out=str(tmp_path), data=str(tiny_data), base=str(tiny_base), lora_rank=2,
                                  batch_size=2, loop=LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0,
                                                                checkpoint_every=2, **kw))

    assert train_adapter(cfg(max_minutes=1e-9), progress=False)["steps"] == 1
    assert train_adapter(cfg(), progress=False)["resumed_from"] == 1
    for name in (LORA_WEIGHT_NAME, EMBEDDING_FILE):
        assert _same_safetensors(tmp_path / name, Path(tiny_adapter) / name), name


def _same_safetensors(a: Path, b: Path) -> bool:
    """Same tensors and metadata (safetensors writes its metadata map in no fixed order, so bytes may differ)."""
    ta, tb = load_file(str(a)), load_file(str(b))
    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        same_meta = fa.metadata() == fb.metadata()
    return same_meta and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_adapter_for_unknown_types_is_refused(tiny_base, tiny_data, tmp_path):
    cfg = AdapterTrainConfig(out=str(tmp_path), data=str(tiny_data), base=str(tiny_base), types=("dent",),
                             loop=LoopConfig(steps=1))
    with pytest.raises(InputError, match="types"):
        train_adapter(cfg, progress=False)


def test_adapter_on_a_missing_base_says_where_to_put_it(tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = AdapterTrainConfig(out=str(tmp_path / "a"), data=str(tiny_data), base=str(tmp_path / "empty"),
                             loop=LoopConfig(steps=1))
    with pytest.raises(CheckpointError, match="not found"):
        train_adapter(cfg, progress=False)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_random_masks_are_binary_bounded_and_seeded(kind):
    for seed in range(5):
        m = random_mask(np.random.default_rng(seed), 32, kinds=(kind,))
        assert m.shape == (32, 32) and m.dtype == np.float32
        assert set(np.unique(m).tolist()) <= {0.0, 1.0}
        assert 0.005 <= m.mean() <= 0.5
        assert np.array_equal(m, random_mask(np.random.default_rng(seed), 32, kinds=(kind,)))
