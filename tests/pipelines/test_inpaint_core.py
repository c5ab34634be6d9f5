"""The masked-inpainting core (pipelines/base.py) on the compact base: strength (paste-and-refine), pipeline-level
bad input, device and dtype, callback_on_step_end, BaseOutput, from_pretrained / save_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.utils import BaseOutput

from counterfactory.errors import CheckpointError, InputError
from counterfactory.pipelines.base import PIPELINE_CONFIG
from counterfactory.pipelines.defect_inpaint import DefectInpaintOutput, DefectInpaintPipeline
from counterfactory.sampling.inpaint import NonFiniteResultError

STEPS = 4


@pytest.fixture(scope="module")
def adapted(tiny_base, tiny_adapter):
    pipe = DefectInpaintPipeline.from_pretrained(tiny_base, adapter=tiny_adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(batch: int = 2, size: int = 48):
    img = torch.rand(batch, 3, size, size, generator=_gen(0))
    mask = torch.zeros(batch, 1, size, size)
    mask[0, :, 8:20, 10:30] = 1
    if batch > 1:
        mask[1, :, 25:40, 5:15] = 1
    return img, mask


def _call(pipe, img, mask, seed=1, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(img, mask, kw.pop("defect_type", "crack"), generator=_gen(seed), **kw).images


# ---------------------------------------------------------------------- strength
def test_strength_one_is_todays_generation_bit_for_bit(adapted):
    img, mask = _inputs()
    assert torch.equal(_call(adapted, img, mask), _call(adapted, img, mask, strength=1.0))
    assert torch.equal(_call(adapted, img, mask, strength=1), _call(adapted, img, mask))


def test_strength_zero_returns_the_input_unchanged(adapted):
    img, mask = _inputs()
    out = adapted(img, mask, "crack", num_inference_steps=STEPS, generator=_gen(1), strength=0.0, grain_transfer=1.0)
    assert torch.equal(out.images, img)
    assert len(out.windows[0]) == 1  # the windows are still reported


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.75])
def test_partial_strength_outside_exact_inside_changed_and_seeded(adapted, strength):
    img, mask = _inputs()
    a = _call(adapted, img, mask, strength=strength)
    b = _call(adapted, img, mask, strength=strength)
    c = _call(adapted, img, mask, seed=2, strength=strength)
    keep = (mask == 0).expand_as(img)
    assert torch.equal(a[keep], img[keep])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[~keep] - img[~keep]).abs().max() > 1e-3
    assert not torch.equal(a, _call(adapted, img, mask))  # not the generation from noise


def test_strength_runs_the_last_steps_of_the_schedule_from_the_noised_input(adapted):
    """strength 0.5 of 4 steps: 2 U-Net steps at the schedule's last two timesteps (diffusers' get_timesteps)."""
    import copy

    img, mask = _inputs(batch=1)
    seen = []
    _call(adapted, img, mask, strength=0.5, callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)) or {})
    sched = copy.deepcopy(adapted.scheduler)
    sched.set_timesteps(STEPS)
    assert seen == [int(t) for t in sched.timesteps[2:]]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_strength_out_of_range(adapted, bad):
    img, mask = _inputs()
    with pytest.raises(InputError, match=r"strength=.*\[0, 1\]"):
        _call(adapted, img, mask, strength=bad)


def test_strength_that_leaves_no_step_names_the_steps_needed(adapted):
    img, mask = _inputs()
    with pytest.raises(InputError, match="strength=0.2.*at least 5 steps"):
        _call(adapted, img, mask, strength=0.2, num_inference_steps=2)


# ---------------------------------------------------------------------- bad input at pipeline level
@pytest.mark.parametrize("override, pattern", [
    (dict(num_inference_steps=5000), r"num_inference_steps=5000: an integer in \[1, 1000\]"),
    (dict(guidance_scale=1e300), r"guidance_scale=1e\+300: a finite number in \[0, 100\]"),
    (dict(guidance_scale=True), "guidance_scale=True"),
    (dict(crop_margin="wide"), "crop_margin=wide"),
    (dict(crop_margin=True), "crop_margin=True"),
    (dict(mask_threshold=2.0), "mask_threshold"),
    (dict(batch_size=True), "batch_size"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    (dict(callback_on_step_end=3), "callback_on_step_end"),
])
def test_pipeline_level_bad_arguments(adapted, override, pattern):
    img, mask = _inputs()
    with pytest.raises(InputError, match=pattern) as exc:
        _call(adapted, img, mask, **override)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("size", [1, 7])
def test_tiny_images_and_masks_are_refused_with_the_minimum(adapted, size):
    with pytest.raises(InputError, match=r"image size=.*at least 8 px"):
        adapted(torch.rand(1, 3, size, size), torch.ones(1, 1, size, size), "crack", num_inference_steps=2)


def test_non_finite_results_are_never_returned(adapted):
    """A U-Net that overflows (as an absurd guidance would) raises; nothing is returned."""
    img, mask = _inputs(batch=1)
    handle = adapted.unet.register_forward_hook(lambda m, args, out: (out[0] * float("inf"),))
    try:
        with pytest.raises(NonFiniteResultError, match="not finite"):
            _call(adapted, img, mask)
    finally:
        handle.remove()
    assert torch.isfinite(_call(adapted, img, mask)).all()


def test_check_inputs_validates_without_converting_or_keeping_state(adapted):
    img, mask = _inputs()
    before = dict(vars(adapted))
    assert adapted.check_inputs(img, mask, "crack") is None
    assert dict(vars(adapted)) == before
    with pytest.raises(InputError, match="mask_image size"):
        adapted.check_inputs(img, mask[..., :40], "crack")


# ---------------------------------------------------------------------- device and dtype
def test_to_returns_self_and_moves_dtype(tiny_base, tiny_adapter):
    pipe = DefectInpaintPipeline.from_pretrained(tiny_base, adapter=tiny_adapter)
    pipe.set_progress_bar_config(disable=True)
    img, mask = _inputs()
    ref = _call(pipe, img, mask)
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert pipe.to(torch.float64) is pipe
    assert pipe.dtype == torch.float64 and pipe.type_embedding.embeddings.dtype == torch.float64
    out = _call(pipe, img, mask)
    keep = (mask == 0).expand_as(img)
    assert out.dtype == torch.float32 and torch.equal(out[keep], img[keep])
    assert (out - ref).abs().max() < 1e-5  # the same noise (drawn in float32), the computation in float64
    pipe.to(device="cpu", dtype=torch.float32)
    assert torch.equal(_call(pipe, img, mask), ref)  # back in float32 on the CPU: the same bits


@pytest.mark.parametrize("kwargs, name", [(dict(device="gpu0"), "device"), (dict(dtype=torch.int64), "dtype"),
                                          (dict(device="cuda:99"), "device")])
def test_to_refuses_unknown_devices_and_dtypes(adapted, kwargs, name):
    if kwargs.get("device") == "cuda:99" and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(InputError, match=f"^{name}="):
        adapted.to(**kwargs)


class _MetaStepDDIM:
    """Makes a DDIM scheduler usable on the meta device: DDIM's ``step`` indexes its CPU alphas by the timestep's
    value, and a meta tensor has no value, so ``step`` reads the value from the scheduler's own CPU schedule at
    its position (the loop visits the timesteps in order, from the begin index that ``strength`` sets)."""

    @staticmethod
    def make(config):
        from diffusers import DDIMScheduler

        class MetaStepDDIM(DDIMScheduler):
            def set_timesteps(self, num_inference_steps, device=None):
                super().set_timesteps(num_inference_steps)
                self._cpu_timesteps, self._position = self.timesteps.clone(), 0
                super().set_timesteps(num_inference_steps, device=device)

            def set_begin_index(self, begin_index: int = 0):
                self._position = begin_index

            def step(self, model_output, timestep, sample, *args, **kwargs):
                t = int(self._cpu_timesteps[self._position])
                self._position += 1
                return super().step(model_output, t, sample, *args, **kwargs)

        return MetaStepDDIM.from_config(config)


def test_no_tensor_of_the_denoise_loop_is_made_on_the_cpu_when_the_model_is_elsewhere(tiny_base, tiny_adapter):
    """The model moves to the ``meta`` device (a second device type that exists on every CPU machine); a meta
    tensor combined with a CPU tensor raises "Tensor on device cpu is not on the expected device meta", so any
    noise, timestep, mask or token left on the CPU fails this test. A forward pre-hook also asserts that every
    tensor the U-Net receives is on meta. The loop returns meta latents; only reading values out of a meta tensor
    is impossible, which is where the pipeline call must stop (its finiteness check)."""
    from counterfactory.sampling.inpaint import denoise_latents, to_working_resolution

    pipe = DefectInpaintPipeline.from_pretrained(tiny_base, adapter=tiny_adapter).to("meta")
    pipe.scheduler = _MetaStepDDIM.make(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.device.type == "meta"
    calls = []

    def check(module, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        assert tensors and all(t.device.type == "meta" for t in tensors), [t.device for t in tensors]
        calls.append(1)

    handle = pipe.unet.register_forward_pre_hook(check, with_kwargs=True)
    try:
        img, mask = _inputs(batch=2)
        x, m = to_working_resolution(img[:, :, :32, :32], mask[:, :, :32, :32], 32)
        for gens in (_gen(0), [_gen(0), _gen(1)]):
            for strength in (1.0, 0.5):
                cond, uncond = pipe.encode_conditioning(["crack", "spot"])
                lat = denoise_latents(pipe.unet, pipe.scheduler, pipe.space, x, m, cond, uncond, STEPS, 2.0, gens,
                                      progress={"disable": True}, strength=strength)
                assert lat.device.type == "meta" and lat.shape == (2, 3, 32, 32)
        assert len(calls) == 2 * (STEPS + STEPS // 2)
        calls.clear()
        with pytest.raises(RuntimeError, match="meta") as exc:
            _call(pipe, img, mask, strength=0.5)
        assert "expected device" not in str(exc.value)  # not a device mix-up: reading values out of meta data
        assert len(calls) == STEPS // 2  # the whole loop ran on meta
    finally:
        handle.remove()


def test_no_tensor_of_the_latent_loop_is_made_on_the_cpu_sd(tiny_sd_meta):
    """The same check on the SD layout (VAE latents, the VAE's own sampling draw from the CPU generators)."""
    from counterfactory.sampling.inpaint import denoise_latents

    pipe, calls = tiny_sd_meta
    x = torch.rand(2, 3, 64, 64, generator=_gen(0))
    m = torch.zeros(2, 1, 64, 64)
    m[:, :, 10:30, 20:50] = 1
    for gens in (_gen(0), [_gen(0), _gen(1)]):
        cond, uncond = pipe.encode_conditioning(["a", "b"])
        lat = denoise_latents(pipe.unet, pipe.scheduler, pipe.space, x, m, cond, uncond, 2, 2.0, gens,
                              progress={"disable": True}, strength=0.5)
        assert lat.device.type == "meta" and lat.shape == (2, 4, 32, 32)
    assert len(calls) == 2


@pytest.fixture
def tiny_sd_meta():
    from counterfactory.models.conditioning import DamageTypeEmbedding
    from counterfactory.testing import tiny_sd_inpaint_components

    parts = tiny_sd_inpaint_components(seed=0, sample_size=32, cross_attention_dim=32)
    pipe = DefectInpaintPipeline(parts["unet"], _MetaStepDDIM.make(parts["scheduler"].config),
                                 DamageTypeEmbedding(["a", "b"], dim=32), vae=parts["vae"]).to("meta")
    calls = []

    def check(module, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        assert all(t.device.type == "meta" for t in tensors), [t.device for t in tensors]
        calls.append(1)

    handle = pipe.unet.register_forward_pre_hook(check, with_kwargs=True)
    yield pipe, calls
    handle.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_cpu_and_cuda_generators(tiny_base, tiny_adapter):
    pipe = DefectInpaintPipeline.from_pretrained(tiny_base, adapter=tiny_adapter)
    pipe.set_progress_bar_config(disable=True)
    img, mask = _inputs()
    cpu = _call(pipe, img, mask)
    cpu_half = _call(pipe, img, mask, strength=0.5)
    pipe.to("cuda")
    assert pipe.device.type == "cuda"
    gpu = _call(pipe, img, mask)
    keep = (mask == 0).expand_as(img)
    assert gpu.device.type == "cpu" and torch.equal(gpu[keep], img[keep])
    assert (gpu - cpu).abs().max() < 1e-3  # the same CPU noise; kernels differ only by rounding
    assert (_call(pipe, img, mask, strength=0.5) - cpu_half).abs().max() < 1e-3
    g = [torch.Generator("cuda").manual_seed(3), torch.Generator("cuda").manual_seed(4)]
    a = pipe(img, mask, "crack", num_inference_steps=STEPS, generator=g).images
    g = [torch.Generator("cuda").manual_seed(3), torch.Generator("cuda").manual_seed(4)]
    assert torch.equal(a, pipe(img, mask, "crack", num_inference_steps=STEPS, generator=g).images)
    pipe.to(torch.float16)
    half = _call(pipe, img, mask)
    assert torch.isfinite(half).all() and torch.equal(half[keep], img[keep])


def test_generators_that_cannot_serve_the_pipeline_are_refused(adapted):
    img, mask = _inputs()
    with pytest.raises(InputError, match="generator=.*torch.Generator"):
        adapted(img, mask, "crack", num_inference_steps=2, generator=[_gen(0), 3])
    if torch.cuda.is_available():  # a CUDA generator for a CPU pipeline
        with pytest.raises(InputError, match="generator=.*CPU generator"):
            adapted(img, mask, "crack", num_inference_steps=2, generator=torch.Generator("cuda"))


# ---------------------------------------------------------------------- callback and output
def test_callback_on_step_end_sees_and_may_replace_tensors(adapted):
    img, mask = _inputs(batch=1)
    seen = []

    def record(pipe, step, t, kw):
        assert pipe is adapted
        seen.append((step, sorted(kw), tuple(kw["latents"].shape)))
        return {}

    ref = _call(adapted, img, mask, callback_on_step_end=record,
                callback_on_step_end_tensor_inputs=["latents", "mask", "prompt_embeds"])
    assert [s[0] for s in seen] == list(range(STEPS))
    assert seen[0][1] == ["latents", "mask", "prompt_embeds"] and seen[0][2] == (1, 3, 32, 32)
    assert torch.equal(ref, _call(adapted, img, mask))  # a callback that returns nothing changes nothing
    zeroed = _call(adapted, img, mask, callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0})
    inside = (mask > 0.5).expand_as(img)
    assert torch.allclose(zeroed[inside], torch.full_like(zeroed[inside], 0.5))  # latents 0 = mid-gray


def test_output_is_a_diffusers_base_output(adapted):
    img, mask = _inputs()
    out = adapted(img, mask, ["crack", "good"], num_inference_steps=2, generator=_gen(0))
    assert isinstance(out, BaseOutput) and isinstance(out, DefectInpaintOutput)
    assert out[0] is out.images and out["bypassed"] == [False, True]
    images, bypassed, windows = adapted(img, mask, ["crack", "good"], num_inference_steps=2, generator=_gen(0),
                                        return_dict=False)
    assert torch.equal(images, out.images) and bypassed == out.bypassed and windows == out.windows


# ---------------------------------------------------------------------- packaging
def test_from_pretrained_equals_from_compact_and_save_round_trips(tiny_base, tiny_adapter, adapted, tmp_path):
    img, mask = _inputs()
    old = DefectInpaintPipeline.from_compact(tiny_base, tiny_adapter)
    old.set_progress_bar_config(disable=True)
    ref = _call(adapted, img, mask)
    assert torch.equal(_call(old, img, mask), ref)
    saved = adapted.save_pretrained(tmp_path / "pipe")
    files = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert PIPELINE_CONFIG in files and "scheduler/scheduler_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]  # safetensors only
    assert json.loads((saved / PIPELINE_CONFIG).read_text())["pipeline"] == "DefectInpaintPipeline"
    again = DefectInpaintPipeline.from_pretrained(saved)
    again.set_progress_bar_config(disable=True)
    assert again.defect_types == adapted.defect_types
    assert torch.equal(_call(again, img, mask), ref)
    adapted.save_pretrained(saved)  # a folder written by save_pretrained is replaced
    assert not list(tmp_path.glob(".pipe.*"))  # no leftover temporary folder
    bare = DefectInpaintPipeline.from_pretrained(tiny_base)
    assert bare.type_embedding is None and bare.info["base_kind"] == "compact"


def test_save_and_load_refusals(adapted, tiny_base, tmp_path):
    from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="save_directory"):
        adapted.save_pretrained(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    in_memory = DefectInpaintPipeline(adapted.unet, adapted.scheduler, adapted.type_embedding)
    with pytest.raises(InputError, match="from_pretrained"):
        in_memory.save_pretrained(tmp_path / "x")
    saved = adapted.save_pretrained(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match="not a ReferenceInpaintPipeline"):
        ReferenceInpaintPipeline.from_pretrained(saved)
    with pytest.raises(InputError, match="adapter"):
        ReferenceInpaintPipeline.from_pretrained(tiny_base)
    f64 = DefectInpaintPipeline.from_pretrained(saved, torch_dtype=torch.float64)
    assert f64.dtype == torch.float64
