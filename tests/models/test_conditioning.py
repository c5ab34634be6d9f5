"""Damage-type embeddings: names → tokens, the null entry for CFG, save/load with the type names."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from counterfactory.errors import CheckpointError, InputError
from counterfactory.models.conditioning import EMBEDDING_FILE, DamageTypeEmbedding

TYPES = ("crack", "scratch", "spot")


def _emb(**kw) -> DamageTypeEmbedding:
    torch.manual_seed(0)
    e = DamageTypeEmbedding(TYPES, num_tokens=3, dim=8, **kw)
    with torch.no_grad():
        e.null.normal_()  # distinguishable from the (random) type entries
    return e


def test_unknown_type_names_the_allowed_ones():
    e = _emb()
    with pytest.raises(InputError) as exc:
        e.index(["crack", "dent"])
    msg = str(exc.value)
    assert "defect_type" in msg and "dent" in msg
    assert all(t in msg for t in TYPES)
    assert "\n" not in msg


def test_index_accepts_one_name_or_a_list():
    e = _emb()
    assert e.index("spot").tolist() == [2]
    assert e.index(["spot", "crack", "spot"]).tolist() == [2, 0, 2]


def test_forward_and_drop_to_null():
    e = _emb()
    idx = e.index(["crack", "spot", "scratch"])
    tok = e(idx)
    assert tok.shape == (3, 3, 8)
    assert torch.equal(tok[1], e.embeddings[2])
    drop = torch.tensor([False, True, False])
    dropped = e(idx, drop=drop)
    assert torch.equal(dropped[1], e.null)
    assert torch.equal(dropped[0], tok[0]) and torch.equal(dropped[2], tok[2])
    assert torch.equal(e(idx, drop=torch.ones(3, dtype=torch.bool)), e.null_tokens(3))
    assert e.null_tokens(2).shape == (2, 3, 8)


def test_drop_passes_gradients_to_the_null_entry_only_for_dropped_rows():
    e = _emb()
    out = e(e.index(["crack", "spot"]), drop=torch.tensor([True, False]))
    out.sum().backward()
    assert e.null.grad.abs().sum() > 0
    assert e.embeddings.grad[0].abs().sum() == 0  # crack was dropped
    assert e.embeddings.grad[2].abs().sum() > 0  # spot was not


def test_init_from_tokens_is_seeded():
    base = torch.randn(3, 8)
    a = _emb().init_from_tokens(base, generator=torch.Generator().manual_seed(1))
    b = _emb().init_from_tokens(base, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.null, base)
    assert torch.equal(a.embeddings, b.embeddings)
    assert (a.embeddings - base).abs().max() < 0.2


@pytest.mark.parametrize("names", [[], ["crack", "crack"], ["good", "crack"]])
def test_bad_type_names(names):
    with pytest.raises(InputError, match="type_names"):
        DamageTypeEmbedding(names)


def test_save_load_round_trip_keeps_names_and_values(tmp_path):
    e = _emb()
    path = e.save(tmp_path)
    assert path == tmp_path / EMBEDDING_FILE
    loaded = DamageTypeEmbedding.load(tmp_path)
    assert loaded.type_names == TYPES
    assert torch.equal(loaded.embeddings, e.embeddings) and torch.equal(loaded.null, e.null)
    assert (loaded.num_tokens, loaded.dim) == (3, 8)
    # a file path works as well as its folder
    explicit = e.save(tmp_path / "other.safetensors")
    assert DamageTypeEmbedding.load(explicit).type_names == TYPES


def test_load_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="train-adapter"):
        DamageTypeEmbedding.load(tmp_path)
    save_file({"embeddings": torch.zeros(1, 2, 3), "null": torch.zeros(2, 3)}, str(tmp_path / EMBEDDING_FILE))
    with pytest.raises(CheckpointError, match="type_names"):
        DamageTypeEmbedding.load(tmp_path)
