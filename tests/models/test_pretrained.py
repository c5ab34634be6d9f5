"""SD-1.5-inpainting components: tiny ones built in code, a diffusers folder the stock pipeline loads, the loader."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from counterfactory.errors import CheckpointError, ConfigError, InputError
from counterfactory.models.pretrained import SD_INPAINT_IN_CHANNELS, load_sd_inpaint
from counterfactory.testing import save_tiny_sd_inpaint, tiny_clip_tokenizer, tiny_sd_inpaint_components


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd_inpaint(tmp_path_factory.mktemp("sd") / "tiny-sd-inpaint", seed=0)


def _unet_inputs(batch=2, size=32, dim=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, SD_INPAINT_IN_CHANNELS, size, size, generator=g)
    t = torch.tensor([10, 500][:batch])
    ctx = torch.randn(batch, 4, dim, generator=g)
    return x, t, ctx


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_components_architecture_and_forward():
    parts = tiny_sd_inpaint_components()
    unet, vae, scheduler = parts["unet"], parts["vae"], parts["scheduler"]
    assert unet.config.in_channels == 9 and unet.config.out_channels == 4
    assert tuple(unet.config.block_out_channels) == (32, 64) and unet.config.cross_attention_dim == 32
    assert vae.config.latent_channels == 4 and 2 ** (len(vae.config.block_out_channels) - 1) == 2
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.beta_schedule == "scaled_linear"
    assert not unet.training and not vae.training
    x, t, ctx = _unet_inputs()
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample
        latents = vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
    assert out.shape == (2, 4, 32, 32) and torch.isfinite(out).all()
    assert latents.shape == (1, 4, 32, 32)


def test_tiny_components_deterministic_fast_and_rng_neutral():
    tiny_sd_inpaint_components()  # warm the lazy diffusers imports
    torch.manual_seed(123)
    before = torch.get_rng_state()
    start = time.perf_counter()
    a = tiny_sd_inpaint_components(seed=0)
    elapsed = time.perf_counter() - start
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    b = tiny_sd_inpaint_components(seed=0)
    c = tiny_sd_inpaint_components(seed=1)
    assert _same_params(a["unet"], b["unet"]) and _same_params(a["vae"], b["vae"])
    assert not _same_params(a["unet"], c["unet"])
    assert elapsed < 1.0, f"building the tiny stack took {elapsed:.2f}s"


def test_tiny_components_options_and_validation():
    parts = tiny_sd_inpaint_components(sample_size=16, cross_attention_dim=24, freeze=True)
    assert parts["unet"].config.sample_size == 16 and parts["unet"].config.cross_attention_dim == 24
    assert not any(p.requires_grad for m in ("unet", "vae") for p in parts[m].parameters())
    for kwargs in ({"sample_size": 15}, {"sample_size": 0}, {"cross_attention_dim": -1}, {"seed": -1}):
        with pytest.raises(ConfigError):
            tiny_sd_inpaint_components(**kwargs)


def test_tiny_tokenizer_is_real_and_bounded():
    tok = tiny_clip_tokenizer()
    assert tok.model_max_length == 16
    ids = tok(
        "a scratch, dent", padding="max_length", max_length=tok.model_max_length, truncation=True
    ).input_ids
    assert len(ids) == 16 and ids[0] == tok.bos_token_id
    content = [i for i in ids if i not in (tok.bos_token_id, tok.eos_token_id)]
    assert (
        len(set(content)) > 5
    )  # not everything mapped to one unknown id (the transformers-5 vocab_file trap)


def test_saved_folder_loads_in_stock_pipeline_offline(sd_dir, monkeypatch):
    from diffusers import StableDiffusionInpaintPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = {p.name for p in sd_dir.iterdir()}
    assert {"model_index.json", "unet", "vae", "scheduler", "text_encoder", "tokenizer"} <= names
    assert not list(sd_dir.parent.glob(".*.tmp"))  # written beside, renamed into place
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        sd_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.model_max_length == 16
    assert _same_params(pipe.unet, tiny_sd_inpaint_components(seed=0)["unet"])
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    out = pipe(
        prompt="a scratch",
        image=image,
        mask_image=mask,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3)


def test_save_refuses_non_empty_folder_unless_overwrite(sd_dir, tmp_path):
    target = tmp_path / "sd"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="overwrite=True"):
        save_tiny_sd_inpaint(target)
    save_tiny_sd_inpaint(target, seed=3, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "unet" / "config.json").is_file()


def test_load_sd_inpaint_round_trip_frozen(sd_dir):
    parts = load_sd_inpaint(sd_dir)
    assert set(parts) == {"unet", "vae", "scheduler"}
    reference = tiny_sd_inpaint_components(seed=0)
    assert _same_params(parts["unet"], reference["unet"]) and _same_params(parts["vae"], reference["vae"])
    for name in ("unet", "vae"):
        assert not parts[name].training
        assert not any(p.requires_grad for p in parts[name].parameters())
    assert type(parts["scheduler"]).__name__ == "DDIMScheduler"
    assert parts["scheduler"].config.beta_end == pytest.approx(0.012)
    half = load_sd_inpaint(str(sd_dir), torch_dtype=torch.bfloat16)
    assert half["unet"].dtype == torch.bfloat16


def test_load_sd_inpaint_without_scheduler_uses_sd_schedule(sd_dir, tmp_path):
    copy = tmp_path / "no-scheduler"
    shutil.copytree(sd_dir, copy)
    shutil.rmtree(copy / "scheduler")
    sched = load_sd_inpaint(copy)["scheduler"]
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.steps_offset == 1


def _assert_one_line_with_hint(exc: pytest.ExceptionInfo) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert "--local-dir" in message and "--base DIR" in message


def test_load_sd_inpaint_missing_folder(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_sd_inpaint(tmp_path / "nowhere" / "sd15")
    _assert_one_line_with_hint(exc)
    assert "no folder" in str(exc.value)


def test_load_sd_inpaint_hub_id_never_downloads_by_default():
    with pytest.raises(CheckpointError) as exc:
        load_sd_inpaint("counterfactory-test/not-a-cached-model")
    _assert_one_line_with_hint(exc)
    assert "allow_download=False" in str(exc.value)


@pytest.mark.parametrize("missing", ["unet", "vae"])
def test_load_sd_inpaint_missing_subfolder(sd_dir, tmp_path, missing):
    copy = tmp_path / "partial"
    shutil.copytree(sd_dir, copy)
    shutil.rmtree(copy / missing)
    with pytest.raises(CheckpointError) as exc:
        load_sd_inpaint(copy)
    _assert_one_line_with_hint(exc)
    assert f"{missing}/config.json" in str(exc.value) and "found:" in str(exc.value)


def test_load_sd_inpaint_rejects_text_to_image_unet(sd_dir, tmp_path):
    copy = tmp_path / "t2i"
    shutil.copytree(sd_dir, copy)
    config_path = copy / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["in_channels"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as exc:
        load_sd_inpaint(copy)
    _assert_one_line_with_hint(exc)
    assert "in_channels=4" in str(exc.value)


def test_load_sd_inpaint_missing_weights_file_and_file_path(sd_dir, tmp_path):
    copy = tmp_path / "no-weights"
    shutil.copytree(sd_dir, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError) as exc:
        load_sd_inpaint(copy)
    _assert_one_line_with_hint(exc)
    with pytest.raises(CheckpointError):
        load_sd_inpaint(sd_dir / "model_index.json")


@pytest.mark.parametrize("bad", [torch.int64, "float32", None])
def test_load_sd_inpaint_bad_dtype(sd_dir, bad):
    with pytest.raises(InputError, match="torch_dtype"):
        load_sd_inpaint(sd_dir, torch_dtype=bad)


def test_library_never_imports_the_testing_module():
    """Tiny random builders live in counterfactory.testing, which no library module imports."""
    import pathlib
    import re

    import counterfactory

    root = pathlib.Path(counterfactory.__file__).parent
    users = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.name != "testing.py"
             and re.search(r"^\s*(from|import)\s+(counterfactory|\.+)\s*\.?\s*testing\b|from \.+ import testing",
                           p.read_text(), re.M)]
    assert users == []
