"""train-base can start from an existing compact base (fine-tuning on the user's own defect-free images)."""

import pytest
import torch

from counterfactory.errors import InputError
from counterfactory.models.compact import CompactConfig, load_compact
from counterfactory.training.inpaint import BaseTrainConfig, train_base
from counterfactory.training.trainer import LoopConfig


def _cfg(out, model, init, lr=1e-6):
    loop = LoopConfig(steps=1, lr=lr, warmup_steps=0, ema_decay=0.0, checkpoint_every=1)
    return BaseTrainConfig(out=str(out), pool_size=3, pool_image_size=48, batch_size=2, model=model, loop=loop,
                           init=None if init is None else str(init))


def _max_diff(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_init_starts_from_the_given_weights(tmp_path, tiny_config):
    import json

    from counterfactory.models.compact import build_compact, save_compact

    init = tmp_path / "init"
    save_compact(build_compact(tiny_config, seed=7), init)  # not what the run's own seed (0) would initialise
    train_base(_cfg(tmp_path / "ft", tiny_config, init), progress=False)
    train_base(_cfg(tmp_path / "scratch", tiny_config, None), progress=False)
    start = load_compact(init)
    assert _max_diff(load_compact(tmp_path / "ft"), start) < 1e-3  # one tiny step away from the init
    assert _max_diff(load_compact(tmp_path / "scratch"), start) > 1e-2

    ident = json.loads((tmp_path / "ft" / "train_summary.json").read_text())["config"]
    assert len(ident["init_sha256"]) == 64 and "init" not in ident
    assert "init_sha256" not in json.loads((tmp_path / "scratch" / "train_summary.json").read_text())["config"]


def test_init_of_another_architecture_is_refused(tmp_path, tiny_base):
    other = CompactConfig(sample_size=32, block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16)
    with pytest.raises(InputError, match="init"):
        train_base(_cfg(tmp_path / "x", other, tiny_base), progress=False)
    assert torch.is_tensor(load_compact(tiny_base).base_tokens)
