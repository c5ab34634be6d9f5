"""Repeat the whole Seg-CFT training (predictors → VAE → CFT) twice per round in one process and count rounds
whose final weights differ. Guards the fix described in docs/cft.md ("Resume is bit-identical").

    .venv/bin/python benchmarks/cft_determinism.py --rounds 200
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from causal.helpers import tiny_config, tiny_digits  # noqa: E402

from counterfactory.causal.training import train_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    junk, differ = [], 0
    for _ in range(args.rounds):
        junk.append(torch.empty(random.randint(1, 5000)))  # moves later allocations to other addresses
        with tempfile.TemporaryDirectory() as tmp:
            d, data, cfg = Path(tmp), tiny_digits(16), tiny_config()
            for name in ("a", "b"):
                train_all(d / name, data, "seg", 0, cfg, progress=False)
            a, b = (load_file(str(d / n / "seg" / "seed0" / "model.safetensors")) for n in "ab")
            differ += any(not torch.equal(a[k], b[k]) for k in a)
    print(f"rounds={args.rounds} differing={differ}")


if __name__ == "__main__":
    main()
