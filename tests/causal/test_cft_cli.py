import pytest
import torch

from counterfactory.causal.checkpoint import save_checkpoint
from counterfactory.cli import main as cli


@pytest.fixture
def run_cli(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["counterfactory.cli.cft"])  # independent of other command groups

    def run(*argv):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _fake_run(root, variant="seg"):
    vae_config = {"height": 28, "width": 28, "cond_dim": 12}
    settings = {"seed": 0, "train": {"scale_min": 0.6, "scale_max": 1.4}}
    for v in ("none", variant):
        meta = {"kind": "causal_model", "variant": v, "settings": settings, "vae_config": vae_config, "done": True}
        save_checkpoint(root / v / "seed0", meta, {"vae": torch.nn.Linear(1, 1)})
    return root


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_data_files_exit_2(tmp_path, run_cli):
    code, _, err = run_cli("cft", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert code == 2 and "data=" in _one_line(err)
    (tmp_path / "d").mkdir()
    code, _, err = run_cli("cft", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"))
    assert code == 2 and "missing" in _one_line(err)


def test_checkpoint_of_another_variant_exit_2(tmp_path, run_cli):
    run = _fake_run(tmp_path / "run", "seg")
    code, _, err = run_cli("cft", "evaluate", "--checkpoint", str(run / "seg" / "seed0"), "--variants", "reg")
    line = _one_line(err)
    assert code == 2 and "variant 'seg'" in line and "'reg'" in line


def test_intervention_outside_the_trained_range_exit_2(tmp_path, run_cli):
    run = _fake_run(tmp_path / "run", "reg")
    code, _, err = run_cli("cft", "evaluate", "--run", str(run), "--variants", "none,reg", "--seeds", "0", "--scales", "0.7,2.5")
    line = _one_line(err)
    assert code == 2 and "scales=[2.5]" in line and "[0.6, 1.4]" in line


def test_bad_arguments_exit_2(tmp_path, run_cli):
    code, _, err = run_cli("cft", "train", "--out", str(tmp_path), "--variant", "bogus")
    assert code == 2 and "--variant" in _one_line(err)
    code, _, err = run_cli("cft", "evaluate", "--variants", "none")
    assert code == 2 and "--run/--checkpoint" in _one_line(err)


def test_data_variant_and_mode_refusals_exit_2(tmp_path, run_cli):
    code, _, err = run_cli("cft", "train", "--out", str(tmp_path / "o"), "--pairing", "sorted")
    assert code == 2 and "--pairing" in _one_line(err)
    code, _, err = run_cli("cft", "train", "--out", str(tmp_path / "o"), "--structures", "3")
    assert code == 2 and "--structures" in _one_line(err)
    code, _, err = run_cli("cft", "train", "--out", str(tmp_path / "o"), "--structures", "1", "--pairing", "correlated")
    assert code == 2 and "pairing=correlated" in _one_line(err)
    assert not (tmp_path / "o").exists()  # nothing written
    code, _, err = run_cli("cft", "train", "--out", str(tmp_path / "o"), "--cft-lr", "3")
    assert code == 2 and "--cft-lr" in _one_line(err)
    run = _fake_run(tmp_path / "run", "reg")  # a single-digit run, fine-tuned with the pixel-noise counterfactual
    code, _, err = run_cli("cft", "evaluate", "--run", str(run), "--variants", "none,reg", "--seeds", "0", "--pairing", "correlated")
    line = _one_line(err)
    assert code == 2 and "--structures/--pairing" in line and "'single'" in line
    code, _, err = run_cli("cft", "evaluate", "--run", str(run), "--variants", "none,reg", "--seeds", "0", "--counterfactual", "latent")
    line = _one_line(err)
    assert code == 2 and "counterfactual=latent" in line and "'noise'" in line
