"""Bad input gets a clear error naming the file or key: NIfTI with NaNs or zero spacing, grid mismatch,
experiment configs that fail the schema."""

import copy

import nibabel as nib
import numpy as np
import pytest
import yaml

from regbench.config import load_experiments, validate_experiment
from regbench.errors import ConfigError, DataError, ShapeMismatchError
from regbench.io import check_same_grid, load_ddf, load_image, save_ddf, save_image

from conftest import REPO

DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_nan_image_is_rejected_with_its_path(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), p)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 1 voxels are NaN"):
        load_image(p)
    assert np.isnan(load_image(p, allow_nan=True).array).sum() == 1


def test_zero_spacing_is_rejected(tmp_path):
    p = tmp_path / "flat.nii.gz"
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    img.header["pixdim"][2] = 0.0  # no qform/sform: the spacing comes from pixdim
    nib.save(img, p)
    with pytest.raises(DataError, match=r"flat\.nii\.gz: voxel spacing .* zero"):
        load_image(p)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "absent.nii.gz")
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="corrupt.nii.gz: cannot read"):
        load_image(bad)


def test_grid_mismatch(tmp_path):
    a = save_image(tmp_path / "a.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    b = save_image(tmp_path / "b.nii.gz", np.zeros((8, 8, 9), np.float32), np.eye(4))
    c = save_image(tmp_path / "c.nii.gz", np.zeros((8, 8, 8), np.float32), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ShapeMismatchError, match="shape mismatch"):
        check_same_grid(load_image(a), load_image(b))
    with pytest.raises(ShapeMismatchError, match="spacing mismatch"):
        check_same_grid(load_image(a), load_image(c))


@pytest.mark.parametrize("shape", [(6, 7, 8), (9, 10)])
def test_ddf_roundtrip(tmp_path, shape):
    ddf = np.random.default_rng(0).normal(size=(len(shape), *shape)).astype(np.float32)
    p = save_ddf(tmp_path / "f.nii.gz", ddf, np.eye(4))
    assert np.array_equal(load_ddf(p), ddf)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    from regbench.utils import atomic_path

    target = tmp_path / "out.tsv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def test_demo_and_full_configs_validate():
    assert list(load_experiments(DEMO)) == ["demo"]
    exps = load_experiments(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), base=REPO)
    assert "demo" in exps and exps["demo"]["datasets"]["demo"]["labels"][2] == "GM"


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["methods"]["voxelmorph"]["train"].pop("lr"), "methods.voxelmorph.train"),
        (lambda c: c["methods"]["syn_cc"].update(transform="ants_synn"), "methods.syn_cc.transform"),
        (lambda c: c["datasets"]["demo"].update(folds="0"), "datasets.demo.folds"),
        (lambda c: c.update(seed=-1), "seed"),
        (lambda c: c["methods"]["voxelmorph"]["train"]["losses"].append({"name": "nmi"}),
         "methods.voxelmorph.train.losses[2].name"),
    ],
)
def test_schema_failure_names_the_key(mutate, key):
    cfg = copy.deepcopy(DEMO)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_experiment(cfg, "config/demo.yaml")
    assert f"config/demo.yaml: {key}" in str(err.value)


def test_cross_reference_errors():
    cfg = copy.deepcopy(DEMO)
    cfg["report"]["reference"] = "voxelmorf"
    with pytest.raises(ConfigError, match="report.reference: unknown method 'voxelmorf'"):
        validate_experiment(cfg, "x.yaml")
