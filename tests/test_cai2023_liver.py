"""Liver CT readers (Cai et al. 2023): RCN HDF5, LiTS NIfTI, SLIVER07 MetaImage, MSD Task03 tar; fixtures are
written in each real format and layout, and bad input must raise a DataError naming the file."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import nibabel as nib
import numpy as np
import pytest

from regbench.datasets.liver import (
    landmarks,
    read_lits,
    read_mhd,
    read_msd_tar,
    read_rcn_h5,
    read_sliver07,
    to_grid,
)
from regbench.errors import DataError
from regbench.metrics import landmark_tre

h5py = pytest.importorskip("h5py")


def _vol(shape=(8, 9, 10), seed=0):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 255, shape).astype(np.float32)
    s = (v > 128).astype(np.uint8)
    return v, s


def _write_h5(path, groups):
    with h5py.File(path, "w") as f:
        for name, items in groups.items():
            g = f.create_group(name)
            for k, v in items.items():
                g.create_dataset(k, data=v)


def test_rcn_h5_nested_groups_and_points(tmp_path):
    v, s = _vol()
    pts = np.arange(18, dtype=np.float32).reshape(6, 3)
    p = tmp_path / "sliver_val.h5"
    _write_h5(p, {"hepaticvessel/12": {"volume": v, "segmentation": s}, "sliver1": {"volume": v, "segmentation": s,
                                                                                   "point": pts}})
    cases = {c.case_id: c for c in read_rcn_h5(p)}
    assert set(cases) == {"hepaticvessel_12", "sliver1"}
    assert np.array_equal(cases["sliver1"].volume, v) and cases["sliver1"].segmentation.dtype == np.int16
    assert np.array_equal(cases["sliver1"].points, pts) and cases["hepaticvessel_12"].points is None
    with pytest.raises(DataError, match="no `point`"):
        read_rcn_h5(p, require_points=True)


@pytest.mark.parametrize("groups,match", [
    ({"a": {"segmentation": np.zeros((4, 4, 4))}}, "no `volume`"),
    ({"a": {"volume": np.zeros((4, 4, 4)), "segmentation": np.zeros((4, 4, 5))}}, "differs from volume shape"),
    ({"a": {"volume": np.zeros((4, 4, 4)), "point": np.zeros((5, 3))}}, "6x3"),
])
def test_rcn_h5_bad_input_names_file(tmp_path, groups, match):
    p = tmp_path / "bad.h5"
    _write_h5(p, groups)
    with pytest.raises(DataError, match=match) as e:
        read_rcn_h5(p)
    assert str(p) in str(e.value)


def test_rcn_h5_not_hdf5_and_missing_segmentation(tmp_path):
    p = tmp_path / "youyi_liver.h5"
    p.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        read_rcn_h5(p)
    _write_h5(p, {"x": {"volume": np.zeros((4, 4, 4))}})
    with pytest.raises(DataError, match=f"{p}:x: group has no `segmentation`"):
        read_rcn_h5(p, require_segmentation=True)
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(DataError, match="no case groups"):
        read_rcn_h5(tmp_path / "empty.h5")


def test_lits_nifti_layout(tmp_path):
    v, s = _vol()
    for n in (0, 10):
        d = tmp_path / ("Training_Batch1" if n == 0 else "Training_Batch2")
        d.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(v, np.diag([0.7, 0.7, 2.5, 1])), str(d / f"volume-{n}.nii"))
        nib.save(nib.Nifti1Image(s, np.diag([0.7, 0.7, 2.5, 1])), str(d / f"segmentation-{n}.nii"))
    cases = read_lits(tmp_path)
    assert [c.case_id for c in cases] == ["lits000", "lits010"]
    assert np.allclose(cases[0].spacing, (0.7, 0.7, 2.5)) and np.array_equal(cases[1].segmentation, s)
    (tmp_path / "Training_Batch2" / "segmentation-10.nii").unlink()
    with pytest.raises(DataError, match="volume-10.nii: no matching segmentation-10"):
        read_lits(tmp_path)


def _write_mhd(folder, stem, arr, etype="MET_SHORT", dtype="<i2", spacing=(0.7, 0.7, 1.5), msb=False):
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f"{stem}.raw"
    np.asarray(arr, dtype=np.dtype(dtype).newbyteorder(">" if msb else "<")).ravel(order="F").tofile(raw)
    (folder / f"{stem}.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\n"
        f"BinaryDataByteOrderMSB = {'True' if msb else 'False'}\nCompressedData = False\n"
        f"ElementSpacing = {' '.join(map(str, spacing))}\nDimSize = {' '.join(map(str, arr.shape))}\n"
        f"ElementType = {etype}\nElementDataFile = {stem}.raw\n")
    return folder / f"{stem}.mhd"


def test_metaimage_reader_matches_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    arr = np.random.default_rng(1).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    for msb in (False, True):
        h = _write_mhd(tmp_path / str(msb), "liver-orig001", arr, msb=msb)
        got, spacing = read_mhd(h)
        assert np.array_equal(got, arr) and spacing == (0.7, 0.7, 1.5)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(h)))  # (z, y, x)
        assert np.array_equal(got, ref.transpose(2, 1, 0))


def test_sliver07_layout_and_bad_raw(tmp_path):
    v, s = _vol((5, 6, 7))
    _write_mhd(tmp_path / "scan", "liver-orig001", v.astype(np.int16))
    _write_mhd(tmp_path / "label", "liver-seg001", s, etype="MET_UCHAR", dtype="u1")
    (c,) = read_sliver07(tmp_path)
    assert c.case_id == "sliver001" and c.segmentation.shape == (5, 6, 7)
    raw = tmp_path / "label" / "liver-seg001.raw"
    raw.write_bytes(raw.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"liver-seg001.raw: 207 bytes, but .* needs 210"):
        read_sliver07(tmp_path)
    raw.unlink()
    with pytest.raises(DataError, match="liver-seg001.mhd: its data file .* is missing"):
        read_sliver07(tmp_path)


def _msd_tar(path, n=2, drop_label=False):
    v, s = _vol()
    spec = {"name": "Liver", "training": [{"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
                                          for i in range(n)], "test": []}
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("Task03_Liver/dataset.json", json.dumps(spec).encode())
        for i in range(n):
            add(f"Task03_Liver/imagesTr/liver_{i}.nii.gz", gzip.compress(nib.Nifti1Image(v + i, np.eye(4)).to_bytes()))
            if not (drop_label and i == 1):
                add(f"Task03_Liver/labelsTr/liver_{i}.nii.gz", gzip.compress(nib.Nifti1Image(s, np.eye(4)).to_bytes()))


def test_msd_tar_with_dataset_json(tmp_path):
    p = tmp_path / "Task03_Liver.tar"
    _msd_tar(p)
    cases = read_msd_tar(p)
    assert [c.case_id for c in cases] == ["liver_0", "liver_1"]
    assert float(cases[1].volume.mean() - cases[0].volume.mean()) == pytest.approx(1.0, abs=1e-4)
    _msd_tar(tmp_path / "bad.tar", drop_label=True)
    with pytest.raises(DataError, match="bad.tar: dataset.json lists ./labelsTr/liver_1.nii.gz"):
        read_msd_tar(tmp_path / "bad.tar")


def test_landmarks_shape_and_tre_after_to_grid():
    with pytest.raises(DataError, match="file.h5:g: landmarks must be a 6x3 array"):
        landmarks(np.zeros((6, 2)), "file.h5:g")
    from regbench.datasets.liver import LiverCase

    v, s = _vol((16, 16, 16))
    pts = np.array([[2.0, 3, 4], [5, 6, 7], [8, 9, 10], [1, 1, 1], [12, 13, 14], [7.5, 7.5, 7.5]])
    c = to_grid(LiverCase("a", v, s, pts, (2.0, 2.0, 2.0)), shape=(32, 32, 32))
    assert c.volume.shape == (32, 32, 32) and 0 <= c.volume.min() and c.volume.max() <= 1
    assert np.allclose(c.points, (pts + 0.5) * 2 - 0.5) and c.spacing == (1.0, 1.0, 1.0)
    # TRE of SLIVER07-style landmarks under a known shift: a field of +1 voxel along x maps fixed to moving
    ddf = np.zeros((3, 32, 32, 32))
    ddf[0] = 1.0
    err = landmark_tre(ddf, c.points, c.points + [1.0, 0, 0], spacing=c.spacing)
    assert np.allclose(err, 0.0)
    assert np.allclose(landmark_tre(np.zeros_like(ddf), c.points, c.points + [1.0, 0, 0], c.spacing), 1.0)
