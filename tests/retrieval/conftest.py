import numpy as np
import pytest


def bar(width: int, shear: float = 0.0, value: int = 255, height: int = 16, label: int = 1) -> np.ndarray:
    """A 28-px digit-like stroke: a bar (label 1) or a bar with a foot (label 0)."""
    img = np.zeros((28, 28), dtype=np.uint8)
    y0 = 14 - height // 2
    for y in range(y0, y0 + height):
        x0 = int(round(14 - width / 2 - shear * (y - 14)))
        img[y, max(x0, 0): x0 + width] = value
    if label == 0:
        img[y0 + height - width: y0 + height, 6:22] = value
    return img


@pytest.fixture(scope="session")
def tiny_morpho(tmp_path_factory):
    """A Morpho-MNIST-layout folder of 120 stroke images (two classes) with a csv."""
    from counterfactory.data.morphomnist import write_idx

    rng = np.random.default_rng(0)
    n = 120
    labels = rng.integers(0, 2, n).astype(np.uint8)
    imgs = np.stack([bar(int(rng.integers(2, 7)), float(rng.uniform(-0.3, 0.45)), int(rng.integers(80, 256)),
                         int(rng.integers(12, 20)), int(lab)) for lab in labels])
    root = tmp_path_factory.mktemp("morpho")
    write_idx(root / "t10k-images-idx3-ubyte.gz", imgs)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", labels)
    rows = ["index,thickness,intensity"] + [f"{i},3.0,200.0" for i in range(n)]
    (root / "t10k-morpho.csv").write_text("\n".join(rows) + "\n")
    return root
