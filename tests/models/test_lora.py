"""LoRA on diffusion U-Nets: add / save / load, and interop with stock diffusers pipelines."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from counterfactory.errors import CheckpointError, ConfigError, InputError
from counterfactory.models.lora import LORA_WEIGHT_NAME, add_lora, load_lora, save_lora
from counterfactory.testing import save_tiny_sd_inpaint, tiny_sd_inpaint_components

ATTN = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd_inpaint(tmp_path_factory.mktemp("sd") / "tiny-sd-inpaint", seed=0)


def _stock_pipeline(path):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        path, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet(seed=0, **kwargs):
    return tiny_sd_inpaint_components(seed=seed, **kwargs)["unet"]


def _inputs(dim=32):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 9, 32, 32, generator=g),
        torch.tensor([10, 700]),
        torch.randn(2, 4, dim, generator=g),
    )


@torch.no_grad()
def _out(unet, dim=32):
    x, t, ctx = _inputs(dim)
    return unet(x, t, encoder_hidden_states=ctx).sample


@torch.no_grad()
def _perturb(params, seed=5, scale=0.2):
    """LoRA B starts at zero (a no-op adapter); give every LoRA tensor random nonzero values."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=g) * scale)


def has_lora(unet, adapter_name=None):
    config = getattr(unet, "peft_config", None) or {}
    return bool(config) if adapter_name is None else adapter_name in config


def _file(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# --------------------------------------------------------------------------- add_lora


def test_add_lora_freezes_base_and_starts_as_identity():
    unet = _unet()
    before = _out(unet)
    params = add_lora(unet, rank=4)
    assert len(params) == 64 and sum(p.numel() for p in params) == 15_360
    trainable = [p for p in unet.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert has_lora(unet) and has_lora(unet, "default") and not has_lora(unet, "other")
    assert torch.equal(_out(unet), before)  # B = 0

    x, t, ctx = _inputs()
    opt = torch.optim.AdamW(params, lr=1e-2)
    unet(x, t, encoder_hidden_states=ctx).sample.pow(2).mean().backward()
    assert all(p.grad is not None for p in params if ".lora_B." in _name_of(unet, p))
    opt.step()
    assert not torch.equal(_out(unet), before)


def _name_of(module, param):
    return next(n for n, p in module.named_parameters() if p is param)


def test_add_lora_alpha_scales_the_update():
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"
    deltas = []
    for alpha in (4, 8):
        unet = _unet()
        _perturb(add_lora(unet, rank=4, alpha=alpha, seed=0))
        layer = unet.get_submodule(name)
        z = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            deltas.append(layer(z) - layer.get_base_layer()(z))
    assert deltas[0].abs().max() > 1e-3
    torch.testing.assert_close(deltas[1], 2 * deltas[0], rtol=1e-5, atol=1e-6)


def test_add_lora_seed_makes_init_deterministic():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a, b, c = _unet(), _unet(), _unet()
    pa, pb, pc = add_lora(a, seed=3), add_lora(b, seed=3), add_lora(c, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, z) for x, z in zip(pa, pc))
    with pytest.raises(ConfigError, match="seed"):
        add_lora(_unet(), seed=-1)


def test_add_lora_conv_targets_and_second_adapter():
    unet = _unet()
    conv = add_lora(unet, rank=2, target_modules=("conv1", "conv2"), adapter_name="convs")
    assert conv and all(".convs." in _name_of(unet, p) for p in conv)
    attn = add_lora(unet, rank=4, target_modules="to_q", adapter_name="q")  # a plain str is one name
    assert len(attn) == 8 * 2  # to_q of attn1 + attn2 in 4 transformer blocks (down, mid, 2 up) x (A, B)
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in attn}  # newest is active


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"rank": 0}, "rank"),
        ({"rank": -2}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"rank": True}, "rank"),
        ({"rank": "4"}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"target_modules": ()}, "target_modules"),
        ({"target_modules": ("",)}, "target_modules"),
        ({"target_modules": [1]}, "target_modules"),
        ({"target_modules": ("to_q", "to_x")}, "target_modules"),
        ({"target_modules": ("norm1",)}, "target_modules"),  # LayerNorm / GroupNorm: not LoRA-able
        ({"adapter_name": ""}, "adapter_name"),
        ({"adapter_name": "a.b"}, "adapter_name"),
    ],
)
def test_add_lora_rejects_bad_values_in_one_line(kwargs, argument):
    unet = _unet()
    with pytest.raises(ConfigError) as exc:
        add_lora(unet, **kwargs)
    message = str(exc.value)
    assert message.startswith(f"{argument}=") and "\n" not in message
    assert not has_lora(unet) and any(p.requires_grad for p in unet.parameters())  # nothing changed


def test_add_lora_unknown_target_lists_real_names():
    with pytest.raises(ConfigError, match="to_q"):
        add_lora(_unet(), target_modules=("to_x",))


def test_add_lora_duplicate_adapter_name():
    unet = _unet()
    add_lora(unet)
    with pytest.raises(ConfigError, match="adapter_name"):
        add_lora(unet)


# --------------------------------------------------------------------------- state dict, save, load


def test_saved_file_uses_diffusers_keys(tmp_path):
    unet = _unet()
    add_lora(unet, target_modules=("to_q", "to_k", "to_v", "to_out.0", "conv1"))
    sd, _ = _file(save_lora(unet, tmp_path / "a"))
    assert sd and all(k.startswith("unet.") for k in sd)
    assert all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in sd)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.lora.up.weight" in sd
    assert "unet.down_blocks.0.resnets.0.conv1.lora.down.weight" in sd
    with pytest.raises(InputError, match="adapter_name"):
        save_lora(unet, tmp_path / "b", adapter_name="nope")


def test_save_and_load_round_trip_with_metadata(tmp_path):
    src = _unet()
    _perturb(add_lora(src, rank=3, alpha=6.0))
    expected = _out(src)
    meta = {"damage_types": ["scratch", "dent"], "steps": 100, "base": "tiny"}
    path = save_lora(src, tmp_path / "adapter", meta)
    assert path == tmp_path / "adapter" / LORA_WEIGHT_NAME and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [LORA_WEIGHT_NAME]  # no temp files left
    assert json.loads(_file(path)[1]["counterfactory"]) == meta

    dst = _unet()
    assert load_lora(dst, path.parent) == meta
    assert torch.equal(_out(dst), expected)
    assert dst.peft_config["default"].r == 3 and dst.peft_config["default"].lora_alpha == 6.0
    assert {id(p) for p in dst.parameters() if p.requires_grad} == {
        id(p) for n, p in dst.named_parameters() if ".lora_" in n
    }

    resumed = _unet()  # resume: the adapter exists already (same config) and receives the weights
    add_lora(resumed, rank=3, alpha=6.0)
    load_lora(resumed, path)
    assert torch.equal(_out(resumed), expected)


def test_save_lora_without_metadata_and_bad_metadata(tmp_path):
    unet = _unet()
    add_lora(unet)
    save_lora(unet, tmp_path / "a")
    assert load_lora(_unet(), tmp_path / "a") == {}
    with pytest.raises(InputError, match="metadata"):
        save_lora(unet, tmp_path / "b", {"x": object()})
    with pytest.raises(InputError, match="adapter_name"):
        save_lora(_unet(), tmp_path / "c")  # no adapter


def test_load_lora_rejects_mismatched_model(tmp_path):
    src = _unet()
    _perturb(add_lora(src))
    save_lora(src, tmp_path / "a")
    other = _unet(cross_attention_dim=24)  # to_k / to_v of attn2 have another input width
    with pytest.raises(CheckpointError) as exc:
        load_lora(other, tmp_path / "a")
    assert "does not fit" in str(exc.value) and "\n" not in str(exc.value)
    assert not has_lora(other) and not any(".lora_" in n for n, _ in other.named_parameters())

    resumed = _unet()
    add_lora(resumed, rank=8)  # an existing adapter of another rank
    with pytest.raises(CheckpointError):
        load_lora(resumed, tmp_path / "a")


def test_load_lora_file_errors(tmp_path):
    unet = _unet()
    with pytest.raises(CheckpointError, match="missing"):
        load_lora(unet, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=LORA_WEIGHT_NAME):
        load_lora(unet, tmp_path / "empty")
    pickle = tmp_path / "w.bin"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_lora(unet, pickle)
    other = tmp_path / "te.safetensors"
    save_file({"text_encoder.x.lora.down.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="no 'unet.' LoRA keys"):
        load_lora(unet, other)
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_lora(unet, garbage)
    assert not has_lora(unet)


def test_load_lora_reads_plain_diffusers_file_without_config(tmp_path):
    """A file written by diffusers' training scripts (no adapter metadata): rank from shapes, alpha = rank."""
    src = _unet()
    _perturb(add_lora(src, rank=4))
    save_file(_file(save_lora(src, tmp_path / "a"))[0], str(tmp_path / "plain.safetensors"))  # no metadata
    dst = _unet()
    assert load_lora(dst, tmp_path / "plain.safetensors") == {}
    assert torch.equal(_out(dst), _out(src))


# --------------------------------------------------------------------------- interop with stock diffusers


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": 4, "alpha": 8, "target_modules": ATTN},
        {"rank": 2, "target_modules": ("to_q", "to_v", "conv1", "conv2")},
    ],
    ids=["attention-alpha8", "attention+conv"],
)
def test_stock_pipeline_load_lora_weights_matches_ours(sd_dir, tmp_path, kwargs):
    ours = _unet(seed=0)  # the same weights as the saved folder's unet
    _perturb(add_lora(ours, **kwargs))
    save_lora(ours, tmp_path / "adapter", {"note": "interop"})

    pipe = _stock_pipeline(sd_dir)
    base = _out(pipe.unet)
    pipe.load_lora_weights(tmp_path / "adapter")
    theirs = _out(pipe.unet)
    expected = _out(ours)
    assert (expected - base).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(theirs, expected, rtol=0, atol=1e-5)


def test_stock_pipeline_runs_with_learned_embeddings_and_is_deterministic(sd_dir, tmp_path):
    ours = _unet(seed=0)
    _perturb(add_lora(ours))
    save_lora(ours, tmp_path / "adapter")
    pipe = _stock_pipeline(sd_dir)
    pipe.load_lora_weights(tmp_path / "adapter")

    table = torch.nn.Embedding(3, 4 * 32)  # a learned class table: 4 tokens x cross_attention_dim 32
    with torch.no_grad():
        cond = table(torch.tensor([1])).view(1, 4, 32)
        null = table(torch.tensor([0])).view(1, 4, 32)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44, 12:52] = 1

    def run(seed, embeds=cond):
        return pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=null,
            image=image,
            mask_image=mask,
            num_inference_steps=2,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images

    first, second = run(0), run(0)
    assert first.shape == (1, 64, 64, 3)
    assert (first == second).all()  # same seed, same output, bit for bit
    assert not (run(1) == first).all()


# --------------------------------------------------------------------------- file format


def test_non_diffusers_model_is_refused():
    with pytest.raises(ConfigError, match="unet="):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), target_modules=("0",))


def test_saved_config_metadata_is_diffusers_shaped(tmp_path):
    from safetensors import safe_open

    unet = _unet()
    add_lora(unet, rank=4, alpha=2)
    path = save_lora(unet, tmp_path / "a")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    config = json.loads(header["lora_adapter_metadata"])
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 2
    assert sorted(config["unet.target_modules"]) == sorted(ATTN)
