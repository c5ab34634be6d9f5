"""The training loop: exact resume after a stop or a kill, NaN handling, identity check, logs, checkpoints."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from counterfactory.errors import CheckpointError, ConfigError, TrainingError
from counterfactory.training.trainer import LoopConfig, Trainer, step_generator

N = 7
IDENTITY = {"task": "toy", "width": 8}


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise point runs (not even `except Exception`)."""


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _trainer(out, steps=N, kill_at=None, nan_at=None, identity=IDENTITY, **loop) -> Trainer:
    module = _module()

    def loss_fn(step, device):
        if step == kill_at:
            raise Killed()
        g = step_generator(0, step)
        x = torch.randn(16, 4, generator=g)
        y = torch.sin(x.sum(dim=1, keepdim=True))
        loss = ((module(x) - y) ** 2).mean()
        return loss * float("nan") if step == nan_at else loss

    cfg = LoopConfig(**{"steps": steps, "lr": 1e-2, "warmup_steps": 3, "checkpoint_every": 2, "log_every": 1,
                        "ema_decay": 0.9, **loop})
    return Trainer(module, loss_fn, cfg, out, identity, progress=False)


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t._params.items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log_steps(out) -> list[int]:
    with (out / "log.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer") / "ref"
    t = _trainer(out)
    summary = t.run()
    assert summary["steps"] == N and summary["resumed_from"] is None and not summary["stopped_early"]
    return t, out


def test_uninterrupted_run_writes_logs_and_keeps_two_checkpoints(uninterrupted):
    t, out = uninterrupted
    assert [s for s, _ in t.history] == list(range(1, N + 1))
    assert _log_steps(out) == list(range(1, N + 1))
    with (out / "log.csv").open() as f:
        row = next(csv.DictReader(f))
    assert set(row) == {"step", "loss", "lr", "seconds"} and float(row["loss"]) > 0
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert kept == ["step-0000006", "step-0000007"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000007"
    assert json.loads((out / "run_config.json").read_text()) == IDENTITY


def test_resume_after_a_shorter_run_is_exact(uninterrupted, tmp_path):
    ref, _ = uninterrupted
    first = _trainer(tmp_path, steps=4)
    first.run()
    second = _trainer(tmp_path)  # a fresh process would build everything again
    summary = second.run()
    assert summary["resumed_from"] == 4 and summary["steps"] == N
    assert second.history == ref.history
    assert _same(_weights(second), _weights(ref))
    assert _same(second.ema_state(), ref.ema_state())
    assert _log_steps(tmp_path) == list(range(1, N + 1))


def test_resume_after_a_kill_between_checkpoints_is_exact(uninterrupted, tmp_path):
    ref, _ = uninterrupted
    with pytest.raises(Killed):
        _trainer(tmp_path, kill_at=5).run()  # steps 1..5 done, last checkpoint at 4
    # a kill while a checkpoint was being written leaves a temp folder behind
    (tmp_path / "checkpoints" / ".tmp-step-0000006").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-0000006" / "trainable.safetensors").write_bytes(b"half")
    resumed = _trainer(tmp_path)
    summary = resumed.run()
    assert summary["resumed_from"] == 4
    assert resumed.history == ref.history
    assert _same(_weights(resumed), _weights(ref))
    assert _same(resumed.ema_state(), ref.ema_state())
    assert _log_steps(tmp_path) == list(range(1, N + 1))  # the redone step 5 is not logged twice


def test_stop_by_wall_time_then_resume_is_exact(uninterrupted, tmp_path):
    ref, _ = uninterrupted
    t = _trainer(tmp_path, max_minutes=1e-9)
    summary = t.run()
    assert summary["stopped_early"] and summary["steps"] == 1
    assert (tmp_path / "checkpoints" / "step-0000001" / "state.json").is_file()
    resumed = _trainer(tmp_path)
    resumed.run()
    assert resumed.history == ref.history
    assert _same(_weights(resumed), _weights(ref))


def test_rerun_of_a_finished_run_changes_nothing(uninterrupted, tmp_path):
    ref, _ = uninterrupted
    _trainer(tmp_path).run()
    again = _trainer(tmp_path)
    summary = again.run()
    assert summary["resumed_from"] == N and summary["steps"] == N
    assert _same(_weights(again), _weights(ref))


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError) as exc:
        _trainer(tmp_path, nan_at=3).run()
    msg = str(exc.value)
    assert "\n" not in msg
    assert "step 3" in msg
    ckpt = tmp_path / "checkpoints" / "step-0000002"
    assert str(ckpt) in msg
    assert (ckpt / "state.json").is_file()
    fresh = _trainer(tmp_path)
    fresh.load_checkpoint(ckpt)
    assert fresh.step == 2 and all(torch.isfinite(p).all() for p in fresh._params.values())


def test_nan_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingError, match="none yet"):
        _trainer(tmp_path, nan_at=0).run()


def test_a_folder_of_another_run_is_refused(tmp_path):
    _trainer(tmp_path, steps=2).run()
    with pytest.raises(CheckpointError) as exc:
        _trainer(tmp_path, identity={"task": "toy", "width": 16}).run()
    msg = str(exc.value)
    assert "width" in msg and "\n" not in msg and str(tmp_path) in msg


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"ema_decay": 1.0},
                                    {"checkpoint_every": 0}])
def test_loop_config_validation(kwargs):
    with pytest.raises(ConfigError):
        LoopConfig(**kwargs)


def test_a_module_without_trainable_parameters_is_refused(tmp_path):
    m = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable"):
        Trainer(m, lambda s, d: m.weight.sum(), LoopConfig(steps=1), tmp_path, IDENTITY, progress=False)


def test_step_generator_is_a_pure_function_of_seed_step_stream():
    a = torch.rand(3, generator=step_generator(1, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(1, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 6)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(2, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 5, stream=1)))
