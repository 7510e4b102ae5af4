"""Auxiliary networks (He et al. 2022 attention segmenter, label auto-encoder) and their use by the
registration trainer and the register stage, on the tiny synthetic disc-and-ring dataset (conftest)."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, make_tiny_prepared

from regbench.auxiliary import (
    attention_mask,
    evaluate_auxiliary,
    load_auxiliary,
    train_auxiliary,
)
from regbench.config import validate_experiment
from regbench.data import PreparedDataset
from regbench.datasets.registry import load_yaml
from regbench.errors import ConfigError
from regbench.evaluate import evaluate_method
from regbench.io import load_image
from regbench.register import register_pairs
from regbench.train import _CaseCache, train

SEG = {"name": "Seg", "kind": "segmenter",
       "train": {"steps": 60, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 30,
                 "losses": [{"name": "ce_contour", "weight_contour": 0.1}]}}
AE = {"name": "AE", "kind": "autoencoder", "noise": 0.05,
      "train": {"steps": 40, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 40, "losses": [{"name": "ce"}]}}


@pytest.fixture(scope="module")
def trained_aux(tmp_path_factory):
    """A segmenter and an auto-encoder trained once on the tiny dataset (shared by the tests below)."""
    root = tmp_path_factory.mktemp("aux")
    prep = make_tiny_prepared(root / "prep")
    seg = train_auxiliary(prep, root / "seg", SEG, 0, 0, "img", "seg", [1, 2], device="cpu")
    ae = train_auxiliary(prep, root / "ae", AE, 0, 0, "img", "seg", [1, 2], device="cpu")
    return prep, seg, ae


def test_segmenter_learns_the_foreground(trained_aux, tmp_path):
    prep, seg, _ = trained_aux
    out = evaluate_auxiliary(prep, seg, tmp_path / "seg.tsv", "tiny", "seg", "Seg", 0, "img", "seg", "seg",
                             device="cpu")
    df = pd.read_csv(out, sep="\t")
    assert list(df.columns) == ["dataset", "aux", "aux_name", "kind", "fold", "case", "dsc", "hd_px", "assd_px"]
    assert set(df["case"]) == {"c4", "c5"} and (df["kind"] == "segmenter").all()
    assert df["dsc"].min() > 0.8, df  # disc + ring on a black background: easy after 60 steps
    log = pd.read_csv(seg.parent / "train_log.tsv", sep="\t")
    assert log["loss"].tail(10).mean() < 0.5 * log["loss"].head(5).mean()


def test_attention_mask_runs_at_the_training_size(trained_aux):
    prep, seg, _ = trained_aux
    model = load_auxiliary(seg, torch.device("cpu"))
    assert model.kind == "segmenter" and model.train_size == (32, 32)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    img = torch.from_numpy(load_image(prep / "c4_img.nii.gz").array)[None, None]
    truth = load_image(prep / "c4_seg.nii.gz").array > 0
    mask = attention_mask(model, img)
    assert mask.shape == img.shape and set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert np.mean(mask[0, 0].numpy().astype(bool) == truth) > 0.95
    big = torch.nn.functional.interpolate(img, size=(64, 64), mode="bilinear", align_corners=False)
    mask64 = attention_mask(model, big)  # predicted at 32x32, resized back to 64x64
    assert mask64.shape == (1, 1, 64, 64)
    down = torch.nn.functional.avg_pool2d(mask64, 2)[0, 0].numpy() > 0.5
    assert np.mean(down == mask[0, 0].numpy().astype(bool)) > 0.9


def test_autoencoder_trains_and_reconstructs(trained_aux, tmp_path):
    prep, _, ae = trained_aux
    log = pd.read_csv(ae.parent / "train_log.tsv", sep="\t")
    assert log["loss"].tail(5).mean() < log["loss"].head(5).mean()
    out = evaluate_auxiliary(prep, ae, tmp_path / "ae.tsv", "tiny", "ae", "AE", 0, "img", "seg", "seg",
                             device="cpu")
    df = pd.read_csv(out, sep="\t")
    assert (df["kind"] == "autoencoder").all() and df["dsc"].between(0, 1).all()
    info = load_auxiliary(ae, torch.device("cpu"))
    assert info.labels == [1, 2] and info.kind == "autoencoder"


def test_unknown_auxiliary_loss_is_a_config_error(tmp_path, tiny_prepared):
    bad = copy.deepcopy(SEG)
    bad["train"]["losses"] = [{"name": "dice"}]
    with pytest.raises(ConfigError, match="unknown term 'dice'"):
        train_auxiliary(tiny_prepared, tmp_path / "x", bad, 0, 0, "img", "seg", [1, 2], device="cpu")


HE = {"name": "He2022", "kind": "learned", "model": "he2022", "model_params": {"n_scales": 2},
      "attention": "seg", "autoencoder": "ae",
      "train": {"steps": 3, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 3,
                "losses": [{"name": "ncc"}, {"name": "ssim"}, {"name": "ce"}, {"name": "ae", "weight": 0.1},
                           {"name": "tv", "weight": 3.5}]}}


def test_he2022_full_loss_with_attention_and_autoencoder(trained_aux, tmp_path):
    """Eq. 14 (all five terms) on attention-cleaned images; register then writes ssim_clean per pair."""
    prep, seg, ae = trained_aux
    model = train(prep, tmp_path / "he", HE, 0, 0, "img", [1, 2], device="cpu", seg="seg",
                  attention_path=seg, autoencoder_path=ae)
    log = pd.read_csv(tmp_path / "he" / "train_log.tsv", sep="\t")
    assert {"ncc", "ssim", "ce", "ae", "tv"} <= set(log.columns)
    assert log["ae"].gt(0).all() and np.isfinite(log["loss"]).all()
    table = register_pairs(prep, tmp_path / "reg", HE, 0, 0, "img", device="cpu", model_path=model,
                           attention_path=seg)
    reg = pd.read_csv(table, sep="\t")
    assert reg["ssim_clean"].between(-1, 1).all() and len(reg) == 2
    out = evaluate_method(prep, tmp_path / "reg", tmp_path / "m.tsv", "tiny", "he", "He2022", 0,
                          {1: "disc", 2: "ring"}, "img", unit="px")
    m = pd.read_csv(out, sep="\t")
    assert "ssim_clean" in m and m.groupby("pair_id")["ssim_clean"].nunique().eq(1).all()
    with pytest.raises(ConfigError, match="no trained segmenter"):
        register_pairs(prep, tmp_path / "reg2", HE, 0, 0, "img", device="cpu", model_path=model)


def test_training_cache_holds_attention_cleaned_images(trained_aux):
    prep, seg, _ = trained_aux
    ds = PreparedDataset.open(prep)
    segmenter = load_auxiliary(seg, torch.device("cpu"))
    clean = _CaseCache(ds, "img", torch.device("cpu"), "seg", segmenter).image("c0")[0, 0].numpy()
    raw = _CaseCache(ds, "img", torch.device("cpu"), "seg").image("c0")[0, 0].numpy()
    mask = attention_mask(segmenter, torch.from_numpy(raw)[None, None])[0, 0].numpy()
    assert np.array_equal(clean, raw * mask) and (mask == 0).any()
    assert np.all(clean[mask == 0] == 0)


def test_ae_term_without_autoencoder_is_a_config_error(tiny_prepared, tmp_path):
    method = copy.deepcopy(HE)
    method.pop("attention")
    with pytest.raises(ConfigError, match=r"need components \[.autoencoder.\] that were not given"):
        train(tiny_prepared, tmp_path / "x", method, 0, 0, "img", [1, 2], device="cpu")


def test_config_cross_references_auxiliary_networks():
    exp = load_yaml(REPO / "config" / "papers" / "he2022.yaml")
    ok = validate_experiment(exp, "he2022.yaml")
    assert ok["methods"]["he2022"]["attention"] == "seg_contour"
    bad = copy.deepcopy(exp)
    bad["methods"]["he2022"]["attention"] = "ae_contour"  # an auto-encoder is not a segmenter
    with pytest.raises(ConfigError, match="methods.he2022.attention: 'ae_contour' is not an auxiliary segmenter"):
        validate_experiment(bad, "he2022.yaml")
    bad = copy.deepcopy(exp)
    bad["methods"]["acregnet"]["autoencoder"] = None
    with pytest.raises(ConfigError, match="loss term 'ae' needs"):
        validate_experiment(bad, "he2022.yaml")
