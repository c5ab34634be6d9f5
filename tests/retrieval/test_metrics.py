import pytest
import torch

from counterfactory.errors import InputError
from counterfactory.retrieval.metrics import cirr_recalls, subset_ranks, target_ranks

NAMES = ["g0", "g1", "g2", "g3", "g4", "g5", "g6"]


def _gallery():
    return torch.eye(7)


def test_reference_is_removed_from_its_own_ranking():
    g = _gallery()
    # the query is identical to its reference g0; the target g1 comes second, so first once g0 is removed
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.5, 0.2, 0, 0, 0, 0]]), dim=-1)
    assert target_ranks(q, g, NAMES, ["g0"], ["g1"]).tolist() == [0]
    assert target_ranks(q, g, NAMES, ["g3"], ["g1"]).tolist() == [1]  # g0 stays in front when it is not the reference
    r = cirr_recalls(q, g, NAMES, ["g0"], ["g1"], [["g0", "g1", "g2", "g3", "g4", "g5"]], ks=(1, 5))
    assert r["R@1"] == 100.0 and r["Rs@1"] == 100.0 and r["avg"] == 100.0


def test_recall_and_subset_recall_count_ranks():
    g = _gallery()
    q = torch.stack([g[2] * 0.9 + g[1] * 0.1, g[4] * 0.6 + g[5] * 0.4 + g[6] * 0.5])
    q = torch.nn.functional.normalize(q, dim=-1)
    ranks = target_ranks(q, g, NAMES, ["g0", "g0"], ["g1", "g5"])
    assert ranks.tolist() == [1, 2]
    members = [["g0", "g1", "g3", "g4", "g5", "g6"], ["g0", "g1", "g2", "g3", "g5", "g6"]]
    assert subset_ranks(q, g, NAMES, ["g0", "g0"], ["g1", "g5"], members).tolist() == [0, 1]
    r = cirr_recalls(q, g, NAMES, ["g0", "g0"], ["g1", "g5"], members, ks=(1, 2, 3), subset_ks=(1, 2))
    assert r["R@1"] == 0.0 and r["R@2"] == 50.0 and r["R@3"] == 100.0
    assert r["Rs@1"] == 50.0 and r["Rs@2"] == 100.0


def test_bad_inputs():
    g = _gallery()
    q = g[:1]
    with pytest.raises(InputError, match=r"^targets=gX"):
        target_ranks(q, g, NAMES, ["g0"], ["gX"])
    with pytest.raises(InputError, match=r"^gallery="):
        target_ranks(q, torch.zeros(0, 7), [], ["g0"], ["g1"])
    with pytest.raises(InputError, match=r"^members="):
        subset_ranks(q, g, NAMES, ["g0"], ["g1"], [["g0", "g2", "g3", "g4", "g5", "g6"]])
    with pytest.raises(InputError, match=r"^gallery_names="):
        target_ranks(q, g, NAMES[:-1] + ["g0"], ["g0"], ["g1"])
