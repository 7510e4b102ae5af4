"""The generalised engine: loss terms bound by config, multi-modal pairs, bidirectional and adversarial models
trained through config alone, frozen components, resume of multi-player runs, file permissions."""

import copy
import os
import stat

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from regbench import losses as L
from regbench.config import validate_experiment
from regbench.errors import ConfigError
from regbench.io import load_image, save_image
from regbench.register import register_pairs
from regbench.terms import TERMS, TermContext, build_terms
from regbench.train import load_component, pair_columns, train
from regbench.utils import atomic_write_text

from conftest import REPO

VM = {"name": "VoxelMorph", "kind": "learned", "model": "voxelmorph", "model_params": {"variant": "vm1"},
      "train": {"steps": 4, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 2,
                "losses": [{"name": "lncc", "window": 5}, {"name": "diffusion", "weight": 0.5}]}}


def _smooth(shape, seed):
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return torch.from_numpy(((a - a.min()) / (a.max() - a.min())).astype(np.float32))[None, None]


# ------------------------------------------------------------------------------------------- registry


def test_schema_lists_exactly_the_registered_terms():
    schema = yaml.safe_load((REPO / "workflow/schemas/experiment.schema.yaml").read_text())
    assert sorted(schema["$defs"]["loss_terms"]["items"]["properties"]["name"]["enum"]) == sorted(TERMS)


def test_config_knows_which_terms_read_components():
    from regbench.config import COMPONENT_TERMS

    assert COMPONENT_TERMS == {k: c.component_default for k, c in TERMS.items() if c.component_default is not None}


def test_build_terms_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown loss term 'nope'; known: \[.*'lncc'"):
        build_terms([{"name": "nope"}])
    with pytest.raises(ConfigError, match="unknown inputs \\['warpd'\\]"):
        build_terms([{"name": "lncc", "inputs": {"warpd": "affine_warped"}}])
    with pytest.raises(ConfigError, match="two terms log as 'lncc'"):
        build_terms([{"name": "lncc"}, {"name": "lncc", "inputs": {"warped": "warped_inv"}}])
    with pytest.raises(ConfigError, match="lncc.*window must be a positive odd integer"):
        build_terms([{"name": "lncc", "window": 4}])
    with pytest.raises(ConfigError, match="at least one"):
        build_terms([])


def test_inputs_rebind_a_term_to_another_output_and_nested_paths():
    f, m, a = _smooth((24, 24), 0), _smooth((24, 24), 1), _smooth((24, 24), 2)
    ctx = TermContext({"fixed": f, "moving": m}, {"warped": m, "stages": [{"warped": a}], "affine_warped": a})
    plain, rebound, nested = build_terms([{"name": "ncc"}, {"name": "ncc", "label": "ncc_affine",
                                                             "inputs": {"warped": "affine_warped"}},
                                          {"name": "ncc", "label": "ncc_stage0", "inputs": {"warped": "stages.0.warped"}}])
    assert float(plain(ctx)) == pytest.approx(float(L.GlobalNCC()(f, m)))
    assert float(rebound(ctx)) == pytest.approx(float(L.GlobalNCC()(f, a)))
    assert float(nested(ctx)) == float(rebound(ctx))
    with pytest.raises(ConfigError, match="no such tensor"):
        ctx["ddf_inv"]


def test_label_maps_are_built_once_per_step_and_shared_between_terms():
    seg = torch.zeros(1, 1, 16, 16, dtype=torch.int64)
    seg[..., 4:12, 4:12] = 1
    calls = []

    def load(side):
        calls.append(side)
        return seg

    ctx = TermContext({"fixed": seg.float(), "moving": seg.float()}, {"ddf": torch.zeros(1, 2, 16, 16)}, load)
    dice, ce = build_terms([{"name": "dice"}, {"name": "ce"}], labels=(1,))
    assert float(dice(ctx)) == pytest.approx(0.0, abs=1e-5)  # identity field, same labels
    ce(ctx)
    assert sorted(calls) == ["fixed", "moving"]  # each side loaded once for both terms
    assert ctx.warped_onehot("moving_seg", "ddf", (1,)) is ctx.warped_onehot("moving_seg", "ddf", (1,))


# ------------------------------------------------------------------------------- modality-independent


def test_mutual_information_is_contrast_invariant_and_prefers_alignment():
    x = _smooth((32, 32), 0)
    mi = L.MutualInformation(bins=16)
    same, inverted = float(mi(x, x)), float(mi(x, 1.0 - x))
    shifted = float(mi(x, torch.roll(x, 6, dims=-1)))
    assert same == pytest.approx(inverted, abs=1e-5)  # the bins are symmetric about intensity 0.5
    assert same < shifted < 0.0  # more information when aligned; MI of anything is >= 0
    assert float(mi(x, torch.full_like(x, 0.3))) == pytest.approx(0.0, abs=1e-5)  # constant: no information
    y = torch.roll(x, 2, dims=-1).requires_grad_(True)
    mi(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_mutual_information_matches_a_direct_histogram_and_its_gradient_is_exact():
    rng = np.random.default_rng(0)
    a, b = rng.random(200), rng.random(200)
    bins = 8

    def weights(x):  # cubic B-spline Parzen weights on bins -1 .. bins + 1, written out directly
        p = x * (bins - 1)
        out = np.zeros((x.size, bins + 3))
        for k in range(-1, bins + 2):
            d = np.abs(p - k)
            out[:, k + 1] = np.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6, np.where(d < 2, (2 - d) ** 3 / 6, 0))
        return out

    p_ab = weights(a).T @ weights(b) / a.size
    p_a, p_b = p_ab.sum(1, keepdims=True), p_ab.sum(0, keepdims=True)
    expected = float((p_ab * np.log((p_ab + 1e-7) / (p_a * p_b + 1e-7))).sum())
    t = lambda v: torch.from_numpy(v).view(1, 1, 10, 20)
    assert float(L.MutualInformation(bins)(t(a), t(b))) == pytest.approx(-expected, rel=1e-9)
    y = t(b).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: L.MutualInformation(bins)(t(a), z), (y,), eps=1e-7, atol=1e-6)


def test_ngf_ignores_contrast_inversion_and_sees_misalignment():
    x = _smooth((32, 32), 3)
    ngf = L.NormalizedGradientField(eps=1e-3)
    assert float(ngf(x, 1.0 - x)) == pytest.approx(float(ngf(x, x)), abs=1e-6)
    assert float(ngf(x, x)) < 0.05
    assert float(ngf(x, torch.roll(x, 4, dims=-2))) > 0.3
    assert float(ngf(x, torch.zeros_like(x))) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ training by config


@pytest.fixture
def multimodal_prepared(tiny_prepared):
    """The tiny dataset plus an ``img_inv`` column: the same anatomy with inverted contrast (a 'T2-like' image)."""
    cases = pd.read_csv(tiny_prepared / "cases.tsv", sep="\t")
    for i, r in cases.iterrows():
        img = load_image(tiny_prepared / r["img"])
        inv = np.where(img.array > 0.25, 1.1 - img.array, img.array).astype(np.float32)
        save_image(tiny_prepared / f"{r['case']}_inv.nii.gz", inv, img.affine)
        cases.loc[i, "img_inv"] = f"{r['case']}_inv.nii.gz"
    cases.to_csv(tiny_prepared / "cases.tsv", sep="\t", index=False)
    return tiny_prepared


def test_pair_columns():
    assert pair_columns("t1") == {"fixed": "t1", "moving": "t1"}
    assert pair_columns({"fixed": "t1", "moving": "t2"}) == {"fixed": "t1", "moving": "t2"}
    with pytest.raises(ConfigError, match="fixed: <column>, moving: <column>"):
        pair_columns({"fixed": "t1"})


def test_multimodal_training_and_registration_read_two_columns(multimodal_prepared, tmp_path):
    method = copy.deepcopy(VM)
    method["train"]["losses"] = [{"name": "mi", "bins": 16}, {"name": "diffusion", "weight": 0.1}]
    modality = {"fixed": "img", "moving": "img_inv"}
    model = train(multimodal_prepared, tmp_path / "run", method, 0, 0, modality, [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "run" / "train_log.tsv", sep="\t")
    assert list(log.columns[:3]) == ["step", "mi", "diffusion"] and np.isfinite(log["mi"]).all()
    assert (log["mi"] < 0).all()
    table = register_pairs(multimodal_prepared, tmp_path / "reg", {**method, "kind": "learned"}, 0, 0, modality,
                           device="cpu", model_path=model)
    reg = pd.read_csv(table, sep="\t")
    # the warped image is the moving modality: near-identity field on an inverted-contrast image
    warped = load_image(tmp_path / "reg" / reg.at[0, "warped"]).array
    moving = load_image(multimodal_prepared / f"{reg.at[0, 'moving']}_inv.nii.gz").array
    assert np.corrcoef(warped.ravel(), moving.ravel())[0, 1] > 0.9


def test_bidirectional_model_trains_with_cycle_and_inverse_consistency_by_config(tiny_prepared, tmp_path):
    method = {"name": "Bidir", "kind": "learned", "model": "bidirectional",
              "model_params": {"base": "voxelmorph", "base_params": {"variant": "vm1"}},
              "train": {"steps": 3, "lr": 1e-3, "batch_size": 2, "losses": [
                  {"name": "lncc", "window": 5},
                  {"name": "lncc", "label": "lncc_inv", "window": 5, "inputs": {"fixed": "moving", "warped": "warped_inv"}},
                  {"name": "dice", "label": "dice_inv", "inputs": {"field": "ddf_inv", "fixed_seg": "moving_seg",
                                                                   "moving_seg": "fixed_seg"}},
                  {"name": "cycle", "weight": 0.5},
                  {"name": "inverse_consistency", "weight": 0.01},
                  {"name": "diffusion", "weight": 0.1}]}}
    path = train(tiny_prepared, tmp_path / "run", method, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "run" / "train_log.tsv", sep="\t")
    for col in ("lncc", "lncc_inv", "dice_inv", "cycle", "inverse_consistency", "diffusion"):
        assert np.isfinite(log[col]).all(), col
    expected = (log["lncc"] + log["lncc_inv"] + log["dice_inv"] + 0.5 * log["cycle"]
                + 0.01 * log["inverse_consistency"] + 0.1 * log["diffusion"])
    np.testing.assert_allclose(log["loss"], expected, rtol=1e-5, atol=1e-6)
    model = load_component(path, torch.device("cpu"))
    out = model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert out["ddf_inv"].shape == out["ddf"].shape == (1, 2, 32, 32)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.spec_hash == torch.load(path, weights_only=False)["spec_hash"]


ADV = {"name": "Adversarial", "kind": "learned", "model": "voxelmorph", "model_params": {"variant": "vm1"},
       "train": {"steps": 4, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 2,
                 "losses": [{"name": "lncc", "window": 5}, {"name": "adversarial", "weight": 0.1},
                            {"name": "diffusion", "weight": 0.5}],
                 "critics": {"critic": {"model": "pair_critic", "model_params": {"features": [4, 8]}, "lr": 1e-3,
                                        "losses": [{"name": "critic_bce", "alpha": 0.8}]}}}}


def test_adversarial_toy_trains_generator_and_critic_and_resumes_exactly(tiny_prepared, tmp_path):
    path = train(tiny_prepared, tmp_path / "straight", ADV, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "straight" / "train_log.tsv", sep="\t")
    for col in ("adversarial", "critic_critic_bce", "critic_loss", "critic_grad_norm"):
        assert np.isfinite(log[col]).all(), col
    assert (log["critic_grad_norm"] > 0).all()  # the critic is updated every step
    ckpt = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    assert set(ckpt["players"]) == {"critic"}
    first = copy.deepcopy(ckpt["players"]["critic"]["module"])
    # interrupted after 2 steps, then resumed to 4: the same generator and critic as the straight run
    two = copy.deepcopy(ADV)
    two["train"]["steps"] = 2
    train(tiny_prepared, tmp_path / "resumed", two, 0, 0, "img", [1, 2], device="cpu")
    mid = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["players"]["critic"]["module"]
    assert any(not torch.equal(mid[k], first[k]) for k in first)
    again = train(tiny_prepared, tmp_path / "resumed", ADV, 0, 0, "img", [1, 2], device="cpu")
    a, b = torch.load(path, weights_only=False)["model"], torch.load(again, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    end = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["players"]["critic"]["module"]
    assert all(torch.equal(end[k], first[k]) for k in first)


def test_a_term_without_its_component_is_a_config_error(tiny_prepared, tmp_path):
    method = copy.deepcopy(ADV)
    del method["train"]["critics"]
    with pytest.raises(ConfigError, match=r"need components \['critic'\]"):
        train(tiny_prepared, tmp_path / "run", method, 0, 0, "img", [1, 2], device="cpu")


def _experiment(**methods):
    return {"experiment": "t", "protocol": "p", "seed": 0,
            "datasets": {"demo": {"preprocess": "demo", "modality": {"fixed": "t1", "moving": "t2"}, "folds": [0],
                                  "labels": {1: "a"}}},
            "methods": methods, "report": {"title": "t", "metrics": ["dsc"]}}


def test_config_checks_components_and_critic_references():
    ok = _experiment(vm=copy.deepcopy(VM), adv=copy.deepcopy(ADV))
    exp = validate_experiment(ok, "test")
    assert exp["datasets"]["demo"]["train_modality"] == {"fixed": "t1", "moving": "t2"}
    bad = _experiment(vm={**copy.deepcopy(VM), "components": {"teacher": "nobody"}})
    with pytest.raises(ConfigError, match="components.teacher: 'nobody' is neither"):
        validate_experiment(bad, "test")
    ok2 = _experiment(vm=copy.deepcopy(VM), student={**copy.deepcopy(VM), "components": {"teacher": "vm"}})
    validate_experiment(ok2, "test")
    reuse = {"name": "VM again", "kind": "learned", "model_from": "vm", "model_params": {"variant": "vm1"}}
    validate_experiment(_experiment(vm=copy.deepcopy(VM), again=reuse), "test")
    with pytest.raises(ConfigError, match="model_from: 'again' must be a learned method that trains"):
        validate_experiment(_experiment(vm=copy.deepcopy(VM), again=reuse, twice={**reuse, "model_from": "again"}),
                            "test")
    with pytest.raises(ConfigError, match="model_from"):  # schema: model_from excludes train
        validate_experiment(_experiment(vm=copy.deepcopy(VM), again={**reuse, "train": VM["train"]}), "test")
    no_critic = copy.deepcopy(ADV)
    del no_critic["train"]["critics"]
    with pytest.raises(ConfigError, match="'adversarial' needs component 'critic'"):
        validate_experiment(_experiment(adv=no_critic), "test")
    with pytest.raises(ConfigError, match="modality"):
        validate_experiment({**ok, "datasets": {"demo": {**ok["datasets"]["demo"], "modality": {"fixed": "t1"}}}},
                            "test")


def test_atomic_writes_are_readable_like_ordinary_files(tmp_path):
    from regbench.utils import staging_dir

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        stage = staging_dir(tmp_path, "prep")
        assert stage.name.startswith(".prep.") and stat.S_IMODE(stage.stat().st_mode) == 0o755
    finally:
        os.umask(old)
