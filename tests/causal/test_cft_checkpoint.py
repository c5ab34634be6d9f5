import pytest
import torch
from safetensors.torch import load_file

from counterfactory.causal.checkpoint import read_meta, save_checkpoint
from counterfactory.causal.training import load_causal_model, train_all
from counterfactory.errors import CheckpointError
from counterfactory.training.checkpoint import latest_checkpoint
from counterfactory.training.trainer import Trainer

from .helpers import tiny_config, tiny_digits


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", {"kind": "causal_model", "variant": "seg"}, {"m": torch.nn.Linear(2, 2)})
    assert read_meta(tmp_path / "c", "causal_model", "seg")["variant"] == "seg"
    with pytest.raises(CheckpointError) as err:
        read_meta(tmp_path / "c", "causal_model", "reg")
    assert "'seg'" in str(err.value) and "'reg'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="predictors"):
        read_meta(tmp_path / "c", "predictors")
    with pytest.raises(CheckpointError, match="no config.json"):
        read_meta(tmp_path / "missing", "causal_model")


def test_train_resumes_after_a_kill_bit_identically(tmp_path, monkeypatch):
    data, cfg = tiny_digits(16), tiny_config()
    train_all(tmp_path / "straight", data, "seg", 0, cfg, progress=False)

    real_save = Trainer.save_checkpoint

    def dying_save(self):  # dies right after the first mid-run checkpoint of the CFT stage
        d = real_save(self)
        if self.identity["variant"] == "seg" and self.step < self.config.steps:
            raise KeyboardInterrupt
        return d

    monkeypatch.setattr(Trainer, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_all(tmp_path / "killed", data, "seg", 0, cfg, progress=False)
    stage = tmp_path / "killed" / "seg" / "seed0"
    assert not (stage / "config.json").exists()  # not finished
    assert latest_checkpoint(stage / "checkpoints").name == "step-0000002"
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    meta = train_all(tmp_path / "killed", data, "seg", 0, cfg, progress=False)
    assert meta["done"] and meta["step"] == cfg.cft_steps
    a = load_file(str(tmp_path / "straight" / "seg" / "seed0" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "seg" / "seed0" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vae, scm, meta = load_causal_model(tmp_path / "killed" / "seg" / "seed0", "seg")
    assert meta["elbo_constraint"] == meta["train_nelbo"]
    with pytest.raises(CheckpointError, match="other settings"):
        train_all(tmp_path / "killed", data, "seg", 0, tiny_config(cft_steps=6), progress=False)


def test_other_data_under_the_same_run_folder_is_refused(tmp_path):
    cfg = tiny_config()
    train_all(tmp_path, tiny_digits(16), "seg", 0, cfg, progress=False)
    again = train_all(tmp_path, tiny_digits(16), "seg", 0, cfg, progress=False)  # same data: finished stages kept
    assert again["done"]
    with pytest.raises(CheckpointError, match="data changed") as err:
        train_all(tmp_path, tiny_digits(16, seed=1), "seg", 0, cfg, progress=False)
    assert "\n" not in str(err.value) and "predictors" in str(err.value)


def test_a_run_killed_mid_stage_refuses_other_data(tmp_path, monkeypatch):
    real_save = Trainer.save_checkpoint

    def dying_save(self):
        d = real_save(self)
        if self.identity["task"] == "cft-predictors" and self.step < self.config.steps:
            raise KeyboardInterrupt
        return d

    monkeypatch.setattr(Trainer, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_all(tmp_path, tiny_digits(16), "seg", 0, tiny_config(), progress=False)
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    with pytest.raises(CheckpointError, match="data changed"):
        train_all(tmp_path, tiny_digits(16, seed=1), "seg", 0, tiny_config(), progress=False)
