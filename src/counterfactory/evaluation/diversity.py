"""Intra-cluster diversity, the field's IC-LPIPS protocol on our own features.

The field (DFMGAN "clustered LPIPS", SeaS / AnomalyDiffusion IC-LPIPS) assigns every generated image to its
nearest real *training* defect, then averages the pairwise distance inside each cluster, then over clusters.
A generator that copies its few training shots scores ~0; one that varies them scores higher. LPIPS needs
VGG/AlexNet weights we do not have, so we use Euclidean distance between extractor features and name the
number after the extractor: ``IC_dist_compact`` (never "IC-LPIPS"; values are not comparable to it).

As with IC-LPIPS, the number also rises if the background is corrupted, so read it next to the locality
metrics. ``reference`` = the same number for held-out *real* defects clustered on the same training shots:
the diversity real data has at this sample size.
"""

from __future__ import annotations

import torch

from ..errors import input_error


def assign_clusters(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest center (Euclidean) for every feature row."""
    if centers.shape[0] == 0:
        raise input_error("training defects", 0, "at least one real training defect to cluster around")
    return torch.cdist(features.double(), centers.double()).argmin(dim=1)


def intra_cluster_distance(
    features: torch.Tensor, centers: torch.Tensor, max_per_cluster: int = 140, seed: int = 0
) -> dict:
    """Mean pairwise feature distance within clusters (clusters with ≥ 2 members), averaged over clusters.

    Clusters larger than ``max_per_cluster`` are subsampled (seeded), as SeaS caps IC-LPIPS at 140.
    Returns ``{"value", "clusters_used", "cluster_sizes"}``; ``value`` is NaN when no cluster has 2 members.
    """
    if features.shape[0] == 0:
        raise input_error("generated images", 0, "at least one image")
    labels = assign_clusters(features, centers)
    g = torch.Generator().manual_seed(seed)
    f = features.double()
    per_cluster = []
    sizes = torch.bincount(labels, minlength=centers.shape[0]).tolist()
    for c in range(centers.shape[0]):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < 2:
            continue
        if idx.numel() > max_per_cluster:
            idx = idx[torch.randperm(idx.numel(), generator=g)[:max_per_cluster]]
        d = torch.cdist(f[idx], f[idx])
        n = idx.numel()
        per_cluster.append(float(d.sum() / (n * (n - 1))))
    value = sum(per_cluster) / len(per_cluster) if per_cluster else float("nan")
    return {"value": value, "clusters_used": len(per_cluster), "cluster_sizes": sizes}
