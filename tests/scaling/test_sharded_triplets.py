"""Sharded text-counterfactual triplets: 2 shards give the folder of a 1-process run, byte for byte, whichever order
they run in, after a kill too; shards started with other settings are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from counterfactory.cli.main import main
from counterfactory.errors import InputError
from counterfactory.io.manifest import Manifest, Shard
from counterfactory.pipelines.text_edit import TextEditPipeline
from counterfactory.pipelines.triplets import TripletConfig, write_triplets
from tests.cli.helpers import fails_one_line
from tests.editing.conftest import stroke_digits, tiny_model

from .helpers import copy_run, file_hashes, folder_bytes, refused_and_untouched

# every filter off: each batch keeps all 4 candidates, so with n=6 a one-process run stops after batch 1 (8 kept,
# 6 in the caption file) and a shard that runs ahead of the others computes batches the run does not have
N, BATCH, MAX_CANDIDATES = 6, 4, 16


@pytest.fixture(scope="module")
def morpho(tmp_path_factory):
    from counterfactory.data.morphomnist import IMAGES_FILE, LABELS_FILE, MORPHO_FILE, write_idx

    root = tmp_path_factory.mktemp("morpho") / "m"
    root.mkdir()
    write_idx(root / IMAGES_FILE, stroke_digits(80))
    write_idx(root / LABELS_FILE, np.arange(80, dtype=np.uint8) % 10)
    (root / MORPHO_FILE).write_text("index,thickness,intensity\n" + "".join(f"{i},2.0,200.0\n" for i in range(80)))
    return root


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return TextEditPipeline(tiny_model())


def _cfg(out, data, **kw) -> TripletConfig:
    base = dict(out=str(out), data=str(data), n=N, split="train", batch_size=BATCH, num_inference_steps=2,
                max_candidates=MAX_CANDIDATES, filters=(), classifier=None, encoder=None)
    base.update(kw)
    return TripletConfig(**base)


@pytest.fixture(scope="module")
def reference(morpho, pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "t"
    summary = write_triplets(_cfg(out, morpho), pipe, progress=False)
    assert (summary["candidates"], summary["kept"]) == (8, N)
    return out


@pytest.fixture(scope="module")
def shard1_alone(morpho, pipe, tmp_path_factory):
    """Shard 1 of 2 run before shard 0 started: it cannot know that batch 0 ends the run, so it makes batches 1
    and 3 (batch 3 is past the stopping batch)."""
    out = tmp_path_factory.mktemp("shard1") / "t"
    s = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(1, 2))
    assert (s["shard"], s["batches"], s["merged"]) == ("1/2", 2, False)
    return out


def test_two_shards_give_the_bytes_of_one_process(morpho, pipe, reference, shard1_alone, tmp_path):
    out = copy_run(shard1_alone, tmp_path)
    assert not (out / "manifest.jsonl").exists() and (out / "images" / "cf-00000015.png").is_file()
    # shard 0 finds batches 0 and 1 enough for n: it stops before batch 2 and writes the one-process folder
    s = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(0, 2))
    assert (s["shard"], s["batches"], s["merged"], s["kept"], s["candidates"]) == ("0/2", 1, True, N, 8)
    assert file_hashes(out) == file_hashes(reference) and len(file_hashes(out)) > 10
    assert not (out / "images" / "cf-00000015.png").exists()  # batch 3's images went with the merge
    # shard 1 run again has nothing left to do and leaves the same bytes
    s = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(1, 2))
    assert (s["batches"], s["merged"]) == (0, True)
    assert file_hashes(out) == file_hashes(reference)
    (out / "manifest.jsonl").unlink()
    (out / "summary.json").unlink()
    assert main(["merge-manifests", str(out)]) == 0  # by hand: the same files
    assert file_hashes(out) == file_hashes(reference)


def test_shard_0_first_then_shard_1(morpho, pipe, reference, tmp_path):
    out = tmp_path / "t"
    s0 = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(0, 2))
    assert (s0["batches"], s0["merged"]) == (2, False)  # batches 0 and 2: batch 1 is unknown while shard 1 waits
    s1 = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(1, 2))
    assert (s1["batches"], s1["merged"]) == (1, True)  # batch 1 ends the run: batch 3 is never made
    assert file_hashes(out) == file_hashes(reference)


def test_a_shard_killed_mid_batch_resumes_to_the_same_bytes(morpho, pipe, reference, shard1_alone, tmp_path,
                                                            monkeypatch, capsys):
    out = copy_run(shard1_alone, tmp_path)
    append = Manifest.append
    calls = []

    def killed(self, record):  # the kill: the second record of batch 0 torn mid-line, the rest never written
        calls.append(record["id"])
        if len(calls) == 2:
            with self.path.open("a") as f:
                f.write(json.dumps(record)[:25])
            raise KeyboardInterrupt
        append(self, record)

    monkeypatch.setattr(Manifest, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(0, 2))
    monkeypatch.setattr(Manifest, "append", append)
    assert len((out / "manifest-shard0-of2.jsonl").read_text().splitlines()) == 2  # one whole line, one torn
    fails_one_line(capsys, ["merge-manifests", str(out)], "batch 0 is not", "shard 0 of 2")
    assert not (out / "manifest.jsonl").exists()
    s = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(0, 2))
    assert (s["batches"], s["merged"]) == (1, True)
    assert file_hashes(out) == file_hashes(reference)


def test_shards_started_with_other_settings_are_refused(morpho, pipe, shard1_alone, tmp_path):
    out = copy_run(shard1_alone, tmp_path)
    before = folder_bytes(out)
    for kw, named in [({"seed": 5}, "seed: 0 there, 5 now"), ({"n": 7}, "n: 6 there, 7 now"),
                      ({"guidance_scale": 2.0}, "guidance_scale: 3.0 there, 2.0 now")]:
        with pytest.raises(InputError, match=named):
            write_triplets(_cfg(out, morpho, **kw), pipe, progress=False, shard=Shard(0, 2))
    with pytest.raises(InputError, match="num_shards: 2 there, 3 now"):
        write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(0, 3))
    with pytest.raises(InputError, match="num_shards: 2 there, 1 now"):  # one process on a sharded folder
        write_triplets(_cfg(out, morpho), pipe, progress=False)
    assert folder_bytes(out) == before


def _argv(out, data, *extra) -> list[str]:
    return ["triplets", "--data", str(data), "--out", str(out), "--n", str(N), "--batch-size", str(BATCH),
            "--max-candidates", str(MAX_CANDIDATES), "--num-inference-steps", "2", "--filters", "none", "--quiet",
            *extra]


@pytest.mark.parametrize("flags,words", [
    (["--num-shards", "2", "--shard", "2"], ["--shard=2", "[0, 1]"]),
    (["--shard", "1"], ["--shard=1", "--num-shards"]),
    (["--num-shards", "3"], ["--num-shards=3", "--shard"]),
    (["--num-shards", "0", "--shard", "0"], ["--num-shards='0'"]),
])
def test_cli_bad_shard_flags_write_nothing(morpho, tmp_path, capsys, flags, words):
    out = tmp_path / "t"
    fails_one_line(capsys, _argv(out, morpho, *flags), *words)
    assert not out.exists()


def test_cli_shard_with_other_settings_is_one_line_and_writes_nothing(morpho, shard1_alone, tmp_path, capsys):
    out = copy_run(shard1_alone, tmp_path)
    refused_and_untouched(capsys, _argv(out, morpho, "--num-shards", "2", "--shard", "0", "--seed", "3"), out,
                          "seed: 0 there, 3 now")


def test_shards_in_separate_folders_merged_by_hand(morpho, pipe, reference, shard1_alone, tmp_path, capsys):
    """Shards that cannot see each other: each stops on its own batches; copied into one folder and merged by hand,
    the one-process files."""
    out = tmp_path / "t"
    s0 = write_triplets(_cfg(out, morpho), pipe, progress=False, shard=Shard(0, 2))
    assert s0["merged"] is False
    fails_one_line(capsys, ["merge-manifests", str(out)], "batch 1 is not", "shard 1 of 2")
    shutil.copytree(shard1_alone, out, dirs_exist_ok=True)
    assert main(["merge-manifests", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 8
    assert file_hashes(out) == file_hashes(reference)
