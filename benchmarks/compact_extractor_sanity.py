"""Does the compact extractor see defects? 1-NN defect-type accuracy of held-out defect crops, and KID between
defect types, with the trained extractor vs the same network at random initialisation.

    python benchmarks/compact_extractor_sanity.py --data ../shared/data/magnetic_tile --split runs/mt/split.json \
        --weights runs/mt/eval_perlin/compact_extractor
"""

from __future__ import annotations

import argparse
import json

import torch

from counterfactory.data import open_dataset
from counterfactory.data.splits import load_split
from counterfactory.evaluation.distribution import kernel_distance
from counterfactory.evaluation.features import CompactExtractor, load_compact_extractor
from counterfactory.evaluation.suite import _crop_view


def crops(ds, sp, part, t, size):
    out = []
    for s in sp.samples(ds, part, t):
        out.append(_crop_view(s.load_image(), s.load_mask(), size, margin=1.0, min_size=48))
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--weights", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    ds, sp = open_dataset(a.data), load_split(a.split)
    trained = load_compact_extractor(a.weights)
    torch.manual_seed(0)
    random_init = CompactExtractor(trained.config).eval()
    types = ds.defect_types
    data = {(part, t): crops(ds, sp, part, t, trained.input_size) for part in ("train", "held_out") for t in types}
    result = {}
    for name, ext in (("trained", trained), ("random_init", random_init)):
        with torch.no_grad():
            f = {k: ext(v) for k, v in data.items()}
        tr = torch.cat([f[("train", t)] for t in types])
        tr_y = torch.cat([torch.full((f[("train", t)].shape[0],), i) for i, t in enumerate(types)])
        te = torch.cat([f[("held_out", t)] for t in types])
        te_y = torch.cat([torch.full((f[("held_out", t)].shape[0],), i) for i, t in enumerate(types)])
        pred = tr_y[torch.cdist(te, tr).argmin(1)]
        import torch.nn.functional as F

        pred_cos = tr_y[torch.cdist(F.normalize(te, dim=1), F.normalize(tr, dim=1)).argmin(1)]
        kid = {f"{a_}|{b_}": round(kernel_distance(f[("train", a_)], f[("held_out", b_)], 50, 16)[0], 4)
               for a_ in types for b_ in types}
        result[name] = {"1nn_type_accuracy": round(float((pred == te_y).float().mean()), 3),
                        "1nn_type_accuracy_cosine": round(float((pred_cos == te_y).float().mean()), 3),
                        "KID_train_vs_heldout": kid}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
