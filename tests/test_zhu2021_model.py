"""Zhu et al. 2021 joint affine and deformable network: outputs, identity start, the affine part, the
ablation without it, and training by config with the paper's four loss terms (Eq. 1-5)."""

import numpy as np
import pandas as pd
import pytest
import torch

from regbench import spatial
from regbench.models import build_model
from regbench.train import train

from conftest import blob_image

ZHU = {"name": "Ours (Zhu et al.)", "kind": "learned", "model": "zhu2021",
       "train": {"steps": 3, "lr": 1e-3, "batch_size": 2, "lr_decay": {"every": 2, "factor": 0.5},
                 "losses": [{"name": "ncc", "label": "ncc_affine", "squared": True, "inputs": {"warped": "affine_warped"}},
                            {"name": "lncc", "window": 5}, {"name": "dice"},
                            {"name": "diffusion", "weight": 1000.0, "field_unit": "normalized",
                             "inputs": {"field": "phi"}}]}}


@pytest.mark.parametrize("shape", [(32, 40), (16, 24, 16)])
def test_outputs_and_identity_start(shape):
    torch.manual_seed(0)
    model = build_model("zhu2021", len(shape))
    m, f = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    out = model(m, f)
    for k in ("ddf", "phi", "affine_ddf"):
        assert out[k].shape == (2, len(shape), *shape)
    assert out["affine"].shape == (2, len(shape), len(shape) + 1)
    assert torch.equal(out["affine_ddf"], torch.zeros_like(out["affine_ddf"]))  # zero-initialised affine head
    assert out["ddf"].abs().max() < 1e-2
    torch.testing.assert_close(out["warped"], spatial.warp(m, out["ddf"]))


def test_affine_head_sees_the_pair_in_training_with_batch_1():
    """Pooling a batch-normalised map with batch 1 gives BN's shift for every input (a constant affine); the
    head must read the activation before that normalisation, so two pairs give two different affines."""
    torch.manual_seed(0)
    model = build_model("zhu2021", 3).train()
    with torch.no_grad():
        model.affine_head.weight.normal_(0, 0.1)
    shape = (16, 16, 16)
    a = model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))["affine"]
    b = model(torch.rand(1, 1, *shape) ** 3, torch.rand(1, 1, *shape))["affine"]
    assert (a - b).abs().max() > 1e-3
    feats = model.encoder(torch.cat([torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)], 1))
    pooled = feats[-1].flatten(2).mean(-1)                     # what a literal reading would pool: ~BN's beta (0)
    assert pooled.abs().max() < 1e-5


def test_inference_is_the_function_that_was_trained():
    """Batch 1 training normalises each volume by its own statistics; eval mode must do the same (running
    averages gave another function: Mindboggle-101 affine DSC 0.27 -> 0.12), and checkpoints keep BN's keys."""
    torch.manual_seed(0)
    model = build_model("zhu2021", 3)
    with torch.no_grad():
        model.affine_head.weight.normal_(0, 0.1)
    m, f = torch.rand(1, 1, 16, 16, 16) * 3 + 1, torch.rand(1, 1, 16, 16, 16)
    model.train()
    for _ in range(3):
        model(torch.rand_like(m), torch.rand_like(f))          # would move running statistics
    a = model(m, f)
    b = model.eval()(m, f)
    torch.testing.assert_close(a["ddf"], b["ddf"])
    torch.testing.assert_close(a["affine"], b["affine"])
    assert any(k.endswith("running_mean") for k in model.state_dict())


def test_full_field_is_the_affine_then_the_deformable_field():
    torch.manual_seed(1)
    model = build_model("zhu2021", 2)
    with torch.no_grad():
        model.affine_head.bias.copy_(torch.tensor([0.05, 0.02, 0.1, -0.03, 0.0, -0.2]))
        model.flow.bias.copy_(torch.tensor([0.5, -0.25]))
    m = torch.from_numpy(blob_image((32, 32), seed=1))[None, None]
    f = torch.from_numpy(blob_image((32, 32), seed=2))[None, None]
    with torch.no_grad():
        out = model(m, f)
    # translation is a fraction of the half grid size: 0.1 * 15.5 voxels along axis 0
    assert float(out["affine"][0, 0, 2]) == pytest.approx(0.1 * 15.5)
    torch.testing.assert_close(out["affine_ddf"], spatial.affine_to_ddf(out["affine"], (32, 32)))
    torch.testing.assert_close(out["affine_warped"], spatial.warp(m, out["affine_ddf"]))
    torch.testing.assert_close(out["ddf"], spatial.compose(out["affine_ddf"], out["phi"]))
    # warping once by the full field ~ warping A by phi (two interpolations), away from the border
    twice = spatial.warp(out["affine_warped"], out["phi"])
    diff = (out["warped"] - twice)[..., 6:-6, 6:-6].abs()
    assert diff.max() < 0.05 and diff.mean() < 0.005  # image range [0, 1]; two interpolations blur a little


def test_without_affine_registers_the_moving_image_directly():
    model = build_model("zhu2021", 2, affine=False)
    assert model.affine_head is None
    m = torch.rand(1, 1, 24, 24)
    out = model(m, torch.rand(1, 1, 24, 24))
    assert out["affine_warped"] is m and "affine" not in out
    assert torch.equal(out["ddf"], out["phi"])
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24))


def test_trains_with_the_papers_loss_by_config_and_decays_the_learning_rate(tiny_prepared, tmp_path):
    train(tiny_prepared, tmp_path / "run", ZHU, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "run" / "train_log.tsv", sep="\t")
    assert list(log["lr"]) == [1e-3, 1e-3, 5e-4]
    for col in ("ncc_affine", "lncc", "dice", "diffusion"):
        assert np.isfinite(log[col]).all()
    assert (log["ncc_affine"] <= 0).all() and (log["ncc_affine"] >= -1).all()
    np.testing.assert_allclose(log["loss"], log["ncc_affine"] + log["lncc"] + log["dice"] + 1000 * log["diffusion"],
                               rtol=1e-5)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["scheduler"]["last_epoch"] == 3


def test_affine_only_reuses_the_trained_weights_and_returns_the_affine_part(tiny_prepared, tmp_path):
    from regbench.register import register_pairs
    from regbench.train import load_trained

    path = train(tiny_prepared, tmp_path / "run", ZHU, 0, 0, "img", [1, 2], device="cpu")
    full = load_trained(path, torch.device("cpu"))
    aff = load_trained(path, torch.device("cpu"), {"affine_only": True})
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a, b = full(m, f), aff(m, f)
    assert torch.equal(b["ddf"], a["affine_ddf"]) and "phi" not in b
    method = {"name": "Our affine alignment", "kind": "learned", "model_from": "zhu", "model_params": {"affine_only": True}}
    table = register_pairs(tiny_prepared, tmp_path / "reg", method, 0, 0, "img", device="cpu", model_path=path)
    assert len(pd.read_csv(table, sep="\t")) == 2
    with pytest.raises(Exception, match="weights do not fit"):
        load_trained(path, torch.device("cpu"), {"decoder": [8, 8, 8]})
