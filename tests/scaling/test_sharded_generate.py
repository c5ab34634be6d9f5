"""Sharded generation: 2 shards (``--num-shards 2 --shard i`` or 2 launcher ranks) give the bytes of a 1-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from counterfactory.cli.main import main
from tests.cli.helpers import fails_one_line

from .helpers import copy_run, file_hashes, last_json, refused_and_untouched, run_ranks


@pytest.fixture(scope="module")
def argv(tiny_base, tiny_adapter, tiny_data):
    return lambda out, *extra: _argv(tiny_base, tiny_adapter, tiny_data, out, *extra)


def _argv(base, adapter, data, out, *extra) -> list[str]:
    return ["generate", "--adapter", str(adapter), "--base", str(base), "--data", str(data), "--out", str(out),
            "--n", "3", "--num-inference-steps", "1", "--batch-size", "2", "--quiet", "--threads", "1", *extra]


def _same_as(out: Path, reference: Path) -> None:
    """The images, masks and manifest of the one-process run ``reference``, byte for byte."""
    assert file_hashes(out, "*.png") == file_hashes(reference, "*.png")
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()


def test_two_shards_by_flag_are_byte_identical_to_one_process(argv, reference, shard0, tmp_path, capsys):
    out = copy_run(shard0, tmp_path)  # 6 pairs in groups of 2: shard 0 took groups 0 and 2
    assert len((out / "manifest-shard0-of2.jsonl").read_text().splitlines()) == 4
    assert not (out / "manifest.jsonl").exists()
    # another --batch-size: the folder keeps the groups it was started with
    assert main(argv(out, "--num-shards", "2", "--shard", "1", "--batch-size", "4")) == 0
    summary = last_json(capsys)
    assert (summary["shard"], summary["generated"], summary["batch_size"], summary["merged"]) == ("1/2", 2, 2, True)
    _same_as(out, reference)
    assert len(file_hashes(out, "*.png")) == 12


def test_two_launcher_ranks_are_byte_identical_to_one_process(argv, reference, tmp_path):
    out = tmp_path / "run"
    assert run_ranks(argv(out)) == {0: 0, 1: 0}
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == [
        "manifest-shard0-of2.jsonl", "manifest-shard1-of2.jsonl", "manifest.jsonl"]
    _same_as(out, reference)


def test_a_shard_killed_mid_run_resumes_to_the_same_bytes(argv, reference, shard0, tmp_path, capsys):
    out = copy_run(shard0, tmp_path)
    manifest0 = out / "manifest-shard0-of2.jsonl"
    lines = manifest0.read_text().splitlines(keepends=True)
    # the kill: the last group half listed, its last record torn mid-line, an image of an unlisted pair left behind
    lost = json.loads(lines[3])
    manifest0.write_text(lines[0] + lines[1] + lines[2] + lines[3][:20])
    (out / lost["image"]).write_bytes(b"half a png")
    assert main(argv(out, "--num-shards", "2", "--shard", "1")) == 0
    assert last_json(capsys)["merged"] is False and not (out / "manifest.jsonl").exists()
    fails_one_line(capsys, ["merge-manifests", str(out)], "1 of 6 items missing", lost["id"])
    assert not (out / "manifest.jsonl").exists()
    assert main(argv(out, "--num-shards", "2", "--shard", "0")) == 0
    summary = last_json(capsys)
    assert summary["generated"] == 1 and summary["merged"] is True
    _same_as(out, reference)
    (out / "manifest.jsonl").unlink()  # merging by hand gives the same file
    assert main(["merge-manifests", str(out)]) == 0
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()


@pytest.mark.parametrize("flags,words", [
    (["--num-shards", "2", "--shard", "2"], ["--shard=2", "[0, 1]"]),
    (["--num-shards", "2", "--shard", "-1"], ["--shard='-1'"]),
    (["--shard", "1"], ["--shard=1", "--num-shards"]),
    (["--num-shards", "3"], ["--num-shards=3", "--shard"]),
    (["--num-shards", "0", "--shard", "0"], ["--num-shards='0'"]),
    (["--device", "warp-drive"], ["--device=warp-drive", "a device torch can use here"]),
    (["--device", "cuda:99"], ["--device=cuda:99"]),
])
def test_bad_shard_and_device_flags(argv, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    fails_one_line(capsys, argv(out, *flags), *words)
    assert not out.exists()


@pytest.mark.parametrize("flags,named", [
    (["--num-shards", "3", "--shard", "1"], "num_shards: 2 there, 3 now"),
    (["--num-shards", "2", "--shard", "1", "--guidance-scale", "3"], "guidance: 2.0 there, 3.0 now"),
    (["--num-shards", "2", "--shard", "1", "--n", "4"], "n_per_type: 3 there, 4 now"),
    (["--num-shards", "2", "--shard", "1", "--seed", "5"], "seed: another seed there, 5 now"),
])
def test_shards_started_with_other_settings_are_refused(argv, shard0, tmp_path, capsys, flags, named):
    out = copy_run(shard0, tmp_path)
    refused_and_untouched(capsys, argv(out, *flags), out, named)


def test_merge_manifests_bad_folders(tmp_path, capsys, reference):
    fails_one_line(capsys, ["merge-manifests", str(tmp_path / "nope")], "OUT=", "an existing folder")
    fails_one_line(capsys, ["merge-manifests", str(reference)], "no shards.json")


def test_fp16_on_the_cpu_is_one_line_and_writes_nothing(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed where a CUDA GPU exists")
    out = tmp_path / "b"
    fails_one_line(capsys, ["train-base", "--out", str(out), "--mixed-precision", "fp16", "--steps", "1"],
                   "--mixed-precision fp16", "CUDA", "bf16")
    assert not out.exists()
