"""Huang et al. 2021, cross-size pairs end to end: placement, register, evaluate (TRE with the crop offset), ANTs,
the demo's moving_crop reader, the dice term's placement, and training augmentation (regbench.augment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from regbench import spatial
from regbench.augment import Augmentation
from regbench.errors import ConfigError, RegbenchError, ShapeMismatchError
from regbench.evaluate import evaluate_method
from regbench.io import Image, load_ddf, load_image, save_ddf, save_image
from regbench.models import build_model
from regbench.models.huang2021 import pad_amounts
from regbench.placement import (affine_text, field_to_frame, map_points, offset_from_pad, parse_affine, place,
                                target_affine, world_offset)
from regbench.register import register_pairs
from regbench.terms import TermContext, build_terms

SMALL = (4, 4, 8, 8, 8)
FULL, CROP, OFF = (24, 24, 16), (16, 16, 16), (4, 4, 0)   # symmetric Siamese padding of 16 in 24 is 4: = the crop
SPACING = 2.0
AFF = np.diag([SPACING, SPACING, SPACING, 1.0])
AFF[:3, 3] = [-20.0, 10.0, 3.0]
CROP_AFF = AFF @ np.block([[np.eye(3), np.asarray(OFF, float)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
CUT = tuple(slice(o, o + c) for o, c in zip(OFF, CROP))


def _smooth(rng, shape, sigma=2.0):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), sigma)


def _field(rng, shape, mag=1.5):
    u = np.stack([_smooth(rng, shape, 3.0) for _ in range(3)])
    return (u * mag / np.abs(u).max()).astype(np.float32)


def make_xsize_prepared(root: Path, n_train=2, n_test=2, landmarks=True) -> Path:
    """Demo-style cases on a 24x24x16 grid (2 mm, oblique-free, offset origin): image ``img`` (full), ``img_crop``
    (a 16x16x16 crop at voxel offset (4, 4, 0), affine translated), ``seg``/``seg_crop``, a template-to-case field
    ``ddf`` (the demo convention) and landmarks on the full grid."""
    from regbench.datasets.liver import write_landmarks

    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.arange(s) for s in FULL], indexing="ij")).astype(float)
    template = np.exp(-(((g[0] - 11.5) / 5) ** 2 + ((g[1] - 11.5) / 6) ** 2 + ((g[2] - 7.5) / 4) ** 2))
    tseg = np.where(template > 0.6, 2, np.where(template > 0.2, 1, 0))
    pts_t = np.array([[10.0, 11.0, 7.0], [13.0, 9.0, 8.0], [11.0, 14.0, 6.0]])
    rows = []
    for i in range(n_train + n_test):
        case = f"c{i}"
        u = _field(rng, FULL)
        ut = torch.from_numpy(u)[None]
        img = spatial.warp(torch.from_numpy(template.astype(np.float32))[None, None], ut)[0, 0].numpy()
        seg = spatial.warp_labels(torch.from_numpy(tseg)[None, None], ut)[0, 0].numpy().astype(np.int16)
        save_image(root / f"{case}_img.nii.gz", img, AFF)
        save_image(root / f"{case}_seg.nii.gz", seg, AFF)
        save_image(root / f"{case}_img_crop.nii.gz", np.ascontiguousarray(img[CUT]), CROP_AFF)
        save_image(root / f"{case}_seg_crop.nii.gz", np.ascontiguousarray(seg[CUT]), CROP_AFF)
        save_ddf(root / f"{case}_ddf.nii.gz", u, AFF)
        row = {"case": case, "split": "train" if i < n_train else "test", "img": f"{case}_img.nii.gz",
               "img_crop": f"{case}_img_crop.nii.gz", "seg": f"{case}_seg.nii.gz",
               "seg_crop": f"{case}_seg_crop.nii.gz", "ddf": f"{case}_ddf.nii.gz"}
        if landmarks:  # case landmark y with case(y) = template(y + u(y)) near the template points: shift a bit
            write_landmarks(root / f"{case}_lm.tsv", pts_t + rng.uniform(-1, 1, pts_t.shape))
            row["landmarks"] = f"{case}_lm.tsv"
        rows.append(row)
    cases = pd.DataFrame(rows)
    cases.to_csv(root / "cases.tsv", sep="\t", index=False)
    pairs = [{"pair_id": f"{f}__{m}", "fold": 0, "split": s, "fixed": f, "moving": m}
             for s in ("train", "test") for f in cases[cases.split == s].case for m in cases[cases.split == s].case
             if f != m]
    pd.DataFrame(pairs).to_csv(root / "pairs.tsv", sep="\t", index=False)
    return root


@pytest.fixture
def xprep(tmp_path) -> Path:
    root = tmp_path / "prep"
    root.mkdir()
    return make_xsize_prepared(root)


def _save_model(path: Path, name: str, params: dict, seed=0, head_std=5.0) -> torch.nn.Module:
    """A ``model.pt`` as ``regbench train`` writes it, with a non-trivial field head (random weights)."""
    torch.manual_seed(seed)
    m = build_model(name, 3, **params)
    if head_std:
        torch.nn.init.normal_(m.decoder.head.weight, std=head_std)
    torch.save({"model": m.state_dict(), "name": name, "ndim": 3, "params": params, "spec_hash": "test",
                "grid": {"shape": list(FULL), "spacing": [SPACING] * 3}}, path)
    return m.eval()


XMOD = {"fixed": "img", "moving": "img_crop"}


# ------------------------------------------------------------------------------------------- placement


def test_world_offset_place_and_frames():
    fixed = Image(np.zeros(FULL, np.float32), AFF, Path("f.nii.gz"))
    moving = Image(np.zeros(CROP, np.float32), CROP_AFF, Path("m.nii.gz"))
    assert world_offset(fixed, moving) == OFF
    assert np.allclose(target_affine(CROP_AFF, OFF), AFF)
    assert np.allclose(parse_affine(affine_text(AFF)), AFF)
    x = np.arange(np.prod(CROP), dtype=np.float32).reshape(CROP)
    y = place(x, OFF, FULL)
    assert y.shape == FULL and np.array_equal(y[CUT], x) and y.sum() == x.sum()
    t = place(torch.from_numpy(x)[None, None], OFF, FULL)
    assert np.array_equal(t[0, 0].numpy(), y)
    # voxel coordinates through world: crop voxel j is full voxel j + OFF
    assert np.allclose(map_points(np.array([[0.0, 0.0, 0.0]]), CROP_AFF, AFF), [OFF])
    u = np.zeros((3, *FULL), np.float32)
    assert np.allclose(field_to_frame(u, AFF, CROP_AFF), -np.asarray(OFF, float).reshape(3, 1, 1, 1))
    rot = CROP_AFF.copy()
    rot[:3, :3] = rot[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(ShapeMismatchError, match="whole voxels"):
        world_offset(fixed, Image(moving.array, rot, Path("m.nii.gz")))
    half = CROP_AFF.copy()
    half[0, 3] += 0.5 * SPACING
    with pytest.raises(ShapeMismatchError, match="whole voxels"):
        world_offset(fixed, Image(moving.array, half, Path("m.nii.gz")))
    out = CROP_AFF.copy()
    out[0, 3] += 10 * SPACING
    with pytest.raises(ShapeMismatchError, match="outside the fixed grid"):
        world_offset(fixed, Image(moving.array, out, Path("m.nii.gz")))
    with pytest.raises(ShapeMismatchError, match="does not fit"):
        place(x, (10, 0, 0), FULL)


# ------------------------------------------------------------------------------------------- register


def test_register_siamese_cross_size_on_fixed_grid_and_equals_placed_then_warped(xprep, tmp_path):
    params = {"arch": "unet", "padding": "symmetric", "widths": list(SMALL)}
    model = _save_model(tmp_path / "siam.pt", "huang2021_siamese", params)
    out = tmp_path / "reg"
    table = register_pairs(xprep, out, {"name": "Siam", "kind": "learned"}, 0, 0, XMOD,
                           model_path=tmp_path / "siam.pt", moving_seg="seg_crop", device="cpu")
    reg = pd.read_csv(table, sep="\t")
    assert len(reg) == 2
    ds_cases = pd.read_csv(xprep / "cases.tsv", sep="\t").set_index("case")
    for _, r in reg.iterrows():
        assert r["moving_offset_vox"] == "4 4 0"
        assert np.allclose(parse_affine(r["target_affine"]), AFF)   # the placement equals the crop: frame = fixed
        ddf_img = load_image(out / r["ddf"])
        warped, wseg = load_image(out / r["warped"]), load_image(out / r["warped_seg"])
        for img in (ddf_img, warped, wseg):
            assert np.allclose(img.affine, AFF)
        assert warped.array.shape == FULL and wseg.array.shape == FULL
        ddf = load_ddf(out / r["ddf"])
        assert ddf.shape == (3, *FULL) and np.abs(ddf).max() > 0.05   # a real field, not the identity
        f = torch.from_numpy(load_image(xprep / ds_cases.at[r["fixed"], "img"]).array)[None, None]
        m = torch.from_numpy(load_image(xprep / ds_cases.at[r["moving"], "img_crop"]).array)[None, None]
        with torch.no_grad():
            res = model(m, f)
        assert offset_from_pad(res["moving_pad"]) == OFF
        np.testing.assert_allclose(ddf, res["ddf"][0].numpy(), atol=1e-5)
        expect = spatial.warp(place(m, OFF, FULL), torch.from_numpy(ddf)[None])[0, 0].numpy()
        np.testing.assert_allclose(warped.array, expect, atol=1e-5)
        np.testing.assert_allclose(warped.array, res["warped"][0, 0].numpy(), atol=1e-4)   # the model's own warp
        ms = load_image(xprep / ds_cases.at[r["moving"], "seg_crop"]).array.astype(np.int64)
        eseg = spatial.warp_labels(place(torch.from_numpy(ms)[None, None], OFF, FULL), torch.from_numpy(ddf)[None])
        assert np.array_equal(np.rint(wseg.array).astype(np.int64), eseg[0, 0].numpy())


def test_plain_unet_on_a_cross_size_pair_is_refused_naming_pair_and_shapes(xprep, tmp_path):
    _save_model(tmp_path / "unet.pt", "huang2021", {"arch": "unet", "widths": list(SMALL)})
    with pytest.raises(RegbenchError) as err:
        register_pairs(xprep, tmp_path / "reg", {"name": "Unet", "kind": "learned"}, 0, 0, XMOD,
                       model_path=tmp_path / "unet.pt", moving_seg="seg_crop", device="cpu")
    msg = str(err.value)
    assert "c2__c3" in msg and "(16, 16, 16)" in msg and "(24, 24, 16)" in msg
    assert "registers only pairs on one grid" in msg and "huang2021_siamese" in msg
    assert not (tmp_path / "reg" / "pairs.tsv").exists()
    # a Siamese model with inference_size: refused too (it would resize both images to one grid)
    _save_model(tmp_path / "siam.pt", "huang2021_siamese", {"arch": "unet", "widths": list(SMALL)})
    with pytest.raises(RegbenchError, match="inference_size"):
        register_pairs(xprep, tmp_path / "reg2", {"name": "Siam", "kind": "learned", "inference_size": [24, 24, 16]},
                       0, 0, XMOD, model_path=tmp_path / "siam.pt", moving_seg="seg_crop", device="cpu")


def test_moving_seg_off_its_image_grid_is_an_error(xprep, tmp_path):
    _save_model(tmp_path / "siam.pt", "huang2021_siamese", {"arch": "unet", "widths": list(SMALL)})
    with pytest.raises(ShapeMismatchError, match="moving label map"):   # seg (24^2 x 16) beside img_crop (16^3)
        register_pairs(xprep, tmp_path / "reg", {"name": "Siam", "kind": "learned"}, 0, 0, XMOD,
                       model_path=tmp_path / "siam.pt", device="cpu")


def test_identity_on_cross_size_pair_places_the_moving_image_in_world_coordinates(xprep, tmp_path):
    out = tmp_path / "reg"
    register_pairs(xprep, out, {"name": "Before", "kind": "classical", "transform": "identity"}, 0, 0, XMOD,
                   moving_seg="seg_crop")
    r = pd.read_csv(out / "pairs.tsv", sep="\t").iloc[0]
    assert r["moving_offset_vox"] == "4 4 0" and np.allclose(parse_affine(r["target_affine"]), AFF)
    crop = load_image(xprep / f"{r['moving']}_img_crop.nii.gz").array
    full = load_image(xprep / f"{r['moving']}_img.nii.gz").array
    w = load_image(out / r["warped"]).array
    np.testing.assert_allclose(w, place(crop, OFF, FULL), atol=1e-5)   # the identity warp (grid_sample rounding)
    np.testing.assert_allclose(w[CUT], full[CUT], atol=1e-5)


def test_register_images_with_a_siamese_model_takes_a_cross_size_pair(xprep, tmp_path):
    """regbench register-images: the Siamese network places the cropped moving image itself; the ITK field maps
    fixed points to the moving world points of that placement, so SimpleITK applying it to the CROPPED moving file
    gives our warped image; a plain network's pair is refused unless --resample-moving."""
    import SimpleITK as sitk

    from regbench.enduser import register_images

    params = {"arch": "unet", "padding": "symmetric", "widths": list(SMALL)}
    model = _save_model(tmp_path / "siam.pt", "huang2021_siamese", params)
    f, m = xprep / "c2_img.nii.gz", xprep / "c3_img_crop.nii.gz"
    out = tmp_path / "out" / "x"
    summary = register_images(f, m, "siam", out, model_path=tmp_path / "siam.pt", device="cpu",
                              fixed_labels_path=xprep / "c2_seg.nii.gz", moving_labels_path=xprep / "c3_seg_crop.nii.gz")
    assert summary["cross_size"] and summary["moving_offset_vox"] == list(OFF)
    warped = load_image(f"{out}_warped.nii.gz")
    assert warped.array.shape == FULL and np.allclose(warped.affine, AFF)
    ft = torch.from_numpy(load_image(f).array)[None, None]
    mt = torch.from_numpy(load_image(m).array)[None, None]
    with torch.no_grad():
        res = model(mt, ft)
    np.testing.assert_allclose(warped.array, res["warped"][0, 0].numpy(), atol=1e-4)
    assert load_image(f"{out}_warped_labels.nii.gz").array.shape == FULL
    field = sitk.Cast(sitk.ReadImage(f"{out}_field_itk.nii.gz"), sitk.sitkVectorFloat64)
    theirs = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(m)), sitk.ReadImage(str(f)),
                                                  sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0)).T
    inner = (slice(6, 18), slice(6, 18), slice(3, 13))
    np.testing.assert_allclose(theirs[inner], warped.array[inner], atol=2e-3)
    _save_model(tmp_path / "unet.pt", "huang2021", {"arch": "unet", "widths": list(SMALL)})
    with pytest.raises(ShapeMismatchError, match="cross-size network"):
        register_images(f, m, "unet", tmp_path / "u" / "x", model_path=tmp_path / "unet.pt", device="cpu")


# ------------------------------------------------------------------------------------------- evaluate (TRE)


def _identity_reg(out: Path, prep: Path, pair: str, moving_col: str, seg_col: str, target=None):
    """A registration folder with one pair, a zero field and the moving image placed at (4, 4, 0) if cropped."""
    out.mkdir(parents=True)
    f, m = pair.split("__")
    img = load_image(prep / f"{m}_{moving_col}.nii.gz").array
    seg = load_image(prep / f"{m}_{seg_col}.nii.gz").array
    if img.shape != FULL:
        img, seg = place(img, OFF, FULL), place(seg, OFF, FULL)
    save_ddf(out / "d.nii.gz", np.zeros((3, *FULL), np.float32), AFF)
    save_image(out / "w.nii.gz", img, AFF)
    save_image(out / "ws.nii.gz", seg.astype(np.int16), AFF)
    row = {"pair_id": pair, "fixed": f, "moving": m, "ddf": "d.nii.gz", "warped": "w.nii.gz", "warped_seg": "ws.nii.gz",
           "runtime_s": 0.0, "device": "cpu"}
    if target is not None:
        frame, p = target
        row["target_affine"], row["moving_offset_vox"] = affine_text(frame), " ".join(str(v) for v in p)
    pd.DataFrame([row]).to_csv(out / "pairs.tsv", sep="\t", index=False)


def test_tre_of_a_crop_with_the_siamese_placement_equals_the_uncropped_identity(xprep, tmp_path):
    labels = {1: "outer", 2: "inner"}
    pair = "c2__c3"
    pads = pad_amounts(CROP, FULL, "symmetric")
    assert offset_from_pad(pads) == OFF                     # Siamese placement = the crop offset here
    p = offset_from_pad(pads)
    runs = {"full": ("img", "seg", None),
            "crop": ("img_crop", "seg_crop", (target_affine(CROP_AFF, p), p)),
            "wrong": ("img_crop", "seg_crop", (target_affine(CROP_AFF, (0, 0, 0)), (0, 0, 0)))}   # at the corner
    # landmarks are voxel coordinates of the case's own image: the cropped moving image's are the full ones - OFF
    import shutil

    from regbench.datasets.liver import read_landmarks, write_landmarks

    cprep = tmp_path / "prep_crop"
    shutil.copytree(xprep, cprep)
    write_landmarks(cprep / "c3_lm.tsv", read_landmarks(xprep / "c3_lm.tsv") - np.asarray(OFF, float))
    res = {}
    for name, (mcol, scol, target) in runs.items():
        prep = xprep if target is None else cprep
        _identity_reg(tmp_path / name, prep, pair, mcol, scol, target)
        evaluate_method(prep, tmp_path / name, tmp_path / f"{name}.tsv", "x", name, name, 0, labels, "img")
        res[name] = pd.read_csv(tmp_path / f"{name}.tsv", sep="\t").iloc[0]
    full, crop, wrong = res["full"], res["crop"], res["wrong"]
    assert crop["tre_mm"] == pytest.approx(full["tre_mm"], rel=1e-5, abs=1e-6)
    assert crop["tre_landmark_mm"] == pytest.approx(full["tre_landmark_mm"], rel=1e-5, abs=1e-6)
    assert np.isfinite(full["tre_mm"]) and np.isfinite(full["tre_landmark_mm"])
    assert wrong["tre_mm"] > full["tre_mm"] + 2.0           # the corner placement is 4 voxels (8 mm) off in x, y
    assert wrong["tre_landmark_mm"] > full["tre_landmark_mm"] + 2.0
    # DSC: the crop lost nothing of the labels inside the box, so overlap is that of the uncropped pair here
    assert crop["dsc"] == pytest.approx(full["dsc"], abs=0.05)


def test_bad_target_affine_names_the_table(xprep, tmp_path):
    from regbench.errors import DataError

    _identity_reg(tmp_path / "r", xprep, "c2__c3", "img_crop", "seg_crop", (AFF, OFF))
    t = pd.read_csv(tmp_path / "r" / "pairs.tsv", sep="\t")
    t["target_affine"] = "[[1, 2]]"
    t.to_csv(tmp_path / "r" / "pairs.tsv", sep="\t", index=False)
    with pytest.raises(DataError, match="target_affine"):
        evaluate_method(xprep, tmp_path / "r", tmp_path / "o.tsv", "x", "m", "m", 0, {1: "a"}, "img")


# ------------------------------------------------------------------------------------------- ANTs


@pytest.mark.ants
def test_ants_on_a_cross_size_pair_returns_a_field_on_the_fixed_grid(tmp_path):
    pytest.importorskip("ants")
    from regbench import classical

    rng = np.random.default_rng(1)
    shape = (16, 16, 16)
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(float)
    fixed = np.exp(-(((g[0] - 7.5) / 4) ** 2 + ((g[1] - 8) / 3) ** 2 + ((g[2] - 7) / 3.5) ** 2)).astype(np.float32)
    fixed += 0.3 * np.exp(-(((g[0] - 5) / 2) ** 2 + ((g[1] - 10) / 2) ** 2 + ((g[2] - 9) / 2) ** 2)).astype(np.float32)
    off = (2, 3, 2)
    moving = np.ascontiguousarray(fixed[2:14, 3:15, 2:14])      # the same anatomy, cropped: the truth is u = 0
    ddf, _ = classical.register(fixed, moving, (1.0, 1.0, 1.0), "ants_affine",
                                {"aff_metric": "meansquares", "aff_iterations": (50, 20), "aff_shrink_factors": (2, 1),
                                 "aff_smoothing_sigmas": (1, 0)}, seed=int(rng.integers(100)), moving_offset=off)
    assert ddf.shape == (3, *shape)
    inner = tuple(slice(o + 2, o + c - 2) for o, c in zip(off, moving.shape))
    assert np.abs(ddf[(slice(None), *inner)]).max() < 0.5        # world placement kept: close to the identity
    warped = spatial.warp(place(torch.from_numpy(moving)[None, None], off, shape), torch.from_numpy(ddf)[None])[0, 0]
    assert np.abs(warped.numpy()[inner] - fixed[inner]).max() < 0.05
    # without the offset ANTs would see the crop at the corner: the field then holds the shift
    ddf0, _ = classical.register(fixed, moving, (1.0, 1.0, 1.0), "ants_affine",
                                 {"aff_metric": "meansquares", "aff_iterations": (50, 20), "aff_shrink_factors": (2, 1),
                                  "aff_smoothing_sigmas": (1, 0)}, moving_offset=(0, 0, 0))
    assert np.abs(ddf0[(slice(None), *inner)].mean(axis=(1, 2, 3)) + np.asarray(off)).max() < 0.5


# ------------------------------------------------------------------------------------------- terms


def test_dice_term_places_a_cross_size_moving_label_map_with_moving_pad():
    fixed = torch.zeros(1, 1, 24, 24, dtype=torch.int64)
    fixed[0, 0, 8:14, 6:12] = 1
    moving = fixed[:, :, 4:20, 4:20].clone()                 # a 16x16 crop at (4, 4)
    ddf = torch.zeros(1, 2, 24, 24)
    ctx = lambda outputs: TermContext({"fixed": fixed.float(), "moving": moving.float()}, {"ddf": ddf, **outputs},
                                      lambda side: {"fixed": fixed, "moving": moving}[side])
    dice, = build_terms([{"name": "dice"}], labels=(1,))
    assert float(dice(ctx({"moving_pad": [(4, 4), (4, 4)]}))) == pytest.approx(0.0, abs=1e-6)
    assert float(dice(ctx({"moving_pad": [(0, 8), (0, 8)]}))) > 0.3      # placed at the corner: misaligned
    with pytest.raises(ConfigError, match="no placement"):
        dice(ctx({}))


# ------------------------------------------------------------------------------------------- augmentation


def _aug(**cfg):
    return Augmentation({"flip_axes": [0, 1], "flip_prob": 0.5,
                         "affine": {"rotation_deg": 15, "scale": 0.1, "translation_vox": 2}, **cfg}, 3)


def test_augmentation_flips_both_sides_consistently_and_affine_keeps_labels():
    rng = np.random.default_rng(3)
    aug = _aug()
    fixed = torch.rand(6, 1, 16, 12, 8)
    moving = torch.rand(6, 1, 8, 12, 8)                      # a cross-size moving image: its own grid
    blocks = torch.randint(0, 4, (6, 1, 2, 3, 2))
    mseg = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)   # 4-voxel blocks
    draw = aug.draw(rng, 6)
    assert any(draw.flips)
    assert all(m is None for m in draw.matrices["fixed"])   # default sides: [moving]
    fa = aug.apply(fixed, draw, "fixed")
    for b, axes in enumerate(draw.flips):                    # fixed: flips only, exactly
        assert torch.equal(fa[b:b + 1], fixed[b:b + 1].flip([2 + a for a in axes]) if axes else fixed[b:b + 1])
    sa = aug.apply(mseg, draw, "moving", labels=True)
    assert sa.dtype == mseg.dtype and sa.shape == mseg.shape
    assert set(sa.unique().tolist()) <= set(mseg.unique().tolist())   # nearest neighbour: no new label values
    # the moving image and its labels get the same transform: a piecewise-constant image equal to the labels,
    # warped linearly, agrees with the labels warped nearest-neighbour away from block borders
    img = mseg.float()
    ia = aug.apply(img, draw, "moving")
    agree = (ia.round() == sa.float()).float().mean()
    assert agree > 0.8                                        # linear vs nearest differ only at label borders
    # same flips on the moving side as on the fixed side (an un-transformed check: affine off)
    flip_only = Augmentation({"flip_axes": [0, 1], "flip_prob": 0.5}, 3)
    d2 = flip_only.draw(np.random.default_rng(3), 6)
    assert d2.flips == draw.flips                             # the same number of draws per sample
    m2 = flip_only.apply(moving, d2, "moving")
    for b, axes in enumerate(d2.flips):
        assert torch.equal(m2[b:b + 1], moving[b:b + 1].flip([2 + a for a in axes]) if axes else moving[b:b + 1])


def test_augmentation_is_deterministic_by_seed_and_validated():
    a = _aug(affine={"rotation_deg": 10, "sides": ["fixed", "moving"]})
    d1, d2 = a.draw(np.random.default_rng([0, 0, 5]), 4), a.draw(np.random.default_rng([0, 0, 5]), 4)
    assert d1.flips == d2.flips
    assert all(np.array_equal(x, y) for x, y in zip(d1.matrices["moving"], d2.matrices["moving"]))
    assert all(m is not None for m in d1.matrices["fixed"])  # both sides, independent draws
    assert not np.allclose(d1.matrices["fixed"][0], d1.matrices["moving"][0])
    d3 = a.draw(np.random.default_rng([0, 0, 6]), 4)
    assert not all(np.array_equal(x, y) for x, y in zip(d1.matrices["moving"], d3.matrices["moving"]))
    assert Augmentation.from_config(None, 3) is None and Augmentation.from_config({}, 3) is None
    none = Augmentation({"prob": 0.0, "flip_axes": [0], "affine": {"rotation_deg": 10}}, 3).draw(
        np.random.default_rng(1), 3)
    assert none.flips == [(), (), ()] and all(m is None for m in none.matrices["moving"])
    for bad in ({"flip_axes": [3]}, {"prob": 2}, {"affine": {"scale": 1.0}}, {"affine": {"sides": ["left"]}},
                {"mirror": True}, {"affine": {"shear": 1}}):
        with pytest.raises(ConfigError):
            Augmentation(bad, 3)


def _train(prep, out, augment=None, steps=3, modality="img", model="huang2021", moving_seg=None):
    from regbench.train import train

    tr = {"steps": steps, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2,
          "losses": [{"name": "dice"}, {"name": "bending", "weight": 0.5}]}
    if augment is not None:
        tr["augment"] = augment
    method = {"name": "net", "model": model, "model_params": {"arch": "unet", "widths": list(SMALL)}, "train": tr}
    train(prep, out, method, 0, 0, modality, [1, 2], device="cpu", moving_seg=moving_seg)
    return torch.load(Path(out) / "model.pt", weights_only=False)["model"]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_augmentation_off_changes_nothing_and_resume_is_reproducible(tiny_prepared, tmp_path):
    base = _train(tiny_prepared, tmp_path / "a")
    noop = _train(tiny_prepared, tmp_path / "b", augment={"prob": 0.0, "flip_axes": [0],
                                                           "affine": {"rotation_deg": 10}})
    assert _same(base, noop)                    # the augmentation stream does not touch pair sampling or weights
    aug = {"flip_axes": [0], "affine": {"rotation_deg": 10, "scale": 0.1, "translation_vox": 2}}
    on = _train(tiny_prepared, tmp_path / "c", augment=aug, steps=4)
    part = _train(tiny_prepared, tmp_path / "d", augment=aug, steps=2)
    assert not _same(part, on)
    resumed = _train(tiny_prepared, tmp_path / "d", augment=aug, steps=4)   # resumes from the step-2 checkpoint
    assert _same(resumed, on)
    assert not _same(_train(tiny_prepared, tmp_path / "e", steps=4), on)


def test_siamese_trains_on_cross_size_pairs_with_dice_and_augmentation(xprep, tmp_path):
    aug = {"flip_axes": [0], "affine": {"rotation_deg": 5, "translation_vox": 1, "sides": ["fixed", "moving"]}}
    w = _train(xprep, tmp_path / "s", augment=aug, steps=2, modality=XMOD, model="huang2021_siamese",
               moving_seg="seg_crop")
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    log = pd.read_csv(tmp_path / "s" / "train_log.tsv", sep="\t")
    assert len(log) == 2 and np.isfinite(log["dice"]).all()
    with pytest.raises(ValueError, match="share a grid"):   # the plain network refuses the same training pairs
        _train(xprep, tmp_path / "p", steps=1, modality=XMOD, moving_seg="seg_crop")


# ------------------------------------------------------------------------------------------- config


def test_config_schema_takes_augment_moving_seg_and_raw():
    from regbench.config import validate_experiment
    from regbench.datasets.registry import load_yaml

    exp = load_yaml(Path(__file__).resolve().parents[1] / "tests" / "configs" / "e2e.yaml")
    exp["datasets"]["demo_crop"] = {**exp["datasets"]["demo"], "raw": "demo", "modality": {"fixed": "t1", "moving": "t2_crop"},
                                    "moving_seg": "seg_crop"}
    exp["methods"]["voxelmorph"]["train"]["augment"] = {"flip_axes": [0], "affine": {"rotation_deg": 5}}
    v = validate_experiment(exp, "x")
    assert "moving_seg" not in v["datasets"]["demo"]        # no new defaults: other experiments' specs unchanged
    bad = json.loads(json.dumps(exp))
    bad["methods"]["voxelmorph"]["train"]["augment"] = {"flip": True}
    with pytest.raises(ConfigError, match="augment"):
        validate_experiment(bad, "x")


# ------------------------------------------------------------------------------------------- the demo reader


def _nilearn_raw(tmp_path) -> Path:
    from regbench.datasets.demo import SOURCE_FILES

    nilearn = pytest.importorskip("nilearn")
    d = Path(nilearn.__file__).parent / "datasets" / "data"
    if any(not (d / f).exists() for f in SOURCE_FILES.values()):
        pytest.skip("nilearn lacks the MNI152 2009a files")
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in SOURCE_FILES.values():
        os.symlink(d / f, raw / f)
    return raw


DEMO = {"spacing_mm": 6.0, "n_subjects": 4, "n_test": 2}


def test_demo_moving_crop_columns_are_crops_with_translated_affines(tmp_path):
    from regbench.datasets.demo import build_demo

    raw = _nilearn_raw(tmp_path)
    df = build_demo(raw, tmp_path / "out", {**DEMO, "moving_crop": [24, 24, 24]}, 5)
    assert list(df.columns)[-3:] == ["t1_crop", "t2_crop", "seg_crop"]
    plain = build_demo(raw, tmp_path / "plain", dict(DEMO), 5)
    assert "t2_crop" not in plain.columns
    out = tmp_path / "out"
    for _, r in df.iterrows():
        full, crop = load_image(out / r["t2"]), load_image(out / r["t2_crop"])
        assert crop.array.shape == (24, 24, 24)
        off = world_offset(full, crop)
        assert off == tuple((s - 24) // 2 for s in full.array.shape)
        cut = tuple(slice(o, o + 24) for o in off)
        assert np.array_equal(crop.array, full.array[cut])
        seg, segc = load_image(out / r["seg"]).array, load_image(out / r["seg_crop"]).array
        assert np.array_equal(segc, seg[cut])
        # the crop draws no random numbers: the subjects are those of the run without it
        assert np.array_equal(full.array, load_image(tmp_path / "plain" / r["t2"]).array)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["moving_crop"]["shape"] == [24, 24, 24]
    with pytest.raises(ConfigError, match="does not fit"):
        build_demo(raw, tmp_path / "bad", {**DEMO, "moving_crop": [64, 24, 24]}, 5)
    with pytest.raises(ConfigError, match="moving_crop"):
        build_demo(raw, tmp_path / "bad2", {**DEMO, "moving_crop": [24, 24]}, 5)


@pytest.mark.slow
def test_demo_cross_size_end_to_end_train_register_evaluate(tmp_path):
    """A Siamese U-Net trains on the demo's cross-size pairs (T1 fixed 32^3, T2 cropped to 24^3; flip + affine
    augmentation), registers and is evaluated (DSC, HD95, ASSD, TRE against the ground truth, Jacobian); a plain
    U-Net trained on the same-size pairs is refused on the cross-size ones; SyN-free Before places by world."""
    from regbench.datasets.demo import build_demo
    from regbench.train import train

    raw = _nilearn_raw(tmp_path)
    prep = tmp_path / "prep"
    build_demo(raw, prep, {**DEMO, "moving_crop": [24, 24, 24]}, 0)
    mod = {"fixed": "t1", "moving": "t2_crop"}
    siam = {"name": "Siam Unet", "kind": "learned", "model": "huang2021_siamese",
            "model_params": {"arch": "unet", "widths": list(SMALL)},
            "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2,
                      "augment": {"flip_axes": [0], "flip_prob": 0.5,
                                  "affine": {"rotation_deg": 5, "scale": 0.05, "translation_vox": 1}},
                      "losses": [{"name": "gdsc", "sigmas": [0, 1]}, {"name": "bending", "weight": 0.5}]}}
    model = train(prep, tmp_path / "m", siam, 0, 0, mod, [1, 2, 3], device="cpu", moving_seg="seg_crop")
    labels = {1: "CSF", 2: "GM", 3: "WM"}
    rows = {}
    for name, method, mp in (("siam", siam, model),
                             ("before", {"name": "Before", "kind": "classical", "transform": "identity"}, None)):
        register_pairs(prep, tmp_path / name, method, 0, 0, mod, device="cpu", model_path=mp, max_pairs=2,
                       moving_seg="seg_crop")
        evaluate_method(prep, tmp_path / name, tmp_path / f"{name}.tsv", "demo", name, method["name"], 0, labels, "t1")
        rows[name] = pd.read_csv(tmp_path / f"{name}.tsv", sep="\t")
    for name, df in rows.items():
        assert len(df) == 2 * 3
        for col in ("dsc", "hd95_mm", "assd_mm", "tre_mm", "folding_pct", "sdlogj"):
            assert np.isfinite(df[col]).all(), (name, col)
    # TRE of Before on the cropped pairs = TRE of the identity on the uncropped pairs (world placement = crop)
    register_pairs(prep, tmp_path / "full", {"name": "Before", "kind": "classical", "transform": "identity"}, 0, 0,
                   {"fixed": "t1", "moving": "t2"}, max_pairs=2)
    evaluate_method(prep, tmp_path / "full", tmp_path / "full.tsv", "demo", "f", "f", 0, labels, "t1")
    full = pd.read_csv(tmp_path / "full.tsv", sep="\t")
    np.testing.assert_allclose(rows["before"]["tre_mm"], full["tre_mm"], rtol=1e-5)
    unet = {"name": "Unet", "kind": "learned", "model": "huang2021", "model_params": {"arch": "unet", "widths": list(SMALL)},
            "train": {**siam["train"], "steps": 1}}
    plain = train(prep, tmp_path / "u", unet, 0, 0, "t1", [1, 2, 3], device="cpu")
    with pytest.raises(RegbenchError, match="registers only pairs on one grid"):
        register_pairs(prep, tmp_path / "unet", unet, 0, 0, mod, device="cpu", model_path=plain, moving_seg="seg_crop")
