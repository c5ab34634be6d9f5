"""A run is recognised by what it trains on: resolved path + content fingerprint, not the path as typed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from counterfactory.errors import CheckpointError
from counterfactory.training.checkpoint import data_identity, describe_data_change
from counterfactory.training.inpaint import AdapterTrainConfig, BaseTrainConfig, train_adapter, train_base
from counterfactory.training.reference import ReferenceTrainConfig, train_reference
from counterfactory.training.trainer import LoopConfig

MASK = "ground_truth/crack/000_mask.png"  # a training member of the default few-shot split


def _loop(**kw) -> LoopConfig:
    return LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0, checkpoint_every=2, **kw)


def _adapter(out, data, base, **kw) -> AdapterTrainConfig:
    loop = kw.pop("loop", _loop())
    return AdapterTrainConfig(out=str(out), data=str(data), base=str(base), lora_rank=2, batch_size=2, loop=loop, **kw)


@pytest.fixture
def data(tiny_data, tmp_path):
    """A private copy of the tiny dataset (tests change it)."""
    return shutil.copytree(tiny_data, tmp_path / "data")


def _grow_mask(path):
    m = np.array(Image.open(path))
    m[:8, :8] = 255
    Image.fromarray(m).save(path)


def test_adapter_resumes_with_the_same_data_spelled_differently(data, tiny_base, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train_adapter(_adapter(out, data, tiny_base, loop=_loop(max_minutes=1e-9)), progress=False)["steps"] == 1
    monkeypatch.chdir(tmp_path)
    summary = train_adapter(_adapter(out, "data/", tiny_base), progress=False)  # relative, trailing slash
    assert summary["resumed_from"] == 1 and summary["steps"] == 2
    recorded = json.loads((out / "run_config.json").read_text())["data"]
    assert recorded["path"] == str(data.resolve()) and MASK in recorded["files"]


def test_adapter_refuses_a_dataset_changed_under_the_same_path(data, tiny_base, tmp_path):
    out = tmp_path / "run"
    train_adapter(_adapter(out, data, tiny_base, loop=_loop(max_minutes=1e-9)), progress=False)
    split_before = (out / "split.json").read_bytes()
    old_size = (data / MASK).stat().st_size
    _grow_mask(data / MASK)
    new_size = (data / MASK).stat().st_size
    assert new_size != old_size
    with pytest.raises(CheckpointError) as err:
        train_adapter(_adapter(out, data, tiny_base), progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"data changed since the run started: 1 file differs (first: {MASK} size {old_size} -> {new_size})" in msg
    assert (out / "split.json").read_bytes() == split_before
    assert json.loads((out / "adapter_config.json").read_text())["steps"] == 1  # the stopped run's export stays


def test_adapter_refuses_another_dataset_swapped_in_at_the_same_path(data, tiny_base, tmp_path):
    from counterfactory.data.surfaces import synth_dataset

    out = tmp_path / "run"
    train_adapter(_adapter(out, data, tiny_base, loop=_loop(max_minutes=1e-9)), progress=False)
    shutil.rmtree(data)
    other = synth_dataset(tmp_path / "other", seed=1, size=64, n_train_good=3, n_test_good=0, n_per_type=3,
                          types=("crack", "spot"))
    shutil.move(str(other), str(data))
    with pytest.raises(CheckpointError, match=r"data changed since the run started: \d+ files differ \(first: "):
        train_adapter(_adapter(out, data, tiny_base), progress=False)


def test_resumed_run_keeps_its_recorded_split(data, tiny_base, tmp_path):
    from counterfactory.data import open_dataset
    from counterfactory.data.splits import few_shot_split, save_split

    out = tmp_path / "run"
    train_adapter(_adapter(out, data, tiny_base, loop=_loop(max_minutes=1e-9)), progress=False)
    before = (out / "split.json").read_bytes()
    other = tmp_path / "other_split.json"
    save_split(few_shot_split(open_dataset(str(data)), shots=2), other)
    with pytest.raises(CheckpointError, match="other settings"):
        train_adapter(_adapter(out, data, tiny_base, split=str(other)), progress=False)
    assert (out / "split.json").read_bytes() == before


def test_base_on_a_folder_resumes_spelled_differently_and_refuses_changed_data(data, tiny_config, tmp_path,
                                                                               monkeypatch):
    def cfg(d, **kw):
        return BaseTrainConfig(out=str(tmp_path / "run"), data=str(d), batch_size=2, model=tiny_config,
                               loop=LoopConfig(steps=2, warmup_steps=1, checkpoint_every=1, **kw))

    assert train_base(cfg(data, max_minutes=1e-9), progress=False)["steps"] == 1
    monkeypatch.chdir(tmp_path)
    assert train_base(cfg("./data/"), progress=False)["resumed_from"] == 1
    good = sorted((data / "train" / "good").iterdir())[0]
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    with pytest.raises(CheckpointError, match=f"first: train/good/{good.name} "):
        train_base(cfg(data, ), progress=False)


def test_procedural_base_is_identified_by_its_generator_settings(tiny_config, tmp_path):
    cfg = BaseTrainConfig(out=str(tmp_path), pool_size=2, pool_image_size=48, batch_size=2, model=tiny_config,
                          loop=LoopConfig(steps=1, warmup_steps=1))
    train_base(cfg, progress=False)
    ident = json.loads((tmp_path / "run_config.json").read_text())
    assert ident["data"] == {"procedural": {"pool_size": 2, "pool_image_size": 48, "seed": 0}}
    other = BaseTrainConfig(out=str(tmp_path), pool_size=3, pool_image_size=48, batch_size=2, model=tiny_config,
                            loop=LoopConfig(steps=1, warmup_steps=1))
    with pytest.raises(CheckpointError, match="data changed"):
        train_base(other, progress=False)


def test_reference_training_resumes_spelled_differently_and_refuses_changed_data(data, tiny_base, tmp_path,
                                                                                 monkeypatch):
    def cfg(d, **kw):
        return ReferenceTrainConfig(out=str(tmp_path / "run"), data=str(d), base=str(tiny_base), lora_rank=2,
                                    batch_size=2, reference_size=32, loop=_loop(**kw))

    assert train_reference(cfg(data, max_minutes=1e-9), progress=False)["steps"] == 1
    monkeypatch.chdir(tmp_path)
    assert train_reference(cfg("data//"), progress=False)["resumed_from"] == 1
    _grow_mask(data / MASK)
    with pytest.raises(CheckpointError, match=f"first: {MASK} size"):
        train_reference(cfg(data), progress=False)


def test_data_identity_names_added_removed_and_changed_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"1234")
    (tmp_path / "b.png").write_bytes(b"12")
    (tmp_path / ".hidden").write_bytes(b"x")
    before = data_identity(tmp_path, [tmp_path / "a.png"])
    assert set(before["files"]) == {"a.png", "b.png"} and len(before["files"]["a.png"]) == 2
    assert data_identity(str(tmp_path) + "/", [tmp_path / "a.png"]) == before
    (tmp_path / "a.png").write_bytes(b"4321")  # same size, other content: only the hash tells
    assert describe_data_change(before, data_identity(tmp_path, [tmp_path / "a.png"])) == (
        "data changed since the run started: 1 file differs (first: a.png content changed (same size 4))")
    (tmp_path / "b.png").unlink()
    (tmp_path / "c.png").write_bytes(b"")
    msg = describe_data_change(before, data_identity(tmp_path, [tmp_path / "a.png"]))
    assert msg == "data changed since the run started: 3 files differ (first: a.png content changed (same size 4))"
    assert describe_data_change(before, before) is None
