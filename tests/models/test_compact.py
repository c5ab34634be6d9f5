"""The compact pixel-space inpainting model: config validation, build, save/load round trip, missing weights."""

from __future__ import annotations

import json

import pytest
import torch

from counterfactory.errors import CheckpointError, ConfigError, InputError
from counterfactory.models.compact import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CompactConfig,
    build_compact,
    check_prediction_type,
    load_compact,
    make_schedulers,
    save_compact,
)


def test_save_load_round_trip_is_bit_identical(tmp_path, tiny_config):
    model = build_compact(tiny_config, seed=3)
    with torch.no_grad():
        model.base_tokens.normal_()  # non-zero tokens must survive too
    save_compact(model, tmp_path)
    loaded = load_compact(tmp_path)
    assert loaded.config == tiny_config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 7, 32, 32)
    with torch.no_grad():
        out_a = model.eval().unet(x, 10, encoder_hidden_states=model.tokens(1)).sample
        out_b = loaded.unet(x, 10, encoder_hidden_states=loaded.tokens(1)).sample
    assert torch.equal(out_a, out_b)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["block_out_channels"] == [16, 32]


def test_build_is_deterministic_by_seed(tiny_config):
    a, b, c = build_compact(tiny_config, seed=0), build_compact(tiny_config, seed=0), build_compact(tiny_config, seed=1)
    wa, wb, wc = (m.unet.conv_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_build_does_not_touch_global_rng(tiny_config):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_compact(tiny_config, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_half_save_loads_as_float32(tmp_path, tiny_config):
    model = build_compact(tiny_config)
    save_compact(model, tmp_path, half=True)
    loaded = load_compact(tmp_path)
    w = loaded.unet.conv_in.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, model.unet.conv_in.weight.half().float())


@pytest.mark.parametrize("present", [(), (CONFIG_FILE,), (WEIGHTS_FILE,)])
def test_missing_weights_say_where_to_put_them(tmp_path, tiny_config, present):
    src = tmp_path / "src"
    save_compact(build_compact(tiny_config), src)
    dst = tmp_path / "empty"
    dst.mkdir()
    for name in present:
        (dst / name).write_bytes((src / name).read_bytes())
    with pytest.raises(CheckpointError) as exc:
        load_compact(dst)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(dst) in msg and WEIGHTS_FILE in msg and CONFIG_FILE in msg
    assert "train-base" in msg  # how to get them


def test_corrupt_config_is_a_checkpoint_error(tmp_path, tiny_config):
    save_compact(build_compact(tiny_config), tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=CONFIG_FILE):
        load_compact(tmp_path)


def test_weights_of_another_config_are_refused(tmp_path, tiny_config):
    save_compact(build_compact(tiny_config), tmp_path)
    other = CompactConfig(sample_size=32, block_out_channels=(16, 32, 32), norm_num_groups=8, cross_attention_dim=16)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(other.to_dict()))
    with pytest.raises(CheckpointError, match="does not match"):
        load_compact(tmp_path)


def test_corrupt_weights_file_is_a_checkpoint_error(tmp_path, tiny_config):
    save_compact(build_compact(tiny_config), tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_compact(tmp_path)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"sample_size": 30, "block_out_channels": (16, 32, 64)}, "sample_size"),
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"block_out_channels": (16, 24), "norm_num_groups": 16}, "block_out_channels"),
        ({"block_out_channels": ()}, "block_out_channels"),
        ({"sample_size": 0}, "sample_size"),
        ({"num_tokens": 0}, "num_tokens"),
    ],
)
def test_config_validation(kwargs, word):
    with pytest.raises(ConfigError) as exc:
        CompactConfig(**kwargs)
    assert word in str(exc.value) and "\n" not in str(exc.value)


def test_config_dict_round_trip_ignores_unknown_keys(tiny_config):
    d = tiny_config.to_dict()
    assert CompactConfig.from_dict({**d, "future_option": 1}) == tiny_config


def test_schedulers_follow_the_config(tiny_config):
    train, sample = make_schedulers(tiny_config)
    assert train.config.prediction_type == sample.config.prediction_type == "sample"
    assert train.config.num_train_timesteps == 1000


def test_check_prediction_type():
    assert check_prediction_type("epsilon") == "epsilon"
    with pytest.raises(InputError, match="prediction_type"):
        check_prediction_type("x0")
