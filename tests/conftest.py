"""Shared fixtures: one torch thread for the whole session, a tiny compact base, a tiny dataset and adapter."""

from __future__ import annotations

import pytest
import torch

from counterfactory.models.compact import CompactConfig

TINY = CompactConfig(sample_size=32, block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16)
TYPES = ("crack", "spot")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and the 2-core machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_torch_thread_per_test():
    """Each test starts on one thread too (code under test may set another count, e.g. a CLI's --threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_config() -> CompactConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A freshly initialised tiny compact base saved as a weights folder."""
    from counterfactory.models.compact import build_compact, save_compact

    d = tmp_path_factory.mktemp("tiny_base")
    save_compact(build_compact(TINY, seed=0), d)
    return d


@pytest.fixture(scope="session")
def tiny_full_base(tmp_path_factory):
    """A freshly initialised tiny compact full-image base (3 input channels), saved as a weights folder."""
    from dataclasses import replace

    from counterfactory.models.compact import build_compact, save_compact

    d = tmp_path_factory.mktemp("tiny_full_base")
    save_compact(build_compact(replace(TINY, layout="full"), seed=0), d)
    return d


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """MVTec-layout procedural category: 64 px, 3 good train images, 3 defects of each of TYPES."""
    from counterfactory.data.surfaces import synth_dataset

    return synth_dataset(tmp_path_factory.mktemp("tiny_data"), seed=0, size=64, n_train_good=3, n_test_good=0,
                         n_per_type=3, types=TYPES)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_base, tiny_data):
    """An adapter for TYPES trained 2 steps on the tiny base (no EMA, large lr: it visibly differs from the base)."""
    from counterfactory.training.inpaint import AdapterTrainConfig, train_adapter
    from counterfactory.training.trainer import LoopConfig

    out = tmp_path_factory.mktemp("tiny_adapter") / "adapter"
    cfg = AdapterTrainConfig(out=str(out), data=str(tiny_data), base=str(tiny_base), lora_rank=2, batch_size=2,
                             loop=LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0, checkpoint_every=2))
    train_adapter(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory, tiny_base, tiny_data):
    """A ControlNet for TYPES trained 2 steps on the tiny base (no EMA, large lr: it steers the base visibly)."""
    from counterfactory.training.controlnet import ControlNetTrainConfig, train_controlnet
    from counterfactory.training.trainer import LoopConfig

    out = tmp_path_factory.mktemp("tiny_controlnet") / "controlnet"
    cfg = ControlNetTrainConfig(out=str(out), data=str(tiny_data), base=str(tiny_base), batch_size=2,
                                loop=LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0, checkpoint_every=2))
    train_controlnet(cfg, progress=False)
    return out
