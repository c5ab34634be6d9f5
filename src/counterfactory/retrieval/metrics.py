"""Recall@K and Recall_subset@K with the CIRR protocol.

The gallery is every image of the split; each query's own reference image is removed from its ranking.
Recall@K: the target is among the K most similar gallery images. Recall_subset@K: the same, ranking only the
query's ``img_set`` members without the reference (5 candidates, so chance Rs@1 = 20 %).
Hand-written because torchmetrics' retrieval metrics have no per-query exclusion or per-query candidate subsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import input_error

RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)


def _index(names: Sequence[str]) -> dict[str, int]:
    idx = {n: i for i, n in enumerate(names)}
    if len(idx) != len(names):
        raise input_error("gallery_names", f"{len(names) - len(idx)} duplicates", "unique image names")
    return idx


def _lookup(idx: dict[str, int], names: Sequence[str], argument: str) -> torch.Tensor:
    try:
        return torch.tensor([idx[n] for n in names], dtype=torch.long)
    except KeyError as exc:
        raise input_error(argument, exc.args[0], "names that are in the gallery") from None


def target_ranks(query: torch.Tensor, gallery: torch.Tensor, gallery_names: Sequence[str],
                 references: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    """0-based rank of each target among the gallery (reference removed); ties count against the target."""
    if gallery.ndim != 2 or len(gallery) == 0:
        raise input_error("gallery", tuple(gallery.shape), "a non-empty (G,D) feature matrix")
    if query.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise input_error("query", tuple(query.shape), f"(Q,{gallery.shape[1]}) features")
    if not (len(query) == len(references) == len(targets)):
        raise input_error("references", f"{len(references)} references, {len(targets)} targets",
                          f"one reference and one target per query ({len(query)})")
    if len(gallery_names) != len(gallery):
        raise input_error("gallery_names", f"{len(gallery_names)} names", f"one name per gallery row ({len(gallery)})")
    idx = _index(gallery_names)
    ref, tgt = _lookup(idx, references, "references"), _lookup(idx, targets, "targets")
    sims = query.float() @ gallery.float().T
    rows = torch.arange(len(query))
    sims[rows, ref] = float("-inf")
    t = sims[rows, tgt].unsqueeze(1)
    return (sims >= t).sum(1) - 1


def subset_ranks(query: torch.Tensor, gallery: torch.Tensor, gallery_names: Sequence[str],
                 references: Sequence[str], targets: Sequence[str], members: Sequence[Sequence[str]]) -> torch.Tensor:
    """0-based rank of each target among its ``img_set`` members without the reference."""
    if len(members) != len(query):
        raise input_error("members", f"{len(members)} sets", f"one img_set per query ({len(query)})")
    idx = _index(gallery_names)
    sims = query.float() @ gallery.float().T
    out = []
    for i, (ref, tgt, mem) in enumerate(zip(references, targets, members)):
        cand = [m for m in dict.fromkeys(mem) if m != ref]
        if tgt not in cand:
            raise input_error("members", list(mem), f"an img_set holding the target {tgt}")
        ci = _lookup(idx, cand, "members")
        s = sims[i, ci]
        t = sims[i, idx[tgt]]
        out.append(int((s >= t).sum()) - 1)
    return torch.tensor(out, dtype=torch.long)


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Percent of queries whose target rank is below K, for each K."""
    if len(ranks) == 0:
        raise input_error("queries", 0, "at least one query")
    return {k: 100.0 * float((ranks < k).float().mean()) for k in ks}


def cirr_recalls(query: torch.Tensor, gallery: torch.Tensor, gallery_names: Sequence[str],
                 references: Sequence[str], targets: Sequence[str], members: Sequence[Sequence[str]] | None = None,
                 ks: Sequence[int] = RECALL_KS, subset_ks: Sequence[int] = SUBSET_KS) -> dict[str, float]:
    """``{"R@1": .., "R@5": .., ..., "Rs@1": .., "Rs@2": .., "Rs@3": .., "avg": (R@5 + Rs@1)/2}`` in percent.

    ``query``/``gallery``: L2-normalised features (Q,D), (G,D). Subset recalls need ``members``.
    """
    out = {f"R@{k}": v for k, v in recall_at_k(target_ranks(query, gallery, gallery_names, references, targets), ks).items()}
    if members is not None:
        sr = subset_ranks(query, gallery, gallery_names, references, targets, members)
        out.update({f"Rs@{k}": v for k, v in recall_at_k(sr, subset_ks).items()})
        if "R@5" in out and "Rs@1" in out:
            out["avg"] = (out["R@5"] + out["Rs@1"]) / 2
    return out
