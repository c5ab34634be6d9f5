import numpy as np
import pytest

from counterfactory.editing.captions import EDIT_MARGINS, AttributeCaptioner, describe_change
from counterfactory.errors import InputError
from counterfactory.retrieval.real import build_real_triplets, image_index


def _fake(n=120, seed=0):
    rng = np.random.default_rng(seed)
    m = {"thickness": rng.uniform(1, 5, n), "slant": rng.uniform(-0.5, 0.6, n), "width": rng.uniform(5, 18, n),
         "height": rng.uniform(15, 21, n), "area": rng.uniform(40, 160, n), "intensity": rng.uniform(80, 255, n),
         "length": rng.uniform(10, 40, n)}
    return m, rng.integers(0, 2, n)


def test_targets_differ_the_asked_way_and_are_nearest_in_the_rest():
    m, labels = _fake()
    idx = np.arange(10, 120)
    cap = AttributeCaptioner()
    ts = build_real_triplets(idx, labels, m, cap, seed=0)
    assert len(ts) > 90
    words = {"thicker": ("thickness", 1), "thinner": ("thickness", -1), "brighter": ("intensity", 1),
             "brighten": ("intensity", 1), "dimmer": ("intensity", -1), "darken": ("intensity", -1)}
    checked = 0
    for t in ts:
        r, g = image_index(t.reference), image_index(t.target_hard)
        assert r in idx and g in idx and r != g and labels[r] == labels[g]
        assert len(t.members) == 6 and {t.reference, t.target_hard} <= set(t.members)
        assert t.members[t.reference_rank] == t.reference and t.members[t.target_rank] == t.target_hard
        hit = [v for k, v in words.items() if k in t.caption]
        if not hit:
            continue
        attr, d = hit[0]
        assert d * (m[attr][g] - m[attr][r]) >= EDIT_MARGINS[attr]
        # the caption asked for the opposite of the reference's word
        ref_word = cap.words({a: m[a][[r]] for a in cap.attributes})[0][cap.attributes.index(attr)]
        assert describe_change((ref_word, ref_word))[1] == -d
        # the other set members do not satisfy the modification
        for o in t.members:
            oi = image_index(o)
            if oi not in (r, g):
                assert d * (m[attr][oi] - m[attr][r]) < EDIT_MARGINS[attr]
        # nearest in the other attributes among the qualifying digits
        rest = [a for a in ("thickness", "slant", "width", "height", "intensity") if a != attr]
        sd = {a: m[a][idx].std() for a in rest}
        q = [j for j in idx if labels[j] == labels[r] and j != r and d * (m[attr][j] - m[attr][r]) >= EDIT_MARGINS[attr]]
        dist = {j: sum(((m[a][j] - m[a][r]) / sd[a]) ** 2 for a in rest) for j in q}
        assert dist[g] == pytest.approx(min(dist.values()))
        checked += 1
    assert checked > 20
    assert build_real_triplets(idx, labels, m, cap, seed=0) == ts
    assert build_real_triplets(idx, labels, m, cap, seed=1) != ts


def test_too_few_images_is_an_input_error():
    m, labels = _fake()
    with pytest.raises(InputError, match=r"^indices=3"):
        build_real_triplets(np.arange(3), labels, m)
