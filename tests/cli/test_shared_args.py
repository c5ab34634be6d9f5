"""Flags shared by the training commands come from one place (cli/_args.py) and reject bad values alike."""

from __future__ import annotations

import pytest

from counterfactory.cli.main import main


@pytest.mark.parametrize("command", ["train-base", "train-adapter", "train-reference", "generate", "demo"])
@pytest.mark.parametrize("flag,value", [("--threads", "-1"), ("--threads", "two")])
def test_bad_shared_flag_is_one_line_exit_2(command, flag, value, tmp_path, capsys):
    args = [command, "--out", str(tmp_path / "o"), flag, value]
    if command in ("train-adapter", "train-reference", "generate"):
        args += ["--data", str(tmp_path)]
    if command == "generate":
        args += ["--adapter", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["train-base", "train-adapter", "train-reference"])
def test_training_commands_share_the_optimisation_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--steps", "--lr", "--batch-size", "--seed", "--checkpoint-every", "--ema-decay", "--max-minutes",
                 "--threads", "--quiet"):
        assert flag in out, (command, flag)
