"""The spatial convention: pull-back warping, composition, integration, resizing, Jacobian."""

import numpy as np
import pytest
import torch

from regbench import spatial


def smooth_image(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *shape), generator=g)
    k = 5
    for ax in range(2, 2 + len(shape)):  # separable box blur -> smooth, non-periodic content
        x = x.unfold(ax, 1, 1).squeeze(-1)
        pad = [0, 0] * len(shape)
        pad[2 * (len(shape) - 1 - (ax - 2))] = k // 2
        pad[2 * (len(shape) - 1 - (ax - 2)) + 1] = k // 2
        x = torch.nn.functional.pad(x, pad, mode="replicate")
        x = x.unfold(ax, k, 1).mean(-1)
    return x


@pytest.mark.parametrize("shape", [(20, 24), (12, 14, 16)])
def test_zero_field_is_identity(shape):
    img = smooth_image(shape)
    ddf = torch.zeros((1, len(shape), *shape))
    assert torch.allclose(spatial.warp(img, ddf), img, atol=1e-6)


@pytest.mark.parametrize("shape", [(20, 24), (12, 14, 16)])
def test_integer_shift_pulls_back(shape):
    """warped(x) = moving(x + u): a constant u = +2 along axis 0 reads the moving image 2 voxels further."""
    img = smooth_image(shape)
    ddf = torch.zeros((1, len(shape), *shape))
    ddf[:, 0] = 2.0
    out = spatial.warp(img, ddf)
    assert torch.allclose(out[:, :, :-2], img[:, :, 2:], atol=1e-5)
    # the other axes are untouched, and axis 1 shifts the other axis
    ddf = torch.zeros((1, len(shape), *shape))
    ddf[:, 1] = -3.0
    out = spatial.warp(img, ddf)
    assert torch.allclose(out[:, :, :, 3:], img[:, :, :, :-3], atol=1e-5)


def test_labels_keep_their_values():
    lab = torch.zeros((1, 1, 16, 16), dtype=torch.int64)
    lab[..., 4:10, 5:12] = 7
    ddf = torch.full((1, 2, 16, 16), 0.4)
    out = spatial.warp_labels(lab, ddf)
    assert out.dtype == lab.dtype and set(out.unique().tolist()) <= {0, 7}


def smooth_field(shape, amplitude, phase=0.0):
    """A low-frequency sinusoidal field (ndim, *shape): smooth, so interpolation error is small."""
    grid = spatial.identity_grid(shape)
    nd = len(shape)
    comps = []
    for i in range(nd):
        j = (i + 1) % nd
        comps.append(amplitude * torch.sin(2 * np.pi * grid[j] / shape[j] + phase + i))
    return torch.stack(comps)[None]


def test_composition_matches_sequential_warps():
    shape = (32, 36)
    g = spatial.identity_grid(shape)
    img = (torch.sin(g[0] / 4.0) * torch.cos(g[1] / 5.0))[None, None]
    u = smooth_field(shape, 2.0)
    v = smooth_field(shape, 1.5, phase=1.0)
    seq = spatial.warp(spatial.warp(img, u), v)
    once = spatial.warp(img, spatial.compose(u, v))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert (seq[inner] - once[inner]).abs().max() < 0.03
    # and the order matters: the other composition is measurably different
    other = spatial.warp(img, spatial.compose(v, u))
    assert (seq[inner] - other[inner]).abs().mean() > 5 * (seq[inner] - once[inner]).abs().mean()


def test_scaling_and_squaring_inverse():
    """exp(v) composed with exp(-v) is (close to) the identity for a smooth velocity."""
    shape = (16, 18, 20)
    v = smooth_field(shape, 1.5)
    phi, phi_inv = spatial.integrate_velocity(v, 7), spatial.integrate_velocity(-v, 7)
    residual = spatial.compose(phi, phi_inv)[..., 3:-3, 3:-3, 3:-3]
    assert residual.abs().max() < 0.05 * phi.abs().max()
    assert spatial.compose(phi, torch.zeros_like(phi)).sub(phi).abs().max() < 1e-5
    assert phi.abs().max() > 0.2
    # a constant velocity integrates to itself (translations commute)
    c = torch.zeros((1, 3, *shape))
    c[:, 2] = 1.5
    assert torch.allclose(spatial.integrate_velocity(c, 5), c, atol=1e-5)


def test_jacobian_of_affine_fields():
    shape = (10, 12, 14)
    a = torch.tensor([[[1.1, 0.0, 0.0, 0.0], [0.0, 0.9, 0.0, 1.0], [0.0, 0.0, 1.2, 0.0]]])
    ddf = spatial.affine_to_ddf(a, shape)
    det = spatial.jacobian_determinant(ddf)
    assert det.shape == (1, *shape)
    assert torch.allclose(det, torch.full_like(det, 1.1 * 0.9 * 1.2), atol=1e-5)
    flip = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert (spatial.jacobian_determinant(spatial.affine_to_ddf(flip, (8, 9))) < 0).all()


def test_resize_field_scales_displacements():
    ddf = torch.zeros((1, 2, 16, 8))
    ddf[:, 0] = 1.0  # one voxel along axis 0 on the 16 grid
    ddf[:, 1] = -2.0
    big = spatial.resize_field(ddf, (64, 16))
    assert big.shape == (1, 2, 64, 16)
    assert torch.allclose(big[:, 0], torch.full_like(big[:, 0], 4.0))
    assert torch.allclose(big[:, 1], torch.full_like(big[:, 1], -4.0))


def test_bad_field_shape_raises():
    with pytest.raises(ValueError, match="DDF must have shape"):
        spatial.warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="grid"):
        spatial.warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))


def test_ddf_to_mm():
    ddf = np.ones((3, 2, 2, 2))
    mm = spatial.ddf_to_mm(ddf, (2.0, 1.0, 0.5))
    assert mm[0].max() == 2.0 and mm[2].max() == 0.5
