"""A built wheel, installed in a fresh virtual environment, carries the shipped base and generates outside the
source tree."""

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import torch, counterfactory
    from pathlib import Path
    from counterfactory.models.compact import DEFAULT_WEIGHTS_DIR
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
    here = Path(counterfactory.__file__).resolve()
    assert "site-packages" in str(here), here
    assert (DEFAULT_WEIGHTS_DIR / "compact_inpaint.safetensors").is_file(), DEFAULT_WEIGHTS_DIR
    from counterfactory.models.text2image import DEFAULT_TEXT2IMAGE_DIR
    from counterfactory.pipelines.triplets import DEFAULT_CLASSIFIER, DEFAULT_ENCODER
    for d in (DEFAULT_TEXT2IMAGE_DIR, DEFAULT_CLASSIFIER, DEFAULT_ENCODER):  # the other shipped models
        assert d.is_dir() and str(d).startswith(str(DEFAULT_WEIGHTS_DIR)), d
    pipe = DefectInpaintPipeline.from_compact()
    pipe.set_progress_bar_config(disable=True)
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64); mask[..., 20:40, 20:40] = 1
    out = pipe(img, mask, None, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out[..., :20, :], img[..., :20, :])
    assert not torch.equal(out, img)
    print("OK", here.parent)
""")


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_finds_the_shipped_base_and_generates(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("counterfactory-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the fresh venv gets the test environment's dependencies (torch, diffusers, ...) as a plain path entry: .pth
    # files there are not processed, so this checkout's editable install stays invisible
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", SCRIPT], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout and str(site) in proc.stdout


def test_weights_location_can_be_set_by_environment(tmp_path):
    code = "from counterfactory.models.compact import DEFAULT_WEIGHTS_DIR; print(DEFAULT_WEIGHTS_DIR)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "COUNTERFACTORY_WEIGHTS": str(tmp_path)})
    assert proc.stdout.strip() == str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert (Path(proc.stdout.strip()) / "compact_inpaint.safetensors").is_file()
