"""DefectControlNetPipeline on tiny random models: parity with stock diffusers, modes, determinism, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from counterfactory.errors import CheckpointError, InputError
from counterfactory.io.masks import dilate
from counterfactory.models.conditioning import DamageTypeEmbedding
from counterfactory.models.controlnet import build_controlnet, save_controlnet_folder
from counterfactory.pipelines.defect_controlnet import DefectControlNetPipeline
from counterfactory.testing import tiny_sd_text2img_components

TYPES = ("crack", "spot")


def _wake(controlnet, seed: int, std: float = 0.05):
    """Give the zero convolutions random weights, so the ControlNet visibly steers the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return controlnet


def _embedding(dim: int, num_tokens: int = 4, seed: int = 0) -> DamageTypeEmbedding:
    emb = DamageTypeEmbedding(TYPES, num_tokens=num_tokens, dim=dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb.embeddings.copy_(torch.randn(emb.embeddings.shape, generator=g))
        emb.null.copy_(torch.randn(emb.null.shape, generator=g))
    return emb


def tiny_sd_text2img(seed: int = 0):
    parts = tiny_sd_text2img_components(seed)
    return parts["unet"], parts["vae"], parts["scheduler"]


def _mask(size: int = 32, box=(8, 10, 20, 18), batch: int = 1) -> torch.Tensor:
    m = torch.zeros(batch, 1, size, size)
    x0, y0, x1, y1 = box
    m[..., y0:y1, x0:x1] = 1
    return m


@pytest.fixture(scope="module")
def sd_pipe():
    unet, vae, scheduler = tiny_sd_text2img(0)
    net = _wake(build_controlnet(unet, scale_factor=2, seed=0), seed=1)
    return DefectControlNetPipeline(unet, net, scheduler, _embedding(32), vae=vae)


@pytest.fixture(scope="module")
def compact_controlnet(tmp_path_factory, tiny_base):
    from counterfactory.io.manifest import sha256_file
    from counterfactory.models.compact import WEIGHTS_FILE, load_compact

    model = load_compact(tiny_base)
    net = _wake(build_controlnet(model.unet, scale_factor=1, seed=0), seed=2)
    out = tmp_path_factory.mktemp("cn") / "controlnet"
    save_controlnet_folder(out, net, _embedding(model.config.cross_attention_dim, model.config.num_tokens),
                           {"base_kind": "compact", "base_sha256": sha256_file(tiny_base / WEIGHTS_FILE),
                            "types": list(TYPES)})
    return out


def _controlnet_folder(base, out, seed: int = 2):
    from counterfactory.io.manifest import sha256_file
    from counterfactory.models.compact import WEIGHTS_FILE, load_compact

    model = load_compact(base)
    net = _wake(build_controlnet(model.unet, scale_factor=1, seed=0), seed=seed)
    save_controlnet_folder(out, net, _embedding(model.config.cross_attention_dim, model.config.num_tokens),
                           {"base_kind": "compact", "base_sha256": sha256_file(base / WEIGHTS_FILE),
                            "base_layout": model.config.layout, "types": list(TYPES)})
    return out


@pytest.fixture(scope="module")
def full_pipe(tiny_full_base, tmp_path_factory):
    """The same pipeline on a compact full-image base (3 input channels)."""
    folder = _controlnet_folder(tiny_full_base, tmp_path_factory.mktemp("cn_full") / "controlnet")
    pipe = DefectControlNetPipeline.from_pretrained(tiny_full_base, folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def compact_pipe(tiny_base, compact_controlnet):
    pipe = DefectControlNetPipeline.from_pretrained(tiny_base, compact_controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.2, 0.8, size).view(1, 1, 1, size).expand(1, 3, size, size)
    return (base + 0.05 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


# ---------------------------------------------------------------------- SD-1.5: parity with stock diffusers
def test_sd_controlnet_matches_stock_diffusers_pipeline(sd_pipe, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd_pipe.set_progress_bar_config(disable=True)
    mask = _mask()
    ours = sd_pipe(None, mask, "spot", num_inference_steps=3, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(5)).images

    folder = save_controlnet_folder(tmp_path / "cn", sd_pipe.controlnet, sd_pipe.type_embedding, {"base_kind": "sd"})
    loaded = ControlNetModel.from_pretrained(folder, use_safetensors=True)  # the exported folder, as diffusers reads it
    stock = StableDiffusionControlNetPipeline(vae=sd_pipe.vae, text_encoder=None, tokenizer=None, unet=sd_pipe.unet,
                                              controlnet=loaded, scheduler=sd_pipe.scheduler, safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    emb = sd_pipe.type_embedding
    theirs = stock(prompt_embeds=emb(emb.index("spot")), negative_prompt_embeds=emb.null_tokens(1),
                   image=mask.expand(-1, 3, -1, -1), height=32, width=32, num_inference_steps=3, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)
    # the ControlNet is not a no-op: another mask gives another image
    other = sd_pipe(None, _mask(box=(2, 2, 10, 30)), "spot", num_inference_steps=3, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(5)).images
    assert (other - ours).abs().max() > 1e-3


# ---------------------------------------------------------------------- compact: modes
def test_full_generation_is_deterministic_and_follows_mask(compact_pipe):
    mask = _mask()
    a = compact_pipe(None, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    b = compact_pipe(None, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert a.shape == (1, 3, 32, 32)
    assert torch.equal(a, b)
    c = compact_pipe(None, _mask(box=(20, 2, 30, 12)), "crack", num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images
    assert (c - a).abs().max() > 1e-3
    d = compact_pipe(None, mask, "spot", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert (d - a).abs().max() > 1e-4


def test_img2img_strength(compact_pipe):
    image, mask = _image(), _mask()
    kw = dict(num_inference_steps=4, generator=torch.Generator().manual_seed(1))
    same = compact_pipe(image, mask, "crack", strength=0.0, **kw).images
    assert torch.equal(same, image)
    low = compact_pipe(image, mask, "crack", strength=0.25, **kw).images
    full = compact_pipe(image, mask, "crack", strength=1.0, num_inference_steps=4,
                        generator=torch.Generator().manual_seed(1)).images
    assert (low - image).abs().max() > 0  # something was generated
    assert (low - image).abs().mean() < (full - image).abs().mean()  # and the image's content kept more


def test_paste_back_keeps_pixels_outside_the_dilated_mask(compact_pipe):
    image, mask = _image(), _mask()
    out = compact_pipe(image, mask, "crack", num_inference_steps=2, paste_back=True, paste_back_dilation=2,
                       generator=torch.Generator().manual_seed(0)).images
    band = dilate(mask, 2) > 0.5
    assert torch.equal(out[~band.expand_as(out)], image[~band.expand_as(image)])
    assert (out - image).abs()[band.expand_as(out)].max() > 1e-3
    free = compact_pipe(image, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert (free - image).abs()[~band.expand_as(out)].max() > 1e-3  # without paste-back the outside changes


def test_crop_to_mask_on_a_large_image(compact_pipe):
    image = _image(96)
    mask = _mask(96, box=(60, 60, 72, 70))
    out = compact_pipe(image, mask, "crack", num_inference_steps=2, crop_to_mask=True,
                       generator=torch.Generator().manual_seed(0))
    (x0, y0, x1, y1), = out.windows[0]
    assert x1 - x0 < 96 and x0 <= 60 and x1 >= 72
    changed = (out.images - image).abs().amax(dim=1)[0] > 0
    assert changed[y0:y1, x0:x1].any()
    changed[y0:y1, x0:x1] = False
    assert not changed.any()  # nothing outside the window


def test_good_and_empty_masks_bypass(compact_pipe):
    image = torch.cat([_image(seed=0), _image(seed=1), _image(seed=2)])
    masks = torch.cat([_mask(), torch.zeros(1, 1, 32, 32), _mask()])
    out = compact_pipe(image, masks, ["crack", "spot", "good"], num_inference_steps=2,
                       generator=torch.Generator().manual_seed(0))
    assert out.bypassed == [False, True, True]
    assert torch.equal(out.images[1:], image[1:])
    assert not torch.equal(out.images[0], image[0])


def test_batch_with_one_generator_per_image_is_reproducible(compact_pipe):
    image = torch.cat([_image(seed=0), _image(seed=1)])
    gens = lambda: [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]  # noqa: E731
    a = compact_pipe(image, _mask(batch=2), "crack", num_inference_steps=2, generator=gens(), batch_size=1).images
    b = compact_pipe(image[1:], _mask(), "crack", num_inference_steps=2, generator=gens()[1:], batch_size=1).images
    assert torch.equal(a[1:], b)


def test_callback_and_dtype(compact_pipe):
    seen = []
    compact_pipe(None, _mask(), "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 callback_on_step_end=lambda p, i, t, kw: seen.append((i, kw["latents"].shape)) or {})
    assert [i for i, _ in seen] == [0, 1] and seen[0][1] == (1, 3, 32, 32)


# ---------------------------------------------------------------------- compact full-image base
def test_full_base_pipeline_feeds_three_channels_and_follows_the_mask(full_pipe):
    assert full_pipe.unet.config.in_channels == full_pipe.controlnet.config.in_channels == 3
    seen = []
    hook = full_pipe.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        mask = _mask()
        a = full_pipe(None, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    finally:
        hook.remove()
    assert seen and set(seen) == {3}  # the noisy image only: no mask / masked-image channels
    b = full_pipe(None, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert a.shape == (1, 3, 32, 32) and torch.isfinite(a).all() and torch.equal(a, b)
    c = full_pipe(None, _mask(box=(20, 2, 30, 12)), "crack", num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0)).images
    assert (c - a).abs().max() > 1e-3  # the ControlNet reads the mask


def test_full_base_img2img_and_paste_back(full_pipe):
    image, mask = _image(), _mask()
    kw = dict(num_inference_steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(full_pipe(image, mask, "crack", strength=0.0, **kw).images, image)
    low = full_pipe(image, mask, "crack", strength=0.25, **kw).images
    full = full_pipe(image, mask, "crack", strength=1.0, num_inference_steps=4,
                     generator=torch.Generator().manual_seed(1)).images
    assert (low - image).abs().max() > 0
    assert (low - image).abs().mean() < (full - image).abs().mean()
    out = full_pipe(image, mask, "crack", num_inference_steps=2, paste_back=True, paste_back_dilation=2,
                    generator=torch.Generator().manual_seed(0)).images
    band = (dilate(mask, 2) > 0.5).expand_as(out)
    assert torch.equal(out[~band], image[~band])
    assert (out - image).abs()[band].max() > 1e-3
    again = full_pipe(image, mask, "crack", num_inference_steps=2, paste_back=True, paste_back_dilation=2,
                      generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out, again)


def test_controlnet_of_one_layout_is_refused_on_the_other(tiny_base, tiny_full_base, tmp_path):
    full_net = _controlnet_folder(tiny_full_base, tmp_path / "on_full")
    with pytest.raises(CheckpointError, match="trained on another base"):
        DefectControlNetPipeline.from_pretrained(tiny_base, full_net)
    inpaint_net = _controlnet_folder(tiny_base, tmp_path / "on_inpaint")
    with pytest.raises(CheckpointError, match="trained on another base"):
        DefectControlNetPipeline.from_pretrained(tiny_full_base, inpaint_net)
    # a folder recording no base hash is still refused by its input layout
    cfg_file = inpaint_net / "controlnet_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "base_sha256": None}))
    with pytest.raises(CheckpointError, match="reads 7 input channels but the base .* takes 3"):
        DefectControlNetPipeline.from_pretrained(tiny_full_base, inpaint_net)


def test_inpainting_pipeline_refuses_a_full_image_base(tiny_full_base):
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline

    with pytest.raises(CheckpointError, match="has layout 'full'; this needs layout 'inpaint'"):
        DefectInpaintPipeline.from_compact(tiny_full_base)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, needle", [
    (dict(mask_image=torch.zeros(1, 1, 16, 16)), "mask_image size"),
    (dict(strength=1.5), "strength=1.5"),
    (dict(strength=-0.1), "strength=-0.1"),
    (dict(defect_type="scratch"), "defect_type=scratch"),
    (dict(image=None, strength=0.5), "strength=0.5"),
    (dict(image=None, mask_image=torch.zeros(1, 1, 32, 32)), "mask_image[0]=empty"),
    (dict(paste_back_dilation=-1), "paste_back_dilation=-1"),
    (dict(mask_image=None), "mask_image=None"),
    (dict(image=None, crop_to_mask=True), "crop_to_mask=True"),
    (dict(image=None, paste_back=True), "paste_back=True"),
    (dict(defect_type=["crack"] * 2), "defect_type="),
])
def test_bad_input_names_the_argument(compact_pipe, kwargs, needle):
    args = dict(image=_image(), mask_image=_mask(), defect_type="crack", num_inference_steps=2)
    args.update(kwargs)
    with pytest.raises(InputError) as err:
        compact_pipe(**args)
    assert needle in str(err.value)


def test_paste_back_band_has_one_default_and_one_bound_for_pipeline_config_and_cli(compact_pipe, tmp_path):
    import subprocess
    import sys

    from counterfactory.cli.main import build_parser
    from counterfactory.pipelines import GENERATE_PASTE_BACK_DILATION, MAX_DILATION, PASTE_BACK_DILATION
    from counterfactory.pipelines.generate import GenerateConfig

    ok = dict(image=_image(), mask_image=_mask(), defect_type="crack")
    compact_pipe.check_inputs(**ok, paste_back_dilation=MAX_DILATION)
    with pytest.raises(InputError, match=f"paste_back_dilation={MAX_DILATION + 1}"):
        compact_pipe.check_inputs(**ok, paste_back_dilation=MAX_DILATION + 1)

    def run(**band):
        return compact_pipe(**ok, num_inference_steps=2, paste_back=True, generator=torch.Generator().manual_seed(0),
                            **band).images

    default = run()
    assert torch.equal(default, run(paste_back_dilation=PASTE_BACK_DILATION))
    assert not torch.equal(default, run(paste_back_dilation=PASTE_BACK_DILATION + 1))  # the band shows in the output

    assert GenerateConfig(out=str(tmp_path)).paste_back_dilation == GENERATE_PASTE_BACK_DILATION
    GenerateConfig(out=str(tmp_path), method="controlnet", paste_back_dilation=MAX_DILATION)
    with pytest.raises(InputError, match=f"paste_back_dilation={MAX_DILATION + 1}"):
        GenerateConfig(out=str(tmp_path), method="controlnet", paste_back_dilation=MAX_DILATION + 1)
    argv = ["generate", "--adapter", "a", "--data", "d", "--out", str(tmp_path / "o")]
    assert build_parser().parse_args(argv).paste_back_dilation == GENERATE_PASTE_BACK_DILATION
    assert build_parser().parse_args(argv + ["--paste-back-dilation", str(MAX_DILATION)]).paste_back_dilation == 64
    # the CLI reads these settings without loading torch (its --help stays fast)
    code = "import sys, counterfactory.cli.generate; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_controlnet_from_another_base_is_refused(tmp_path, compact_controlnet, tiny_config):
    from counterfactory.models.compact import build_compact, save_compact

    other = tmp_path / "other_base"
    save_compact(build_compact(tiny_config, seed=1), other)
    with pytest.raises(CheckpointError, match=r"trained on another base \(sha256 [0-9a-f]{12}\.\.\., this base [0-9a-f]{12}"):
        DefectControlNetPipeline.from_pretrained(other, compact_controlnet)
    with pytest.raises(CheckpointError, match="train-controlnet"):
        DefectControlNetPipeline.from_pretrained(other, tmp_path / "missing")


def test_save_and_reload_gives_the_same_image(compact_pipe, tmp_path):
    saved = compact_pipe.save_pretrained(tmp_path / "pipe")
    again = DefectControlNetPipeline.from_pretrained(saved)
    again.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2)
    a = compact_pipe(None, _mask(), "crack", generator=torch.Generator().manual_seed(0), **kw).images
    b = again(None, _mask(), "crack", generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(a, b)


def test_bulk_generate_runs_with_the_controlnet_pipeline(compact_pipe, tiny_data, tmp_path):
    """The bulk writer takes this pipeline as it takes the inpainting one (same call and output convention)."""
    from counterfactory.data import open_dataset
    from counterfactory.data.splits import few_shot_split
    from counterfactory.pipelines.generate import GenerateConfig, generate, held_out_masks

    ds = open_dataset(tiny_data)
    masks = held_out_masks(ds, few_shot_split(ds), list(TYPES))
    cfg = GenerateConfig(out=str(tmp_path / "gen"), n_per_type=2, num_inference_steps=2, batch_size=2,
                         method="controlnet", paste_back_dilation=2)
    generate(compact_pipe, ds.good(), masks, cfg, provenance={"base_sha256": "x"}, progress=False)
    records = [json.loads(line) for line in (tmp_path / "gen" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["type"] for r in records) == ["crack", "crack", "spot", "spot"]
    assert all(r["method"] == "controlnet" and r["paste_back_dilation"] == 2 for r in records)
    for r in records:  # paste-back: every pixel beyond the dilated mask is the background's
        from counterfactory.io.images import load_image
        from counterfactory.io.masks import read_mask

        out = load_image(tmp_path / "gen" / r["image"])
        src = load_image(r["source_image"])
        keep = dilate(torch.from_numpy(read_mask(tmp_path / "gen" / r["mask"]))[None, None], 2)[0] < 0.5
        assert torch.equal((out * 255).round()[keep.expand_as(out)], (src * 255).round()[keep.expand_as(src)])


def test_bulk_generate_refuses_a_pipeline_of_the_other_method(compact_pipe, tiny_data, tmp_path):
    from counterfactory.data import open_dataset
    from counterfactory.data.splits import few_shot_split
    from counterfactory.pipelines.generate import GenerateConfig, generate, held_out_masks

    ds = open_dataset(tiny_data)
    masks = held_out_masks(ds, few_shot_split(ds), list(TYPES))
    cfg = GenerateConfig(out=str(tmp_path / "gen"), n_per_type=1, num_inference_steps=2)
    with pytest.raises(InputError, match="method"):
        generate(compact_pipe, ds.good(), masks, cfg, progress=False)
    assert not (tmp_path / "gen").exists()


def test_to_moves_the_controlnet_and_embeddings(tiny_base, compact_controlnet):
    pipe = DefectControlNetPipeline.from_pretrained(tiny_base, compact_controlnet)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(None, _mask(), "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    pipe.to(torch.float64)
    assert {p.dtype for m in (pipe.unet, pipe.controlnet, pipe.type_embedding) for p in m.parameters()} == {torch.float64}
    out = pipe(None, _mask(), "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_grain_transfer_changes_only_the_masked_pixels(compact_pipe):
    image = (_image() + 0.1 * torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    kw = dict(num_inference_steps=2, paste_back=True, paste_back_dilation=0)
    a = compact_pipe(image, _mask(), "crack", generator=torch.Generator().manual_seed(0), **kw).images
    b = compact_pipe(image, _mask(), "crack", generator=torch.Generator().manual_seed(0), grain_transfer=1.0, **kw).images
    inside = _mask().expand_as(a) > 0.5
    assert torch.equal(a[~inside], b[~inside])
    assert (a - b)[inside].abs().max() > 1e-3
