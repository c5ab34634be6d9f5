"""Training on 2 CPU processes joined over gloo (as under ``accelerate launch --multi_gpu
--num_processes 2`` on a CPU-only machine).

The run on 2 processes with a per-rank batch of 1 sees exactly the micro-batches of a 1-process run with 2
micro-batches per step (gradient accumulation): the same global batch. Their losses and weights then differ only
by the order of floating-point sums (an all-reduce of two gradients vs. the sum of two accumulated ones), a few
ulps per step that Adam carries on: we allow 1e-4 relative on the losses and 1e-4 absolute on the weights of a
4-step run, three orders above what float32 summation order gives and far below what a different batch gives
(checked too: rank 1's samples are not rank 0's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from counterfactory.cli.main import main

from .helpers import run_ranks

TINY = ["--pool-size", "2", "--resolution", "32", "--channels", "16", "32", "--checkpoint-every", "2", "--quiet",
        "--ema-decay", "0", "--lr", "0.01"]


def _history(out: Path) -> list[tuple[int, float]]:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    state = json.loads((out / "checkpoints" / latest / "state.json").read_text())
    return [tuple(h) for h in state["history"]]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A 2-process run of 4 steps stopped by --max-minutes after its first step (both ranks stop at the same
    step), then resumed on 2 processes to the end."""
    out = tmp_path_factory.mktemp("mp") / "base2"
    first = run_ranks(["train-base", "--out", str(out), "--steps", "4", "--max-minutes", "0.0001", "--batch-size",
                       "1", *TINY])
    assert first == {0: 0, 1: 0}
    half = _history(out)
    resumed = run_ranks(["train-base", "--out", str(out), "--steps", "4", "--batch-size", "1", *TINY])
    assert resumed == {0: 0, 1: 0}
    return out, half


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp") / "base1"
    assert main(["train-base", "--out", str(out), "--steps", "4", "--batch-size", "1",
                 "--gradient-accumulation-steps", "2", *TINY]) == 0
    return out


def test_two_processes_match_one_process_at_the_same_global_batch(two_process_run, one_process_run):
    out2, _ = two_process_run
    h2, h1 = _history(out2), _history(one_process_run)
    assert [s for s, _ in h2] == [s for s, _ in h1] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(h2, h1):
        assert a == pytest.approx(b, rel=1e-4)
    w2 = load_file(out2 / "compact_inpaint.safetensors")
    w1 = load_file(one_process_run / "compact_inpaint.safetensors")
    assert w2.keys() == w1.keys()
    moved = max((w2[k] - w1[k]).abs().max().item() for k in w2)
    assert moved < 1e-4


def test_one_writer_and_a_resume_from_the_shared_checkpoint(two_process_run):
    out, half = two_process_run
    h = _history(out)
    assert len(half) == 1 and h[:1] == half  # the resumed run kept the first step as written
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == 1 and summary["steps"] == 4
    assert summary["config"]["num_processes"] == 2
    assert not list(out.rglob("*.tmp"))  # no writer left a half-written file
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000002", "step-0000004"]


def test_ranks_draw_different_samples(two_process_run, tmp_path):
    """A 1-process run of batch 1 sees rank 0's micro-batches only; the 2-process step also averages rank 1's,
    drawn from another index: another loss."""
    _, half = two_process_run
    out = tmp_path / "solo"
    assert main(["train-base", "--out", str(out), "--steps", "1", "--batch-size", "1", *TINY]) == 0
    assert _history(out)[0][1] != pytest.approx(half[0][1], rel=1e-3)


def test_resuming_with_another_process_count_is_refused(two_process_run, capsys, tmp_path):
    import shutil

    out, _ = two_process_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    code = main(["train-base", "--out", str(copy), "--steps", "6", "--batch-size", "1", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "num_processes" in err, err


def test_adapter_training_on_two_processes(tiny_base, tiny_data, tmp_path):
    """LoRA on a frozen base (most parameters without gradients) through DistributedDataParallel: the same
    micro-batches as 1 process with 2 accumulated, one exported adapter."""
    args = ["--data", str(tiny_data), "--base", str(tiny_base), "--rank", "2", "--batch-size", "1", "--steps", "2",
            "--checkpoint-every", "2", "--ema-decay", "0", "--quiet"]
    two, one = tmp_path / "two", tmp_path / "one"
    assert run_ranks(["train-adapter", "--out", str(two), *args]) == {0: 0, 1: 0}
    assert main(["train-adapter", "--out", str(one), "--gradient-accumulation-steps", "2", *args]) == 0
    for (_, a), (_, b) in zip(_history(two), _history(one)):
        assert a == pytest.approx(b, rel=1e-4)
    w2 = load_file(two / "pytorch_lora_weights.safetensors")
    w1 = load_file(one / "pytorch_lora_weights.safetensors")
    assert w2.keys() == w1.keys() and max((w2[k] - w1[k]).abs().max().item() for k in w2) < 1e-4
    assert json.loads((two / "adapter_config.json").read_text())["steps"] == 2
