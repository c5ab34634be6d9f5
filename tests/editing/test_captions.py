import os
from pathlib import Path

import numpy as np
import pytest

from counterfactory.editing.captions import (
    ATTRIBUTE_WORDS,
    MODIFICATIONS,
    VOCABULARY,
    AttributeCaptioner,
    Captioner,
    RulePerturber,
    caption_words,
    describe_change,
    measure,
)
from counterfactory.errors import InputError

SHARED = Path(os.environ.get("COUNTERFACTORY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
MORPHO = SHARED / "data" / "morphomnist"


def _bar(width: int, shear: float = 0.0, value: int = 255, height: int = 16) -> np.ndarray:
    """A vertical bar ``width`` px wide; ``shear`` > 0 moves its top to the right."""
    img = np.zeros((28, 28), dtype=np.uint8)
    y0 = 14 - height // 2
    for y in range(y0, y0 + height):
        x0 = int(round(14 - width / 2 - shear * (y - 14)))
        img[y, max(x0, 0): x0 + width] = value
    return img


def test_thickness_follows_the_stroke_width():
    m = measure(np.stack([_bar(2), _bar(4), _bar(6)]))
    assert m["thickness"][0] < m["thickness"][1] < m["thickness"][2]
    assert abs(m["thickness"][1] - 4.0) < 1.0  # 2 x mean distance on the skeleton ≈ stroke width
    assert abs(m["height"][1] - 16.0) < 2.0


def test_slant_sign_and_slant_corrected_width():
    m = measure(np.stack([_bar(3, shear=0.0), _bar(3, shear=0.4), _bar(3, shear=-0.4)]))
    assert abs(m["slant"][0]) < 0.05
    assert m["slant"][1] > 0.25 and m["slant"][2] < -0.25
    # the sheared bar is not wider once the slant is corrected
    assert abs(m["width"][1] - m["width"][0]) < 1.0


def test_uint8_and_float_inputs_agree_and_intensity_is_on_0_255():
    imgs = np.stack([_bar(4, value=200), _bar(3, shear=0.3, value=120)])
    a, b = measure(imgs), measure(imgs.astype(np.float32) / 255.0)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-4)
    assert abs(a["intensity"][0] - 200) < 1 and abs(a["intensity"][1] - 120) < 1
    # a dimmer copy of the same digit keeps its thickness (relative binarisation)
    c = measure(np.stack([_bar(4, value=255), _bar(4, value=90)]))
    assert abs(c["thickness"][0] - c["thickness"][1]) < 0.05


@pytest.mark.parametrize("bad", [np.full((2, 28, 28), 2.0), np.zeros((0, 28, 28)), np.zeros((2, 3, 28, 28)),
                                 np.zeros((2, 28, 28), dtype=np.int32)])
def test_bad_images_name_the_argument(bad):
    with pytest.raises(InputError, match=r"^images="):
        measure(bad)


def test_captions_words_and_bins():
    cap = AttributeCaptioner(edges={"thickness": 3.0, "slant": 0.1, "intensity": 150.0})
    assert isinstance(cap, Captioner)
    imgs = np.stack([_bar(6, shear=0.4, value=250), _bar(2, value=100)])
    out = cap.caption(imgs, [7, 1])
    assert out == ["a thick, slanted, bright seven", "a thin, upright, dim one"]
    assert cap.caption(imgs)[1] == "a thin, upright, dim digit"
    for c in out:
        assert set(caption_words(c)) <= set(VOCABULARY)
    with pytest.raises(InputError, match=r"^labels="):
        cap.caption(imgs, [7])
    with pytest.raises(InputError, match=r"^labels="):
        cap.caption(imgs, [7, 12])
    with pytest.raises(InputError, match=r"^attributes="):
        AttributeCaptioner(attributes=("colour",))


def test_fit_is_deterministic_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    imgs = np.stack([_bar(int(w), shear=float(s), value=int(v)) for w, s, v in
                     zip(rng.integers(2, 7, 12), rng.uniform(-0.3, 0.4, 12), rng.integers(80, 256, 12))])
    a, b = AttributeCaptioner.fit(imgs), AttributeCaptioner.fit(imgs)
    assert a == b
    assert a.edges["thickness"] == pytest.approx(float(np.median(measure(imgs)["thickness"])))
    assert AttributeCaptioner.load(a.save(tmp_path / "cap.json")) == a
    caps = a.caption(imgs, list(range(10)) + [0, 1])
    words = [caption_words(c)[1] for c in caps]
    assert 0 < words.count("thick") < len(caps)  # the median splits the set


def test_rule_perturber_changes_exactly_one_attribute():
    p = RulePerturber()
    caption = "a thick, slanted, bright seven"
    seen = set()
    for seed in range(30):
        text, cf, (old, new) = p.perturb(caption, np.random.default_rng(seed))
        a, b = caption_words(caption), caption_words(cf)
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
        assert old in a and new in b and old != new
        attr, sign = describe_change((old, new))
        assert set(ATTRIBUTE_WORDS[attr]) == {old, new}
        assert text in MODIFICATIONS[(attr, sign)]
        seen.add(attr)
    assert seen == {"thickness", "slant", "intensity"}
    assert p.perturb(caption, 3) == p.perturb(caption, 3)
    only = RulePerturber(attributes=("thickness",), vary_phrasing=False)
    assert only.perturb(caption, 0) == ("make it thinner", "a thin, slanted, bright seven", ("thick", "thin"))


def test_rule_perturber_rejects_a_caption_without_attribute():
    with pytest.raises(InputError, match=r"^caption=a seven"):
        RulePerturber().perturb("a seven", 0)
    with pytest.raises(InputError, match=r"^caption="):
        RulePerturber(attributes=("width",)).perturb("a thick seven", 0)


@pytest.mark.realdata
@pytest.mark.skipif(not (MORPHO / "t10k-morpho.csv").is_file(), reason=f"Morpho-MNIST not at {MORPHO}")
def test_measurement_agrees_with_the_csv():
    from counterfactory.data.morphomnist import load_morphomnist

    d = load_morphomnist(MORPHO)
    m = measure(d.images[:400])
    assert np.corrcoef(m["thickness"], d.thickness[:400])[0, 1] > 0.95
    assert np.abs(m["thickness"] - d.thickness[:400]).mean() < 0.2
    assert np.abs(m["intensity"] - d.intensity[:400]).mean() < 1.0


def test_check_edit_margin_direction_and_drift():
    from counterfactory.editing.captions import check_edit

    thin, thick = _bar(2), _bar(5)
    r = check_edit(thin, thick, "thickness", +1)
    assert r["moved"] and r["passed"] and r["change"] > 2.0 and r["class_kept"] is None
    assert check_edit(thin, thick, "thickness", -1)["passed"] is False
    assert check_edit(thin, thick, "thickness", +1, margin=10.0)["moved"] is False
    # thicker AND slanted: the slant drift breaks the tolerance
    r = check_edit(thin, _bar(5, shear=0.5), "thickness", +1)
    assert r["moved"] and not r["others_ok"] and abs(r["drift"]["slant"]) > 0.12
    # batch + classifier: class must be kept
    before, after = np.stack([thin, thin]), np.stack([thick, thick])
    r = check_edit(before, after, "thickness", +1, classifier=lambda x: np.array([1, 7][: len(x)]), labels=[1, 1])
    assert r["class_kept"].tolist() == [True, False] and r["passed"].tolist() == [True, False]
    with pytest.raises(InputError, match=r"^direction="):
        check_edit(thin, thick, "thickness", 2)
    with pytest.raises(InputError, match=r"^changed_attribute="):
        check_edit(thin, thick, "colour", 1)
    with pytest.raises(InputError, match=r"^after_img="):
        check_edit(thin, np.zeros((28, 30), np.uint8), "thickness", 1)
