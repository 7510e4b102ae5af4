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


# --- the fast paths must not change a single float (existing experiments reproduce bit for bit) ---


def _reference_coords(ddf):
    """The original formula: per channel ``2 p_i / (s_i - 1) - 1`` on ``p = identity + ddf``, then stack."""
    nd = ddf.shape[1]
    pos = spatial.identity_grid(ddf.shape[2:], device=ddf.device, dtype=ddf.dtype).unsqueeze(0) + ddf
    chans = [2.0 * pos[:, i] / max(ddf.shape[2 + i] - 1, 1) - 1.0 for i in range(nd)]
    return torch.stack(chans[::-1], dim=-1)


def _reference_warp(image, ddf, mode="bilinear", padding_mode="border"):
    src = image if image.is_floating_point() else image.to(ddf.dtype)
    if src.shape[0] != ddf.shape[0]:
        src = src.expand(ddf.shape[0], *src.shape[1:])
    out = torch.nn.functional.grid_sample(src, _reference_coords(ddf), mode=mode, padding_mode=padding_mode,
                                          align_corners=True)
    return out if image.is_floating_point() else out.round().to(image.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(37, 45), (64, 64), (1, 9), (13, 17, 19), (16, 20, 24)])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_warp_is_bit_identical_to_the_reference_formula(shape, dtype, padding_mode):
    """Values and both gradients (image, field) equal the per-channel formula exactly, for odd sizes too."""
    g = torch.Generator().manual_seed(len(shape) * 100 + shape[0])
    nd = len(shape)
    img = torch.rand(2, 2, *shape, generator=g, dtype=dtype, requires_grad=True)
    ddf = (3 * torch.randn(2, nd, *shape, generator=g, dtype=dtype)).requires_grad_()
    gout = torch.randn(2, 2, *shape, generator=g, dtype=dtype)
    new = spatial.warp(img, ddf, padding_mode=padding_mode)
    g_new = torch.autograd.grad(new, (img, ddf), gout)
    ref = _reference_warp(img, ddf, padding_mode=padding_mode)
    g_ref = torch.autograd.grad(ref, (img, ddf), gout)
    assert torch.equal(new, ref)
    assert all(torch.equal(a, b) for a, b in zip(g_new, g_ref))


def test_warp_labels_and_broadcast_match_the_reference():
    g = torch.Generator().manual_seed(3)
    lab = (torch.rand(1, 1, 12, 14, generator=g) * 5).long()
    ddf = 2 * torch.randn(3, 2, 12, 14, generator=g)
    assert torch.equal(spatial.warp_labels(lab, ddf), _reference_warp(lab, ddf, "nearest"))
    img = torch.rand(1, 1, 12, 14, generator=g)
    assert torch.equal(spatial.warp(img, ddf), _reference_warp(img, ddf))


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_sampling_cache_is_keyed_by_shape_device_and_dtype(device):
    """No stale grid: every shape/dtype gets its own constants, equal to a freshly built identity grid."""
    spatial.clear_sampling_cache()
    for shape in [(8, 9), (9, 8), (8, 9, 10), (10, 9, 8), (8, 9)]:
        for dtype in (torch.float32, torch.float64, torch.float32):
            base, half = spatial._sampling_base(shape, torch.device(device), dtype)
            assert base.shape == (1, *shape, len(shape)) and base.dtype == dtype
            assert base.device.type == device and half.device.type == device
            ident = spatial.identity_grid(shape, device=device, dtype=dtype)
            assert torch.equal(base[0].movedim(-1, 0), ident.flip(0))
            assert half.tolist() == [max(s - 1, 1) / 2.0 for s in shape[::-1]]
            assert not base.requires_grad and not half.requires_grad
    # a warp at each shape after the others still equals the reference (nothing cached is reused wrongly)
    for shape in [(8, 9), (9, 8)]:
        img = torch.rand(1, 1, *shape, device=device)
        ddf = torch.randn(1, 2, *shape, device=device)
        assert torch.equal(spatial.warp(img, ddf), _reference_warp(img, ddf))


def test_sampling_cache_is_bounded_and_survives_inference_mode():
    spatial.clear_sampling_cache()
    for n in range(spatial.SAMPLING_CACHE_SIZE + 5):
        spatial._sampling_base((4, 5 + n), torch.device("cpu"), torch.float32)
    assert len(spatial._SAMPLING_CACHE) == spatial.SAMPLING_CACHE_SIZE
    spatial.clear_sampling_cache()
    img, ddf = torch.rand(1, 1, 6, 7), torch.randn(1, 2, 6, 7)
    with torch.inference_mode():  # grids created here must still work with autograd afterwards
        spatial.warp(img, ddf)
    ddf.requires_grad_()
    spatial.warp(img, ddf).sum().backward()
    assert ddf.grad is not None and torch.isfinite(ddf.grad).all()


def test_cached_grid_is_not_modified_by_warping():
    spatial.clear_sampling_cache()
    base, _ = spatial._sampling_base((6, 7), torch.device("cpu"), torch.float32)
    before = base.clone()
    ddf = torch.randn(1, 2, 6, 7, requires_grad=True)
    spatial.warp(torch.rand(1, 1, 6, 7), ddf).sum().backward()
    spatial.integrate_velocity(ddf.detach(), 3)
    assert torch.equal(base, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (4, 1, 64, 64), (1, 1, 256, 256), (2, 3, 13, 17),
                                   (1, 1, 32, 32, 32), (1, 1, 13, 17, 19), (2, 1, 16, 20, 24)])
@pytest.mark.parametrize("window", [9, 5, 1])
def test_box_sum_gradient_is_bit_identical_to_convolution_backward(shape, dtype, window, monkeypatch):
    """LocalNCC's box sums take their gradient from shifted additions (regbench.losses._BoxSumFunction); it
    must equal the convolutions' autograd gradient exactly (both CPU backends: slow path and oneDNN)."""
    from regbench import losses

    monkeypatch.setattr(losses, "_ADJOINT_MIN_NUMEL", 0)  # every size through the shifted additions
    g = torch.Generator().manual_seed(sum(shape) + window)
    x = (torch.rand(*shape, generator=g, dtype=dtype) * torch.randn(*shape, generator=g, dtype=dtype))
    x.requires_grad_()
    gout = torch.randn(*shape, generator=g, dtype=dtype)
    ref = losses._separable_conv(x, torch.ones(window, dtype=dtype))
    (g_ref,) = torch.autograd.grad(ref, x, gout)
    new = losses._box_sum(x, window)
    (g_new,) = torch.autograd.grad(new, x, gout)
    assert new.grad_fn is not None and "BoxSum" in type(new.grad_fn).__name__
    assert torch.equal(new, ref) and torch.equal(g_new, g_ref)


def test_box_sum_uses_shifted_additions_only_where_they_pay_and_restores_threads():
    from regbench import losses

    small = torch.rand(1, 1, 64, 64, requires_grad=True)
    big = torch.rand(1, 1, 256, 256, requires_grad=True)
    assert "BoxSum" not in type(losses._box_sum(small, 9).grad_fn).__name__
    threads = torch.get_num_threads()
    losses._box_sum(big, 9).sum().backward()  # the backward runs on one thread, then restores the count
    assert torch.get_num_threads() == threads and big.grad is not None
    with torch.no_grad():
        assert losses._box_sum(big, 9).grad_fn is None


def test_box_sum_function_supports_double_backward(monkeypatch):
    from regbench import losses

    monkeypatch.setattr(losses, "_ADJOINT_MIN_NUMEL", 0)
    x = torch.rand(1, 1, 9, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: losses._box_sum(t, 5), (x,))
    assert torch.autograd.gradgradcheck(lambda t: losses._box_sum(t, 5), (x,))


def test_resize_field_factors_are_cached_per_size_device_and_dtype():
    spatial.clear_sampling_cache()
    ddf = torch.randn(1, 2, 8, 6, dtype=torch.float64)
    a = spatial.resize_field(ddf, (16, 12))
    b = spatial.resize_field(ddf.float(), (4, 3))
    assert a.dtype == torch.float64 and b.dtype == torch.float32
    ref = torch.nn.functional.interpolate(ddf, size=(16, 12), mode="bilinear", align_corners=False)
    assert torch.equal(a, ref * torch.tensor([2.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1))
    assert torch.equal(spatial.resize_field(ddf, (16, 12)), a)  # from the cache, same values
    assert len(spatial._SCALE_CACHE) == 2


# --- opt-in fast path (off by default; numerically close to, not equal to, the default path) ---


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxelmorph_channels_last_option_matches_the_default_closely(ndim):
    from regbench.models.voxelmorph import VoxelMorph

    shape = (32, 48) if ndim == 2 else (16, 32, 16)
    torch.manual_seed(0)
    ref = VoxelMorph(ndim, "vm2")
    torch.manual_seed(0)
    fast = VoxelMorph(ndim, "vm2", channels_last=True)
    for p in ref.flow.parameters():  # a non-trivial head, so the field is not ~0
        torch.nn.init.normal_(p, std=0.1)
    fast.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    m, f = torch.rand(2, 1, *shape, generator=g), torch.rand(2, 1, *shape, generator=g)
    a, b = ref(m, f), fast(m, f)
    assert b["ddf"].is_contiguous() and b["ddf"].shape == a["ddf"].shape
    assert torch.allclose(a["ddf"], b["ddf"], rtol=1e-4, atol=1e-5)
    assert torch.allclose(a["warped"], b["warped"], rtol=1e-4, atol=1e-5)
    assert fast.flow.weight.is_contiguous(memory_format={2: torch.channels_last,
                                                         3: torch.channels_last_3d}[ndim])
    assert set(fast.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 16), (16, 16)])
def test_voxelmorph_inference_path_equals_the_autograd_path(shape):
    """Without autograd the U-Net writes upsampled features straight into the skip concatenation; the
    outputs must equal those of the autograd path exactly."""
    from regbench.models.voxelmorph import VoxelMorph

    torch.manual_seed(0)
    model = VoxelMorph(len(shape), "vm2")
    torch.nn.init.normal_(model.flow.weight, std=0.05)
    g = torch.Generator().manual_seed(4)
    m, f = torch.rand(2, 1, *shape, generator=g), torch.rand(2, 1, *shape, generator=g)
    with_grad = model(m, f)
    with torch.no_grad():
        without = model(m, f)
    assert with_grad["ddf"].requires_grad and not without["ddf"].requires_grad
    assert torch.equal(with_grad["ddf"], without["ddf"]) and torch.equal(with_grad["warped"], without["warped"])
