"""Real composed-retrieval triplets from Morpho-MNIST: reference, modification text, a real target digit.

For each reference digit of a split: its attribute caption is perturbed by :class:`RulePerturber` (seeded per
reference), giving the modification text and the asked change (attribute, direction). The target is another
real digit of the same split and class whose named attribute differs the asked way by at least the edit margin
(:data:`~counterfactory.editing.captions.EDIT_MARGINS`) and which is nearest to the reference in the rest
(Euclidean distance over the other checked attributes, each divided by its standard deviation on the split).
When no digit qualifies, the reference's other attribute words are tried; a reference with none is skipped.
The 6-image ``img_set`` is the reference, the target and the 4 same-class digits nearest to the reference (all
attributes) that do *not* satisfy the modification, so the target is the one right answer in its set.
Image names are ``mm-<file index>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..editing.captions import (
    CHECKED_ATTRIBUTES,
    EDIT_MARGINS,
    WORD_ATTRIBUTE,
    AttributeCaptioner,
    RulePerturber,
    describe_change,
)
from ..errors import input_error
from .cirr import SET_SIZE, Triplet


def image_name(index: int) -> str:
    return f"mm-{int(index):05d}"


def image_index(name: str) -> int:
    if not name.startswith("mm-") or not name[3:].isdigit():
        raise input_error("image name", name, "a Morpho-MNIST name mm-<index>")
    return int(name[3:])


def build_real_triplets(indices: np.ndarray, labels: np.ndarray, measurements: dict[str, np.ndarray],
                        captioner: AttributeCaptioner | None = None, seed: int = 0,
                        margins: dict[str, float] | None = None, first_pairid: int = 0) -> list[Triplet]:
    """Triplets whose references, targets and sets all lie in ``indices`` (file indices of one split).

    ``labels`` and ``measurements`` are indexed by file index (the whole file); the same inputs and ``seed``
    always give the same triplets.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size < SET_SIZE:
        raise input_error("indices", indices.size, f"at least {SET_SIZE} images to build image sets")
    captioner = captioner or AttributeCaptioner()
    margins = {**EDIT_MARGINS, **(margins or {})}
    perturber = RulePerturber()
    attrs = list(CHECKED_ATTRIBUTES)
    for a in set(attrs) | set(captioner.attributes):
        if a not in measurements:
            raise input_error("measurements", sorted(measurements), f"a measurement of {a}")
    vals = {a: np.asarray(measurements[a], dtype=np.float64)[indices] for a in set(attrs) | set(captioner.attributes)}
    scale = {a: float(v.std()) or 1.0 for a, v in vals.items()}
    z = {a: vals[a] / scale[a] for a in vals}
    lab = np.asarray(labels)[indices]
    captions = captioner.caption_measurements({a: vals[a] for a in captioner.attributes}, lab.tolist())
    by_class = {c: np.nonzero(lab == c)[0] for c in np.unique(lab)}

    out: list[Triplet] = []
    for i in range(len(indices)):
        same = by_class[lab[i]]
        same = same[same != i]
        if same.size < SET_SIZE - 1:
            continue
        rng = np.random.default_rng([seed, int(indices[i])])
        caption = captions[i]
        # the perturber's pick first, then the caption's other attribute words in caption order
        text, _, changed = perturber.perturb(caption, rng)
        tries = [(text, changed)]
        for _, w in perturber.candidates(caption):
            if w != changed[0]:
                t2, _, ch2 = RulePerturber(attributes=(WORD_ATTRIBUTE[w][0],)).perturb(caption, rng)
                tries.append((t2, ch2))
        for text, changed in tries:
            attr, direction = describe_change(changed)
            moved = direction * (vals[attr][same] - vals[attr][i]) >= margins[attr]
            cands = same[moved]
            if cands.size == 0:
                continue
            rest = [a for a in attrs if a != attr]
            d_rest = np.sqrt(sum((z[a][cands] - z[a][i]) ** 2 for a in rest))
            target = int(cands[np.argmin(d_rest)])
            others = same[~moved]
            if others.size < SET_SIZE - 2:
                continue
            d_all = np.sqrt(sum((z[a][others] - z[a][i]) ** 2 for a in attrs))
            distract = others[np.argsort(d_all, kind="stable")[: SET_SIZE - 2]]
            members = [i, target, *distract.tolist()]
            perm = rng.permutation(SET_SIZE)
            members = [members[p] for p in perm]
            names = [image_name(indices[m]) for m in members]
            pairid = first_pairid + len(out)
            out.append(Triplet(
                pairid=pairid, reference=image_name(indices[i]), caption=text, set_id=pairid,
                members=tuple(names), reference_rank=int(np.nonzero(perm == 0)[0][0]),
                target_hard=image_name(indices[target]), target_soft={image_name(indices[target]): 1.0},
                target_rank=int(np.nonzero(perm == 1)[0][0]),
            ))
            break
    return out


def triplet_attribute(triplet: Triplet, measurements: dict[str, np.ndarray]) -> tuple[str, float]:
    """The attribute that differs most (in train-std units) between reference and target, and the difference."""
    r, t = image_index(triplet.reference), image_index(triplet.target_hard or triplet.reference)
    best = max(CHECKED_ATTRIBUTES, key=lambda a: abs(measurements[a][t] - measurements[a][r]) / (
        float(np.std(measurements[a])) or 1.0))
    return best, float(measurements[best][t] - measurements[best][r])


def split_names(indices: Sequence[int]) -> list[str]:
    return [image_name(i) for i in indices]
