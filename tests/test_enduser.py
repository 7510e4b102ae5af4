"""`regbench register-images` for end users (regbench.enduser): the displacement field in the ITK convention
(mm, LPS) warps the moving image in SimpleITK and ANTs exactly as regbench's own warp does, on an anisotropic,
oblique-affine grid; label maps are warped nearest-neighbour and scored; learned models run on their training
grid and canonical orientation; bad inputs get errors that name the file."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter

from regbench import spatial
from regbench.cli import main
from regbench.enduser import ddf_to_itk, itk_to_ddf, save_itk_field
from regbench.io import save_image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import blob_image  # noqa: E402

SHAPE = (28, 24, 18)
SPACING = (1.2, 0.9, 2.5)  # mm, anisotropic


def rotation(a, b, c):
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=SPACING, flips=(1, 1, 1)):
    """A voxel-to-RAS matrix rotated about all three axes (oblique), anisotropic, with an origin far from 0."""
    a = np.eye(4)
    a[:3, :3] = rotation(0.3, -0.2, 0.5) @ np.diag(np.asarray(spacing) * np.asarray(flips))
    a[:3, 3] = [-12.0, 30.0, 5.0]
    return a


def smooth_ddf(shape, amplitude, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([gaussian_filter(rng.normal(size=shape), 3) * amplitude for _ in shape]).astype(np.float32)


def sitk_warp(moving_path, fixed_path, field_path, labels=False):
    """The moving image resampled onto the fixed grid through the field file, by SimpleITK; nibabel axis order."""
    import SimpleITK as sitk

    field = sitk.Cast(sitk.ReadImage(str(field_path)), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(sitk.ReadImage(str(moving_path)), sitk.ReadImage(str(fixed_path)), tx, interp, 0.0)
    return sitk.GetArrayFromImage(out).T  # ITK arrays are (z, y, x)


def ants_warp(moving_path, fixed_path, field_path, labels=False):
    import ants

    out = ants.apply_transforms(ants.image_read(str(fixed_path)), ants.image_read(str(moving_path)),
                                transformlist=[str(field_path)], interpolator="nearestNeighbor" if labels else "linear")
    return out.numpy()


@pytest.fixture
def oblique_pair(tmp_path):
    """Fixed and moving on one oblique anisotropic grid (the moving = fixed deformed by a smooth field), with
    label maps: the images thresholded at three levels (labels 1-3)."""
    aff = oblique_affine()
    fixed = blob_image(SHAPE, seed=3)
    true = smooth_ddf(SHAPE, 25.0, seed=1)
    moving = spatial.warp(torch.from_numpy(fixed)[None, None], torch.from_numpy(true)[None])[0, 0].numpy()
    paths = {}
    levels = np.quantile(fixed, [0.5, 0.75, 0.9])
    for name, img in (("fixed", fixed), ("moving", moving)):
        paths[name] = save_image(tmp_path / f"{name}.nii.gz", img.astype(np.float32), aff)
        lab = np.digitize(img, levels).astype(np.int16)
        paths[f"{name}_labels"] = save_image(tmp_path / f"{name}_labels.nii.gz", lab, aff)
    return paths, aff


def test_itk_field_warps_like_regbench_in_simpleitk_and_ants(tmp_path):
    """A known smooth field (up to ~7 voxels) written by save_itk_field: SimpleITK's DisplacementFieldTransform
    and ANTs' apply_transforms give regbench's pull-back warp to float precision."""
    aff = oblique_affine()
    moving = blob_image(SHAPE, seed=3)
    u = smooth_ddf(SHAPE, 40.0)
    assert np.abs(u).max() > 4
    save_image(tmp_path / "moving.nii.gz", moving, aff)
    save_image(tmp_path / "fixed.nii.gz", np.zeros(SHAPE, np.float32), aff)
    save_itk_field(tmp_path / "field.nii.gz", u, aff)
    ours = spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()
    for other in (sitk_warp, ants_warp):
        theirs = other(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "field.nii.gz")
        assert theirs.shape == SHAPE
        np.testing.assert_allclose(theirs, ours, atol=1e-5, err_msg=other.__name__)
    hdr = nib.load(tmp_path / "field.nii.gz").header
    assert hdr.get_data_shape() == (*SHAPE, 1, 3) and hdr.get_intent()[0] == "vector"


def test_itk_field_values_and_round_trip():
    """d = M u on one grid (M: spacing and direction), LPS signs; itk_to_ddf inverts it, also across grids."""
    aff = oblique_affine()
    u = smooth_ddf((6, 5, 4), 10.0)
    d = ddf_to_itk(u, aff)
    expected = np.einsum("ij,j...->...i", np.diag([-1, -1, 1]) @ aff[:3, :3], u)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)
    other = aff.copy()
    other[:3, 3] += [3.0, -2.0, 1.0]  # moving grid shifted by 3, -2, 1 mm (RAS)
    np.testing.assert_allclose(itk_to_ddf(ddf_to_itk(u, aff, other), aff, other), u, atol=1e-4)
    np.testing.assert_allclose(ddf_to_itk(np.zeros_like(u), aff, other)[0, 0, 0], [-3.0, 2.0, 1.0], atol=1e-6)


def test_register_images_syn_with_labels(oblique_pair, tmp_path, capsys):
    paths, aff = oblique_pair
    out = tmp_path / "out" / "pair"
    rc = main(["register-images", "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
               "--fixed-labels", str(paths["fixed_labels"]), "--moving-labels", str(paths["moving_labels"]),
               "--method", "ants_syn", "--params",
               json.dumps({"syn_metric": "CC", "syn_sampling": 2, "reg_iterations": [40, 20, 0]}), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mean DSC" in printed and "folding" in printed and "field_itk" in printed
    field = Path(f"{out}_field_itk.nii.gz")
    warped = nib.load(f"{out}_warped.nii.gz")
    assert np.allclose(warped.affine, aff) and warped.shape == SHAPE
    ours = warped.get_fdata()
    for other in (sitk_warp, ants_warp):
        theirs = other(paths["moving"], paths["fixed"], field)
        # the tool repeats border values outside the moving grid, ITK/ANTs give 0: compare where it samples inside
        inside = other(paths["moving"], paths["fixed"], field) != 0
        np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-4, err_msg=other.__name__)
    warped_lab = nib.load(f"{out}_warped_labels.nii.gz").get_fdata().astype(int)
    for other in (sitk_warp, ants_warp):
        theirs = other(paths["moving_labels"], paths["fixed"], field, labels=True).astype(int)
        # nearest neighbour: positions within float32 rounding of a half-voxel may round either way (ITK computes
        # them in double, the tool in float32), so label borders may differ by a voxel here and there
        assert np.mean(theirs == warped_lab) > 0.98, other.__name__
    m = pd.read_csv(f"{out}_metrics.tsv", sep="\t")
    assert list(m["label"]) == [1, 2, 3]
    for col in ("dsc_before", "dsc", "hd95_mm", "hd_mm", "assd_mm", "folding_pct", "sdlogj", "runtime_s"):
        assert col in m.columns
    assert m["dsc"].mean() > m["dsc_before"].mean() + 0.03  # SyN recovered part of the deformation (0.74 -> 0.81)
    summary = json.loads(Path(f"{out}_summary.json").read_text())
    assert summary["mean_dsc"] == pytest.approx(m["dsc"].mean())
    assert 0 <= summary["folding_pct"] < 1


def _tiny_model(path, grid_shape=(16, 16, 16)):
    from regbench.models import build_model

    torch.manual_seed(0)
    model = build_model("voxelmorph", 3, variant="vm1")
    with torch.no_grad():
        model.flow.weight.normal_(0.0, 0.2)  # a visible field from an untrained network
    torch.save({"model": model.state_dict(), "name": "voxelmorph", "ndim": 3, "params": {"variant": "vm1"},
                "spec_hash": "test", "grid": {"shape": list(grid_shape), "spacing": [2.0, 2.0, 2.0]}}, path)
    return path


def test_register_images_learned_model_on_its_grid_and_orientation(tmp_path):
    """A model trained on 16^3: inputs resized to 16^3 in RAS voxel order, the field brought back to the fixed
    grid; the same pair stored in another voxel order (LAS: axis 0 flipped) gives the same physical field."""
    model = _tiny_model(tmp_path / "model.pt")
    shape = (24, 20, 18)
    fixed, moving = blob_image(shape, seed=5), blob_image(shape, seed=6)
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    las = ras.copy()
    las[0, 0] = -2.0
    las[0, 3] = 2.0 * (shape[0] - 1)  # the same voxels, axis 0 reversed
    fields = {}
    for name, aff, flip in (("ras", ras, False), ("las", las, True)):
        f = fixed[::-1] if flip else fixed
        m = moving[::-1] if flip else moving
        fp = save_image(tmp_path / f"{name}_fixed.nii.gz", np.ascontiguousarray(f), aff)
        mp = save_image(tmp_path / f"{name}_moving.nii.gz", np.ascontiguousarray(m), aff)
        out = tmp_path / name
        assert main(["register-images", "--fixed", str(fp), "--moving", str(mp), "--method", "voxelmorph",
                     "--model", str(model), "--device", "cpu", "--out", str(out)]) == 0
        summary = json.loads(Path(f"{out}_summary.json").read_text())
        assert summary["network_grid"] == [16, 16, 16] and "recorded at training" in summary["network_grid_source"]
        assert summary["reoriented_to_ras"] == flip
        field = nib.load(f"{out}_field_itk.nii.gz").get_fdata()[..., 0, :]
        assert field.shape == (*shape, 3) and np.abs(field).max() > 0.1
        fields[name] = field[::-1] if flip else field
        theirs = sitk_warp(mp, fp, f"{out}_field_itk.nii.gz")
        ours = nib.load(f"{out}_warped.nii.gz").get_fdata()
        inside = theirs != 0
        np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-4)
    np.testing.assert_allclose(fields["las"], fields["ras"], atol=1e-4)


def _run_expect_error(capsys, args):
    assert main(["register-images", *args]) == 2
    return capsys.readouterr().err


def test_register_images_errors_name_the_file(oblique_pair, tmp_path, capsys):
    paths, aff = oblique_pair
    base = ["--method", "identity", "--out", str(tmp_path / "o")]
    missing = tmp_path / "nope.nii.gz"
    err = _run_expect_error(capsys, ["--fixed", str(missing), "--moving", str(paths["moving"]), *base])
    assert str(missing) in err and "not found" in err
    other_grid = save_image(tmp_path / "other.nii.gz", np.zeros((20, 20, 20), np.float32), aff)
    err = _run_expect_error(capsys, ["--fixed", str(paths["fixed"]), "--moving", str(other_grid), *base])
    assert str(other_grid) in err and str(paths["fixed"]) in err and "--resample-moving" in err
    bad_labels = save_image(tmp_path / "bad_labels.nii.gz", np.zeros((10, 10, 10), np.int16), aff)
    err = _run_expect_error(capsys, ["--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
                                     "--fixed-labels", str(bad_labels), "--moving-labels", str(paths["moving_labels"]),
                                     *base])
    assert str(bad_labels) in err and "not on the grid of its image" in err
    err = _run_expect_error(capsys, ["--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
                                     "--fixed-labels", str(paths["fixed_labels"]), *base])
    assert "--moving-labels" in err
    err = _run_expect_error(capsys, ["--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
                                     "--method", "voxelmorph", "--out", str(tmp_path / "o")])
    assert "--model" in err
    err = _run_expect_error(capsys, ["--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
                                     "--method", "voxelmorph", "--model", str(missing), "--out", str(tmp_path / "o")])
    assert str(missing) in err


def test_register_images_resample_moving(oblique_pair, tmp_path):
    """A moving image on another grid is put onto the fixed grid in physical space with --resample-moving; the
    field then maps fixed points to the original moving image's points."""
    paths, aff = oblique_pair
    moving = nib.load(paths["moving"]).get_fdata().astype(np.float32)
    shifted = aff.copy()
    shifted[:3, 3] += aff[:3, :3] @ np.array([1.0, 0.0, 0.0])  # the same samples one voxel further along axis 0
    mp = save_image(tmp_path / "moving_shifted.nii.gz", moving[1:], shifted)  # the same image less its first slice
    out = tmp_path / "r"
    assert main(["register-images", "--fixed", str(paths["fixed"]), "--moving", str(mp), "--method", "identity",
                 "--resample-moving", "--out", str(out)]) == 0
    summary = json.loads(Path(f"{out}_summary.json").read_text())
    assert summary["moving_resampled_to_fixed_grid"] is True
    warped = nib.load(f"{out}_warped.nii.gz").get_fdata()
    np.testing.assert_allclose(warped[1:], moving[1:], atol=1e-4)  # physically the original moving image
    theirs = sitk_warp(mp, paths["fixed"], f"{out}_field_itk.nii.gz")
    np.testing.assert_allclose(theirs[1:], warped[1:], atol=1e-4)


def test_itk_field_2d(tmp_path):
    """A 2D field (anisotropic pixels, origin off 0) is read by SimpleITK as a 2D, 2-component displacement field
    and warps like regbench."""
    import SimpleITK as sitk

    shape, aff = (40, 32), np.diag([0.7, 1.3, 1.0, 1.0])
    aff[:2, 3] = [5.0, -3.0]
    moving, u = blob_image(shape, seed=2), smooth_ddf(shape, 20.0)
    save_image(tmp_path / "m.nii.gz", moving, aff)
    save_image(tmp_path / "f.nii.gz", np.zeros(shape, np.float32), aff)
    save_itk_field(tmp_path / "d.nii.gz", u, aff)
    field = sitk.ReadImage(str(tmp_path / "d.nii.gz"))
    assert field.GetDimension() == 2 and field.GetNumberOfComponentsPerPixel() == 2
    ours = spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()
    np.testing.assert_allclose(sitk_warp(tmp_path / "m.nii.gz", tmp_path / "f.nii.gz", tmp_path / "d.nii.gz"), ours,
                               atol=1e-5)


def test_model_grid_of_an_older_model_from_the_pipeline_layout(tmp_path):
    """A model.pt without a recorded grid (trained before it was recorded): the grid of the first case of the
    prepared dataset that work/<exp>/models/<dataset>/... points to; outside that layout, none."""
    from regbench.enduser import model_grid

    run = tmp_path / "work" / "exp" / "models" / "ds" / "vm" / "fold0"
    run.mkdir(parents=True)
    _tiny_model(run / "model.pt")
    blob = torch.load(run / "model.pt", weights_only=False)
    del blob["grid"]
    torch.save(blob, run / "model.pt")
    prep = tmp_path / "data" / "prep" / "exp" / "ds"
    save_image(prep / "images" / "c0.nii.gz", np.zeros((32, 48, 32), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    pd.DataFrame([{"case": "c0", "split": "train", "seg": "labels/c0.nii.gz", "t1": "images/c0.nii.gz"}]).to_csv(
        prep / "cases.tsv", sep="\t", index=False)
    grid = model_grid(run / "model.pt")
    assert grid.shape == (32, 48, 32) and grid.spacing == (3.0, 3.0, 3.0) and "column 't1'" in grid.source
    torch.save(blob, tmp_path / "elsewhere.pt")
    assert model_grid(tmp_path / "elsewhere.pt") is None


def test_learned_intensity_auto_scales_only_images_outside_0_1(tmp_path):
    model = _tiny_model(tmp_path / "model.pt")
    shape, aff = (16, 16, 16), np.diag([2.0, 2.0, 2.0, 1.0])
    f = save_image(tmp_path / "f.nii.gz", blob_image(shape, seed=1), aff)  # in [0, 1]
    m = save_image(tmp_path / "m.nii.gz", 800.0 * blob_image(shape, seed=2), aff)  # scanner units
    assert main(["register-images", "--fixed", str(f), "--moving", str(m), "--method", "vxm", "--model", str(model),
                 "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o_summary.json").read_text())
    assert summary["intensity_scaled_to_0_1"] == ["moving"]
