"""The bad-input sweep over every command: one line on stderr naming the flag, the value and what is allowed,
exit 2, no traceback, nothing half-written."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from counterfactory.cli.main import build_parser, main


def _fails(capsys, argv: list[str], *words: str) -> str:
    """Run ``argv``; expect exit 2 with exactly one line on stderr (no traceback) containing ``words``."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit from parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- every numeric flag of every command has a range ----------------------------------------------------------


def _numeric_actions():
    """(command path, action) for every flag whose value is a number, found by walking the parser."""
    found = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif action.option_strings and action.type is not None and action.choices is None:
                found.append((" ".join(path), action))

    walk(build_parser(), [])
    return found


def _is_numeric(action) -> bool:
    return action.type in (int, float) or getattr(action.type, "bounded", False)


NUMERIC = [(cmd, a) for cmd, a in _numeric_actions() if _is_numeric(a)]


def test_the_sweep_finds_the_numeric_flags():
    flags = {(cmd, a.option_strings[-1]) for cmd, a in NUMERIC}
    for expected in [("generate", "--guidance-scale"), ("train-adapter", "--outside-weight"),
                     ("train-base", "--max-minutes"), ("train-adapter", "--threads"), ("cft train", "--seeds"),
                     ("generate", "--seed"), ("evaluate", "--compact-steps"), ("train-base", "--max-crop"),
                     ("insert", "--max-box-side"), ("data synth", "--size")]:
        assert expected in flags, expected
    assert len(flags) > 60


@pytest.mark.parametrize("command,action", NUMERIC, ids=[f"{c}:{a.option_strings[-1]}" for c, a in NUMERIC])
def test_every_numeric_flag_is_bounded(command, action):
    flag = action.option_strings[-1]
    assert action.type not in (int, float), f"{command} {flag}: a plain {action.type.__name__} has no range"
    for bad in ("-1", "nan", "inf", "1e300", "ten"):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            action.type(bad)
        assert flag in str(exc.value) and repr(bad) in str(exc.value)
    if action.default is not None and not isinstance(action.default, list):
        assert action.type(str(action.default)) == action.default  # the default is inside the range


@pytest.mark.parametrize("argv,words", [
    (["generate", "--guidance-scale", "1e300"], ["--guidance-scale='1e300'", "[0, 50]"]),
    (["train-adapter", "--outside-weight", "-5"], ["--outside-weight='-5'", "[0, 1]"]),
    (["train-base", "--max-minutes", "-1"], ["--max-minutes='-1'"]),
    (["train-base", "--threads", "-3"], ["--threads='-3'"]),
    (["generate", "--seed", "-1"], ["--seed='-1'"]),
    (["cft", "train", "--seeds", "-1"], ["'-1'", "integers in [0, "]),
    (["evaluate", "--compact-steps", "0"], ["--compact-steps='0'"]),
    (["train-base", "--max-crop", "0"], ["--max-crop='0'"]),
    (["insert", "--max-box-side", "1"], ["--max-box-side='1'", "[8, "]),
    (["data", "synth", "--size", "100000"], ["--size='100000'", "[16, 8192]"]),
    (["train-adapter", "--rank", "100000"], ["--rank='100000'", "[1, 4096]"]),
])
def test_accepted_but_wrong_values_are_refused(capsys, argv, words):
    _fails(capsys, argv + ["--help"][:0], *words)


def test_downstream_seeds_minus_one(capsys, tmp_path):
    _fails(capsys, ["benchmark", "downstream", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "-1"],
           "--seeds=-1")


def test_max_crop_below_the_resolution(capsys, tmp_path):
    _fails(capsys, ["train-base", "--out", str(tmp_path / "b"), "--max-crop", "1"], "--max-crop=1", "--resolution")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv", [["train-adapter", "--types", ""], ["generate", "--types", ""],
                                  ["data", "synth", "--types", ""]])
def test_empty_types(capsys, tmp_path, tiny_data, tiny_adapter, argv):
    extra = {"train-adapter": ["--data", str(tiny_data)],
             "generate": ["--data", str(tiny_data), "--adapter", str(tiny_adapter)], "data": []}[argv[0]]
    _fails(capsys, argv + extra + ["--out", str(tmp_path / "o")], "--types=''")
    assert not (tmp_path / "o").exists()


# ---- --out: a file in the way, or inside an input ---------------------------------------------------------------


def _commands(tmp_path, tiny_data, tiny_adapter, tiny_base):
    """Each command with inputs good enough that only --out can be wrong (OUT is substituted)."""
    d, a, b = str(tiny_data), str(tiny_adapter), str(tiny_base)
    run = tmp_path / "cftrun"
    return {
        "data synth": ["data", "synth", "--out", "OUT", "--n-train-good", "1", "--n-test-good", "0",
                       "--n-per-type", "1", "--size", "32"],
        "data split": ["data", "split", d, "--out", "OUT"],
        "train-base": ["train-base", "--out", "OUT", "--steps", "1"],
        "train-adapter": ["train-adapter", "--data", d, "--base", b, "--out", "OUT", "--steps", "1"],
        "generate": ["generate", "--adapter", a, "--base", b, "--data", d, "--out", "OUT", "--n", "1"],
        "evaluate": ["evaluate", "--real", d, "--generated", d, "--out", "OUT"],
        "insert": ["insert", "--data", d, "--out", "OUT", "--methods", "copy_paste", "--n", "1"],
        "benchmark downstream": ["benchmark", "downstream", "--data", d, "--out", "OUT", "--steps", "1"],
        "train-reference": ["train-reference", "--data", d, "--base", b, "--out", "OUT", "--steps", "1"],
        "cft train": ["cft", "train", "--data", str(tmp_path / "mm"), "--out", "OUT"],
        "cft evaluate --report": ["cft", "evaluate", "--data", str(tmp_path / "mm"), "--run", str(run),
                                  "--report", "OUT"],
        "demo": ["demo", "--out", "OUT", "--base", b],
        "masks sample": ["masks", "sample", "--data", d, "--split", str(Path(a) / "split.json"), "--out", "OUT"],
    }


COMMANDS = ["data synth", "data split", "train-base", "train-adapter", "generate", "evaluate", "insert",
            "benchmark downstream", "train-reference", "cft train", "cft evaluate --report", "demo", "masks sample"]


@pytest.mark.parametrize("command", COMMANDS)
def test_out_below_an_existing_file(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    argv = [str(blocker / "sub") if v == "OUT" else v for v in _commands(tmp_path, tiny_data, tiny_adapter, tiny_base)[command]]
    before = _tree(tmp_path)
    _fails(capsys, argv, "--out" if "report" not in command else "--report", str(blocker), "is a file")
    assert _tree(tmp_path) == before and blocker.read_text() == "in the way"


@pytest.mark.parametrize("command", ["data synth", "train-base", "train-adapter", "generate", "evaluate", "insert",
                                     "benchmark downstream", "train-reference", "cft train", "demo",
                                     "masks sample"])
def test_out_that_is_an_existing_file(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    argv = [str(blocker) if v == "OUT" else v for v in _commands(tmp_path, tiny_data, tiny_adapter, tiny_base)[command]]
    _fails(capsys, argv, "--out", str(blocker), "a folder path (this is an existing file)")
    assert blocker.read_text() == "in the way"


def test_unwritable_out_is_refused(capsys, tmp_path, monkeypatch):
    """Where files cannot be created (read-only mount, no permission) the refusal comes before any work; simulated
    by a creation that fails, since permission bits do not stop root."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    _fails(capsys, ["train-base", "--out", str(tmp_path / "o"), "--steps", "1"], "--out", "a writable location",
           "Permission denied")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command,flag,where", [
    ("generate", "--data", "inside"), ("generate", "--adapter", "same"), ("train-adapter", "--data", "same"),
    ("train-adapter", "--data", "inside"), ("data split", "DIR", "inside"), ("evaluate", "--generated", "inside"),
    ("insert", "--data", "inside"), ("benchmark downstream", "--data", "same"), ("train-reference", "--data", "inside"),
    ("train-base", "--base", "around"),
])
def test_out_never_lands_in_an_input(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base, command, flag, where):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    target = {"--data": data, "DIR": data, "--generated": data, "--adapter": adapter, "--base": tmp_path / "b" / "base"}[flag]
    out = {"same": target, "inside": target / "ground_truth" / "new", "around": target.parent}[where]
    argv = _commands(tmp_path, data, adapter, tiny_base)[command]
    if command == "train-base":  # the dataset lies inside --out
        shutil.copytree(data, target)
        argv = argv + ["--data", str(target)]
    argv = [str(out) if v == "OUT" else v for v in argv]
    before = _tree(tmp_path)
    _fails(capsys, argv, "--out", "outside the input")
    assert _tree(tmp_path) == before


# ---- sizes that cannot fit in memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["train-adapter", "--batch-size", "100000"],
    ["train-adapter", "--rank", "4000", "--batch-size", "2000"],
    ["train-base", "--batch-size", "1000000"],
    ["generate", "--batch-size", "100000"],
    ["train-reference", "--batch-size", "100000"],
])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(capsys, tmp_path, tiny_data, tiny_adapter, argv):
    extra = {"train-adapter": ["--data", str(tiny_data)], "train-reference": ["--data", str(tiny_data)],
             "generate": ["--data", str(tiny_data), "--adapter", str(tiny_adapter)], "train-base": []}[argv[0]]
    line = _fails(capsys, argv + extra + ["--out", str(tmp_path / "o")], "fits in memory", "GiB", "this machine has")
    assert ("--rank" in line) == ("--rank" in argv)
    assert not (tmp_path / "o").exists()


# ---- damaged adapter folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated_embeddings", "truncated_lora", "corrupt_config"])
def test_damaged_adapter_names_the_file(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base, damage):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    name = {"truncated_embeddings": "damage_type_embeddings.safetensors",
            "truncated_lora": "pytorch_lora_weights.safetensors", "corrupt_config": "adapter_config.json"}[damage]
    f = adapter / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage != "corrupt_config" else data[:-5])
    _fails(capsys, ["generate", "--adapter", str(adapter), "--base", str(tiny_base), "--data", str(tiny_data),
                    "--out", str(tmp_path / "g"), "--n", "1"], "--adapter", name)
    assert not (tmp_path / "g").exists()


# ---- a crafted adapter cannot write outside --out ---------------------------------------------------------------


def test_crafted_type_names_cannot_escape_out(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base):
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "evil" / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    evil = ["../../x"] + cfg["types"][1:]
    cfg["types"] = evil
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    emb = adapter / "damage_type_embeddings.safetensors"
    from safetensors import safe_open

    with safe_open(str(emb), "pt") as fh:
        meta = dict(fh.metadata())
    meta["type_names"] = json.dumps(["good", *evil] if json.loads(meta["type_names"])[0] == "good" else evil)
    save_file(load_file(str(emb)), str(emb), metadata=meta)
    out = tmp_path / "runs" / "deep" / "g"
    before = _tree(tmp_path)
    _fails(capsys, ["generate", "--adapter", str(adapter), "--base", str(tiny_base), "--data", str(tiny_data),
                    "--out", str(out), "--n", "1"], "../../x", "letters, digits")
    assert _tree(tmp_path) == before

    # the library refuses it too, whatever the caller checked: nothing written anywhere
    from counterfactory.errors import InputError
    from counterfactory.pipelines.generate import GenerateConfig, generate

    class Pipe:  # only what generate() reads before writing
        defect_types = ["../../x"]

        def set_progress_bar_config(self, **k):
            pass

    with pytest.raises(InputError, match=r"types='\.\./\.\./x'"):
        generate(Pipe(), [object()], {"../../x": []}, GenerateConfig(out=str(out), n_per_type=1))
    assert _tree(tmp_path) == before


# ---- generate: mask folders of another size, tiny masks -----------------------------------------------------------


def test_generate_mask_folder_of_tiny_masks(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base):
    import numpy as np
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((1, 1), 255, np.uint8)).save(masks / "m.png")
    try:
        code = main(["generate", "--adapter", str(tiny_adapter), "--base", str(tiny_base), "--data", str(tiny_data),
                     "--out", str(tmp_path / "g"), "--n", "1", "--masks", str(masks), "--quiet"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[0].startswith(f"warning: skipped mask={masks / 'm.png'}: ") and "1x1" in lines[0]
    assert lines[-1].startswith("counterfactory generate: error: --masks=") and "at least 16 px" in lines[-1]
    assert not (tmp_path / "g").exists()


def test_generate_mask_folder_of_another_size_is_noted(capsys, tmp_path, tiny_data, tiny_adapter, tiny_base):
    import numpy as np
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((96, 96), np.uint8)
    m[40:50, 40:56] = 255
    Image.fromarray(m).save(masks / "m.png")
    code = main(["generate", "--adapter", str(tiny_adapter), "--base", str(tiny_base), "--data", str(tiny_data),
                 "--out", str(tmp_path / "g"), "--n", "1", "--masks", str(masks), "--quiet",
                 "--num-inference-steps", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: --masks" in err and "96x96" in err and "64x64" in err


# ---- no traceback from the real entry point -------------------------------------------------------------------


def test_real_entry_point_one_line_for_out_below_a_file(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    for argv in (["train-base", "--out", str(blocker / "sub")], ["data", "synth", "--out", str(blocker / "sub")]):
        proc = subprocess.run([sys.executable, "-m", "counterfactory.cli.main", *argv], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and proc.stdout == ""
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "--out" in proc.stderr
