"""Sharded insertion benchmark (``insert --data``): 2 shards give the files of a 1-process run, after a kill too;
shards started with other settings are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from counterfactory.cli.main import main
from tests.cli.helpers import fails_one_line
from tests.reference.conftest import boxes_data, ref_adapter  # noqa: F401  (fixtures)

from .helpers import copy_run, file_hashes, last_json, refused_and_untouched, run_ranks

WALL_CLOCK = ("metrics.json", "report.html")  # seconds_per_case: measured, so never the same twice


def _argv(data, adapter, base, split, out, *extra) -> list[str]:
    return ["insert", "--data", str(data), "--out", str(out), "--adapter", str(adapter), "--base", str(base),
            "--split", str(split),
            "--methods", "model,copy_paste", "--tasks", "reinsertion,insertion", "--n", "2",
            "--num-inference-steps", "2", "--extractor-steps", "2", "--threads", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def argv(boxes_data, ref_adapter, tiny_base, tmp_path_factory):  # noqa: F811
    from counterfactory.data import open_dataset
    from counterfactory.data.splits import few_shot_split, save_split

    split = save_split(few_shot_split(open_dataset(boxes_data)), tmp_path_factory.mktemp("split") / "split.json")
    return lambda out, *extra: _argv(boxes_data, ref_adapter, tiny_base, split, out, *extra)


def _metrics(root: Path) -> dict:
    m = json.loads((root / "metrics.json").read_text())
    seconds = [r.pop("seconds_per_case") for r in m["rows"]]
    return m, seconds


def _report(root: Path) -> str:
    """report.html without its wall-clock parts: the time stamp line and the last column (seconds_per_case)."""
    page = re.sub(r'<p class="meta">[^<]*</p>', "", (root / "report.html").read_text())
    return re.sub(r"<td( class=\"num\")?>[^<]*</td></tr>", "</tr>", page)


def _same_as(out: Path, reference: Path) -> None:
    """The files of the one-process run ``reference`` (the timed ones compared without their times)."""
    files = file_hashes(out, skip=WALL_CLOCK)
    assert files == file_hashes(reference, skip=WALL_CLOCK) and len(files) > 10
    (m, s), (m_ref, s_ref) = _metrics(out), _metrics(reference)
    assert m == m_ref and all(v > 0 for v in s) and len(s) == len(s_ref) == 4
    assert _report(out) == _report(reference)


def test_two_shards_give_the_files_of_one_process(argv, reference, shard0, tmp_path, capsys):
    out = copy_run(shard0, tmp_path)  # 4 cases: shard 0 took cases 0 and 2
    assert not (out / "metrics.json").exists() and not (out / "compact_extractor").exists()
    assert len((out / "manifest-shard0-of2.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(argv(out, "--num-shards", "2", "--shard", "1")) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in ("reinsertion", "insertion")
                                                        for m in ("model", "copy_paste")}
    _same_as(out, reference)


def test_two_launcher_ranks_give_the_files_of_one_process(argv, reference, tmp_path):
    out = tmp_path / "run"
    assert run_ranks(argv(out), timeout=300) == {0: 0, 1: 0}
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == ["manifest-shard0-of2.jsonl",
                                                                    "manifest-shard1-of2.jsonl"]
    _same_as(out, reference)


def test_a_shard_killed_mid_run_resumes_to_the_same_files(argv, reference, shard0, tmp_path, capsys):
    out = copy_run(shard0, tmp_path)
    # the kill: shard 0's second case lost its manifest line (torn) and its model result; shard 1 never ran
    manifest = out / "manifest-shard0-of2.jsonl"
    first, second = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(first + second[:15])
    lost = json.loads(second)
    next((out / lost["task"] / "model").glob(f"{lost['id']}.png")).unlink()
    capsys.readouterr()
    assert main(argv(out, "--num-shards", "2", "--shard", "1")) == 0
    assert last_json(capsys)["merged"] is False and not (out / "metrics.json").exists()
    assert main(argv(out, "--num-shards", "2", "--shard", "0")) == 0
    _same_as(out, reference)
    assert len(manifest.read_text().splitlines()) == 2


@pytest.mark.parametrize("flags,named", [
    (["--num-shards", "3", "--shard", "1"], "num_shards: 2 there, 3 now"),
    (["--num-shards", "2", "--shard", "1", "--n", "3"], "n: 2 there, 3 now"),
    (["--num-shards", "2", "--shard", "1", "--guidance-scale", "2"], "guidance: 3.0 there, 2.0 now"),
    (["--num-shards", "2", "--shard", "1", "--seed", "4"], "seed: 0 there, 4 now"),
])
def test_shards_started_with_other_settings_are_refused(argv, shard0, tmp_path, capsys, flags, named):
    out = copy_run(shard0, tmp_path)
    refused_and_untouched(capsys, argv(out, *flags), out, "--out=", named)


@pytest.mark.parametrize("flags,words", [
    (["--num-shards", "2", "--shard", "2"], ["--shard=2", "[0, 1]"]),
    (["--shard", "1"], ["--shard=1", "--num-shards"]),
    (["--num-shards", "3"], ["--num-shards=3", "--shard"]),
])
def test_bad_shard_flags_write_nothing(argv, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    fails_one_line(capsys, argv(out, *flags), *words)
    assert not out.exists()


def test_shards_of_one_image_and_merge_manifests_are_refused(shard0, tmp_path, capsys):
    out = tmp_path / "o.png"
    fails_one_line(capsys, ["insert", "--image", "a.png", "--box", "1,1,4,4", "--reference", "r.png", "--out",
                            str(out), "--method", "copy_paste", "--num-shards", "2", "--shard", "0"],
                   "--num-shards=2", "--data")
    assert not out.exists()
    fails_one_line(capsys, ["merge-manifests", str(shard0)], "insert --data")
