"""MMRegNet (Ding et al. 2021): the SEGI loss (Eq. 4-8), the network (Eq. 1-3), the U/V inverse residual and
the loss terms the paper's Eq. 10 is built from."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regbench import spatial
from regbench.losses import SpatiallyEncodedGradient
from regbench.models import MODELS, build_model
from regbench.models.ding2021 import MMRegNet, inverse_residual
from regbench.terms import TERMS, TermContext, build_terms


def smooth_image(shape, seed=0, sigma=2.0):
    """Random smooth image in [0, 1] with structure everywhere, ``(1, 1, *shape)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *shape), generator=g, dtype=torch.float64)
    n = 2 * math.ceil(3 * sigma) + 1
    taps = torch.exp(-((torch.arange(n, dtype=torch.float64) - n // 2) ** 2) / (2 * sigma * sigma))
    from regbench.losses import _separable_conv

    x = _separable_conv(F.pad(x, [n // 2] * 2 * len(shape), mode="circular"), taps / taps.sum())
    x = x[(slice(None), slice(None)) + tuple(slice(n // 2, n // 2 + s) for s in shape)]
    return (x - x.min()) / (x.max() - x.min())


def remap(x):
    """A non-monotonic intensity remap (a 'second modality'): bright <-> dark for the upper half."""
    return torch.where(x < 0.5, 0.3 + x, 1.8 - 2.0 * x).clamp(0, 1)


def shifted(x, dx):
    ddf = torch.zeros((x.shape[0], x.dim() - 2, *x.shape[2:]), dtype=x.dtype)
    ddf[:, 0] = dx
    return spatial.warp(x, ddf, padding_mode="border")


# ---------------------------------------------------------------------------------------------------- SEGI


@pytest.mark.parametrize("order", ["normalize", "smooth"])
def test_segi_minimal_at_identity_for_a_remapped_pair(order):
    fixed = smooth_image((40, 40), seed=1)
    moving = remap(fixed)  # same structure, other contrast (partly inverted)
    loss = SpatiallyEncodedGradient(order=order, cosine="abs")
    at_id = float(loss(fixed, moving))
    for dx in (0.5, 1.0, 2.0, 4.0):
        assert float(loss(fixed, shifted(moving, dx))) > at_id + 1e-3, dx
    # monotone in the misalignment over this range
    values = [float(loss(fixed, shifted(moving, dx))) for dx in (0.0, 1.0, 2.0, 4.0)]
    assert values == sorted(values)


def test_segi_identical_images_near_minus_one_and_3d():
    x = smooth_image((16, 16, 16), seed=2)
    value = float(SpatiallyEncodedGradient()(x, x))
    assert -1.0 <= value < -0.98
    assert float(SpatiallyEncodedGradient(cosine="signed")(x, x)) == pytest.approx(value, abs=1e-9)


def test_signed_cosine_penalises_inverted_contrast_abs_does_not():
    """Eq. 8 as printed (signed cosine) is maximal, not minimal, at alignment for an inverted contrast; the
    released code's |cos| is minimal there. This is why the configs use ``cosine: abs``."""
    fixed = smooth_image((32, 32), seed=3)
    inverted = 1.0 - fixed
    signed = SpatiallyEncodedGradient(cosine="signed")
    absolute = SpatiallyEncodedGradient(cosine="abs")
    assert float(signed(fixed, inverted)) > 0.98
    assert float(absolute(fixed, inverted)) < -0.98
    assert float(absolute(fixed, inverted)) == pytest.approx(float(absolute(fixed, fixed)), abs=1e-9)


def test_sigma_zero_is_plain_ngi_cosine():
    fixed, warped = smooth_image((20, 24), seed=4), smooth_image((20, 24), seed=5)
    eps = 0.05
    got = float(SpatiallyEncodedGradient(sigmas=[0], eps=eps)(fixed, warped))

    def ngi(x):
        g = torch.stack(torch.gradient(x[0, 0]), 0)
        return g / torch.sqrt((g * g).sum(0) + eps ** 2)

    a, b = ngi(fixed), ngi(warped)
    tau = SpatiallyEncodedGradient.TAU
    cos = (a * b).sum(0) / torch.sqrt(((a * a).sum(0) + tau) * ((b * b).sum(0) + tau))
    assert got == pytest.approx(-float(cos.abs().mean()), rel=1e-12)


@pytest.mark.parametrize("sigmas", [[1.0, 1.5, 3.0], [0.0]])
def test_segi_not_minimised_by_warping_the_image_out_of_the_field_of_view(sigmas):
    """A field that pushes the moving image out of the volume (border padding: a constant, gradient-free
    image) scores 0, worse than the identity: the demo's collapse to DSC 0 was not the loss's minimum (it is a
    plateau without gradient, reached by the divergence; docs/ding2021.md)."""
    fixed = smooth_image((32, 32), seed=21)
    moving = remap(smooth_image((32, 32), seed=21))
    loss = SpatiallyEncodedGradient(sigmas=sigmas, eps=0.05)
    ident = float(loss(fixed, moving))
    away = float(loss(fixed, spatial.warp(moving, torch.full((1, 2, 32, 32), 100.0, dtype=moving.dtype))))
    assert away == pytest.approx(0.0, abs=1e-6) and ident < -0.3


def test_segi_is_the_mean_over_scales():
    fixed, warped = smooth_image((24, 24), seed=6), smooth_image((24, 24), seed=7)
    per = [float(SpatiallyEncodedGradient(sigmas=[s])(fixed, warped)) for s in (1.0, 1.5, 3.0)]
    assert float(SpatiallyEncodedGradient(sigmas=[1.0, 1.5, 3.0])(fixed, warped)) == pytest.approx(sum(per) / 3)
    assert len(set(round(p, 6) for p in per)) == 3  # the scales differ


def test_gaussian_accumulation_makes_segi_robust_to_noise():
    """Sec. 2: plain NGI is "sensitive to the noises"; accumulating the normalised gradients keeps the criterion
    informative: with noisy images of two contrasts SEGI rises monotonically with the misalignment and by far more
    than NGI (sigma 0, at least twice as much), whose curve is nearly flat and not monotone."""
    for seed in (8, 9, 10):
        g = torch.Generator().manual_seed(seed)
        fixed = smooth_image((48, 48), seed=seed)
        noisy_moving = remap(fixed) + 0.2 * torch.randn(fixed.shape, generator=g, dtype=fixed.dtype)
        noisy_fixed = fixed + 0.2 * torch.randn(fixed.shape, generator=g, dtype=fixed.dtype)
        curves = {}
        for name, loss in (("segi", SpatiallyEncodedGradient()), ("ngi", SpatiallyEncodedGradient(sigmas=[0.0]))):
            curves[name] = [float(loss(noisy_fixed, shifted(noisy_moving, d))) for d in (0.0, 1.0, 2.0, 4.0)]
        segi, ngi = curves["segi"], curves["ngi"]
        assert segi == sorted(segi), seed
        assert segi[-1] - segi[0] > 0.03
        assert segi[-1] - segi[0] > 2 * abs(ngi[-1] - ngi[0]), (seed, curves)


@pytest.mark.parametrize("order,cosine", [("normalize", "abs"), ("smooth", "signed"), ("normalize", "signed")])
def test_segi_gradcheck(order, cosine):
    fixed = smooth_image((7, 8), seed=9)
    warped = smooth_image((7, 8), seed=10).requires_grad_(True)
    loss = SpatiallyEncodedGradient(sigmas=[0.0, 1.0], order=order, cosine=cosine, eps=0.1)
    assert torch.autograd.gradcheck(lambda w: loss(fixed, w), (warped,), eps=1e-6, atol=1e-6)


def test_segi_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="sigmas"):
        SpatiallyEncodedGradient(sigmas=[-1.0])
    with pytest.raises(ValueError, match="sigmas"):
        SpatiallyEncodedGradient(sigmas=[])
    with pytest.raises(ValueError, match="order"):
        SpatiallyEncodedGradient(order="both")
    with pytest.raises(ValueError, match="cosine"):
        SpatiallyEncodedGradient(cosine="squared")
    with pytest.raises(ValueError, match="eps"):
        SpatiallyEncodedGradient(eps=0)
    with pytest.raises(ValueError, match="share a shape"):
        SpatiallyEncodedGradient()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


# ---------------------------------------------------------------------------------------------------- network


@pytest.mark.parametrize("ndim,shape", [(2, (32, 48)), (3, (16, 16, 32))])
def test_mmregnet_outputs_both_fields_starting_near_identity(ndim, shape):
    torch.manual_seed(0)
    net = build_model("mmregnet", ndim, channels=4)
    m, f = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    out = net(m, f)
    for key in ("ddf", "ddf_inv"):
        assert out[key].shape == (2, ndim, *shape)
        assert float(out[key].abs().max()) < 1e-2
    assert out["warped"].shape == m.shape and out["warped_inv"].shape == f.shape
    assert torch.allclose(out["warped"], spatial.warp(m, out["ddf"]))
    assert torch.allclose(out["warped_inv"], spatial.warp(f, out["ddf_inv"]))


def test_mmregnet_u_and_v_come_from_separate_heads_of_one_pass():
    torch.manual_seed(1)
    net = MMRegNet(ndim=2, channels=4)
    for head in list(net.heads_u.values()) + list(net.heads_v.values()):
        torch.nn.init.normal_(head.weight, std=0.1)
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = net(m, f)
    assert not torch.allclose(out["ddf"], out["ddf_inv"])
    # every summand level contributes: removing the coarsest head changes U only
    u, v = out["ddf"], out["ddf_inv"]
    torch.nn.init.zeros_(net.heads_u["4"].weight)
    torch.nn.init.zeros_(net.heads_u["4"].bias)
    out2 = net(m, f)
    assert not torch.allclose(out2["ddf"], u) and torch.allclose(out2["ddf_inv"], v)


@pytest.mark.parametrize("ndim,shape", [(2, (32, 48)), (3, (16, 16, 32))])
@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_mmregnet_summands_are_full_resolution_voxels_at_every_level(ndim, shape, level):
    """Each head predicts a displacement in full-resolution voxels, upsampled like an image (the authors'
    ``ddf_summand``/``resize_volume``): a constant summand of 1 at any level is a 1-voxel shift of ``U``.
    Before the fix the coarse summands were rescaled with the grid (x 2^level, up to x16), which diverged the
    first demo run at lr 1e-3 (docs/ding2021.md)."""
    net = MMRegNet(ndim=ndim, channels=4)
    with torch.no_grad():
        for head in list(net.heads_u.values()) + list(net.heads_v.values()):
            head.weight.zero_()
            head.bias.zero_()
        net.heads_u[str(level)].bias[0] = 1.0
    out = net(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    expected = torch.zeros(1, ndim, *shape)
    expected[:, 0] = 1.0
    assert torch.allclose(out["ddf"], expected, atol=1e-6)
    assert float(out["ddf_inv"].abs().max()) == 0.0


def test_mmregnet_first_adam_step_at_lr_1e3_moves_the_field_by_a_fraction_of_a_voxel():
    """Regression for the diverged demo run: one Adam step (lr 1e-3, Eq. 10 loss) from the initial network
    changes ``U`` by well under a voxel (0.08 voxels here; 0.44 with the grid-rescaled summands, 3.9 voxels at
    c = 16 on the 48^3 demo grid, the start of the divergence)."""
    torch.manual_seed(0)
    net = MMRegNet(ndim=2, channels=4)
    fixed = smooth_image((64, 64), seed=1).float()
    moving = remap(smooth_image((64, 64), seed=2)).float()
    terms = build_terms([
        {"name": "segi", "weight": 1.0, "sigmas": [1, 1.5, 3], "eps": 0.05},
        {"name": "cycle", "weight": 0.1},
        {"name": "diffusion", "label": "smooth_u", "weight": 1.0},
        {"name": "diffusion", "label": "smooth_v", "weight": 1.0, "inputs": {"field": "ddf_inv"}},
    ])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    out = net(moving, fixed)
    ctx = TermContext({"fixed": fixed, "moving": moving}, out)
    loss = sum(t.weight * t(ctx) for t in terms)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        u = net(moving, fixed)["ddf"]
    assert float(u.abs().max()) < 0.2


def test_mmregnet_gradients_reach_every_parameter():
    torch.manual_seed(2)
    net = MMRegNet(ndim=2, channels=4)
    out = net(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    (out["ddf"].square().sum() + out["ddf_inv"].square().sum() + out["warped"].sum()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mmregnet_errors_and_registry():
    assert MODELS["mmregnet"] is MMRegNet
    net = MMRegNet(ndim=2, channels=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32))
    with pytest.raises(ValueError, match="share a shape"):
        net(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 48))
    with pytest.raises(ValueError, match="ddf_levels"):
        MMRegNet(ndim=2, ddf_levels=(5,))
    with pytest.raises(ValueError, match="ndim"):
        MMRegNet(ndim=4)


def test_mmregnet_parameter_count_default_width():
    """Default c = 16 (3D): the count docs/ding2021.md states (the paper gives none)."""
    n = sum(p.numel() for p in MMRegNet(ndim=3).parameters())
    assert n == 3_966_334


# ---------------------------------------------------------------------------------------------------- U/V


def test_inverse_residual_zero_for_exact_inverses_and_measures_the_gap():
    shape = (1, 2, 16, 16)
    u = torch.zeros(shape)
    u[:, 0], u[:, 1] = 1.5, -0.5
    r = inverse_residual(u, -u)
    assert r["mean_vox"] == pytest.approx(0.0, abs=1e-5) and r["max_vox"] == pytest.approx(0.0, abs=1e-5)
    r = inverse_residual(u, torch.zeros(shape))
    assert r["mean_vox"] == pytest.approx(math.hypot(1.5, 0.5), rel=1e-5)
    assert r["mean_disp_vox"] == pytest.approx(math.hypot(1.5, 0.5), rel=1e-5)
    with pytest.raises(ValueError, match="share a shape"):
        inverse_residual(u, torch.zeros(1, 2, 16, 8))


# ---------------------------------------------------------------------------------------------------- terms


def test_eq10_terms_from_config_on_mmregnet_outputs():
    assert "segi" in TERMS
    spec = [
        {"name": "segi", "weight": 1.0, "sigmas": [1, 1.5, 3], "eps": 0.05},
        {"name": "cycle", "weight": 0.1},
        {"name": "diffusion", "label": "smooth_u", "weight": 1.0},
        {"name": "diffusion", "label": "smooth_v", "weight": 1.0, "inputs": {"field": "ddf_inv"}},
    ]
    terms = build_terms(spec)
    torch.manual_seed(3)
    fixed = smooth_image((32, 32), seed=11).float()
    moving = remap(smooth_image((32, 32), seed=12)).float()
    out = MMRegNet(ndim=2, channels=4)(moving, fixed)
    ctx = TermContext({"fixed": fixed, "moving": moving}, out)
    values = {t.label: float(t(ctx)) for t in terms}
    assert values["segi"] == pytest.approx(float(SpatiallyEncodedGradient(eps=0.05)(fixed, out["warped"])))
    # near-zero fields at initialisation: cycle and smoothness nearly vanish
    assert values["cycle"] < 1e-3 and values["smooth_u"] < 1e-6 and values["smooth_v"] < 1e-6
    with pytest.raises(Exception, match="segi"):
        build_terms([{"name": "segi", "order": "sideways"}])


def test_register_and_evaluate_report_the_uv_residual_beside_a_bidirectional_row(tiny_prepared, tmp_path):
    """register.py records the U/V composition residual of every test pair for a network with a backward field
    (the value inverse_residual gives on that pair's own forward pass) and evaluate.py carries it into the metrics;
    a one-field network (VoxelMorph) gets no such column."""
    import pandas as pd

    from regbench.data import PreparedDataset
    from regbench.evaluate import evaluate_method
    from regbench.register import register_pairs
    from regbench.train import load_trained, train

    method = {"name": "MMRegNet", "kind": "learned", "model": "mmregnet", "model_params": {"channels": 4},
              "train": {"steps": 3, "batch_size": 1, "lr": 1e-3, "checkpoint_every": 10,
                        "losses": [{"name": "segi", "sigmas": [1.0], "eps": 0.05},
                                   {"name": "cycle", "weight": 0.1, "penalty": "l1"},
                                   {"name": "diffusion", "weight": 1.0}]}}
    path = train(tiny_prepared, tmp_path / "mm", method, 0, 0, "img", [1, 2], device="cpu")
    table = pd.read_csv(register_pairs(tiny_prepared, tmp_path / "reg_mm", method, 0, 0, "img", device="cpu",
                                       model_path=path), sep="\t")
    assert "uv_residual_vox" in table.columns and (table["uv_residual_vox"] > 0).all()
    ds, model = PreparedDataset.open(tiny_prepared), load_trained(path, torch.device("cpu"))
    r = table.iloc[0]
    f = torch.from_numpy(ds.load(r["fixed"], "img").array)[None, None]
    m = torch.from_numpy(ds.load(r["moving"], "img").array)[None, None]
    with torch.no_grad():
        out = model(m, f)
    assert r["uv_residual_vox"] == pytest.approx(inverse_residual(out["ddf"], out["ddf_inv"])["mean_vox"], rel=1e-4)
    metrics = pd.read_csv(evaluate_method(tiny_prepared, tmp_path / "reg_mm", tmp_path / "m.tsv", "tiny", "mmregnet",
                                          "MMRegNet", 0, {1: "disc", 2: "ring"}, "img"), sep="\t")
    per_pair = metrics.groupby("pair_id")["uv_residual_vox"].first()
    assert per_pair.to_dict() == pytest.approx(table.set_index("pair_id")["uv_residual_vox"].to_dict(), rel=1e-5)

    vm = {"name": "VM", "kind": "learned", "model": "voxelmorph", "model_params": {"variant": "vm2", "int_steps": 0},
          "train": {"steps": 1, "batch_size": 1, "lr": 1e-3, "checkpoint_every": 10,
                    "losses": [{"name": "mse"}, {"name": "diffusion"}]}}
    vm_path = train(tiny_prepared, tmp_path / "vm", vm, 0, 0, "img", [1, 2], device="cpu")
    vm_table = pd.read_csv(register_pairs(tiny_prepared, tmp_path / "reg_vm", vm, 0, 0, "img", device="cpu",
                                          model_path=vm_path), sep="\t")
    assert "uv_residual_vox" not in vm_table.columns
