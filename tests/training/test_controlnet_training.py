"""train-controlnet: export, exact resume after a stop, determinism, the SD path, and the CLI's bad-input contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from counterfactory.cli.main import main
from counterfactory.errors import CheckpointError
from counterfactory.io.manifest import sha256_file
from counterfactory.models.compact import WEIGHTS_FILE
from counterfactory.models.controlnet import CONTROLNET_CONFIG
from counterfactory.training.controlnet import ControlNetTrainConfig, train_controlnet
from counterfactory.training.trainer import LoopConfig

CN_WEIGHTS = "diffusion_pytorch_model.safetensors"
EMB = "damage_type_embeddings.safetensors"


def _cfg(out, data, base, **loop):
    kw = dict(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.9, checkpoint_every=2)
    kw.update(loop)
    return ControlNetTrainConfig(out=str(out), data=str(data), base=str(base), batch_size=2, loop=LoopConfig(**kw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, tiny_data):
    out = tmp_path_factory.mktemp("cn_run") / "cn"
    summary = train_controlnet(_cfg(out, tiny_data, tiny_base), progress=False)
    return out, summary


def _same(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_export_is_a_diffusers_controlnet_folder_the_pipeline_loads(trained, tiny_base):
    from diffusers import ControlNetModel

    from counterfactory.pipelines.defect_controlnet import DefectControlNetPipeline

    out, summary = trained
    assert summary["steps"] == 2 and summary["types"] == ["crack", "spot"]
    for name in (CONTROLNET_CONFIG, CN_WEIGHTS, "config.json", EMB, "log.csv", "split.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / CONTROLNET_CONFIG).read_text())
    assert cfg["base_sha256"] == sha256_file(Path(tiny_base) / WEIGHTS_FILE) and cfg["base_kind"] == "compact"
    net = ControlNetModel.from_pretrained(out, use_safetensors=True)
    # trained: the zero convolutions (zero at initialisation) moved
    assert any(p.abs().max() > 0 for n, p in net.named_parameters() if n.startswith("controlnet_down_blocks"))
    pipe = DefectControlNetPipeline.from_pretrained(tiny_base, out)
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:16] = 1
    img = pipe(None, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_stopped_and_resumed_equals_uninterrupted(trained, tiny_base, tiny_data, tmp_path):
    out, _ = trained
    first = train_controlnet(_cfg(tmp_path, tiny_data, tiny_base, max_minutes=1e-9), progress=False)
    assert first["stopped_early"] and first["steps"] == 1
    again = train_controlnet(_cfg(tmp_path, tiny_data, tiny_base), progress=False)
    assert again["resumed_from"] == 1 and again["steps"] == 2
    for name in (CN_WEIGHTS, EMB):
        assert _same(tmp_path / name, out / name), name


def test_same_seed_same_weights_other_seed_other_weights(trained, tiny_base, tiny_data, tmp_path):
    out, _ = trained
    train_controlnet(_cfg(tmp_path / "a", tiny_data, tiny_base), progress=False)
    assert _same(tmp_path / "a" / CN_WEIGHTS, out / CN_WEIGHTS)
    train_controlnet(_cfg(tmp_path / "b", tiny_data, tiny_base, seed=1), progress=False)
    assert not _same(tmp_path / "b" / CN_WEIGHTS, out / CN_WEIGHTS)


def test_trains_on_a_full_image_base_and_resumes(tiny_full_base, tiny_base, tiny_data, tmp_path):
    from counterfactory.pipelines.defect_controlnet import DefectControlNetPipeline

    run = train_controlnet(_cfg(tmp_path / "cn", tiny_data, tiny_full_base), progress=False)
    assert run["steps"] == 2
    meta = json.loads((tmp_path / "cn" / CONTROLNET_CONFIG).read_text())
    assert meta["base_layout"] == "full" and meta["base_sha256"] == sha256_file(tiny_full_base / WEIGHTS_FILE)
    net = load_file(str(tmp_path / "cn" / CN_WEIGHTS))
    assert net["conv_in.weight"].shape[1] == 3  # the full-image base's input layout
    assert any(v.abs().max() > 0 for k, v in net.items() if k.startswith("controlnet_down_blocks"))  # trained
    first = train_controlnet(_cfg(tmp_path / "again", tiny_data, tiny_full_base, max_minutes=1e-9), progress=False)
    assert first["stopped_early"] and first["steps"] == 1
    assert train_controlnet(_cfg(tmp_path / "again", tiny_data, tiny_full_base), progress=False)["resumed_from"] == 1
    for name in (CN_WEIGHTS, EMB):
        assert _same(tmp_path / "again" / name, tmp_path / "cn" / name), name
    pipe = DefectControlNetPipeline.from_pretrained(tiny_full_base, tmp_path / "cn")
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:16] = 1
    img = pipe(None, mask, "crack", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    with pytest.raises(CheckpointError, match="trained on another base"):
        DefectControlNetPipeline.from_pretrained(tiny_base, tmp_path / "cn")


def test_sd_base_trains_and_exports(tmp_path, tiny_data):
    """One step on a tiny SD-1.5 text-to-image folder; the export loads into diffusers' ControlNetModel."""
    from diffusers import ControlNetModel

    from counterfactory.testing import tiny_sd_text2img_components

    parts = tiny_sd_text2img_components(0)
    unet, vae, scheduler = parts["unet"], parts["vae"], parts["scheduler"]
    base = tmp_path / "sd"
    unet.save_pretrained(base / "unet", safe_serialization=True)
    vae.save_pretrained(base / "vae", safe_serialization=True)
    scheduler.save_pretrained(base / "scheduler")
    cfg = ControlNetTrainConfig(out=str(tmp_path / "cn"), data=str(tiny_data), base=str(base), base_kind="sd",
                                batch_size=1, loop=LoopConfig(steps=1, lr=1e-3, warmup_steps=1, ema_decay=0.0))
    train_controlnet(cfg, progress=False)
    meta = json.loads((tmp_path / "cn" / CONTROLNET_CONFIG).read_text())
    assert meta["base_kind"] == "sd" and meta["base_sha256"] == sha256_file(base / "unet" / CN_WEIGHTS)
    net = ControlNetModel.from_pretrained(tmp_path / "cn", use_safetensors=True)
    assert net.config.conditioning_embedding_out_channels == [16, 32]  # 2x VAE: one stride-2 stage


@pytest.mark.parametrize("extra, needle", [
    (["--types", "scratch"], "types=scratch"),
    (["--base", "/nonexistent/base"], "--base=/nonexistent/base"),
    (["--base-kind", "sd"], "--base=None"),
    (["--outside-weight", "2"], "--outside-weight="),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_data, tiny_base, capsys, extra, needle):
    argv = ["train-controlnet", "--data", str(tiny_data), "--out", str(tmp_path / "cn"), "--steps", "1", "--quiet"]
    if "--base" not in extra and "--base-kind" not in extra:
        argv += ["--base", str(tiny_base)]
    try:
        code = main(argv + extra)
    except SystemExit as exc:  # argparse-level checks exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "cn").exists()


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse-level checks exit from the parser
        return exc.code


def test_cli_full_layout_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_data, tiny_base, tiny_full_base,
                                                                  capsys):
    cases = [
        (["train-base", "--layout", "whole"], "--layout"),
        (["train-base", "--init", str(tiny_full_base)], "init="),  # a full-image base does not start an inpainting one
        (["train-adapter", "--data", str(tiny_data), "--base", str(tiny_full_base)], "has layout 'full'"),
    ]
    for k, (argv, needle) in enumerate(cases):
        out = tmp_path / f"out{k}"
        code = _exit_code(argv + ["--out", str(out), "--steps", "1", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists()


def test_cli_trains(tmp_path, tiny_data, tiny_base, capsys):
    code = main(["train-controlnet", "--data", str(tiny_data), "--out", str(tmp_path / "cn"), "--base", str(tiny_base),
                 "--steps", "1", "--batch-size", "1", "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    assert (tmp_path / "cn" / CONTROLNET_CONFIG).is_file()
