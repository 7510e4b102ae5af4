"""Shared fixtures: a tiny prepared 2D dataset written in the regbench layout."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.io import save_image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def blob_image(shape, seed=0):
    """A smooth random image in [0, 1] that fades to zero at the borders, so shifts do not wrap content in."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.random(shape), 2.5)
    a = (a - a.min()) / (a.max() - a.min())
    taper = np.ones(shape)
    for ax, s in enumerate(shape):
        w = np.minimum(np.arange(s), np.arange(s)[::-1]).astype(float)
        taper = taper * np.clip(w / 6.0, 0, 1).reshape([-1 if i == ax else 1 for i in range(len(shape))])
    return (a * taper).astype(np.float32)


def _blob(shape, centre, radius):
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    d = np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(len(shape))))
    return d


def make_tiny_prepared(root: Path) -> Path:
    """Six 32x32 cases: a bright disc (label 1) inside a grey ring (label 2), shifted per case.

    Train cases 0-3, test cases 4-5; all ordered pairs within each split; fold 0.
    """
    rows = []
    rng = np.random.default_rng(0)
    for i in range(6):
        c = (16 + rng.integers(-3, 4), 16 + rng.integers(-3, 4))
        d = _blob((32, 32), c, 0)
        seg = np.where(d < 5, 1, np.where(d < 9, 2, 0)).astype(np.int16)
        img = np.select([seg == 1, seg == 2], [1.0, 0.5], 0.0).astype(np.float32)
        img = img + 0.02 * rng.normal(size=img.shape).astype(np.float32)
        save_image(root / f"c{i}_img.nii.gz", img, np.eye(4))
        save_image(root / f"c{i}_seg.nii.gz", seg, np.eye(4))
        rows.append({"case": f"c{i}", "split": "train" if i < 4 else "test",
                     "img": f"c{i}_img.nii.gz", "seg": f"c{i}_seg.nii.gz"})
    cases = pd.DataFrame(rows)
    cases.to_csv(root / "cases.tsv", sep="\t", index=False)
    pairs = []
    for split in ("train", "test"):
        ids = cases[cases.split == split].case.tolist()
        for f in ids:
            for m in ids:
                if f != m:
                    pairs.append({"pair_id": f"{f}__{m}", "fold": 0, "split": split, "fixed": f, "moving": m})
    pd.DataFrame(pairs).to_csv(root / "pairs.tsv", sep="\t", index=False)
    return root


@pytest.fixture
def tiny_prepared(tmp_path) -> Path:
    """The tiny prepared dataset of :func:`make_tiny_prepared` in ``tmp_path/prep``."""
    return make_tiny_prepared(tmp_path / "prep")
