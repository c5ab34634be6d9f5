"""The SD-1.5-inpainting path end to end, on a tiny random model of the same architecture.

train_adapter(base_kind="sd") → adapter folder (diffusers LoRA + damage-type embeddings) → our
DefectInpaintPipeline.from_sd, and the same adapter in the stock diffusers StableDiffusionInpaintPipeline
(load_lora_weights + prompt_embeds): both must give the same pixels inside the mask.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from counterfactory.data.surfaces import synth_dataset
from counterfactory.models.compact import CompactConfig, build_compact, save_compact
from counterfactory.models.conditioning import EMBEDDING_FILE, DamageTypeEmbedding
from counterfactory.models.lora import LORA_WEIGHT_NAME
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
from counterfactory.testing import save_tiny_sd_inpaint
from counterfactory.training.inpaint import ADAPTER_CONFIG, AdapterTrainConfig, train_adapter
from counterfactory.training.trainer import LoopConfig

STEPS = 3


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(tiny SD folder, dataset category root, trained adapter folder)."""
    tmp = tmp_path_factory.mktemp("sd_path")
    base = save_tiny_sd_inpaint(tmp / "tiny-sd-inpaint", seed=0)
    synth_dataset(tmp, seed=0, size=64, n_train_good=4, n_test_good=2, n_per_type=3)
    data = tmp / "surface"
    adapter = tmp / "adapter"
    # ema off and a large lr: after 3 steps the LoRA must visibly change the output (the interop test checks it)
    cfg = AdapterTrainConfig(out=str(adapter), data=str(data), base=str(base), base_kind="sd", batch_size=2,
                             loop=LoopConfig(steps=3, lr=1e-2, warmup_steps=1, ema_decay=0.0, checkpoint_every=3))
    summary = train_adapter(cfg, progress=False)
    assert summary["steps"] == 3
    return base, data, adapter


@pytest.fixture(scope="module")
def ours(work):
    base, _, adapter = work
    pipe = DefectInpaintPipeline.from_sd(base, adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stock(work):
    from diffusers import StableDiffusionInpaintPipeline

    base, _, adapter = work
    pipe = StableDiffusionInpaintPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                          requires_safety_checker=False)
    pipe.load_lora_weights(adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(batch=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    mask = torch.zeros(batch, 1, size, size)
    mask[0, :, 20:40, 16:44] = 1
    if batch > 1:
        mask[1, :, 8:30, 30:50] = 1
    return image, mask


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_adapter_folder_is_diffusers_format(work):
    _, _, adapter = work
    names = {p.name for p in adapter.iterdir()}
    assert {LORA_WEIGHT_NAME, EMBEDDING_FILE, ADAPTER_CONFIG} <= names
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert cfg["base_kind"] == "sd" and cfg["types"] == ["chip", "crack", "scratch", "spot"]
    assert cfg["resolution"] == 64 and cfg["base_sha256"]
    # SD: LoRA on attention projections only (the conv targets are a compact-base option)
    assert set(cfg["lora_targets"]) == {"to_q", "to_k", "to_v", "to_out.0"}
    lora = load_file(str(adapter / LORA_WEIGHT_NAME))
    assert lora and all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in lora)
    ups = [v for k, v in lora.items() if ".lora.up." in k]
    assert ups and all(v.abs().max() > 0 for v in ups)  # B starts at zero: training moved every one
    emb = DamageTypeEmbedding.load(adapter)
    assert emb.embeddings.shape == (4, 4, 32) and emb.null.shape == (4, 32)


@pytest.mark.parametrize(
    "batch, guidance, per_image_generators",
    [(1, 3.0, False), (2, 2.5, True), (2, 1.0, False)],
    ids=["cfg-one-generator", "cfg-generator-per-image", "no-cfg-batch"],
)
def test_stock_diffusers_pipeline_loads_our_adapter_and_matches(work, ours, stock, batch, guidance,
                                                                per_image_generators):
    """Interop: the stock pipeline + load_lora_weights + our embeddings == our pipeline (inside the mask).

    Both get the same [0,1] tensors (the stock image processor maps them to [-1,1] as we do, no resize at
    64 px, masks already binary), the same DDIM scheduler config and the same random draws (initial latents
    first, then the masked-image latents sampled with the same generator).
    """
    _, _, adapter = work
    emb = DamageTypeEmbedding.load(adapter)
    types = ["crack", "spot"][:batch]
    image, mask = _inputs(batch)

    def gen():
        return _gens([7, 8][:batch]) if per_image_generators else torch.Generator().manual_seed(7)

    mine = ours(image, mask, types, num_inference_steps=STEPS, guidance_scale=guidance, generator=gen(),
                crop_to_mask=False, reinject_known_region=False).images
    theirs = stock(prompt_embeds=emb(emb.index(types)), negative_prompt_embeds=emb.null_tokens(batch),
                   image=image, mask_image=mask, num_inference_steps=STEPS, guidance_scale=guidance,
                   generator=gen(), output_type="pt").images
    assert type(stock.scheduler) is type(ours.scheduler)
    assert dict(stock.scheduler.config) == dict(ours.scheduler.config)
    inside = mask.expand_as(image) > 0.5
    assert theirs.shape == mine.shape
    assert (mine - theirs).abs()[inside].max() < 1e-5
    assert torch.equal(mine[~inside], image[~inside])  # ours pastes the input back outside the mask
    assert (theirs - image).abs()[~inside].max() > 0.05  # the stock pipeline re-decodes everything
    if batch > 1:
        return
    # the comparison is sensitive to the adapter: without the LoRA the stock result differs
    stock.disable_lora()
    try:
        no_lora = stock(prompt_embeds=emb(emb.index(types)), negative_prompt_embeds=emb.null_tokens(batch),
                        image=image, mask_image=mask, num_inference_steps=STEPS, guidance_scale=guidance,
                        generator=gen(), output_type="pt").images
    finally:
        stock.enable_lora()
    assert (mine - no_lora).abs()[inside].max() > 1e-3


def test_interop_numpy_output(work, ours, stock):
    """output_type="np": ours is uint8 (B,H,W,3), stock float (B,H,W,3); same pixels after rounding."""
    _, _, adapter = work
    emb = DamageTypeEmbedding.load(adapter)
    image, mask = _inputs(1)
    mine = ours(image, mask, "scratch", num_inference_steps=2, guidance_scale=2.0,
                generator=torch.Generator().manual_seed(3), crop_to_mask=False, reinject_known_region=False,
                output_type="np").images
    theirs = stock(prompt_embeds=emb(emb.index("scratch")), negative_prompt_embeds=emb.null_tokens(1),
                   image=image, mask_image=mask, num_inference_steps=2, guidance_scale=2.0,
                   generator=torch.Generator().manual_seed(3), output_type="np").images
    inside = mask[:, 0].numpy() > 0.5
    diff = abs(mine.astype(float) - theirs * 255.0)[inside]
    assert mine.dtype.name == "uint8" and mine.shape == theirs.shape == (1, 64, 64, 3)
    assert diff.max() <= 0.5 + 1e-3  # ours is stock's value rounded to 8 bits


def test_sd_pipeline_outside_mask_exact_and_seeded(ours):
    image, mask = _inputs(2)
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, crop_to_mask=False)
    a = ours(image, mask, ["chip", "crack"], generator=torch.Generator().manual_seed(0), **kwargs).images
    b = ours(image, mask, ["chip", "crack"], generator=torch.Generator().manual_seed(0), **kwargs).images
    c = ours(image, mask, ["chip", "crack"], generator=torch.Generator().manual_seed(1), **kwargs).images
    inside = mask.expand_as(image) > 0.5
    assert torch.equal(a[~inside], image[~inside])  # re-injection on (default): still exact outside
    assert torch.equal(a, b)
    assert (a - c).abs()[inside].max() > 1e-3
    assert (a - image).abs()[inside].max() > 1e-3


def test_sd_crop_to_mask_runs_at_working_resolution(ours):
    """A 128 px image, a small and a larger mask: every U-Net call sees 32x32 latents (64 px windows)."""
    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 128, 128, generator=g)
    mask = torch.zeros(2, 1, 128, 128)
    mask[0, :, 90:100, 20:34] = 1  # small: a 64 px window, no resize
    mask[1, :, 30:80, 40:100] = 1  # 60 px box + margin: a ~120 px window resized to 64 and back
    shapes = []
    handle = ours.unet.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        out = ours(image, mask, ["spot", "chip"], num_inference_steps=2, guidance_scale=2.0,
                   generator=_gens([0, 1]))
    finally:
        handle.remove()
    assert ours.resolution == 64
    assert shapes and all(s[1:] == (9, 32, 32) for s in shapes)
    (w0,), (w1,) = out.windows
    assert (w0[2] - w0[0], w0[3] - w0[1]) == (64, 64) and w0[0] <= 20 and w0[2] >= 34 and w0[1] <= 90 and w0[3] >= 100
    assert w1[2] - w1[0] > 64 and w1[0] <= 40 and w1[2] >= 100
    res = out.images
    inside = mask.expand_as(image) > 0.5
    assert res.shape == image.shape
    assert torch.equal(res[~inside], image[~inside])
    for i in range(2):
        assert (res[i] - image[i]).abs()[inside[i]].max() > 1e-3


def test_cli_train_adapter_and_generate_sd(work, tmp_path, capsys):
    from counterfactory.cli.main import main

    base, data, _ = work
    adapter = tmp_path / "adapter"
    rc = main(["train-adapter", "--base-kind", "sd", "--base", str(base), "--data", str(data), "--out", str(adapter),
               "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2", "--quiet"])
    assert rc == 0
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert cfg["base_kind"] == "sd" and cfg["steps"] == 2
    assert (adapter / LORA_WEIGHT_NAME).is_file() and (adapter / EMBEDDING_FILE).is_file()

    out = tmp_path / "gen"
    rc = main(["generate", "--base-kind", "sd", "--base", str(base), "--adapter", str(adapter), "--data", str(data),
               "--out", str(out), "--n", "1", "--types", "crack", "spot", "--num-inference-steps", "2", "--quiet"])
    assert rc == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for t in ("crack", "spot"):
        assert len(list((out / t).glob("*.png"))) == 1
        assert len(list((out / "ground_truth" / t).glob("*_mask.png"))) == 1

    # an SD adapter on a compact base is refused: one line naming the mismatch, exit 2, nothing written
    compact = tmp_path / "compact"
    save_compact(build_compact(CompactConfig(sample_size=32, block_out_channels=(32, 64), cross_attention_dim=32)),
                 compact)
    capsys.readouterr()
    rc = main(["generate", "--base-kind", "compact", "--base", str(compact), "--adapter", str(adapter),
               "--data", str(data), "--out", str(tmp_path / "gen2"), "--n", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "'sd' base" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "gen2" / "manifest.jsonl").exists()


def test_sd_strength_paste_and_refine(ours):
    """strength on the SD path: 1 is the default generation bit for bit, 0 returns the input, in between the
    outside stays exact and the result is seeded."""
    image, mask = _inputs(2)
    kwargs = dict(num_inference_steps=4, guidance_scale=2.0)

    def run(seed=0, **kw):
        return ours(image, mask, ["chip", "crack"], generator=torch.Generator().manual_seed(seed), **kwargs, **kw).images

    default = run()
    assert torch.equal(run(strength=1.0), default)
    assert torch.equal(run(strength=0.0), image)
    half = run(strength=0.5)
    inside = mask.expand_as(image) > 0.5
    assert torch.equal(half[~inside], image[~inside])
    assert torch.equal(run(strength=0.5), half) and not torch.equal(run(seed=1, strength=0.5), half)
    assert (half - image).abs()[inside].max() > 1e-3 and not torch.equal(half, default)


def test_sd_pipeline_save_and_load_round_trip(ours, tmp_path):
    image, mask = _inputs(1)
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    ref = ours(image, mask, "chip", **kwargs).images
    again = DefectInpaintPipeline.from_pretrained(ours.save_pretrained(tmp_path / "pipe"))
    again.set_progress_bar_config(disable=True)
    assert again.vae is not None and again.info["base_kind"] == "sd"
    assert torch.equal(again(image, mask, "chip", **{**kwargs, "generator": torch.Generator().manual_seed(0)}).images, ref)
