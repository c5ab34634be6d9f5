import numpy as np
import pytest
import torch

from counterfactory.data.placement import MaskSampler, PlacementModel, product_distance, shot_geometry
from counterfactory.errors import InputError


def _edge_bar(h=64, w=64, length=20, width=3, x=30):
    """A thin bar entering the image from its top border: an edge-bound 'break'."""
    m = np.zeros((h, w), bool)
    m[0:length, x : x + width] = True
    return m


def _interior_blob(h=64, w=64, cy=32, cx=32, r=5):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _touches_border(m):
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_shot_geometry_points_to_the_nearest_edge():
    g = shot_geometry(_edge_bar())
    assert g.distance == pytest.approx(1.0)
    assert g.normal == pytest.approx((-1.0, 0.0))  # towards the top border
    g2 = shot_geometry(_interior_blob(cy=40, cx=12, r=4))  # closest to the left border
    assert g2.distance == pytest.approx(8.0, abs=1.0)
    assert g2.normal[1] < -0.9


def test_learned_placement_keeps_edge_defects_on_the_edge_and_oriented():
    model = PlacementModel({"break": [(_edge_bar(), None)]})
    product = np.ones((90, 120), bool)
    for seed in range(30):
        m, meta = model.place("break", product, torch.Generator().manual_seed(seed))
        assert _touches_border(m), seed
        ys, xs = np.nonzero(m)
        hgt, wid = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        # the bar enters the product perpendicular to the edge it touches
        if m[:, 0].any() or m[:, -1].any():
            assert wid >= 15 and hgt <= 6, (seed, hgt, wid)
        else:
            assert hgt >= 15 and wid <= 6, (seed, hgt, wid)
        assert meta["placement"] == "learned"


def test_uniform_placement_ignores_the_edge():
    model = PlacementModel({"break": [(_edge_bar(), None)]}, placement="uniform")
    product = np.ones((200, 200), bool)
    touching = sum(_touches_border(model.place("break", product, torch.Generator().manual_seed(s))[0])
                   for s in range(30))
    assert touching < 10


def test_learned_placement_keeps_interior_defects_at_their_distance():
    model = PlacementModel({"spot": [(_interior_blob(cy=20, cx=32, r=4), None)]})  # 15-16 px from the top edge
    d_shot = shot_geometry(_interior_blob(cy=20, cx=32, r=4)).distance
    product = np.ones((100, 140), bool)
    dist, _ = product_distance(product)
    for seed in range(20):
        m, _ = model.place("spot", product, torch.Generator().manual_seed(seed))
        assert abs(float(dist[m].min()) - d_shot) <= 2.0


def test_placement_respects_a_non_rectangular_product():
    product = np.zeros((100, 100), bool)
    product[10:90, 20:80] = True  # the tile; dark background around it
    model = PlacementModel({"break": [(_edge_bar(), None)]})
    for seed in range(15):
        m, _ = model.place("break", product, torch.Generator().manual_seed(seed))
        assert not (m & ~product).any()
        dist, _ = product_distance(product)
        assert float(dist[m].min()) <= 2.0  # on the tile's edge, not the image border


def test_placement_and_sampler_are_deterministic_and_the_sampler_makes_new_inside_shapes():
    model = PlacementModel({"break": [(_edge_bar(), None)]}, sampler=MaskSampler())
    product = np.ones((90, 120), bool)
    a, _ = model.place("break", product, torch.Generator().manual_seed(3))
    b, _ = model.place("break", product, torch.Generator().manual_seed(3))
    assert np.array_equal(a, b)
    blob = _interior_blob(cx=25, r=10)
    prod = np.ones_like(blob)
    prod[:, 40:] = False
    outs = [MaskSampler().sample(blob, prod, torch.Generator().manual_seed(s)) for s in range(5)]
    assert all(o.any() and not (o & ~prod).any() for o in outs)
    assert any(not np.array_equal(o, blob & prod) for o in outs)
    for o in outs:
        iou = (o & blob).sum() / (o | blob).sum()
        assert 0.3 < iou < 1.0


def test_bad_input_names_the_argument():
    with pytest.raises(InputError, match="placement"):
        PlacementModel({"a": [(_edge_bar(), None)]}, placement="random")
    with pytest.raises(InputError, match="shots"):
        PlacementModel({"a": [(np.zeros((8, 8), bool), None)]})
    model = PlacementModel({"a": [(_edge_bar(), None)]})
    with pytest.raises(InputError, match="product"):
        model.place("a", np.zeros((10, 10), bool), torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="elastic"):
        MaskSampler(elastic=2.0)
