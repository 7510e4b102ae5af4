"""Tests of regbench.metrics against values derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regbench import metrics as M


def ball(shape, radius_mm, spacing):
    """Mask of voxels whose centre lies within ``radius_mm`` (physical units) of the grid centre."""
    g = np.indices(shape).astype(float)
    c = [(s - 1) / 2 for s in shape]
    d = np.sqrt(sum(((g[i] - c[i]) * spacing[i]) ** 2 for i in range(len(shape))))
    return d <= radius_mm


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ------------------------------------------------------------------------------------------------ Dice
def test_dice_identical_disjoint_and_known_overlap():
    a = box((20, 20), (0, 0), (10, 10))
    b = box((20, 20), (5, 0), (15, 10))  # overlap 5x10 = 50, |A| = |B| = 100
    assert M.dice(a, a) == 1.0
    assert M.dice(a, b) == pytest.approx(0.5, abs=1e-12)
    c = box((20, 20), (12, 12), (20, 20))
    assert M.dice(a, c) == 0.0
    # unequal sizes: |A|=100, |D|=40 (4x10 inside A) -> 2*40/140
    d = box((20, 20), (0, 0), (4, 10))
    assert M.dice(a, d) == pytest.approx(80 / 140, abs=1e-12)


def test_dice_empty_masks():
    e = np.zeros((8, 8), bool)
    a = box((8, 8), (1, 1), (3, 3))
    assert math.isnan(M.dice(e, e))
    assert M.dice(a, e) == 0.0


def test_dice_per_label():
    f = np.zeros((10, 10), int)
    w = np.zeros((10, 10), int)
    f[:5, :] = 1
    w[:5, :] = 1
    f[5:, :5] = 2
    w[5:, :] = 2  # label 2: |F| = 25, |W| = 50, overlap 25 -> 50/75
    out = M.dice_per_label(f, w, [1, 2, 3])
    assert set(out) == {1, 2, 3}
    assert out[1] == 1.0
    assert out[2] == pytest.approx(2 / 3, abs=1e-12)
    assert math.isnan(out[3])  # absent from both


# ----------------------------------------------------------------------------------- surface distances
def test_identical_masks_zero_distance():
    a = ball((24, 24, 24), 7, (1, 1, 1))
    assert M.hd(a, a) == 0.0
    assert M.hd95(a, a) == 0.0
    assert M.assd(a, a) == 0.0


def test_surface_is_face_connected_shell():
    # 3x3 block: with the face-connected structuring element only the centre is interior.
    a = box((7, 7), (2, 2), (5, 5))
    d_ab, d_ba = M.surface_distances(a, a)
    assert d_ab.size == 8 and d_ba.size == 8
    # plus shape: its centre has all 4 face neighbours inside (interior for the default cross element)
    # but diagonal neighbours outside (surface with full 8-connectivity)
    plus = np.zeros((7, 7), bool)
    plus[3, 2:5] = plus[2:5, 3] = True
    assert M.surface_distances(plus, plus)[0].size == 4
    assert M.surface_distances(plus, plus, connectivity=2)[0].size == 5
    blob = box((9, 9), (2, 2), (7, 7))  # 5x5: face-connected shell 16, interior 3x3 in both conventions
    assert M.surface_distances(blob, blob, connectivity=1)[0].size == 16
    assert M.surface_distances(blob, blob, connectivity=2)[0].size == 16


def test_bar_vs_point_exact_definitions():
    # A: 1x20 bar (every pixel is surface), B: its first pixel. d_ab = 0..19, d_ba = [0].
    a = box((11, 24), (5, 2), (6, 22))
    b = box((11, 24), (5, 2), (6, 3))
    d_ab, d_ba = M.surface_distances(a, b)
    np.testing.assert_allclose(np.sort(d_ab), np.arange(20.0))
    np.testing.assert_allclose(d_ba, [0.0])
    assert M.hd(a, b) == pytest.approx(19.0)
    # directed 95th percentiles, linear interpolation: 0.95 * 19 = 18.05 (pooled, medpy-style: 18.0)
    assert M.hd95(a, b) == pytest.approx(18.05)
    # pooled mean over 21 surface points (medpy's mean of directed means would be 4.75)
    assert M.assd(a, b) == pytest.approx(190 / 21)
    # spacing scales the distances along axis 1 only
    sp = (1.0, 0.5)
    assert M.hd(a, b, sp) == pytest.approx(9.5)
    assert M.hd95(a, b, sp) == pytest.approx(9.025)
    assert M.assd(a, b, sp) == pytest.approx(95 / 21)
    # symmetric
    assert M.hd95(b, a) == pytest.approx(18.05)


def test_block_vs_centre_point():
    # 3x3 block (8 surface px) vs its centre pixel: d_ab = 4x1 + 4xsqrt2, d_ba = [1].
    a = box((7, 7), (2, 2), (5, 5))
    b = box((7, 7), (3, 3), (4, 4))
    r2 = math.sqrt(2)
    assert M.hd(a, b) == pytest.approx(r2)
    assert M.hd95(a, b) == pytest.approx(r2)
    assert M.assd(a, b) == pytest.approx((4 + 4 * r2 + 1) / 9)


@pytest.mark.parametrize(
    "shape,spacing,r1,r2",
    [
        ((40, 40, 40), (1.0, 1.0, 1.0), 10.0, 13.0),
        ((26, 34, 34), (2.0, 1.5, 1.5), 12.0, 18.0),  # ignoring spacing would give ~6/1.5 = 4
        ((64, 64), (1.0, 1.0), 10.0, 13.0),
        ((30, 70), (3.0, 1.0), 12.0, 21.0),
    ],
)
def test_concentric_spheres(shape, spacing, r1, r2):
    a, b = ball(shape, r1, spacing), ball(shape, r2, spacing)
    expected = r2 - r1
    # surface voxel centres lie within one voxel of the true surface: tolerance = voxel diagonal
    tol = math.sqrt(sum(s * s for s in spacing))
    h, h95, asd = M.hd(a, b, spacing), M.hd95(a, b, spacing), M.assd(a, b, spacing)
    assert abs(h - expected) <= tol
    assert abs(h95 - expected) <= tol
    assert abs(asd - expected) <= tol
    assert asd <= h95 <= h
    assert M.hd(a, b, spacing) == M.hd(b, a, spacing)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_offset_cubes_exact(axis, k):
    spacing = (2.0, 1.0, 0.5)
    shape = (30, 30, 30)
    lo, hi = [8, 8, 8], [18, 18, 18]
    a = box(shape, lo, hi)
    lo2, hi2 = list(lo), list(hi)
    lo2[axis] += k
    hi2[axis] += k
    b = box(shape, lo2, hi2)
    assert M.hd(a, b, spacing) == pytest.approx(k * spacing[axis])
    assert M.hd(a, b) == pytest.approx(k)  # no spacing: voxels
    assert M.hd95(a, b, spacing) <= k * spacing[axis] + 1e-12
    assert M.dice(a, b) == pytest.approx((10 - k) / 10)


def test_offset_squares_2d_exact():
    a = box((20, 20), (5, 5), (12, 12))
    b = box((20, 20), (5, 7), (12, 14))  # shift 2 px along axis 1
    assert M.hd(a, b, (3.0, 0.7)) == pytest.approx(1.4)
    assert M.hd(a, b) == pytest.approx(2.0)


def test_disjoint_masks():
    a = box((10, 20), (2, 2), (5, 5))
    b = box((10, 20), (2, 12), (5, 15))  # columns 2..4 vs 12..14, same rows
    assert M.dice(a, b) == 0.0
    # directed max: from a's column 2 to b's column 12 = 10 px (same row available)
    assert M.hd(a, b) == pytest.approx(10.0)


def test_surface_distances_empty_masks():
    e = np.zeros((10, 10, 10), bool)
    a = box((10, 10, 10), (2, 2, 2), (5, 5, 5))
    for x, y in [(e, e), (a, e), (e, a)]:
        d_ab, d_ba = M.surface_distances(x, y)
        assert d_ab.size == 0 and d_ba.size == 0
        assert math.isnan(M.hd(x, y))
        assert math.isnan(M.hd95(x, y))
        assert math.isnan(M.assd(x, y))


def test_surface_input_validation():
    with pytest.raises(ValueError):
        M.hd(np.ones((4, 4), bool), np.ones((4, 5), bool))
    with pytest.raises(ValueError):
        M.hd(np.ones((4, 4), bool), np.ones((4, 4), bool), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        M.hd(np.ones((4, 4), bool), np.ones((4, 4), bool), spacing=(1.0, 0.0))


def test_torch_inputs_accepted():
    a = torch.zeros(10, 10, dtype=torch.bool)
    a[2:5, 2:5] = True
    b = torch.roll(a, 1, 0)
    assert M.hd(a, b) == pytest.approx(1.0)
    assert M.dice(a, b) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------ Jacobian
@pytest.mark.parametrize("shape", [(12, 14), (8, 9, 10)])
def test_jacobian_zero_field(shape):
    u = np.zeros((len(shape), *shape))
    js = M.jacobian_stats(u)
    assert js["folding_count"] == 0.0
    assert js["folding_pct"] == 0.0
    assert js["sdlogj"] == pytest.approx(0.0, abs=1e-12)
    assert js["det_min"] == pytest.approx(1.0) and js["det_max"] == pytest.approx(1.0)
    assert js["n_voxels"] == float(np.prod(shape))


@pytest.mark.parametrize("shape", [(12, 14), (8, 9, 10)])
def test_jacobian_uniform_scaling(shape):
    nd = len(shape)
    u = 0.1 * np.indices(shape).astype(float)  # u = 0.1 x -> J = 1.1 I, linear so FD is exact
    js = M.jacobian_stats(u)
    assert js["det_min"] == pytest.approx(1.1**nd, rel=1e-9)
    assert js["det_max"] == pytest.approx(1.1**nd, rel=1e-9)
    assert js["folding_count"] == 0.0
    assert js["sdlogj"] == pytest.approx(0.0, abs=1e-9)


def test_jacobian_folding_counted_exactly():
    # u_0(x) = -2 x_0 for x_0 <= 10, constant -20 beyond. Central differences of u_0 along axis 0:
    # rows 0..9 -> -2 (det -1); row 10 -> (u(11) - u(9)) / 2 = -1 (det 0, counts as folded); rows >= 11 -> 0.
    shape = (20, 6, 7)
    x0 = np.indices(shape)[0].astype(float)
    u = np.zeros((3, *shape))
    u[0] = np.where(x0 <= 10, -2 * x0, -20.0)
    js = M.jacobian_stats(u)
    n = 20 * 6 * 7
    assert js["folding_count"] == 11 * 6 * 7
    assert js["folding_pct"] == pytest.approx(100 * 11 / 20)
    assert js["sdlogj"] == pytest.approx(0.0, abs=1e-12)  # remaining voxels have det 1
    assert js["n_voxels"] == n
    # restricted to a mask: the 9 rows x0 in [11, 19] -> no folding; rows 0..3 -> all folded
    mask = x0 >= 11
    assert M.jacobian_stats(u, mask=mask)["folding_count"] == 0.0
    m2 = x0 < 4
    js2 = M.jacobian_stats(u, mask=m2)
    assert js2["folding_pct"] == 100.0
    assert math.isnan(js2["sdlogj"])  # no voxel with det > 0


def test_jacobian_sdlogj_known_value():
    # u_0 = a x_0^2 / 2 -> d u_0 / d x_0 = a x_0, exact for central differences away from the borders.
    a = 0.05
    shape = (16, 5, 5)
    x0 = np.indices(shape)[0].astype(float)
    u = np.zeros((3, *shape))
    u[0] = a * x0**2 / 2
    mask = (x0 >= 1) & (x0 <= 14)
    expected = np.log(1 + a * np.arange(1, 15)).std()
    assert M.jacobian_stats(u, mask=mask)["sdlogj"] == pytest.approx(expected, rel=1e-9)
    # batch axis of 1 and torch input accepted
    assert M.jacobian_stats(torch.from_numpy(u)[None], mask=mask)["sdlogj"] == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------- TRE
def test_tre_dense():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 6, 7, 8))
    assert M.tre(t, t, (2, 2, 2)) == (0.0, 0.0)
    p = t.copy()
    p[0] += 1.0
    mean, std = M.tre(p, t, (2.0, 2.0, 2.0))
    assert mean == pytest.approx(2.0) and std == pytest.approx(0.0, abs=1e-12)
    p = t.copy()
    p[0] += 1.0
    p[1] += 1.0
    assert M.tre(p, t, (2.0, 1.0, 1.0))[0] == pytest.approx(math.sqrt(5))
    # mask: error 3 voxels on half the grid, 0 elsewhere
    p = t.copy()
    p[2, :3] += 3.0
    mask = np.zeros((6, 7, 8), bool)
    mask[:3] = True
    assert M.tre(p, t, 1.0, mask=mask) == pytest.approx((3.0, 0.0))
    mean, std = M.tre(p, t, 1.0)
    assert mean == pytest.approx(1.5) and std == pytest.approx(1.5)
    assert all(math.isnan(v) for v in M.tre(p, t, 1.0, mask=np.zeros((6, 7, 8), bool)))


def test_landmark_tre_translation():
    shape = (20, 22, 24)
    t = np.array([3.0, -2.0, 1.5])
    u = np.broadcast_to(t.reshape(3, 1, 1, 1), (3, *shape)).copy()
    rng = np.random.default_rng(1)
    fp = rng.uniform(2, 17, size=(10, 3))
    np.testing.assert_allclose(M.landmark_tre(u, fp, fp + t, (2.0, 1.0, 1.0)), 0.0, atol=1e-12)
    err = M.landmark_tre(u, fp, fp + t + np.array([1.0, 0.0, 0.0]), (2.0, 1.0, 1.0))
    np.testing.assert_allclose(err, 2.0)
    # zero field gives the initial TRE: |t * spacing|
    err0 = M.landmark_tre(np.zeros_like(u), fp, fp + t, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(err0, np.linalg.norm(t * [2.0, 1.0, 1.0]))


def test_landmark_tre_interpolates_linearly():
    # linear field u_0 = 0.5 x_0, u_1 = -0.25 x_1: exact under linear interpolation at fractional points
    shape = (15, 16)
    g = np.indices(shape).astype(float)
    u = np.stack([0.5 * g[0], -0.25 * g[1]])
    fp = np.array([[3.3, 4.7], [10.5, 0.25], [7.0, 12.9]])
    mp = fp + np.stack([0.5 * fp[:, 0], -0.25 * fp[:, 1]], axis=1)
    np.testing.assert_allclose(M.landmark_tre(u, fp, mp), 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        M.landmark_tre(u, fp, mp[:2])


# ------------------------------------------------------------------------------------------ similarity
def test_cc_similarity():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(10, 12))
    assert M.cc_similarity(a, 2 * a + 3) == pytest.approx(1.0)
    assert M.cc_similarity(a, -a) == pytest.approx(-1.0)
    assert math.isnan(M.cc_similarity(a, np.ones_like(a)))
    b = rng.normal(size=(10, 12))
    assert M.cc_similarity(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    mask = np.zeros_like(a, bool)
    mask[:5] = True
    c = np.where(mask, a, b)
    assert M.cc_similarity(a, c, mask=mask) == pytest.approx(1.0)


def test_count_parameters():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))  # 16 + 10
    assert M.count_parameters(m) == 26
    m[1].weight.requires_grad_(False)
    assert M.count_parameters(m) == 18


# ------------------------------------------------------------------------------------------------ pair
def test_evaluate_pair_rows():
    shape = (20, 20, 20)
    fs = np.zeros(shape, int)
    ws = np.zeros(shape, int)
    fs[box(shape, (4, 4, 4), (14, 14, 14))] = 1
    ws[box(shape, (6, 4, 4), (16, 14, 14))] = 1  # shifted 2 voxels along axis 0
    rng = np.random.default_rng(3)
    img = rng.normal(size=shape)
    ddf = np.zeros((3, *shape))
    rows = M.evaluate_pair(img, img, fs, ws, ddf, (2.0, 1.0, 1.0), [1, 2], true_ddf=ddf + 0.5)
    assert [r["label"] for r in rows] == [1, 2]
    r1, r2 = rows
    assert r1["dsc"] == pytest.approx(0.8)
    assert r1["hd_mm"] == pytest.approx(4.0)
    assert r1["hd95_mm"] <= 4.0 and r1["assd_mm"] < r1["hd95_mm"]
    assert math.isnan(r2["dsc"]) and math.isnan(r2["hd_mm"])
    for r in rows:
        assert r["folding_count"] == 0.0 and r["folding_pct"] == 0.0
        assert r["sdlogj"] == pytest.approx(0.0, abs=1e-12)
        assert r["cc"] == pytest.approx(1.0)
        assert r["tre_mean_mm"] == pytest.approx(0.5 * math.sqrt(6))
        assert r["tre_std_mm"] == pytest.approx(0.0, abs=1e-12)
        assert set(r) == {"label", "dsc", "hd95_mm", "hd_mm", "assd_mm", "folding_count", "folding_pct",
                          "sdlogj", "cc", "tre_mean_mm", "tre_std_mm"}
        assert all(isinstance(v, float) for k, v in r.items() if k != "label")


def test_evaluate_pair_px_and_no_truth():
    shape = (16, 16)
    fs = box(shape, (2, 2), (8, 8)).astype(int)
    ws = box(shape, (2, 3), (8, 9)).astype(int)
    img = np.indices(shape)[0].astype(float)
    rows = M.evaluate_pair(img, img, fs, ws, np.zeros((2, *shape)), (1, 1), [1], unit="px")
    (r,) = rows
    assert r["hd_px"] == pytest.approx(1.0)
    assert math.isnan(r["tre_mean_px"]) and math.isnan(r["tre_std_px"])
    with pytest.raises(ValueError):
        M.evaluate_pair(img, img, fs, ws, np.zeros((2, *shape)), (2, 1), [1], unit="px")
    # no segmentation: one row keeping the pair-level values
    (r,) = M.evaluate_pair(img, img, None, None, np.zeros((2, *shape)), (1, 1), [])
    assert r["label"] == -1 and math.isnan(r["dsc"]) and r["cc"] == pytest.approx(1.0)


# ------------------------------------------------------------------- cropped and multi-label surface metrics
def _full_grid_surface_distances(a, b, spacing, connectivity=1):
    """Reference: the uncropped computation (erosion and EDT over the whole grid), as before cropping."""
    from scipy import ndimage

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    st = ndimage.generate_binary_structure(a.ndim, connectivity)
    sa = a ^ ndimage.binary_erosion(a, structure=st, border_value=0)
    sb = b ^ ndimage.binary_erosion(b, structure=st, border_value=0)
    s = np.broadcast_to(np.asarray(spacing, float), (a.ndim,))
    return (ndimage.distance_transform_edt(~sb, sampling=s)[sa],
            ndimage.distance_transform_edt(~sa, sampling=s)[sb])


def _random_blob(rng, shape, p=0.35, smooth=1):
    from scipy import ndimage

    m = ndimage.uniform_filter(rng.random(shape), size=2 * smooth + 1) > 1 - p
    return m


def _border_cases(shape):
    """Masks that touch the array border in different ways (faces, corners, the whole grid, one voxel)."""
    nd = len(shape)
    out = []
    full = np.ones(shape, bool)
    out.append(full)
    corner = np.zeros(shape, bool)
    corner[(slice(0, 3),) * nd] = True
    out.append(corner)
    far_corner = np.zeros(shape, bool)
    far_corner[(slice(-2, None),) * nd] = True
    out.append(far_corner)
    slab = np.zeros(shape, bool)
    slab[0] = True
    out.append(slab)
    last = np.zeros(shape, bool)
    last[..., -1] = True
    out.append(last)
    voxel = np.zeros(shape, bool)
    voxel[(0,) * nd] = True
    out.append(voxel)
    return out


SPACINGS = {2: [(1.0, 1.0), (0.7, 1.3), (2.0, 0.5)], 3: [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (0.9, 1.1, 3.0)]}


@pytest.mark.parametrize("shape", [(23, 31), (13, 17, 11)])
@pytest.mark.parametrize("connectivity", [1, 2])
def test_cropped_equals_uncropped_random_and_border(shape, connectivity):
    rng = np.random.default_rng(10 + len(shape) + connectivity)
    masks = [_random_blob(rng, shape, p) for p in (0.05, 0.2, 0.5)] + _border_cases(shape)
    small = np.zeros(shape, bool)
    small[tuple(s // 2 for s in shape)] = True  # one interior voxel: the crop is 1 voxel wide
    masks.append(small)
    masks.append(rng.random(shape) > 0.9)  # speckle: many tiny components spread over the grid
    for sp in SPACINGS[len(shape)]:
        for i, a in enumerate(masks):
            for b in masks[i:]:
                got = M.surface_distances(a, b, sp, connectivity)
                ref = _full_grid_surface_distances(a, b, sp, connectivity)
                np.testing.assert_array_equal(got[0], ref[0])  # same values, same (C) order, bit for bit
                np.testing.assert_array_equal(got[1], ref[1])


def test_full_grid_mask_border_is_surface_hand_computed():
    # A = the whole 5x5 grid: its surface is the 16 border pixels (the array border counts as outside).
    # B = the centre pixel. d_ab: 4 edge midpoints at 2, 8 pixels at sqrt 5, 4 corners at sqrt 8; d_ba = [2].
    f = np.ones((5, 5), np.int16)
    w = np.zeros((5, 5), np.int16)
    w[2, 2] = 1
    r5, r8 = math.sqrt(5), math.sqrt(8)
    d_ab, d_ba = M.surface_distances(f == 1, w == 1)
    np.testing.assert_allclose(np.sort(d_ab), [2.0] * 4 + [r5] * 8 + [r8] * 4)
    np.testing.assert_allclose(d_ba, [2.0])
    m = M.surface_metrics_per_label(f, w, [1])[1]
    assert m["dsc"] == pytest.approx(2 / 26)
    assert m["hd"] == pytest.approx(r8)
    assert m["hd95"] == pytest.approx(r8)  # P95 of 16 sorted values: between the 15th and 16th, both sqrt 8
    assert m["assd"] == pytest.approx((4 * 2 + 8 * r5 + 4 * r8 + 2) / 17)
    # spacing (3, 1): the border ring is nearest along axis 1 (2 * 1 = 2), so d_ba = [2]; corners sqrt(36 + 4)
    m = M.surface_metrics_per_label(f, w, [1], spacing=(3.0, 1.0))[1]
    assert m["hd"] == pytest.approx(math.sqrt(40))
    assert M.surface_distances(f == 1, w == 1, (3.0, 1.0))[1] == pytest.approx([2.0])


def test_surface_metrics_per_label_hand_computed():
    # label 1: cube shifted by 2 voxels along axis 0 (spacing 2 -> HD 4 mm); label 2: bar vs its end voxel
    # on the array border (d_ab = 0..9 voxels along axis 2, spacing 0.5); label 3 absent from both;
    # label 4 in the fixed map only.
    shape = (20, 16, 12)
    sp = (2.0, 1.0, 0.5)
    f = np.zeros(shape, np.uint8)
    w = np.zeros(shape, np.uint8)
    f[box(shape, (2, 2, 2), (8, 8, 8))] = 1
    w[box(shape, (4, 2, 2), (10, 8, 8))] = 1
    f[box(shape, (15, 15, 2), (16, 16, 12))] = 2  # 1x1x10 bar touching the array border (axis 1 and 2)
    w[15, 15, 2] = 2
    f[0, 0, 0] = 4
    out = M.surface_metrics_per_label(f, w, [1, 2, 3, 4], sp)
    assert list(out) == [1, 2, 3, 4]
    assert out[1]["dsc"] == pytest.approx(4 / 6)
    assert out[1]["hd"] == pytest.approx(4.0)
    d = 0.5 * np.arange(10.0)  # bar -> point
    assert out[2]["dsc"] == pytest.approx(2 / 11)
    assert out[2]["hd"] == pytest.approx(4.5)
    assert out[2]["hd95"] == pytest.approx(np.percentile(d, 95))  # 0.5 * 8.55 = 4.275; the other way: 0
    assert out[2]["hd95"] == pytest.approx(4.275)
    assert out[2]["assd"] == pytest.approx(d.sum() / 11)
    assert math.isnan(out[3]["dsc"]) and all(math.isnan(out[3][k]) for k in ("hd", "hd95", "assd"))
    assert out[4]["dsc"] == 0.0 and all(math.isnan(out[4][k]) for k in ("hd", "hd95", "assd"))
    assert all(isinstance(v, float) for m in out.values() for v in m.values())


def _single(f, w, lab, sp, connectivity=1):
    a, b = f == lab, w == lab
    return {"dsc": M.dice(a, b), "hd": M.hd(a, b, sp, connectivity), "hd95": M.hd95(a, b, sp, connectivity),
            "assd": M.assd(a, b, sp, connectivity)}


def _assert_same(got, ref):
    assert set(got) == set(ref)
    for k in ref:
        if math.isnan(ref[k]):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == ref[k], (k, got[k], ref[k])  # identical floats, not approximately equal


@pytest.mark.parametrize("shape,sp", [((30, 34), (0.7, 1.3)), ((18, 20, 16), (2.0, 1.0, 0.5)),
                                      ((18, 20, 16), (1.0, 1.0, 1.0))])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32])
def test_multi_label_equals_single_functions(shape, sp, dtype):
    from scipy import ndimage

    rng = np.random.default_rng(7)
    # smooth random label maps with labels 1..9 (plus 0); the warped one is the fixed one perturbed
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2)
    f = np.digitize(noise, np.quantile(noise, np.linspace(0.05, 0.95, 9))).astype(dtype)
    w = f.copy()
    flip = rng.random(shape) < 0.1
    w[flip] = rng.integers(0, 10, size=int(flip.sum()))
    w[w == 7] = 0  # label 7 only in the fixed map
    f[f == 8] = 3  # label 8 only in the warped map
    f.flat[0], w.flat[-1] = 5, 6  # labels on the array corners
    labels = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 0]  # 11 absent everywhere; 0 (background) takes the slow path
    out = M.surface_metrics_per_label(f, w, labels, sp)
    assert list(out) == labels
    for lab in labels:
        _assert_same(out[lab], _single(f, w, lab, sp))
    out2 = M.surface_metrics_per_label(f, w, [2, 5], sp, connectivity=len(shape))
    for lab in (2, 5):
        _assert_same(out2[lab], _single(f, w, lab, sp, connectivity=len(shape)))


def test_multi_label_odd_maps():
    rng = np.random.default_rng(3)
    shape = (15, 14, 13)
    f = rng.integers(-2, 4, size=shape)
    w = np.roll(f, 1, axis=0)
    # negative labels and 0 take the per-label path; torch tensors are accepted
    out = M.surface_metrics_per_label(torch.from_numpy(f), torch.from_numpy(w), [-2, -1, 0, 1, 3], 1.5)
    for lab in (-2, -1, 0, 1, 3):
        _assert_same(out[lab], _single(f, w, lab, 1.5))
    # float map with non-integer values: no find_objects cast; == comparison as in the single functions
    ff = f.astype(np.float64) + 0.5 * (f == 3)
    out = M.surface_metrics_per_label(ff, w.astype(np.float64), [1, 3], None)
    for lab in (1, 3):
        _assert_same(out[lab], _single(ff, w.astype(np.float64), lab, None))
    assert out[3]["dsc"] == 0.0  # 3.5 is not 3
    # boolean maps (label 1 = True)
    fb, wb = f > 1, w > 1
    _assert_same(M.surface_metrics_per_label(fb, wb, [1])[1], _single(fb, wb, 1, None))
    # uint8 map and a label above its range: absent
    assert math.isnan(M.surface_metrics_per_label(f.astype(np.uint8) * 0, w.astype(np.uint8) * 0, [300])[300]["dsc"])
    with pytest.raises(ValueError):
        M.surface_metrics_per_label(f, w[:-1], [1])
    with pytest.raises(ValueError):
        M.surface_metrics_per_label(f, w, [1], spacing=(1.0, 1.0))


def test_evaluate_pair_equals_single_functions():
    rng = np.random.default_rng(5)
    shape = (16, 18, 14)
    f = rng.integers(0, 6, size=shape).astype(np.int16)
    w = np.roll(f, (1, -2), axis=(0, 2))
    w[w == 4] = 0
    sp = (1.2, 0.8, 2.5)
    img = rng.normal(size=shape)
    rows = M.evaluate_pair(img, img, f, w, np.zeros((3, *shape)), sp, [1, 2, 3, 4, 5, 9])
    for r in rows:
        ref = _single(f, w, r["label"], sp)
        _assert_same({"dsc": r["dsc"], "hd": r["hd_mm"], "hd95": r["hd95_mm"], "assd": r["assd_mm"]}, ref)
