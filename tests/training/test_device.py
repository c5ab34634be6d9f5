"""Device-correct training: random draws on the CPU moved to the model's device, mixed precision, accumulation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from counterfactory.cli.main import main as cli_main
from counterfactory.errors import ConfigError
from counterfactory.training.checkpoint import step_generator
from counterfactory.training.trainer import LoopConfig, Trainer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _toy(out, steps=3, loss_of=None, **loop):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    calls = []

    def micro_loss(index):
        x = torch.randn(8, 4, generator=step_generator(0, index))
        return ((module(x.to(next(module.parameters()).device)) - 1.0) ** 2).mean()

    def loss_fn(index, device):
        calls.append(index)
        return loss_of(micro_loss, index) if loss_of else micro_loss(index)

    cfg = LoopConfig(**{"steps": steps, "lr": 1e-2, "warmup_steps": 0, "grad_clip": 0.0, "ema_decay": 0.0,
                        "checkpoint_every": 1, "log_every": 1, **loop})
    return Trainer(module, loss_fn, cfg, out, {"task": "toy"}, progress=False), calls


def _weights(t):
    return {n: p.detach().clone() for n, p in t._params.items()}


def test_gradient_accumulation_equals_one_step_on_the_joined_batch(tmp_path):
    acc, calls = _toy(tmp_path / "acc", gradient_accumulation_steps=2)
    acc.run()
    assert calls == list(range(6))  # 3 steps x 2 micro-batches, each index once
    assert acc.step == 3 and acc.scheduler.last_epoch == 3  # the schedule counts optimisation steps
    joined, _ = _toy(tmp_path / "joined", loss_of=lambda f, s: (f(2 * s) + f(2 * s + 1)) / 2)
    joined.run()
    a, b = _weights(acc), _weights(joined)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    plain, _ = _toy(tmp_path / "plain")
    plain.run()
    assert not all(torch.allclose(a[k], _weights(plain)[k]) for k in a)  # accumulation changed the update


def test_gradient_accumulation_resumes_exactly(tmp_path):
    ref, _ = _toy(tmp_path / "ref", steps=4, gradient_accumulation_steps=2)
    ref.run()
    _toy(tmp_path / "run", steps=2, gradient_accumulation_steps=2)[0].run()
    resumed, calls = _toy(tmp_path / "run", steps=4, gradient_accumulation_steps=2)
    assert resumed.run()["resumed_from"] == 2 and calls == [4, 5, 6, 7]
    assert resumed.history == ref.history
    a, b = _weights(resumed), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_applies_to_the_forward_pass(tmp_path):
    fp32, _ = _toy(tmp_path / "fp32")
    fp32.run()
    bf16, _ = _toy(tmp_path / "bf16", mixed_precision="bf16")
    bf16.run()
    assert all(abs(a - b) < 0.05 for (_, a), (_, b) in zip(fp32.history, bf16.history))
    assert [v for _, v in fp32.history] != [v for _, v in bf16.history]  # lower-precision matmuls were used
    again, _ = _toy(tmp_path / "again", mixed_precision="bf16")
    again.run()
    assert again.history == bf16.history  # still deterministic


@pytest.mark.parametrize("kwargs, name", [({"mixed_precision": "fp8"}, "mixed_precision"),
                                          ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
                                          ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps")])
def test_loop_config_refuses_bad_device_settings(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        LoopConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed where CUDA exists")
def test_fp16_without_cuda_is_refused_naming_the_argument(tmp_path, capsys, tiny_data, tiny_base):
    with pytest.raises(ConfigError, match="mixed_precision='fp16'.*CUDA"):
        LoopConfig(mixed_precision="fp16")
    out = tmp_path / "run"
    code = cli_main(["train-adapter", "--data", str(tiny_data), "--base", str(tiny_base), "--out", str(out),
                     "--steps", "1", "--mixed-precision", "fp16", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--mixed-precision fp16" in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_cli_training_commands_take_the_device_flags(capsys):
    for cmd in ("train-base", "train-adapter", "train-reference"):
        with pytest.raises(SystemExit):
            cli_main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "--mixed-precision" in text and "--gradient-accumulation-steps" in text, cmd
    with pytest.raises(SystemExit) as exc:
        cli_main(["train-base", "--out", "x", "--gradient-accumulation-steps", "0"])
    assert exc.value.code == 2 and "--gradient-accumulation-steps" in capsys.readouterr().err


class _OnMeta(Exception):
    """Raised once a task's loss was computed with the model on the meta device."""


@pytest.mark.parametrize("task", ["base", "adapter", "reference"])
def test_every_tensor_of_a_training_step_follows_the_model_device(task, tmp_path, monkeypatch, tiny_config, tiny_data,
                                                                  tiny_base):
    """The model on a second device (meta): any tensor left on the CPU would make the step fail."""
    from counterfactory.training.inpaint import AdapterTrainConfig, BaseTrainConfig, train_adapter, train_base
    from counterfactory.training.reference import ReferenceTrainConfig, train_reference

    def one_step_on_meta(self):
        self.module.to("meta")
        loss = self.loss_fn(0, torch.device("meta"))
        assert loss.device.type == "meta" and loss.dim() == 0
        raise _OnMeta

    monkeypatch.setattr(Trainer, "run", one_step_on_meta)
    loop = LoopConfig(steps=1, warmup_steps=0)
    if task == "base":
        run = lambda: train_base(BaseTrainConfig(out=str(tmp_path), pool_size=2, pool_image_size=48,  # noqa: E731
                                                 batch_size=2, model=tiny_config, loop=loop), progress=False)
    elif task == "adapter":
        run = lambda: train_adapter(AdapterTrainConfig(out=str(tmp_path), data=str(tiny_data), base=str(tiny_base),  # noqa: E731
                                                       lora_rank=2, batch_size=2, loop=loop), progress=False)
    else:
        run = lambda: train_reference(ReferenceTrainConfig(out=str(tmp_path), data=str(tiny_data),  # noqa: E731
                                                           base=str(tiny_base), lora_rank=2, batch_size=2,
                                                           reference_size=32, loop=loop), progress=False)
    with pytest.raises(_OnMeta):
        run()


@cuda
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_adapter_trains_on_cuda(precision, tiny_data, tiny_base, tmp_path):
    from counterfactory.models.conditioning import DamageTypeEmbedding
    from counterfactory.training.inpaint import AdapterTrainConfig, train_adapter

    loop = LoopConfig(steps=2, lr=1e-2, warmup_steps=1, checkpoint_every=1, mixed_precision=precision,
                      gradient_accumulation_steps=2)
    summary = train_adapter(AdapterTrainConfig(out=str(tmp_path), data=str(tiny_data), base=str(tiny_base),
                                               lora_rank=2, batch_size=2, loop=loop), progress=False)
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert DamageTypeEmbedding.load(tmp_path).type_names == ("crack", "spot")
    resumed = train_adapter(AdapterTrainConfig(out=str(tmp_path), data=str(tiny_data), base=str(tiny_base),
                                               lora_rank=2, batch_size=2,
                                               loop=LoopConfig(**{**loop.__dict__, "steps": 3})), progress=False)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3


@cuda
def test_toy_trainer_runs_on_the_gpu(tmp_path):
    t, _ = _toy(tmp_path)
    t.run()
    assert t.accelerator.device.type == "cuda" and all(p.device.type == "cuda" for p in t._params.values())


def test_losses_reach_tensorboard_through_accelerate(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t, _ = _toy(tmp_path)
    t.run()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [round(e.value, 5) for e in events.Scalars("loss")] == [round(v, 5) for _, v in t.history]
