"""Identical runs write byte-identical files (sha256), safetensors metadata included."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import torch

from counterfactory.io.manifest import sha256_file
from counterfactory.io.tensors import save_safetensors
from counterfactory.training.inpaint import AdapterTrainConfig, train_adapter
from counterfactory.training.reference import ReferenceTrainConfig, train_reference
from counterfactory.training.trainer import LoopConfig

VARYING = {"log.csv"}  # wall-clock seconds per logged step


def _loop() -> LoopConfig:
    return LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.9, checkpoint_every=1)


def _files(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in VARYING and "tensorboard" not in p.relative_to(root).parts}


def _metadata_keys(path) -> list[str]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return list(json.loads(data[8 : 8 + n]).get("__metadata__", {}))


def _assert_identical(a, b):
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    assert [k for k in fa if fa[k] != fb[k]] == []
    for name in fa:
        if name.endswith(".safetensors"):
            keys = _metadata_keys(a / name)
            assert keys == sorted(keys), name


def test_two_identical_adapter_runs_write_identical_files(tiny_data, tiny_base, tmp_path):
    for run in ("a", "b"):
        cfg = AdapterTrainConfig(out=str(tmp_path / run), data=str(tiny_data), base=str(tiny_base), lora_rank=2,
                                 batch_size=2, loop=_loop())
        train_adapter(cfg, progress=False)
    assert {"pytorch_lora_weights.safetensors", "damage_type_embeddings.safetensors", "adapter_config.json",
            "split.json"} <= set(_files(tmp_path / "a"))
    _assert_identical(tmp_path / "a", tmp_path / "b")


def test_two_identical_reference_runs_write_identical_files(tiny_data, tiny_base, tmp_path):
    for run in ("a", "b"):
        cfg = ReferenceTrainConfig(out=str(tmp_path / run), data=str(tiny_data), base=str(tiny_base), lora_rank=2,
                                   batch_size=2, reference_size=32, loop=_loop())
        train_reference(cfg, progress=False)
    _assert_identical(tmp_path / "a", tmp_path / "b")


_SAVE = """
import sys, torch
from counterfactory.io.tensors import save_safetensors
meta = {k: str(i) for i, k in enumerate("zyxwvutsrq")}
save_safetensors({"b": torch.arange(5.0), "a": torch.ones(2, 3, dtype=torch.float16)}, sys.argv[1], meta)
"""


def test_save_safetensors_is_byte_identical_across_processes(tmp_path):
    import os

    import counterfactory

    env = {**os.environ, "PYTHONPATH": str(Path(counterfactory.__file__).parents[1])}
    for name in ("a", "b"):  # safetensors' own metadata order changes from process to process
        subprocess.run([sys.executable, "-c", _SAVE, str(tmp_path / f"{name}.safetensors")], check=True, env=env)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert _metadata_keys(tmp_path / "a.safetensors") == sorted("zyxwvutsrq")
    save_safetensors({"b": torch.arange(5.0), "a": torch.ones(2, 3, dtype=torch.float16)}, tmp_path / "c.safetensors",
                     {k: str(i) for i, k in enumerate("zyxwvutsrq")})
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata()["q"] == "9" and torch.equal(f.get_tensor("b"), torch.arange(5.0))
