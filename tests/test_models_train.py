"""VoxelMorph, losses, the trainer (resume, log) and the registration stage on a tiny 2D dataset."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from regbench import losses
from regbench.errors import ConfigError, DataError
from regbench.models import build_model
from regbench.register import register_pairs
from regbench.train import load_trained, train

METHOD = {
    "name": "VoxelMorph", "kind": "learned", "model": "voxelmorph",
    "model_params": {"variant": "vm1"},
    "train": {"steps": 6, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 3,
              "losses": [{"name": "lncc", "window": 5}, {"name": "diffusion", "weight": 0.5},
                         {"name": "dice", "weight": 0.1}]},
}


@pytest.mark.parametrize("shape, variant, steps", [((32, 48), "vm1", 0), ((16, 16, 32), "vm2", 0),
                                                   ((16, 32, 16), "vm2", 4)])
def test_voxelmorph_shapes_and_identity_start(shape, variant, steps):
    model = build_model("voxelmorph", len(shape), variant=variant, int_steps=steps)
    x = torch.rand(2, 1, *shape)
    out = model(x, torch.rand(2, 1, *shape))
    assert out["ddf"].shape == (2, len(shape), *shape)
    assert out["warped"].shape == x.shape
    assert out["ddf"].abs().max() < 1e-2  # near-zero head initialisation


def test_voxelmorph_parameter_counts_follow_the_paper_widths():
    n1 = sum(p.numel() for p in build_model("voxelmorph", 3, variant="vm1").parameters())
    n2 = sum(p.numel() for p in build_model("voxelmorph", 3, variant="vm2").parameters())
    assert 250_000 < n1 < n2 < 320_000


def test_voxelmorph_rejects_bad_sizes():
    model = build_model("voxelmorph", 2)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(1, 1, 30, 32), torch.rand(1, 1, 30, 32))
    with pytest.raises(KeyError, match="registered models"):
        build_model("voxelmorf", 2)


def test_local_ncc_properties():
    a = torch.rand(1, 1, 20, 20)
    ncc = losses.LocalNCC(window=5)
    assert ncc(a, a) < -0.99
    assert ncc(a, 3 * a + 1) < -0.95  # invariant to affine intensity changes (but for zero-padded borders)
    assert ncc(a, torch.rand(1, 1, 20, 20)) > -0.5


def test_diffusion_and_dice():
    ddf = torch.zeros(1, 2, 8, 8)
    assert losses.Diffusion()(ddf) == 0
    ddf[:, 0, 4:] = 1.0
    assert losses.Diffusion()(ddf) > 0
    oh = torch.zeros(1, 2, 8, 8)
    oh[:, 0, :4], oh[:, 1, 4:] = 1, 1
    assert losses.SoftDice()(oh, oh) < 1e-4
    assert losses.SoftDice()(oh, oh.flip(1)) > 0.99


def test_training_resumes_to_the_same_weights(tiny_prepared, tmp_path):
    spec = dict(prep_dir=tiny_prepared, method=METHOD, fold=0, seed=3, modality="img", labels=[1, 2],
                device="cpu")
    straight = train(out_dir=tmp_path / "a", **spec)
    train(out_dir=tmp_path / "b", max_steps=3, **spec)  # "interrupted" after the step-3 checkpoint
    log_b = pd.read_csv(tmp_path / "b" / "train_log.tsv", sep="\t")
    assert log_b["step"].tolist() == [1, 2, 3]
    resumed = train(out_dir=tmp_path / "b", **spec)
    log = pd.read_csv(tmp_path / "b" / "train_log.tsv", sep="\t")
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert {"lncc", "diffusion", "dice", "loss"} <= set(log.columns)
    wa = torch.load(straight, weights_only=False)["model"]
    wb = torch.load(resumed, weights_only=False)["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    info = json.loads((tmp_path / "b" / "train_info.json").read_text())
    assert info["steps"] == 6 and info["device"] == "cpu" and info["n_params"] > 0


def test_training_reduces_the_loss(tiny_prepared, tmp_path):
    method = json.loads(json.dumps(METHOD))
    method["train"].update(steps=40, lr=3e-3, checkpoint_every=40)
    train(tiny_prepared, tmp_path / "m", method, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "m" / "train_log.tsv", sep="\t")
    assert log["loss"].tail(10).mean() < log["loss"].head(5).mean()


def test_unknown_loss_is_a_config_error(tiny_prepared, tmp_path):
    method = json.loads(json.dumps(METHOD))
    method["train"]["losses"] = [{"name": "nmi"}]
    with pytest.raises(ConfigError, match="unknown loss term 'nmi'"):
        train(tiny_prepared, tmp_path / "x", method, 0, 0, "img", [1, 2], device="cpu")


def test_register_stage_writes_fields_and_table(tiny_prepared, tmp_path):
    model = train(tiny_prepared, tmp_path / "m", METHOD, 0, 0, "img", [1, 2], device="cpu")
    assert isinstance(load_trained(model, torch.device("cpu")), torch.nn.Module)
    table = register_pairs(tiny_prepared, tmp_path / "reg", METHOD, 0, 0, "img", device="cpu", model_path=model)
    df = pd.read_csv(table, sep="\t")
    assert len(df) == 2 and (df["runtime_s"] > 0).all()
    for col in ("ddf", "warped", "warped_seg"):
        assert all((tmp_path / "reg" / p).exists() for p in df[col])
    before = register_pairs(tiny_prepared, tmp_path / "before", {"name": "Before", "kind": "classical",
                                                                 "transform": "identity"}, 0, 0, "img",
                            max_pairs=1)
    assert len(pd.read_csv(before, sep="\t")) == 1
    with pytest.raises(DataError, match="no test pairs for fold 3"):
        register_pairs(tiny_prepared, tmp_path / "r3", METHOD, 3, 0, "img", model_path=model)


@pytest.mark.parametrize("shape, window", [((1, 2, 14, 15, 16), 9), ((2, 1, 20, 21), 5)])
def test_separable_box_sum_equals_the_dense_window(shape, window):
    from regbench.losses import _box_sum

    x = torch.rand(shape, dtype=torch.float64)
    nd = len(shape) - 2
    conv = torch.nn.functional.conv3d if nd == 3 else torch.nn.functional.conv2d
    dense = conv(x.reshape(-1, 1, *shape[2:]), torch.ones((1, 1) + (window,) * nd, dtype=x.dtype),
                 padding=window // 2).reshape(shape)
    assert torch.allclose(_box_sum(x, window), dense, atol=1e-10)


def test_register_images_cli(tiny_prepared, tmp_path):
    from regbench.cli import main
    from regbench.io import load_ddf

    f, m = tiny_prepared / "c0_img.nii.gz", tiny_prepared / "c1_img.nii.gz"
    assert main(["register-images", "--fixed", str(f), "--moving", str(m), "--method", "identity",
                 "--out", str(tmp_path / "p")]) == 0
    assert load_ddf(tmp_path / "p_ddf.nii.gz").shape == (2, 32, 32)
    # a learned method without a model is a clear error (exit 2), not a traceback
    assert main(["register-images", "--fixed", str(f), "--moving", str(m), "--method", "voxelmorph",
                 "--out", str(tmp_path / "q")]) == 2


def test_inference_size_upsamples_the_field(tiny_prepared, tmp_path):
    """A model applied on a 16x16 grid gives a 32x32 field whose displacements are twice the small ones."""
    model_path = train(tiny_prepared, tmp_path / "m", METHOD, 0, 0, "img", [1, 2], device="cpu")
    method = {**METHOD, "inference_size": [16, 16]}
    table = register_pairs(tiny_prepared, tmp_path / "reg", method, 0, 0, "img", device="cpu",
                           model_path=model_path)
    from regbench import spatial
    from regbench.io import load_ddf

    row = pd.read_csv(table, sep="\t").iloc[0]
    ddf = load_ddf(tmp_path / "reg" / row["ddf"])
    assert ddf.shape == (2, 32, 32)
    model = load_trained(model_path, torch.device("cpu"))
    from regbench.io import load_image

    ds_f = torch.from_numpy(load_image(tiny_prepared / f"{row['fixed']}_img.nii.gz").array)[None, None]
    ds_m = torch.from_numpy(load_image(tiny_prepared / f"{row['moving']}_img.nii.gz").array)[None, None]
    with torch.no_grad():
        small = model(spatial.resize_image(ds_m, (16, 16)), spatial.resize_image(ds_f, (16, 16)))["ddf"]
    expected = spatial.resize_field(small, (32, 32))[0].numpy()
    assert np.allclose(ddf, expected, atol=1e-5)
    assert np.allclose(expected.mean(axis=(1, 2)), 2 * small[0].numpy().mean(axis=(1, 2)), atol=1e-4)
    assert np.abs(expected).max() > 0  # a real field, not the trivial zero one
    # JAC on the network's own 16x16 grid is recorded, and evaluation carries it per pair
    from regbench.evaluate import evaluate_method
    from regbench.metrics import jacobian_stats

    assert row["folding_count_native"] == jacobian_stats(small[0])["folding_count"]
    out = evaluate_method(tiny_prepared, tmp_path / "reg", tmp_path / "m.tsv", "tiny", "m", "M", 0,
                          {1: "a", 2: "b"}, "img")
    ev = pd.read_csv(out, sep="\t")
    first = ev.groupby("pair_id", sort=False)["folding_count_native"].first()
    assert first.iloc[0] == row["folding_count_native"]


def test_native_folding_counts_a_field_of_the_evaluation_grid_once():
    """A method that predicts on the evaluation grid has no separate native count: it is folding_count."""
    from regbench.evaluate import _native_folding

    assert _native_folding(pd.Series({"pair_id": "p"}), 12.0) == 12.0
    assert _native_folding(pd.Series({"folding_count_native": float("nan")}), 12.0) == 12.0
    assert _native_folding(pd.Series({"folding_count_native": 3.0}), 12.0) == 3.0


def test_he2022_loss_terms_train_the_he2022_network(tiny_prepared, tmp_path):
    """NCC + SSIM + label CE + TV (He et al. 2022, Eq. 7, without the auto-encoder term) on He2022RegNet."""
    method = {
        "name": "He2022", "kind": "learned", "model": "he2022", "model_params": {"n_scales": 4},
        "train": {"steps": 3, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 3,
                  "losses": [{"name": "ncc"}, {"name": "ssim"}, {"name": "ce"}, {"name": "tv", "weight": 3.5}]},
    }
    train(tiny_prepared, tmp_path / "h", method, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "h" / "train_log.tsv", sep="\t")
    assert {"ncc", "ssim", "ce", "tv"} <= set(log.columns) and log["ce"].gt(0).all()
    assert np.isfinite(log["loss"]).all()


def test_tv_in_normalized_units_scales_by_grid_size():
    """AC-RegNet / He et al. regularise fields in [-1, 1] coordinates: TV shrinks by 2 / (n - 1) per axis."""
    from regbench.losses import Diffusion

    torch.manual_seed(0)
    ddf = torch.randn(2, 2, 64, 32)
    px = Diffusion("l1")(ddf)
    norm = Diffusion("l1", field_unit="normalized")(ddf)
    manual = ddf.clone()
    manual[:, 0] *= 2 / 63
    manual[:, 1] *= 2 / 31
    assert torch.allclose(norm, Diffusion("l1")(manual))
    assert 2 / 63 < float(norm / px) < 2 / 31
    with pytest.raises(ValueError, match="field_unit"):
        Diffusion("l1", field_unit="mm")


def test_gradient_norm_is_logged_and_clipped(tiny_prepared, tmp_path, monkeypatch):
    """train.clip_grad_norm bounds the global gradient norm of every step; the log keeps the norm before it."""
    import copy

    import regbench.train as T

    method = copy.deepcopy(METHOD)
    method["train"] = {**method["train"], "steps": 3, "checkpoint_every": 3}
    train(tiny_prepared, tmp_path / "free", method, 0, 0, "img", [1, 2], device="cpu")
    free = pd.read_csv(tmp_path / "free" / "train_log.tsv", sep="\t")
    assert (free["grad_norm"] > 0).all()
    tiny = float(free["grad_norm"].min()) / 10
    method["train"]["clip_grad_norm"] = tiny
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):  # the norm that reaches the optimiser
        seen.append(float(torch.norm(torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]
                                                  if p.grad is not None]))))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    T.train(tiny_prepared, tmp_path / "clip", method, 0, 0, "img", [1, 2], device="cpu")
    clipped = pd.read_csv(tmp_path / "clip" / "train_log.tsv", sep="\t")
    assert clipped["grad_norm"].iloc[0] == pytest.approx(free["grad_norm"].iloc[0], rel=1e-5)  # same first step
    assert len(seen) == 3 and max(seen) <= tiny * (1 + 1e-4)


def test_term_gradient_norms_are_logged_without_changing_the_path(tiny_prepared, tmp_path):
    """train.log_term_grad_norms adds grad_norm_<term> columns: each the norm of that weighted term's gradient
    alone (so a lone term's equals the total); the losses, total norms and the checkpoint's spec are unchanged."""
    import copy

    method = copy.deepcopy(METHOD)
    method["train"] = {**method["train"], "steps": 3, "checkpoint_every": 3}
    train(tiny_prepared, tmp_path / "plain", method, 0, 0, "img", [1, 2], device="cpu")
    plain = pd.read_csv(tmp_path / "plain" / "train_log.tsv", sep="\t")
    method["train"]["log_term_grad_norms"] = True
    train(tiny_prepared, tmp_path / "diag", method, 0, 0, "img", [1, 2], device="cpu")
    diag = pd.read_csv(tmp_path / "diag" / "train_log.tsv", sep="\t")
    names = [t["name"] for t in method["train"]["losses"]]
    assert len(names) >= 2
    for n in names:
        assert (diag[f"grad_norm_{n}"] > 0).all()
        assert np.allclose(diag[n], plain[n], rtol=1e-5)
    assert np.allclose(diag["grad_norm"], plain["grad_norm"], rtol=1e-5)
    # the norms of a sum are bounded by the sum of the norms (triangle inequality), so none is free-floating
    assert (diag["grad_norm"] <= diag[[f"grad_norm_{n}" for n in names]].sum(axis=1) * (1 + 1e-5)).all()
    assert json.loads((tmp_path / "diag" / "train_info.json").read_text())["spec_hash"] == \
        json.loads((tmp_path / "plain" / "train_info.json").read_text())["spec_hash"]

    single = copy.deepcopy(METHOD)
    single["train"] = {**single["train"], "steps": 1, "checkpoint_every": 1, "log_term_grad_norms": True,
                       "losses": [single["train"]["losses"][0]]}
    train(tiny_prepared, tmp_path / "single", single, 0, 0, "img", [1, 2], device="cpu")
    one = pd.read_csv(tmp_path / "single" / "train_log.tsv", sep="\t")
    assert one[f"grad_norm_{names[0]}"].iloc[0] == pytest.approx(one["grad_norm"].iloc[0], rel=1e-5)


def test_lr_warmup_ramps_linearly_then_decays_and_resumes(tiny_prepared, tmp_path):
    """train.lr_warmup: step i (1-based) runs at lr * min(1, i / warmup), times any lr_decay factor; the log's
    ``lr`` column is the rate each step used, and a resumed run continues the same schedule."""
    import copy

    method = copy.deepcopy(METHOD)
    method["train"] = {**method["train"], "steps": 8, "checkpoint_every": 4, "lr": 1e-3, "lr_warmup": 4,
                       "lr_decay": {"every": 6, "factor": 0.5}}
    train(tiny_prepared, tmp_path / "w", method, 0, 0, "img", [1, 2], device="cpu", max_steps=4)
    train(tiny_prepared, tmp_path / "w", method, 0, 0, "img", [1, 2], device="cpu")  # resumes at step 4
    log = pd.read_csv(tmp_path / "w" / "train_log.tsv", sep="\t")
    assert log["step"].tolist() == list(range(1, 9))
    expected = [1e-3 * min(1.0, i / 4) * (0.5 if i > 6 else 1.0) for i in range(1, 9)]
    assert log["lr"].tolist() == pytest.approx(expected, rel=1e-6)
