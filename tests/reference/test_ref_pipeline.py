"""ReferenceInpaintPipeline: the hard locality constraint, determinism, the reference matters, bad input, and
parity with the defect pipeline (the only difference is where the tokens come from)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import InputError
from counterfactory.models.reference import ReferenceEncoder

from .conftest import rand_image

BOX = (20, 10, 36, 30)


def _run(pipe, image, ref, seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe(image, ref, box=kw.pop("box", BOX), generator=torch.Generator().manual_seed(seed), **kw)


def test_outside_box_bit_identical_and_box_changed(pipe):
    image, ref = rand_image(0), rand_image(1, h=16, w=12)
    out = _run(pipe, image, ref)
    res = out.images[0]
    m = out.masks[0, 0] > 0.5
    assert m.sum() == 16 * 20
    assert torch.equal(res[:, ~m], image[:, ~m])
    assert (res[:, m] - image[:, m]).abs().mean() > 1e-3
    assert out.windows == [[(0, 0, 48, 48)]] or len(out.windows[0]) == 1


def test_same_seed_same_output_other_seed_differs(pipe):
    image, ref = rand_image(0), rand_image(1, h=16, w=12)
    a, b, c = (_run(pipe, image, ref, seed=s).images for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_reference_changes_the_result(pipe):
    image = rand_image(0)
    a = _run(pipe, image, torch.zeros(3, 16, 16)).images
    b = _run(pipe, image, torch.ones(3, 16, 16)).images
    assert not torch.equal(a, b)


def test_generator_per_image_is_batch_independent(pipe):
    imgs = torch.stack([rand_image(0), rand_image(5)])
    refs = [rand_image(1, h=16, w=12), rand_image(2, h=10, w=30)]
    boxes = [BOX, (4, 4, 20, 14)]

    def gens():
        return [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]

    both = pipe(imgs, refs, box=boxes, num_inference_steps=2, generator=gens()).images
    alone = pipe(imgs[1], refs[1], box=boxes[1], num_inference_steps=2,
                 generator=[torch.Generator().manual_seed(8)]).images
    assert torch.allclose(both[1], alone[0], atol=1e-5)  # batched: the same noise, kernel rounding only
    one_by_one = pipe(imgs, refs, box=boxes, num_inference_steps=2, generator=gens(), batch_size=1).images
    assert torch.equal(one_by_one[1], alone[0])
    assert torch.equal(pipe(imgs, refs, box=boxes, num_inference_steps=2, generator=gens()).images, both)


def test_mask_image_and_output_types(pipe):
    image, ref = rand_image(0), rand_image(1, h=16, w=12)
    mask = torch.zeros(1, 48, 64)
    mask[:, 12:20, 10:40] = 1
    out = pipe(image, ref, mask_image=mask, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
               output_type="np")
    assert out.images.shape == (1, 48, 64, 3) and out.images.dtype == np.uint8
    pil = pipe(image, ref, box=BOX, num_inference_steps=1, output_type="pil").images[0]
    assert pil.size == (64, 48)


@pytest.mark.parametrize("kwargs,match", [
    (dict(box=(60, 10, 70, 20)), "inside the image"),
    (dict(box=(-1, 0, 10, 10)), "inside the image"),
    (dict(box=(10, 10, 10, 20)), "degenerate"),
    (dict(box=(30, 10, 20, 20)), "degenerate"),
    (dict(box=(1.5, 2, 10, 10)), "four integers"),
    (dict(box=(0, 0, 64, 48)), "whole image"),
    (dict(box=BOX, mask_image=torch.ones(1, 48, 64)), "exactly one"),
    (dict(box=BOX, num_inference_steps=0), "num_inference_steps"),
    (dict(box=BOX, guidance_scale=-1.0), "guidance_scale"),
])
def test_bad_region_and_arguments(pipe, kwargs, match):
    with pytest.raises(InputError, match=match) as e:
        pipe(rand_image(0), rand_image(1, h=16, w=12), **kwargs)
    assert "\n" not in str(e.value)


def test_bad_references(pipe):
    image = rand_image(0)
    with pytest.raises(InputError, match="at least 8 px"):
        pipe(image, rand_image(1, h=7, w=30), box=BOX)
    with pytest.raises(InputError, match="alpha"):
        pipe(image, Image.new("RGBA", (16, 16)), box=BOX)
    with pytest.raises(InputError, match="alpha"):
        pipe(image, torch.rand(4, 16, 16), box=BOX)
    gray = pipe(rand_image(0, c=1), rand_image(1, c=1, h=16, w=16), box=BOX, num_inference_steps=1).images
    assert gray.shape == (1, 3, 48, 64)  # gray + gray is fine


def test_box_much_larger_than_working_resolution(pipe):
    big = torch.rand(3, 300, 300)
    limit = pipe.max_box_side  # 4 x 32 px for the tiny base
    with pytest.raises(InputError, match=f"at most {limit} px"):
        pipe(big, rand_image(1, h=16, w=16), box=(10, 10, 10 + limit + 1, 50))


class _FixedTokens(ReferenceEncoder):
    """An 'encoder' that returns a damage type's tokens whatever the reference: the defect pipeline's conditioning."""

    def __init__(self, tokens, null, config):
        super().__init__()
        self.config = config
        self.tokens = torch.nn.Parameter(tokens.clone())
        self.null = torch.nn.Parameter(null.clone())

    def embed(self, x):
        return self.tokens[None].expand(x.shape[0], -1, -1)


def test_parity_with_defect_pipeline(tiny_base, tiny_adapter):
    """Same tokens → same pixels: the two pipelines share every mechanic except the token source."""
    from counterfactory.models.reference import ReferenceEncoderConfig
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
    from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline

    defect = DefectInpaintPipeline.from_compact(tiny_base, tiny_adapter)
    defect.set_progress_bar_config(disable=True)
    emb = defect.type_embedding
    enc = _FixedTokens(emb.embeddings[0].detach(), emb.null.detach(), ReferenceEncoderConfig(dim=emb.dim, input_size=16))
    ref = ReferenceInpaintPipeline(defect.unet, defect.scheduler, enc, resolution=defect.resolution)
    ref.set_progress_bar_config(disable=True)
    image = torch.stack([rand_image(0), rand_image(9)])
    mask = torch.zeros(2, 1, 48, 64)
    mask[0, :, 5:15, 5:25] = 1
    mask[0, :, 30:40, 40:60] = 1  # two windows
    mask[1, :, 20:30, 10:30] = 1
    kw = dict(num_inference_steps=2, guidance_scale=2.0)
    a = defect(image, mask, emb.type_names[0], generator=torch.Generator().manual_seed(1), **kw).images
    b = ref(image, torch.rand(3, 16, 16), mask_image=mask, generator=torch.Generator().manual_seed(1), **kw).images
    assert torch.equal(a, b)


def test_adapter_refuses_another_base(tmp_path, tiny_config, ref_adapter):
    from counterfactory.errors import CheckpointError
    from counterfactory.models.compact import build_compact, save_compact
    from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline

    save_compact(build_compact(tiny_config, seed=1), tmp_path)
    with pytest.raises(CheckpointError, match="trained on another base"):
        ReferenceInpaintPipeline.from_compact(ref_adapter, base=tmp_path)
    with pytest.raises(CheckpointError, match="damage-type adapter"):
        (tmp_path / "ad").mkdir()
        (tmp_path / "ad" / "adapter_config.json").write_text("{}")
        ReferenceInpaintPipeline.from_compact(tmp_path / "ad", base=tmp_path)


def test_gray_target_gives_gray_result(pipe):
    image = rand_image(0, c=1)
    res = _run(pipe, image, rand_image(1, c=1, h=16, w=16)).images[0]
    assert torch.equal(res[0], res[1]) and torch.equal(res[1], res[2])
    m = torch.zeros(48, 64, dtype=torch.bool)
    m[10:30, 20:36] = True
    assert torch.equal(res[0][~m], image[0][~m]) and not torch.equal(res[0][m], image[0][m])


@pytest.mark.parametrize("image_c, ref_c", [(3, 1), (1, 3)], ids=["gray-reference-rgb-image", "rgb-reference-gray-image"])
def test_reference_of_another_channel_count_is_converted_with_a_warning(pipe, image_c, ref_c):
    """Gray reference for an RGB image: the channel repeated; RGB reference for a gray image: the channel mean.
    Either way the call works, warns once naming the reference, and equals the call with the converted reference."""
    image, ref = rand_image(0, c=image_c), rand_image(1, c=ref_c, h=16, w=16)
    with pytest.warns(UserWarning, match=r"reference_image\[0\] is .* converted"):
        out = _run(pipe, image, ref).images
    converted = ref.expand(3, -1, -1) if ref_c == 1 else ref.mean(0, keepdim=True)
    assert torch.equal(out, _run(pipe, image, converted).images)


def test_strength_is_the_shared_paste_and_refine(pipe):
    """strength < 1 pastes the reference into the box (sampling.paste) and refines it: 1 = default bits, 0 = the
    pasted composite, between: outside exact, the box refined."""
    from counterfactory.sampling.paste import paste_defect, resize_image

    image, ref = rand_image(0), rand_image(1, h=16, w=12)
    default = _run(pipe, image, ref, num_inference_steps=4).images
    assert torch.equal(_run(pipe, image, ref, num_inference_steps=4, strength=1.0).images, default)
    bw, bh = BOX[2] - BOX[0], BOX[3] - BOX[1]
    pasted, _ = paste_defect(image, resize_image(ref, (bh, bw)), torch.ones(1, bh, bw), top_left=BOX[:2])
    assert torch.equal(_run(pipe, image, ref, num_inference_steps=4, strength=0.0).images[0], pasted)
    half = _run(pipe, image, ref, num_inference_steps=4, strength=0.5).images[0]
    m = torch.zeros(48, 64, dtype=torch.bool)
    m[BOX[1] : BOX[3], BOX[0] : BOX[2]] = True
    assert torch.equal(half[:, ~m], image[:, ~m]) and not torch.equal(half[:, m], pasted[:, m])
    poisson = _run(pipe, image, ref, num_inference_steps=4, strength=0.0, paste_mode="poisson").images[0]
    assert torch.equal(poisson[:, ~m], image[:, ~m]) and not torch.equal(poisson, pasted)
    with pytest.raises(InputError, match="paste_mode"):
        _run(pipe, image, ref, strength=0.5, paste_mode="glue")
    with pytest.raises(InputError, match="strength"):
        _run(pipe, image, ref, strength=1.5)


def test_refine_band_keeps_the_pasted_interior_and_refines_only_the_edge_band(pipe):
    """refine_band: the reference is pasted (at any strength) and only the band along the box's edge is denoised;
    the interior equals the pasted composite bit for bit, outside the box equals the image."""
    from counterfactory.io.masks import border_band
    from counterfactory.pipelines.reference_inpaint import band_width
    from counterfactory.sampling.paste import paste_defect, resize_image

    image, ref = rand_image(0), rand_image(1, h=16, w=12)
    bw, bh = BOX[2] - BOX[0], BOX[3] - BOX[1]
    pasted, _ = paste_defect(image, resize_image(ref, (bh, bw)), torch.ones(1, bh, bw), top_left=BOX[:2])
    box = torch.zeros(1, 48, 64)
    box[:, BOX[1] : BOX[3], BOX[0] : BOX[2]] = 1
    assert band_width(BOX, 0.25) == 4 and band_width(BOX, 0.01) == 2  # 0.25 x the shorter side 16; at least 2 px
    band = border_band(box, band_width(BOX, 0.25))[0] > 0.5
    inside = (box[0] > 0.5) & ~band
    assert band.sum() == 16 * 20 - 8 * 12 and inside.sum() == 8 * 12
    for strength in (1.0, 0.5):
        out = _run(pipe, image, ref, num_inference_steps=4, strength=strength, refine_band=0.25).images[0]
        assert torch.equal(out[:, box[0] < 0.5], image[:, box[0] < 0.5])
        assert torch.equal(out[:, inside], pasted[:, inside])
        assert (out[:, band] - pasted[:, band]).abs().mean() > 1e-3
    whole = _run(pipe, image, ref, num_inference_steps=4, strength=0.5).images[0]
    assert not torch.equal(whole[:, inside], pasted[:, inside])  # without the band the interior is refined too
    assert torch.equal(_run(pipe, image, ref, num_inference_steps=4, strength=0.0, refine_band=0.25).images[0], pasted)


@pytest.mark.parametrize("bad", [0, 0.0, 0.6, -0.1, float("nan"), True, "0.2"])
def test_refine_band_out_of_range(pipe, bad):
    with pytest.raises(InputError, match=r"refine_band=.*\(0, 0.5\]"):
        _run(pipe, rand_image(0), rand_image(1, h=16, w=12), refine_band=bad)


def test_grain_transfer_adds_the_targets_grain_to_the_denoised_pixels_only(pipe):
    from counterfactory.io.images import high_pass
    from counterfactory.io.masks import border_band
    from counterfactory.pipelines.reference_inpaint import band_width

    image, ref = rand_image(0), rand_image(1, h=16, w=12)
    kw = dict(num_inference_steps=4, refine_band=0.25)
    plain = _run(pipe, image, ref, **kw)
    grainy = _run(pipe, image, ref, grain_transfer=1.0, **kw).images[0]
    band = border_band(plain.masks[0, 0], band_width(BOX, 0.25)) > 0.5
    assert torch.equal(grainy[:, ~band], plain.images[0][:, ~band])  # interior and outside untouched
    expected = (plain.images[0] + high_pass(image)).clamp(0, 1)
    assert torch.allclose(grainy[:, band], expected[:, band])
    assert torch.equal(_run(pipe, image, ref, grain_transfer=0.0, **kw).images, plain.images)
    with pytest.raises(InputError, match="grain_transfer"):
        _run(pipe, image, ref, grain_transfer=3.0)
