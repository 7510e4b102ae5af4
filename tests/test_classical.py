"""ANTs results follow regbench's DDF convention (checked against known shifts, 2D and 3D, anisotropic)."""

import numpy as np
import pytest
import torch
from conftest import blob_image

from regbench import classical, spatial
from regbench.errors import ConfigError, ShapeMismatchError

pytestmark = pytest.mark.ants


@pytest.mark.parametrize("shape, shift, spacing", [((40, 48), (3, -2), (1.0, 1.0)),
                                                   ((32, 40, 36), (2, 0, -3), (2.0, 1.0, 1.5))])
def test_affine_recovers_a_known_shift_in_voxels(shape, shift, spacing):
    fixed = blob_image(shape)
    # moving(y) = fixed(y - s)  =>  warped(x) = moving(x + u) = fixed(x) for u = +s (in voxels)
    moving = np.roll(fixed, shift, axis=tuple(range(len(shape))))
    # Dense metric sampling: ANTs' default random 20 % sampling of MI occasionally misses a shift on images
    # this small (seen once in 8 seeds); this test is about the field convention, not MI's robustness.
    ddf, runtime = classical.register(fixed, moving, spacing, "ants_affine", {"aff_random_sampling_rate": 1.0})
    assert ddf.shape == (len(shape), *shape) and runtime > 0
    inner = tuple(slice(s // 4, -s // 4) for s in shape)
    for i, s in enumerate(shift):
        assert abs(float(ddf[i][inner].mean()) - s) < 0.15, (i, ddf[i][inner].mean())
    warped = spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()
    assert np.abs(warped - fixed)[inner].mean() < 0.2 * np.abs(moving - fixed)[inner].mean()


def test_syn_cc_improves_a_smooth_deformation():
    shape = (48, 48)
    fixed = blob_image(shape, seed=1)
    grid = spatial.identity_grid(shape)
    u = torch.stack([2.0 * torch.sin(grid[1] / 8.0), 1.5 * torch.cos(grid[0] / 9.0)])[None]
    moving = spatial.warp(torch.from_numpy(fixed)[None, None], -u)[0, 0].numpy()  # approximately inverse
    ddf, _ = classical.register(fixed, moving, (1.0, 1.0), "ants_syn", {"syn_metric": "CC", "syn_sampling": 2})
    warped = spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()
    assert np.abs(warped - fixed).mean() < 0.5 * np.abs(moving - fixed).mean()


def test_identity_and_errors():
    a = np.zeros((8, 8), np.float32)
    ddf, t = classical.register(a, a, (1, 1), "identity")
    assert not ddf.any() and t == 0.0
    with pytest.raises(ShapeMismatchError):
        classical.register(a, np.zeros((8, 9), np.float32), (1, 1), "ants_affine")
    with pytest.raises(ConfigError, match="unknown classical transform"):
        classical.register(a, a, (1, 1), "demons")
