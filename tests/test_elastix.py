"""Elastix results follow regbench's DDF convention (known shifts, 2D and 3D with anisotropic spacing).

Iteration counts are lowered through ``overrides`` to keep the file fast; the presets themselves are used.
"""

import os

import itk
import numpy as np
import pytest
import torch
from conftest import blob_image

from regbench import spatial
from regbench.elastix import (
    ACREGNET_MAPS,
    field_to_ddf,
    parameter_maps,
    register_elastix,
)
from regbench.errors import ConfigError, DataError, ShapeMismatchError

# SWIG-wrapped itk modules emit "builtin type ... has no __module__ attribute" when first loaded
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

FAST = {"overrides": {"MaximumNumberOfIterations": 100}}


def warp_np(moving, ddf):
    return spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()


def test_field_to_ddf_maps_itk_components_to_numpy_axes():
    # transformix: field[..., c] is the physical displacement along ITK axis c = numpy axis ndim-1-c
    field = np.zeros((4, 5, 6, 3), np.float32)
    field[..., 0], field[..., 1], field[..., 2] = 3.0, 2.0, 8.0  # x (numpy axis 2), y (axis 1), z (axis 0)
    ddf = field_to_ddf(field, (2.0, 1.0, 1.5))
    assert ddf.shape == (3, 4, 5, 6) and ddf.dtype == np.float32
    np.testing.assert_allclose([ddf[0].mean(), ddf[1].mean(), ddf[2].mean()], [4.0, 2.0, 2.0])


@pytest.mark.parametrize(
    "shape, shift, spacing, stages",
    [((64, 72), (3, 0), (1.0, 1.0), None), ((64, 72), (0, -2), (1.0, 1.0), None),
     ((24, 28, 32), (2, 0, 0), (2.0, 1.0, 1.5), ["affine"]), ((24, 28, 32), (0, -3, 0), (2.0, 1.0, 1.5), ["affine"]),
     ((24, 28, 32), (0, 0, 2), (2.0, 1.0, 1.5), ["affine"])],
)
def test_known_shift_is_recovered_in_voxels(shape, shift, spacing, stages, tmp_path, monkeypatch):
    """Per-axis shifts pin the axis order and the mm -> voxel division (3D: affine stage only, for speed)."""
    monkeypatch.chdir(tmp_path)  # elastix must write nothing outside its own temporary folder
    fixed = blob_image(shape)
    # moving(y) = fixed(y - s)  =>  warped(x) = moving(x + u) = fixed(x) for u = +s (in voxels)
    moving = np.roll(fixed, shift, axis=tuple(range(len(shape))))
    params = {**FAST, "stages": stages} if stages else FAST  # 2D: default AC-RegNet affine + B-spline
    ddf, runtime = register_elastix(fixed, moving, spacing, params, seed=0)
    assert ddf.shape == (len(shape), *shape) and ddf.dtype == np.float32 and runtime > 0
    inner = tuple(slice(s // 4, -(s // 4)) for s in shape)
    for i, s in enumerate(shift):
        assert abs(float(ddf[i][inner].mean()) - s) < 0.2, (i, float(ddf[i][inner].mean()))
    warped = warp_np(moving, ddf)
    assert np.abs(warped - fixed)[inner].mean() < 0.2 * np.abs(moving - fixed)[inner].mean()
    assert os.listdir(tmp_path) == []


def test_3d_default_affine_then_bspline_runs_and_aligns():
    """The 3D default (elastix's affine + bspline maps), few iterations: a smoke test of the full path."""
    shape, shift, spacing = (24, 28, 32), (2, -3, 2), (2.0, 1.0, 1.5)
    fixed = blob_image(shape)
    moving = np.roll(fixed, shift, axis=(0, 1, 2))
    ddf, _ = register_elastix(fixed, moving, spacing, {"overrides": {"MaximumNumberOfIterations": 30}})
    inner = tuple(slice(s // 4, -(s // 4)) for s in shape)
    for i, s in enumerate(shift):  # the MI B-spline stage on so small an image moves means by up to ~0.6 voxel
        assert abs(float(ddf[i][inner].mean()) - s) < 0.75, (i, float(ddf[i][inner].mean()))
    assert np.abs(warp_np(moving, ddf) - fixed)[inner].mean() < 0.3 * np.abs(moving - fixed)[inner].mean()


def test_bspline_stage_improves_on_affine_for_a_smooth_deformation():
    shape = (64, 64)
    fixed = blob_image(shape, seed=1)
    grid = spatial.identity_grid(shape)
    u = torch.stack([2.5 * torch.sin(grid[1] / 8.0), 2.0 * torch.cos(grid[0] / 9.0)])[None]
    moving = spatial.warp(torch.from_numpy(fixed)[None, None], -u)[0, 0].numpy()  # approximately inverse
    inner = (slice(8, -8), slice(8, -8))
    before = np.abs(moving - fixed)[inner].mean()
    ddf_aff, _ = register_elastix(fixed, moving, (1.0, 1.0), {**FAST, "stages": ["affine"]})
    ddf_bsp, _ = register_elastix(fixed, moving, (1.0, 1.0), FAST)
    err_aff = np.abs(warp_np(moving, ddf_aff) - fixed)[inner].mean()
    err_bsp = np.abs(warp_np(moving, ddf_bsp) - fixed)[inner].mean()
    assert err_bsp < 0.5 * err_aff and err_bsp < 0.3 * before, (before, err_aff, err_bsp)


def test_seed_repeats_a_run():
    fixed = blob_image((48, 48))
    moving = np.roll(fixed, (2, -1), axis=(0, 1))
    p = {"stages": ["affine"], "overrides": {"MaximumNumberOfIterations": 50}}
    a, _ = register_elastix(fixed, moving, (1.0, 1.0), p, seed=3)
    b, _ = register_elastix(fixed, moving, (1.0, 1.0), p, seed=3)
    np.testing.assert_array_equal(a, b)


def test_parameter_files_and_overrides(tmp_path):
    po = itk.ParameterObject.New()
    po.AddParameterMap(po.GetDefaultParameterMap("translation"))
    path = tmp_path / "translation.txt"
    po.WriteParameterFile(str(path))
    maps = parameter_maps(2, {"parameter_files": [str(path)], "overrides": {"MaximumNumberOfIterations": 64,
                                                                            "Metric": None}}, seed=7)
    assert len(maps) == 1 and maps[0]["Transform"] == ["TranslationTransform"]
    assert maps[0]["MaximumNumberOfIterations"] == ["64"] and "Metric" not in maps[0]
    assert maps[0]["RandomSeed"] == ["7"] and maps[0]["WriteResultImage"] == ["false"]
    fixed = blob_image((48, 40))
    moving = np.roll(fixed, (-2, 3), axis=(0, 1))
    ddf, _ = register_elastix(fixed, moving, (1.0, 1.0), {"parameter_files": [str(path)]})
    assert abs(float(ddf[0].mean()) + 2) < 0.2 and abs(float(ddf[1].mean()) - 3) < 0.2


def test_presets_and_dimensions():
    acr2 = parameter_maps(2)
    assert [m["Transform"][0] for m in acr2] == ["AffineTransform", "BSplineTransform"]
    assert acr2[1]["ImagePyramidSchedule"] == ["8", "8", "4", "4", "2", "2"]  # as in paramsDeformable.txt
    assert acr2[1]["Metric"] == ACREGNET_MAPS["bspline"]["Metric"]
    acr3 = parameter_maps(3, {"preset": "acregnet"})
    assert len(acr3[0]["ImagePyramidSchedule"]) == 12 and len(acr3[1]["ImagePyramidSchedule"]) == 9
    elx3 = parameter_maps(3)
    assert elx3[1]["Transform"] == ["BSplineTransform"] and elx3[1]["Metric"][0] == "AdvancedMattesMutualInformation"


def test_errors(tmp_path):
    a = np.zeros((8, 8), np.float32)
    with pytest.raises(ShapeMismatchError):
        register_elastix(a, np.zeros((8, 9), np.float32), (1, 1))
    missing = tmp_path / "nope_params.txt"
    with pytest.raises(ConfigError, match="nope_params.txt"):
        register_elastix(a, a, (1, 1), {"parameter_files": [str(missing)]})
    with pytest.raises(ConfigError, match="unknown elastix params"):
        register_elastix(a, a, (1, 1), {"iterations": 5})
    with pytest.raises(ConfigError, match="no stage"):
        register_elastix(a, a, (1, 1), {"stages": ["syn"]})
    with pytest.raises(ConfigError, match="unknown elastix preset"):
        register_elastix(a, a, (1, 1), {"preset": "ants"})
    with pytest.raises(DataError):
        register_elastix(a, a, (1, 1, 1))
    with pytest.raises(RuntimeError, match="GridSpacingSchedule"):  # elastix's own ERROR line is reported
        register_elastix(blob_image((32, 32)), blob_image((32, 32)), (1, 1),
                         {"preset": "elastix", "stages": ["bspline"], "overrides": {"NumberOfResolutions": 3}})
