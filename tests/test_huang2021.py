"""Huang et al. 2021: Siamese / plain U-Nets, the GDSC, dt and bending-energy terms, the BraTS reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from regbench.errors import ConfigError, DataError, ShapeMismatchError
from regbench.models import build_model
from regbench.models.huang2021 import ConstrainedAffineNet, pad_amounts, pad_to
from regbench.terms import TermContext, bending_energy, build_terms, gaussian_kernel1d

ARCHS = ["unet", "attention", "multires"]
SMALL = {"unet": (4, 4, 8, 8, 8), "attention": (4, 4, 8, 8, 8), "multires": (6, 6, 8, 8)}


# ------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("arch, padding", [("unet", "symmetric"), ("unet", "single_edge"),
                                           ("attention", "single_edge"), ("multires", "symmetric")])
def test_siamese_registers_cross_size_pair_on_fixed_grid(arch, padding):
    torch.manual_seed(0)
    m = build_model("huang2021_siamese", 2, arch=arch, padding=padding, widths=SMALL[arch])
    fixed, moving = torch.rand(2, 1, 32, 24), torch.rand(2, 1, 24, 16)
    out = m(moving, fixed)
    assert out["ddf"].shape == (2, 2, 32, 24)
    assert out["warped"].shape == (2, 1, 32, 24)
    assert out["moving_padded"].shape == (2, 1, 32, 24)
    expect = [(4, 4), (4, 4)] if padding == "symmetric" else [(0, 8), (0, 8)]
    assert out["moving_pad"] == expect
    (a0, _), (a1, _) = expect
    assert torch.equal(out["moving_padded"][:, :, a0:a0 + 24, a1:a1 + 16], moving)
    assert float(out["moving_padded"].sum()) == pytest.approx(float(moving.sum()), rel=1e-5)  # zeros elsewhere
    # near-zero head: the warp is (almost) the identity on the padded moving image
    assert torch.allclose(out["warped"], out["moving_padded"], atol=1e-3)


def test_siamese_3d_shapes_and_shared_vs_two_encoders():
    torch.manual_seed(0)
    shared = build_model("huang2021_siamese", 3, arch="unet", widths=SMALL["unet"])
    two = build_model("huang2021_siamese", 3, arch="unet", widths=SMALL["unet"], shared=False)
    n = lambda mod: sum(p.numel() for p in mod.parameters())
    assert n(two) - n(shared) == n(shared.encoder_fixed)
    out = two(torch.rand(1, 1, 16, 8, 16), torch.rand(1, 1, 24, 16, 16))
    assert out["ddf"].shape == (1, 3, 24, 16, 16)
    out["ddf"].square().sum().backward()
    for enc in (two.encoder_fixed, two.encoder_moving):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_plain_unet_refuses_cross_size_and_siamese_refuses_larger_moving():
    plain = build_model("huang2021", 2, arch="unet", widths=SMALL["unet"])
    with pytest.raises(ValueError, match="share a grid"):
        plain(torch.rand(1, 1, 24, 16), torch.rand(1, 1, 32, 24))
    siam = build_model("huang2021_siamese", 2, arch="unet", widths=SMALL["unet"])
    with pytest.raises(ValueError, match="exceeds fixed size"):
        siam(torch.rand(1, 1, 40, 16), torch.rand(1, 1, 32, 24))
    with pytest.raises(ValueError, match="divisible by 8"):
        siam(torch.rand(1, 1, 20, 16), torch.rand(1, 1, 32, 24))
    with pytest.raises(ValueError, match="padding"):
        build_model("huang2021_siamese", 2, padding="mirror")


def test_pad_amounts_and_pad_to():
    assert pad_amounts((96, 56, 64), (112, 64, 64), "symmetric") == [(8, 8), (4, 4), (0, 0)]
    assert pad_amounts((96, 56, 64), (112, 64, 64), "single_edge") == [(0, 16), (0, 8), (0, 0)]
    assert pad_amounts((5,), (8,), "symmetric") == [(1, 2)]
    x = torch.arange(6.0).view(1, 1, 2, 3)
    y = pad_to(x, (4, 4), "single_edge")
    assert y.shape == (1, 1, 4, 4) and torch.equal(y[:, :, :2, :3], x) and float(y.sum()) == float(x.sum())


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_networks_with_and_without_can(arch):
    torch.manual_seed(0)
    m = build_model("huang2021", 2, arch=arch, can=True, widths=SMALL[arch])
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = m(x, y)
    assert {"ddf", "warped", "affine", "affine_ddf", "affine_warped", "phi"} <= set(out)
    eye = torch.cat([torch.eye(2), torch.zeros(2, 1)], 1)
    assert torch.allclose(out["affine"], eye.expand(2, 2, 3))      # identity at initialisation
    assert out["ddf"].shape == (2, 2, 32, 32)
    plain = build_model("huang2021", 2, arch=arch, widths=SMALL[arch])
    assert set(plain(x, y)) == {"ddf", "warped"}


def test_first_convolution_is_7x7x7_and_can_is_constrained():
    m = build_model("huang2021", 3, arch="unet")
    assert m.encoder.levels[0][0][0].kernel_size == (7, 7, 7)
    mr = build_model("huang2021_siamese", 3, arch="multires")
    assert mr.encoder_fixed.levels[0].c1[0].kernel_size == (7, 7, 7)
    can = ConstrainedAffineNet(2, max_linear=0.1, max_translation=0.2)
    torch.nn.init.constant_(can.fc.bias, 100.0)      # saturate the tanh bounds
    with torch.no_grad():
        mat, _ = can(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert float((mat[0, :, :2] - torch.eye(2)).abs().max()) <= 0.1 + 1e-6
    assert float(mat[0, :, 2].abs().max()) <= 0.2 * 15.5 + 1e-4


# ------------------------------------------------------------------------------------------- terms


def _square(shape, lo, hi):
    s = torch.zeros(1, 1, *shape, dtype=torch.int64)
    s[(0, 0) + tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return s


def _ctx(fixed_seg, moving_seg, ddf=None, **outputs):
    nd = fixed_seg.dim() - 2
    ddf = torch.zeros(fixed_seg.shape[0], nd, *fixed_seg.shape[2:]) if ddf is None else ddf
    segs = {"fixed": fixed_seg, "moving": moving_seg}
    return TermContext({"fixed": fixed_seg.float(), "moving": moving_seg.float()}, {"ddf": ddf, **outputs},
                       lambda side: segs[side])


def _term(name, **params):
    return build_terms([{"name": name, **params}], labels=(1,))[0]


def test_gaussian_kernel_eq4():
    assert gaussian_kernel1d(0) is None
    k = gaussian_kernel1d(2.0)
    assert k.numel() == 13 and float(k.sum()) == pytest.approx(1.0) and int(k.argmax()) == 6
    with pytest.raises(ValueError):
        gaussian_kernel1d(-1)


def test_gdsc_identical_labels_zero_or_minimal_and_equals_dice_at_sigma_0():
    a = _square((32, 32), (8, 8), (20, 20))
    for sig in ([0], [0, 1], [0, 1, 2, 4, 8]):   # squared denominator: exactly 0 at every scale
        assert float(_term("gdsc", sigmas=sig, denominator="squared")(_ctx(a, a))) == pytest.approx(0.0, abs=1e-5)
    assert float(_term("gdsc", sigmas=[0])(_ctx(a, a))) == pytest.approx(0.0, abs=1e-5)
    # Eq. 5 as printed (linear denominator): a soft map's Dice with itself is < 1, but alignment is the minimum
    t = _term("gdsc", sigmas=[0, 1, 2, 4, 8])
    same = float(t(_ctx(a, a)))
    assert same > 0.01
    for lo in ((9, 8), (8, 9), (7, 8), (10, 10)):
        b = _square((32, 32), lo, (lo[0] + 12, lo[1] + 12))
        assert float(t(_ctx(a, b))) > same
    b = _square((32, 32), (11, 8), (23, 20))
    ctx = _ctx(a, b)
    plain = float(build_terms([{"name": "dice"}], labels=(1,))[0](ctx))
    assert float(_term("gdsc", sigmas=[0])(ctx)) == pytest.approx(plain, abs=1e-5)
    assert plain == pytest.approx(1 - 2 * 108 / 288, abs=1e-4)   # overlap 9x12 of two 12x12 squares


def test_gdsc_shift_losses_and_gradient_where_plain_dice_has_none():
    a = _square((40, 40), (6, 6), (14, 14))
    near, far = _square((40, 40), (9, 6), (17, 14)), _square((40, 40), (13, 6), (21, 14))
    sets = ([0], [0, 1], [0, 1, 2], [0, 1, 2, 4], [0, 1, 2, 4, 8])
    for sig in sets:  # larger misalignment -> larger loss, for every sigma set
        t = _term("gdsc", sigmas=sig)
        assert 0 < float(t(_ctx(a, near))) < float(t(_ctx(a, far)))
    # disjoint labels 10 voxels apart: Dice is saturated at 1 with zero gradient; the smoothed scales are not
    apart = _square((40, 40), (24, 6), (32, 14))
    grads = {}
    for key, sig in (("dice", [0]), ("gdsc", [0, 1, 2, 4, 8])):
        ddf = torch.zeros(1, 2, 40, 40, requires_grad=True)
        loss = _term("gdsc", sigmas=sig)(_ctx(a, apart, ddf))
        loss.backward()
        grads[key] = float(ddf.grad.abs().sum())
        if key == "dice":
            assert float(loss.detach()) == pytest.approx(1.0, abs=1e-5)
        else:
            assert float(loss.detach()) < 1.0
    assert grads["dice"] == 0.0 and grads["gdsc"] > 0.0
    with pytest.raises(ConfigError):
        _term("gdsc", sigmas=[-1])


def test_gdsc_and_dt_on_a_cross_size_pair_use_the_padding_placement():
    fixed = _square((32, 24), (10, 6), (18, 12))
    pads = pad_amounts((24, 16), (32, 24), "symmetric")        # (4, 4), (4, 4)
    moving = fixed[:, :, 4:28, 4:20].clone()                   # the same anatomy on the smaller grid
    ctx = _ctx(fixed, moving, moving_pad=pads)
    assert float(_term("gdsc", denominator="squared")(ctx)) == pytest.approx(0.0, abs=1e-5)
    assert float(_term("dt")(ctx)) == pytest.approx(0.0, abs=1e-4)
    wrong = _ctx(fixed, moving, moving_pad=pad_amounts((24, 16), (32, 24), "single_edge"))
    assert float(_term("dt")(wrong)) == pytest.approx(np.hypot(4, 4), abs=1e-3)
    with pytest.raises(ConfigError, match="moving_pad"):
        _term("gdsc")(_ctx(fixed, moving))                     # cross-size without a placement


def test_dt_centre_distance():
    a = _square((32, 32), (8, 8), (16, 16))
    b = _square((32, 32), (11, 8), (19, 16))                   # shifted by 3 along axis 0
    t = _term("dt")
    assert float(t(_ctx(a, a))) == pytest.approx(0.0, abs=1e-4)
    assert float(t(_ctx(a, b))) == pytest.approx(3.0, abs=1e-4)
    shift = torch.zeros(1, 2, 32, 32)
    shift[:, 0] = 3.0                                          # warped(x) = moving(x + 3): undoes the shift
    assert float(t(_ctx(a, b, shift))) == pytest.approx(0.0, abs=1e-3)
    assert float(_term("dt", squash="sigmoid")(_ctx(a, b))) == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-4)


def test_bending_energy_on_known_fields():
    x0, x1, x2 = torch.meshgrid(*(torch.arange(12.0) for _ in range(3)), indexing="ij")
    u = torch.zeros(1, 3, 12, 12, 12)
    u[0, 0] = 0.5 * x0 ** 2                                    # u_0 = a x0^2, a = 0.5: d00 = 1
    assert float(bending_energy(u)) == pytest.approx(1.0 / 3, rel=1e-5)
    u[0, 0] = 0.3 * x0 * x1                                    # mixed: d01 = 0.3, counted twice
    assert float(bending_energy(u)) == pytest.approx(2 * 0.09 / 3, rel=1e-5)
    u[0] = torch.stack([0.2 * x0 - 0.1 * x1 + 3, 0.05 * x2, -x0])  # affine: no bending
    assert float(bending_energy(u)) == pytest.approx(0.0, abs=1e-9)
    t = build_terms([{"name": "bending", "weight": 0.5}])[0]
    assert t.weight == 0.5
    with pytest.raises(ValueError):
        bending_energy(torch.zeros(1, 2, 4, 8))


def test_one_training_step_of_a_siamese_network_on_a_cross_size_pair():
    torch.manual_seed(0)
    m = build_model("huang2021_siamese", 2, arch="attention", widths=SMALL["attention"])
    fixed_seg = _square((32, 24), (10, 6), (18, 12))
    moving_seg = _square((24, 16), (8, 3), (16, 9))
    out = m(moving_seg.float(), fixed_seg.float())
    terms = build_terms([{"name": "gdsc"}, {"name": "bending", "weight": 0.5}], labels=(1,))
    ctx = TermContext({"fixed": fixed_seg.float(), "moving": moving_seg.float()}, out,
                      lambda side: {"fixed": fixed_seg, "moving": moving_seg}[side])
    loss = sum(t.weight * t(ctx) for t in terms)
    loss.backward()
    assert torch.isfinite(loss)
    assert m.decoder.head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- BraTS reader


def _write_case(root: Path, sid: str, shape=(20, 20, 16), seg_values=(1, 2, 4), seg_name=None, t2_affine=None,
                skip=()):
    import nibabel as nib

    d = root / "MICCAI_BraTS2020_TrainingData" / sid
    d.mkdir(parents=True)
    rng = np.random.default_rng(abs(hash(sid)) % 1000)
    brain = np.zeros(shape, np.float32)
    brain[3:-3, 3:-3, 2:-2] = 1
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    for mod in ("t1ce", "t2"):
        if mod in skip:
            continue
        img = (brain * (100 + 50 * rng.random(shape))).astype(np.int16)
        a = t2_affine if (mod == "t2" and t2_affine is not None) else aff
        nib.save(nib.Nifti1Image(img, a), str(d / f"{sid}_{mod}.nii.gz"))
    if "seg" not in skip:
        seg = np.zeros(shape, np.uint8)
        seg[6:10, 6:10, 5:9] = seg_values[0]
        seg[10:13, 6:10, 5:9] = seg_values[1]     # edema
        seg[6:10, 10:13, 5:9] = seg_values[2]
        nib.save(nib.Nifti1Image(seg, aff), str(d / (seg_name or f"{sid}_seg.nii.gz")))
    return d


def _build(raw, out, **params):
    from regbench.datasets.brats import build_brats

    return build_brats(raw, out, {"shape": [16, 16, 8], "n_test": 1, "deformation": {"sigma": 2.0, "magnitude": 1.5},
                                  **params}, 0, "brats2020")


def test_brats2020_layout_contract_edema_removed_and_case_355(tmp_path):
    from regbench.data import PreparedDataset
    from regbench.datasets.demo import true_pair_ddf
    from regbench.io import load_ddf, load_image

    raw = tmp_path / "raw"
    for sid in ("BraTS20_Training_001", "BraTS20_Training_002"):
        _write_case(raw, sid)
    _write_case(raw, "BraTS20_Training_355", seg_name="W39_1998.09.19_Segm.nii")
    out = tmp_path / "prep" / "brats2020"
    df = _build(raw, out)
    assert len(df) == 6 and {"t1ce", "t2", "seg", "seg_brain", "ddf"} <= set(df.columns)
    ds = PreparedDataset.open(out)
    assert list(ds.pairs.columns) == ["pair_id", "fold", "split", "fixed", "moving", "true_ddf"]
    assert sorted(ds.pairs.split) == ["test", "train", "train"]
    assert "W39_1998.09.19_Segm.nii" in ds.cases.at["BraTS20_Training_355", "source_seg"]
    for _, pr in ds.pairs.iterrows():
        fixed_seg = ds.load(pr.fixed, "seg").array
        assert set(np.unique(fixed_seg)) <= {0, 1} and fixed_seg.sum() > 0   # edema removed, tumour = 1
        assert ds.load(pr.fixed, "t1ce").array.shape == (16, 16, 8)
        d = load_ddf(ds.path(pr.moving, "ddf"))
        assert np.abs(load_ddf(ds.path(pr.fixed, "ddf"))).max() == 0
        assert np.sqrt((d ** 2).sum(0)).max() == pytest.approx(1.5, rel=1e-4)
        g = load_ddf(out / pr.true_ddf)
        np.testing.assert_allclose(g, true_pair_ddf(np.zeros_like(d), d), atol=1e-5)
        # the moving T2 is the fixed-side T2 deformed by d (regbench pull-back convention)
        t2, t2d = ds.load(pr.fixed, "t2").array, ds.load(pr.moving, "t2").array
        from regbench.datasets.brats import _warp
        np.testing.assert_allclose(np.clip(_warp(t2, d), 0, 1), t2d, atol=1e-5)
    edema_free = load_image(out / ds.cases.at["BraTS20_Training_001", "seg"]).array
    assert edema_free.max() == 1
    assert not list((tmp_path / "prep").glob(".*partial"))
    # seeded: the same seed gives the same field, the field differs between cases
    out2 = tmp_path / "prep" / "again"
    _build(raw, out2)
    a = load_ddf(out / "fields/BraTS20_Training_001_def_ddf.nii.gz")
    np.testing.assert_array_equal(a, load_ddf(out2 / "fields/BraTS20_Training_001_def_ddf.nii.gz"))
    assert not np.allclose(a, load_ddf(out / "fields/BraTS20_Training_002_def_ddf.nii.gz"))


def test_brats2023_naming_without_seg(tmp_path):
    import nibabel as nib

    d = tmp_path / "raw" / "BraTS-GLI-00001-000"
    d.mkdir(parents=True)
    img = np.zeros((16, 16, 16), np.int16)
    img[3:13, 3:13, 3:13] = 200
    for mod in ("t1c", "t2w"):
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(d / f"BraTS-GLI-00001-000-{mod}.nii.gz"))
    df = _build(tmp_path / "raw", tmp_path / "prep" / "case")
    assert "seg" not in df.columns and "seg_brain" in df.columns
    assert list(df.case) == ["BraTS-GLI-00001-000", "BraTS-GLI-00001-000_def"]


@pytest.mark.parametrize("problem, error, names", [
    ("missing_t2", DataError, "BraTS20_Training_002_t2.nii.gz"),
    ("bad_labels", DataError, "BraTS20_Training_002_seg.nii.gz"),
    ("grid", ShapeMismatchError, "BraTS20_Training_002_t2.nii.gz"),
    ("missing_seg", DataError, "BraTS20_Training_002_seg.nii.gz"),
])
def test_brats_bad_input_names_the_file_and_leaves_nothing(tmp_path, problem, error, names):
    raw = tmp_path / "raw"
    _write_case(raw, "BraTS20_Training_001")
    kw = {"missing_t2": {"skip": ("t2",)}, "bad_labels": {"seg_values": (1, 3, 4)},
          "grid": {"t2_affine": np.diag([1.0, 1.0, 2.0, 1.0])}, "missing_seg": {"skip": ("seg",)}}[problem]
    _write_case(raw, "BraTS20_Training_002", **kw)
    out = tmp_path / "prep" / "brats2020"
    with pytest.raises(error, match=names.replace(".", r"\.")) as info:
        _build(raw, out)
    assert isinstance(info.value, DataError)
    assert not out.exists() and not list((tmp_path / "prep").glob(".*"))


def test_brats_params_errors(tmp_path):
    raw = tmp_path / "raw"
    _write_case(raw, "BraTS20_Training_001")
    with pytest.raises(ConfigError, match="n_pairs"):
        _build(raw, tmp_path / "o", n_pairs=80)
    with pytest.raises(ConfigError, match="unknown key"):
        _build(raw, tmp_path / "o", sigma=3)
    with pytest.raises(DataError, match="no BraTS case folders"):
        _build(tmp_path / "empty", tmp_path / "o")
